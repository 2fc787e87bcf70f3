"""Preprocessed-case cache: each training case once on the model grids, read back memory-mapped.

Loading a CT, bringing it to canonical orientation and resampling it to the two model grids
takes seconds to minutes per case and a few GB of RAM; done on every rank at every start, a
dataset of hundreds of CTs would cost tens of minutes and tens of GB per rank. The cache does it
once: ``CACHE/<key>/`` holds, per grid (``tumor``, ``organ``), the image (float32 HU), each
target's mask (bool), the flat indices of each mask's voxels and of the body voxels outside
each organ (what sampling draws crop centres from), as ``.npy`` files, and ``case.json``.
Training opens them with ``mmap_mode="r"``: a crop reads only its own pages, so a rank's memory
does not grow with the number of cases.

The key hashes the source files' contents (sha256, remembered per path, size and modification
time in ``CACHE/sources.json``), the dataset's label values per target, the grids' spacings,
the slice range kept (``--z-split``) and :data:`CACHE_FORMAT`; anything else gives a new entry.
An entry is written to a temporary folder and renamed when complete, so an interrupted
preprocessing run leaves no half entry. Several processes (torchrun ranks, before they join the
process group) share the work: each takes the cases in its own rotated order and builds an entry
under a file lock, so every entry is built once and a rank that finds it locked waits for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from tags.hashing import remembered_sha256
from tags.config import ModelConfig

from .data import OUTSIDE, GridCase, mark_tumor_free, prepare_case
from .datasets import Case, Dataset, load_case

CACHE_FORMAT = 1
"""Bumped when the cached arrays change meaning (the resampling, the masks' definition)."""
GRIDS = ("tumor", "organ")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (created), held for the block; other processes wait."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _source_hashes(cache: Path, files: Sequence[Path]) -> Dict[str, str]:
    """sha256 of each file, hashed again only when its size or modification time changed
    (the cache's own index, CACHE/sources.json; one writer at a time)."""
    with _locked(cache / "sources.lock"):
        return remembered_sha256(files, cache / "sources.json")


def case_key(ds: Dataset, case: Case, model: ModelConfig, z_range: Optional[Tuple[float, float]],
             hashes: Dict[str, str]) -> str:
    """The cache key of ``case`` under these preprocessing settings (hex, 24 characters)."""
    inputs = {
        "format": CACHE_FORMAT,
        "image": hashes[str(case.image)],
        "label": hashes[str(case.label)],
        "targets": {name: list(t.values) for name, t in ds.targets.items()},
        "spacing": list(model.preprocessing.spacing),
        "organ_spacing": list(model.preprocessing.organ_spacing),
        "anti_alias": model.preprocessing.anti_alias,
        "z_range": list(z_range) if z_range is not None else None,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def _write_entry(folder: Path, grids: Dict[str, GridCase]) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"format": CACHE_FORMAT, "name": grids["tumor"].name, "grids": {}}
    for grid, gc in grids.items():
        np.save(tmp / f"{grid}_image.npy", np.ascontiguousarray(gc.image, dtype=np.float32))
        for name, mask in gc.labels.items():
            np.save(tmp / f"{grid}_label_{name}.npy", np.ascontiguousarray(mask, dtype=bool))
            np.save(tmp / f"{grid}_voxels_{name}.npy", gc.label_voxels(name))
            if grid == "organ":
                np.save(tmp / f"{grid}_outside_{name}.npy", gc.body_voxels_outside(name))
        meta["grids"][grid] = {"spacing": list(gc.spacing), "shape": list(gc.image.shape), "labels": list(gc.labels)}
    (tmp / "case.json").write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder)  # under the entry's lock: no other process writes it


def _read_entry(folder: Path) -> Dict[str, GridCase]:
    meta = json.loads((folder / "case.json").read_text())
    out = {}
    for grid in GRIDS:
        g = meta["grids"][grid]
        load = lambda stem: np.load(folder / f"{grid}_{stem}.npy", mmap_mode="r")  # noqa: E731
        labels = {name: load(f"label_{name}") for name in g["labels"]}
        voxels = {name: np.asarray(load(f"voxels_{name}")) for name in g["labels"]}
        if grid == "organ":
            voxels.update({OUTSIDE + name: np.asarray(load(f"outside_{name}")) for name in g["labels"]})
        out[grid] = GridCase(meta["name"], load("image"), labels, tuple(g["spacing"]), voxels=voxels)
    return out


def preprocess(
    datasets: Sequence[Dataset], model: ModelConfig, cache: str | os.PathLike,
    z_split: Optional[Dict[str, float]] = None, progress: bool = False, *, rank: int = 0, world: int = 1,
) -> List[Path]:
    """Build the missing cache entries of every training case of ``datasets``; returns the entry
    folders in case order. ``rank`` / ``world``: this process's place among processes that call
    this at the same time on the same cache (they split the work)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    todo = [(ds, case) for ds in datasets for case in ds.cases]
    hashes = _source_hashes(cache, [f for _, c in todo for f in (c.image, c.label)])
    ranges = [(0.0, z_split[ds.name]) if z_split and ds.name in z_split else None for ds, _ in todo]
    folders = [cache / case_key(ds, case, model, zr, hashes) for (ds, case), zr in zip(todo, ranges)]
    shift = len(todo) * rank // max(1, world)
    order = list(range(shift, len(todo))) + list(range(shift))
    for i in tqdm(order, desc="preprocess", disable=not progress, unit="case"):
        if (folders[i] / "case.json").is_file():
            continue
        ds, case = todo[i]
        with _locked(folders[i].with_name(folders[i].name + ".lock")):
            if not (folders[i] / "case.json").is_file():
                img, aff, lab = load_case(case)
                grids = prepare_case(img, aff, lab, ds.targets, model, f"{ds.name}/{case.name}", ranges[i])
                del img, lab
                _write_entry(folders[i], grids)
    return folders


def cached_training_cases(
    datasets: Sequence[Dataset], model: ModelConfig, cache: str | os.PathLike,
    z_split: Optional[Dict[str, float]] = None, progress: bool = False,
) -> List[Dict[str, GridCase]]:
    """Every training case of ``datasets`` on both grids, as :func:`training.data.load_training_cases`
    returns them (arrays memory-mapped from ``cache``; missing entries built first)."""
    folders = preprocess(datasets, model, cache, z_split, progress)
    cases = []
    for (ds, case), folder in zip([(ds, c) for ds in datasets for c in ds.cases], folders):
        grids = _read_entry(folder)
        if case.name in ds.tumor_free:
            for gc in grids.values():
                mark_tumor_free(gc, model.tumor_targets)
        cases.append(grids)
    return cases
