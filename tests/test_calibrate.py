"""tags-train calibrate: the demo model's lesion decision re-chosen on the demo's validation
cases leaves the healthy case clean, in a new model folder that loads with the same weights,
its card and metadata saying what changed; bad case specifications fail with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tags.model_folder import CARD, load_model_folder
from training.calibrate import ValidationCase
from training.cli import main
from training.samples import build_samples

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "liver-demo"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return build_samples(tmp_path_factory.mktemp("samples"), overwrite=True)


def test_case_specifications():
    assert ValidationCase.parse("data/Dataset501_LiTS117:lits117:0.5:0.6") == ValidationCase(
        "data/Dataset501_LiTS117", "lits117", 0.5, 0.6)
    assert ValidationCase.parse("D:healthy") == ValidationCase("D", "healthy")
    for bad in ("D", "D:c:0.6:0.5", "D:c:a:b", ":c"):
        with pytest.raises(ValueError, match="validation case"):
            ValidationCase.parse(bad)


def test_calibrate_rewrites_only_the_decision(samples, tmp_path, capsys):
    out = tmp_path / "recalibrated"
    cases = [f"{samples['lits117']}:lits117:0.5:0.6", f"{samples['totalseg']}:aorta_abdomen"]
    assert main(["calibrate", str(MODEL), str(out), *sum((["--validation", c] for c in cases), [])]) == 0
    shipped, new = load_model_folder(MODEL), load_model_folder(out)
    keys = ("min_max_probability", "min_volume_ml", "min_contrast_hu", "min_depth_mm")
    decision = lambda f: {k: getattr(f.config.lesion_decision, k) for k in keys}  # noqa: E731
    history = new.metadata["recalibrations"]
    chosen = history[-1]["chosen"]
    assert decision(new) == {k: chosen[k] for k in keys}
    # no false lesion left on the healthy validation case, some lesions kept on the LiTS slab
    assert chosen["healthy_false_lesions"] == 0 and chosen["healthy_fp_ml_max"] <= 1.0 and chosen["lesion_recall_approx"] > 0
    assert dataclasses.replace(new.config, lesion_decision=shipped.config.lesion_decision) == shipped.config
    assert new.config.organ_boundary == shipped.config.organ_boundary
    assert all(new.weights[k].equal(shipped.weights[k]) for k in shipped.weights)
    assert len(history) == len(shipped.metadata.get("recalibrations", [])) + 1
    assert {k: history[-1]["previous"][k] for k in keys} == decision(shipped) and history[-1]["true_lesions"] > 0
    card = (out / CARD).read_text()
    assert "re-chosen by tags-train calibrate" in card and "Measured before recalibration" in card
    assert (f"lesion decision: highest probability >= {chosen['min_max_probability']:g}, volume >= "
            f"{chosen['min_volume_ml']:g} ml") in capsys.readouterr().out
    # one clear line for a bad case, nothing written
    assert main(["calibrate", str(MODEL), str(tmp_path / "x"), "--validation", f"{samples['lits117']}:nocase"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nocase" in err[0] and not (tmp_path / "x").exists()
    assert json.loads((out / "config.json").read_text())["format_version"] >= 3


def test_calibrate_chooses_the_organ_boundary_alone(samples, tmp_path, capsys):
    out = tmp_path / "boundary"
    cases = [f"{samples['totalseg']}:totalseg_ct", f"{samples['lits117']}:lits117:0:0.6"]
    assert main(["calibrate", str(MODEL), str(out), *sum((["--organ-boundary", c] for c in cases), [])]) == 0
    shipped, new = load_model_folder(MODEL), load_model_folder(out)
    chosen = new.metadata["recalibrations"][-1]["organ_boundary"]["chosen"]
    assert dataclasses.replace(new.config, organ_boundary=shipped.config.organ_boundary) == shipped.config
    if chosen["band_mm"] is None:
        assert new.config.organ_boundary is None
    else:
        b = new.config.organ_boundary
        assert (b.band_mm, b.hu_sigmas) == (chosen["band_mm"], chosen["hu_sigmas"]) and "Dice" in b.chosen_on
    card = (out / CARD).read_text()
    assert "## Organ boundary" in card and "re-chosen by tags-train calibrate" in card
    printed = capsys.readouterr().out
    assert "organ boundary:" in printed and "lesion decision:" not in printed
    # a case without an organ label, or no cases at all: one line, nothing written
    for bad in (["--organ-boundary", f"{samples['totalseg']}:aorta_abdomen"], []):
        assert main(["calibrate", str(MODEL), str(tmp_path / "x"), *bad]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and not (tmp_path / "x").exists()


def test_the_decision_separates_confident_lesions_above_0_99():
    """True lesions that peak at 0.9999 and healthy false candidates at 0.995, equally contrasted:
    only a highest-probability threshold above 0.995 keeps every lesion and no false one, and the
    choice finds it (a grid that stopped at 0.99 could not)."""
    from training.calibrate import Candidate, choose_lesion_decision

    found = {"true_lesions": 4, "cases": [],
             "candidates": [Candidate("lits", False, 0.9999, 1.0, True, 45.0, True) for _ in range(4)]
             + [Candidate("healthy", True, 0.995, 1.0, False, 45.0, True)]}
    decision, report = choose_lesion_decision(found, "synthetic candidates")
    assert decision.min_max_probability > 0.995
    assert report["chosen"]["healthy_false_lesions"] == 0 and report["chosen"]["lesion_recall_approx"] == 1.0


def test_the_decision_can_ask_for_depth_in_the_organ():
    """Healthy false candidates as confident and as dark as the true lesions but shallow (the
    organ mask's edge taking in a neighbour): only a depth threshold keeps every lesion and no
    false one, and the choice finds it."""
    from training.calibrate import Candidate, choose_lesion_decision

    found = {"true_lesions": 4, "cases": [],
             "candidates": [Candidate("lits", False, 0.9999, 1.0, True, 45.0, True, 22.0) for _ in range(4)]
             + [Candidate("healthy", True, 0.9999, 20.0, False, 55.0, True, 12.0)]}
    decision, report = choose_lesion_decision(found, "synthetic candidates")
    assert 12.0 < decision.min_depth_mm <= 22.0
    assert report["chosen"]["healthy_false_lesions"] == 0 and report["chosen"]["lesion_recall_approx"] == 1.0
    assert report["chosen"]["min_depth_mm"] == decision.min_depth_mm
