"""Evaluation metrics on masks with known answers, and the evaluate/baseline path end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from training.evaluate import segmentation_metrics


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_metrics_known_values():
    shape = (30, 40, 40)
    truth = _cube(shape, (5, 5, 5), (15, 15, 15))  # 1000 voxels
    pred = _cube(shape, (5, 5, 7), (15, 15, 17))  # shifted 2 voxels in x: overlap 800
    m = segmentation_metrics(pred, truth, (1.0, 1.0, 1.0), nsd_mm=2.0)
    assert m["dice"] == pytest.approx(0.8)
    assert m["hd95"] == pytest.approx(2.0)
    assert 0.8 < m["nsd"] <= 1.0  # every surface point is within 2 mm but the shifted faces
    # Anisotropic spacing scales distances: the same 2-voxel shift along x at 3 mm is 6 mm.
    m3 = segmentation_metrics(pred, truth, (1.0, 1.0, 3.0), nsd_mm=2.0)
    assert m3["hd95"] == pytest.approx(6.0)
    assert m3["nsd"] < m["nsd"]


def test_lesion_detection_counts():
    shape = (20, 60, 60)
    truth = _cube(shape, (2, 2, 2), (6, 6, 6)) | _cube(shape, (10, 40, 40), (14, 44, 44))
    pred = _cube(shape, (3, 3, 3), (5, 5, 5)) | _cube(shape, (10, 20, 20), (12, 22, 22))  # 1 hit, 1 false
    m = segmentation_metrics(pred, truth, (1, 1, 1))
    assert (m["lesions_truth"], m["lesions_pred"]) == (2, 2)
    assert m["lesion_recall"] == 0.5 and m["lesion_precision"] == 0.5


def test_empty_cases():
    z = np.zeros((5, 5, 5), bool)
    one = z.copy()
    one[2, 2, 2] = True
    assert segmentation_metrics(z, z, (1, 1, 1))["dice"] == 1.0
    m = segmentation_metrics(z, one, (1, 1, 1))
    assert m["dice"] == 0.0 and m["hd95"] is None and m["lesion_recall"] == 0.0
    json.dumps(m)  # JSON-safe (no inf/nan)


def test_evaluate_tags_beside_baseline(tmp_path, monkeypatch):
    from tags.config import ModelConfig
    from tags.inference import TagsPredictor
    from training.baseline import baseline_predictor, train_baseline
    from training.demo import demo_config
    from training.evaluate import evaluate, write_report
    from training.export import export_model
    from training.samples import build_samples
    from training.checkpoints import load_checkpoint
    from training.train import train

    s = build_samples(tmp_path / "samples")
    cfg = demo_config(s, tmp_path / "run", 1)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, roi_size=(16, 64, 64), organ_roi_size=(16, 64, 64)),
                              checkpoint_every=1, precision="fp32")
    train(cfg)
    mc = ModelConfig.from_dict(load_checkpoint(tmp_path / "run")[2]["model_config"])
    summary = train_baseline(cfg, mc, 60, tmp_path / "baseline", max_steps=1)
    assert summary["steps"] == 1
    # TAGS' phases for the baseline: from a fraction of its time on, another sampling
    import training.baseline as baseline_module

    drawn, draw = [], baseline_module.draw_sample
    monkeypatch.setattr(baseline_module, "draw_sample",
                        lambda *a, sampling, **k: drawn.append(sampling.organ_fraction) or draw(*a, sampling=sampling, **k))
    organ_only = dataclasses.replace(cfg.sampling, organ_fraction=1.0)
    train_baseline(cfg, mc, 60, tmp_path / "phases", max_steps=2, schedule=((0.0, organ_only), (2.0, cfg.sampling)))
    train_baseline(cfg, mc, 60, tmp_path / "phases", max_steps=1)
    assert drawn == [1.0, 1.0, cfg.sampling.organ_fraction] and cfg.sampling.organ_fraction < 1.0
    export_model(tmp_path / "run", tmp_path / "model")
    preds = {"tags": TagsPredictor.from_model_folder(tmp_path / "model"),
             "baseline": baseline_predictor(tmp_path / "baseline")}
    r = evaluate(preds, s["totalseg"], split="test")
    assert r["organ_prompt_source"].startswith("ground-truth")
    # The test case is a healthy liver (tumor_free): its tumor truth is empty, so the tumor
    # target is evaluated too, as false positives.
    assert set(r["summary"]) == {"tags", "baseline"} and set(r["summary"]["tags"]) == {"liver", "liver_tumor"}
    assert {(c["method"], c["target"]) for c in r["cases"]} == {
        (m, t) for m in ("tags", "baseline") for t in ("liver", "liver_tumor")}
    tumor = [c for c in r["cases"] if c["target"] == "liver_tumor"]
    assert all(c["voxels_truth"] == 0 and c["fp_ml"] >= 0 and c["false_lesions"] >= 0 for c in tumor)
    assert all(c["fp_ml"] == 0 or c["voxels_pred"] > 0 for c in tumor)
    write_report(r, tmp_path / "report")
    assert (tmp_path / "report.csv").read_text().count("\n") == 5
    assert json.loads((tmp_path / "report.json").read_text())["split"] == "test"
