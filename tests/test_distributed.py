"""Process group rules without NCCL or GPUs: each rank's device from LOCAL_RANK, and every
collective's tensor on the device its backend needs (NCCL refuses CPU tensors)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training import distributed
from training.distributed import DistContext, gather_rows, init_distributed, mean_over_ranks, rank0_decides


class _Reached(Exception):
    """Raised by the fake collectives once they have seen their tensors."""


def test_every_collective_gets_tensors_on_the_group_device(monkeypatch):
    seen = []

    def collective(*args, **kwargs):
        for a in args:
            seen.extend(x.device for x in (a if isinstance(a, list) else [a]) if isinstance(x, torch.Tensor))
        raise _Reached

    for name in ("all_reduce", "broadcast", "all_gather"):
        monkeypatch.setattr(distributed.dist, name, collective)
    # A stand-in for a GPU: "meta" is a device that is not the CPU, as cuda:1 would be.
    nccl = DistContext(rank=1, world=2, local_rank=1, device=torch.device("meta"), backend="nccl")
    for call in (lambda: mean_over_ranks(1.5, nccl), lambda: rank0_decides(True, nccl),
                 lambda: gather_rows(torch.ones(2), nccl)):
        with pytest.raises(_Reached):
            call()
    assert len(seen) >= 4 and all(d.type == "meta" for d in seen), seen
    assert dataclasses.replace(nccl, backend="gloo").comm_device == torch.device("cpu")


def test_single_process_collectives_return_their_input():
    ctx = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    assert mean_over_ranks(2.5, ctx) == 2.5 and rank0_decides(True, ctx) is True
    assert gather_rows(torch.tensor([1.0, 2.0]), ctx) == [[1.0, 2.0]]


def test_local_rank_chooses_the_gpu(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(d))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "5")  # the global rank does not choose the GPU
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = init_distributed()
    assert ctx.device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    assert ctx.world == 1 and ctx.backend == ""
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK 2 but this node has 2 GPU"):
        init_distributed()
