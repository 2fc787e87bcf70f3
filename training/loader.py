"""The per-step sample stream: a torch DataLoader whose item ``step`` is the batch of that step.

Sample i of step ``step`` is drawn from an RNG seeded by (seed, rank, step, i) alone
(:func:`draw_step`; sample 0 by (seed, rank, step), so a batch of one is the single-sample
stream), so the stream is the same with 0 or N workers, on any worker, and after a resume: a
run does not depend on how its samples were produced. Workers draw and augment the next samples while the
main process trains on the current one (``prefetch_factor`` each); on CUDA the batches come in
pinned memory.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from tags.config import ModelConfig

from .data import GridCase, Sample, SamplingConfig, augment_intensity, draw_sample


def draw_step(cases: List[Dict[str, GridCase]], model: ModelConfig, sampling: SamplingConfig, *, seed: int,
              rank: int, step: int, img_size: int, mask_size: int,
              crop_size: Optional[Sequence[int]] = None, index: int = 0) -> Sample:
    """Training sample ``index`` of ``step``'s batch on ``rank``: drawn and intensity-augmented."""
    rng = np.random.default_rng([seed, rank, step] + ([index] if index else []))
    s = draw_sample(cases, model.targets, model, rng, sampling=sampling, img_size=img_size, mask_size=mask_size,
                    crop_size=crop_size)
    s.image = augment_intensity(s.image, int(rng.integers(2**31)))
    return s


class StepSamples(TorchDataset):
    """Map-style dataset: item ``step`` is that step's batch, a list of ``batch_size``
    :func:`draw_step` samples (index = step)."""

    def __init__(self, cases: List[Dict[str, GridCase]], model: ModelConfig, sampling: SamplingConfig, *,
                 seed: int, rank: int, steps: int, img_size: int, mask_size: int,
                 crop_size: Optional[Sequence[int]] = None, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        self.cases, self.model, self.sampling = cases, model, sampling
        self.seed, self.rank, self.steps, self.batch_size = seed, rank, steps, batch_size
        self.img_size, self.mask_size, self.crop_size = img_size, mask_size, crop_size

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> List[Sample]:
        return [draw_step(self.cases, self.model, self.sampling, seed=self.seed, rank=self.rank, step=int(step),
                          img_size=self.img_size, mask_size=self.mask_size, crop_size=self.crop_size, index=i)
                for i in range(self.batch_size)]


def group_batch(batch: Sequence[Sample]) -> List[List[Sample]]:
    """The samples of one step grouped so that each group runs as one network batch: the same
    target and the same crop shape (an organ crop and a tumor crop differ in both), in the
    order of their first sample."""
    groups: Dict[tuple, List[Sample]] = {}
    for s in batch:
        groups.setdefault((s.target.name, tuple(s.image.shape)), []).append(s)
    return list(groups.values())


def step_loader(samples: StepSamples, start: int, end: int, *, workers: int = 0, pin_memory: bool = False,
                prefetch: int = 2) -> DataLoader:
    """The batches of steps ``start`` .. ``end - 1`` in order, drawn by ``workers`` processes
    (0: in the main process), one step's list of samples per item (no collation: samples of
    different targets differ in shape; :func:`group_batch` stacks those that can be)."""
    return DataLoader(
        samples, batch_size=None, sampler=range(start, end), num_workers=workers, pin_memory=pin_memory,
        prefetch_factor=prefetch if workers > 0 else None, persistent_workers=False,
    )
