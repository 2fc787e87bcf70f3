"""Preprocessed-case cache and the step loader on the real sample datasets: the same samples as
loading into memory, with 0 or 2 workers; entries reused, keyed by settings, never half written."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from training.cache import cached_training_cases, preprocess
from training.data import load_training_cases
from training.datasets import read_dataset
from training.demo import demo_config
from training.loader import StepSamples, draw_step, step_loader
from training.samples import build_samples
from training.train import model_config_for

@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    samples = build_samples(tmp_path_factory.mktemp("samples"), overwrite=True)
    cfg = demo_config(samples, tmp_path_factory.mktemp("run"), 100)
    model = model_config_for(cfg, 384)
    return cfg, model, [read_dataset(d) for d in cfg.datasets]


def _same(a, b):
    assert a.target.name == b.target.name
    for x, y in ((a.image, b.image), (a.label, b.label), (a.organ, b.organ)):
        assert (x is None and y is None) or torch.equal(x, y)
    assert (a.prompts is None) == (b.prompts is None)
    if a.prompts is not None:
        assert torch.equal(a.prompts.boxes, b.prompts.boxes) and torch.equal(a.prompts.point_labels, b.prompts.point_labels)


def test_cached_cases_draw_the_same_samples(setting, tmp_path):
    cfg, model, datasets = setting
    memory = load_training_cases(datasets, model, cfg.z_split)
    cached = cached_training_cases(datasets, model, tmp_path / "cache", cfg.z_split)
    assert isinstance(cached[0]["tumor"].image, np.memmap)  # read on demand, not loaded
    for m, c in zip(memory, cached):
        for grid in ("tumor", "organ"):
            assert np.array_equal(m[grid].image, c[grid].image) and m[grid].spacing == c[grid].spacing
            assert m[grid].labels.keys() == c[grid].labels.keys() and m[grid].tumor_free == c[grid].tumor_free
    kw = dict(seed=cfg.seed, rank=0, img_size=128, mask_size=256)
    for step in range(12):
        _same(draw_step(memory, model, cfg.sampling, step=step, **kw), draw_step(cached, model, cfg.sampling, step=step, **kw))


def test_entries_are_reused_and_keyed_by_settings(setting, tmp_path):
    cfg, model, datasets = setting
    cache = tmp_path / "cache"
    first = preprocess(datasets, model, cache, cfg.z_split)
    stamps = [(f / "case.json").stat().st_mtime_ns for f in first]
    (cache / "deadbeef.tmp-1").mkdir()  # what an interrupted run leaves: ignored
    assert preprocess(datasets, model, cache, cfg.z_split) == first
    assert [(f / "case.json").stat().st_mtime_ns for f in first] == stamps
    other = preprocess(datasets, model, cache, {})  # LiTS-117 whole, not its first half: a new entry
    assert other[0] != first[0] and other[1:] == first[1:]
    coarser = dataclasses.replace(model, preprocessing=dataclasses.replace(model.preprocessing, spacing=(2.0, 2.0, 2.0)))
    assert not set(preprocess(datasets, coarser, cache, cfg.z_split)) & set(first)
    smoothed = dataclasses.replace(model, preprocessing=dataclasses.replace(model.preprocessing, anti_alias=True))
    aa = preprocess(datasets, smoothed, cache, cfg.z_split)
    assert not set(aa) & set(first)
    # LiTS-117 is at 1.5 mm, as the tumor grid (nothing to filter); the organ grid is coarser
    assert np.array_equal(np.load(aa[0] / "tumor_image.npy"), np.load(first[0] / "tumor_image.npy"))
    assert not np.array_equal(np.load(aa[0] / "organ_image.npy"), np.load(first[0] / "organ_image.npy"))
    assert all(json.loads((f / "case.json").read_text())["format"] == 1 for f in first)


def test_two_workers_give_the_same_stream(setting, tmp_path):
    cfg, model, datasets = setting
    cases = cached_training_cases(datasets, model, tmp_path / "cache", cfg.z_split)
    samples = StepSamples(cases, model, cfg.sampling, seed=cfg.seed, rank=0, steps=20, img_size=128, mask_size=256)
    serial = list(step_loader(samples, 3, 9, workers=0))
    parallel = list(step_loader(samples, 3, 9, workers=2))
    assert len(serial) == len(parallel) == 6
    for a, b in zip(serial, parallel):
        assert len(a) == len(b) == 1  # one sample per step (batch size 1)
        _same(a[0], b[0])
    _same(serial[0][0], samples[3][0])
