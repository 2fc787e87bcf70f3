"""Shared fixtures: real data from package registries (cached under $TAGS_CACHE)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("TAGS_TEST_THREADS", "2")))


def pytest_configure(config):
    """Run in-process inference as ``python app`` does: glibc malloc keeps freed activations
    for reuse instead of unmapping them (tags.runtime; it halved a 256-pixel window's time on a
    2-core CPU).
    Subprocesses started by tests choose for themselves."""
    from tags.runtime import keep_freed_memory

    keep_freed_memory()


@pytest.fixture(scope="session")
def lits117():
    """LiTS volume 117 crop: (image HU, labels 0/1 liver/2 tumor), from the registry wheel."""
    from training.registry_data import lits117 as load

    return load()


@pytest.fixture(scope="session")
def liver_mask(lits117) -> np.ndarray:
    return lits117[1] >= 1
