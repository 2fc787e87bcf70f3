"""torchrun process groups for training: the device of each rank and collectives on the right device.

Started by ``torchrun`` (``WORLD_SIZE`` > 1), :func:`init_distributed` joins the process group:
NCCL on CUDA machines, each rank on the GPU its ``LOCAL_RANK`` names (``torch.cuda.set_device``),
gloo on CPU machines; a timeout bounds how long a rank waits for the others. Every collective
in this module moves its tensor to :attr:`DistContext.comm_device` first (NCCL refuses CPU tensors; gloo
takes CPU tensors), so the same code runs on both backends. A single process gets a context
with ``world == 1`` and no process group; the collectives then return their input.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process trains and how it talks to the others.

    Attributes:
        rank: global rank (0 in a single process).
        world: number of processes.
        local_rank: rank on this node (``LOCAL_RANK``): the GPU index on CUDA machines.
        device: the training device of this rank.
        backend: "nccl", "gloo" or "" (no process group).
        owns_group: :func:`init_distributed` created the process group (and
            :func:`shutdown` destroys it).
    """

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str = ""
    owns_group: bool = False

    @property
    def comm_device(self) -> torch.device:
        """The device tensors must be on for this group's collectives."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def init_distributed(timeout_minutes: float = 30.0) -> DistContext:
    """Join the torchrun process group (when ``WORLD_SIZE`` > 1) and choose this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s); "
                               "start at most one process per GPU (torchrun --nproc-per-node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world <= 1 and not dist.is_initialized():
        return DistContext(0, 1, 0, device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(dist.get_rank(), dist.get_world_size(), local, device, dist.get_backend(), owns)


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group :func:`init_distributed` created (after a last barrier)."""
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    """The mean of ``value`` over all ranks."""
    if ctx.world == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.comm_device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world


def rank0_decides(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. whether to resume: one decision, not one per rank)."""
    if ctx.world == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=ctx.comm_device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather_rows(row: torch.Tensor, ctx: DistContext) -> List[List[float]]:
    """Every rank's 1-D ``row`` (same length on all ranks), as lists, in rank order."""
    local = row.detach().to(ctx.comm_device, torch.float64)
    if ctx.world == 1:
        return [local.tolist()]
    gathered = [torch.zeros_like(local) for _ in range(ctx.world)]
    dist.all_gather(gathered, local)
    return [g.cpu().tolist() for g in gathered]


def barrier(ctx: DistContext) -> None:
    if ctx.world > 1:
        dist.barrier()
