"""Training options: one source of defaults (TrainConfig holds a ModelConfig, the CLI reads both),
the run folder's JSON read back (also in the older flat form), and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from tags.config import AdapterConfig, ModelConfig, PreprocessingConfig
from tags.targets import organ_target, tumor_target
from training import cli
from training.data import SamplingConfig
from training.train import TrainConfig, warmup_cosine


def _reference_lr_factor(step: int, warmup: int, steps: int) -> float:
    """The schedule as training/train.py wrote it before warmup_cosine."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@pytest.mark.parametrize("warmup,steps", [(20, 1000), (10, 250), (10, 37), (20, 2), (1, 5)])
def test_schedule_gives_the_same_rate_at_every_step(warmup, steps):
    assert [warmup_cosine(s, warmup, steps) for s in range(steps)] == [
        _reference_lr_factor(s, warmup, steps) for s in range(steps)]


def test_baseline_schedule_over_the_time_budget():
    """The baseline's former cosine over the elapsed fraction (past the budget: 0)."""
    for frac in np.linspace(0.0, 1.3, 131):
        assert warmup_cosine(float(frac), warmup=0, total=1) == pytest.approx(
            0.5 * (1 + np.cos(np.pi * min(1.0, frac))), abs=1e-15)


def test_monai_warmup_cosine_schedule_differs_in_the_warm_up():
    """Why training does not use monai.optimizers.WarmupCosineSchedule: the same cosine, but its
    warm-up is k / warmup (rate 0 on the first step) instead of (k + 1) / warmup."""
    from monai.optimizers import WarmupCosineSchedule

    warmup, steps = 20, 1000
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = WarmupCosineSchedule(opt, warmup_steps=warmup, t_total=steps)
    monai = []
    for _ in range(steps):
        monai.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [warmup_cosine(s, warmup, steps) for s in range(steps)]
    assert monai[warmup:] == pytest.approx(ours[warmup:], abs=1e-12)
    assert monai[0] == 0.0 and all(ours[s] - monai[s] == pytest.approx(1 / warmup) for s in range(warmup))


def test_train_config_defaults_are_the_model_config_defaults():
    cfg = TrainConfig(datasets=[], out="")
    assert cfg.model == ModelConfig() and cfg.sampling == SamplingConfig()


def _train_args(monkeypatch, argv):
    """The TrainConfig that ``tags-train train ARGV`` passes to train()."""
    import training.train

    seen = []
    monkeypatch.setattr(training.train, "train", lambda cfg: seen.append(cfg) or "run")
    assert cli.main(["train", *argv]) == 0
    return seen[0]


def test_cli_defaults_come_from_the_dataclasses(monkeypatch, capsys):
    args = cli.build_parser().parse_args(["train", "ds", "--out", "run"])
    # The numbers the command line printed and used before its defaults were read from the dataclasses.
    assert (args.steps, args.lr, args.seed, args.checkpoint_every, args.slab, args.roi, args.organ_roi) == (
        1000, 3e-4, 0, 50, 4, [64, 128, 128], [32, 128, 128])
    assert (args.organ_fraction, args.negative_fraction, args.synthetic_fraction, args.organ_negative_fraction,
            args.phase_probability, args.phase_hu, args.alignment_weight) == (
        0.3, 0.0, 0.0, 0.0, 0.0, [40.0, 140.0], 0.5)
    assert (args.backbone, args.text_encoder, args.encoder_size, args.precision) == ("litemedsam", "minilm", None, None)
    # Without options the command line trains the defaults.
    cfg = _train_args(monkeypatch, ["ds", "--out", "run"])
    assert cfg == TrainConfig(datasets=["ds"], out="run")
    cfg = _train_args(monkeypatch, ["ds", "--out", "run", "--slab", "2", "--roi", "8", "32", "32", "--encoder-size",
                                    "128", "--text-alignment", "--train-mask-decoder", "--phase-hu", "50", "90"])
    assert cfg.model == ModelConfig(encoder_size=128, adapter=AdapterConfig(slab_size=2), roi_size=(8, 32, 32),
                                    text_alignment=True, train_mask_decoder=True)
    assert cfg.sampling.phase_hu == (50.0, 90.0)
    cfg = _train_args(monkeypatch, ["ds", "--out", "run", "--spacing", "2", "1", "1", "--organ-spacing", "5", "4", "4",
                                    "--anti-alias"])
    assert cfg.model.preprocessing == PreprocessingConfig(spacing=(2.0, 1.0, 1.0), organ_spacing=(5.0, 4.0, 4.0),
                                                          anti_alias=True)
    for option in ("--spacing", "--organ-spacing"):  # a grid of zero or negative spacing: one message, exit 2
        assert cli.main(["train", "ds", "--out", "run", option, "0", "3", "3"]) == 2
        assert "spacing needs three spacings (z, y, x) in mm above 0, not [0.0, 3.0, 3.0]" in capsys.readouterr().err
        assert cli.main(["preprocess", "ds", "--cache-dir", "cache", option, "-1", "3", "3"]) == 2
        assert "spacing needs three spacings (z, y, x) in mm above 0, not [-1.0, 3.0, 3.0]" in capsys.readouterr().err


def test_other_commands_do_not_build_the_train_options():
    p = cli.build_parser(train_options=False)
    assert p.parse_args(["check", "ds"]).command == "check"


def test_train_config_round_trips_through_json():
    model = ModelConfig(encoder_size=128, roi_size=(8, 32, 32), text_alignment=True, text_dim=384,
                        adapter=AdapterConfig(slab_size=2),
                        targets=(organ_target("liver", 1), tumor_target("liver", 2)))
    cfg = TrainConfig(datasets=["a", "b"], out="run", model=model, steps=7, precision="fp32",
                      sampling=SamplingConfig(phase_hu=(50.0, 90.0)), z_split={"A": 0.5}, crop_size=(8, 16, 16))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_reads_the_flat_train_config_of_older_run_folders():
    """train_config.json as run folders wrote it when TrainConfig repeated the model's fields
    (and, before SamplingConfig, the sampling fields)."""
    old = {
        "datasets": ["ds"], "out": "run", "steps": 300, "lr": 0.001, "weight_decay": 0.0001, "warmup": 10,
        "organ_fraction": 0.45, "prompt_drop": 0.2, "box_jitter": 0.05, "precision": "fp32", "seed": 0,
        "checkpoint_every": 25, "clip_grad": 1.0, "z_split": {"LiTS117": 0.5}, "crop_size": None,
        "text_encoder": "minilm", "clip_folder": None, "backbone": "litemedsam", "backbone_checkpoint": None,
        "encoder_size": 128, "slab_size": 2, "roi_size": [32, 128, 128], "organ_roi_size": [16, 96, 96],
        "spacing": [1.0, 1.0, 1.0], "organ_spacing": [4.0, 3.0, 3.0], "train_mask_decoder": False,
        "progress": True,
    }
    cfg = TrainConfig.from_dict(old)
    assert cfg.model == ModelConfig(encoder_size=128, adapter=AdapterConfig(slab_size=2), roi_size=(32, 128, 128),
                                    organ_roi_size=(16, 96, 96),
                                    preprocessing=PreprocessingConfig(spacing=(1.0, 1.0, 1.0),
                                                                      organ_spacing=(4.0, 3.0, 3.0)))
    assert cfg.sampling == SamplingConfig(organ_fraction=0.45)
    assert (cfg.steps, cfg.warmup, cfg.z_split, cfg.precision) == (300, 10, {"LiTS117": 0.5}, "fp32")
    newer = dict(old, sampling=dataclasses.asdict(SamplingConfig(synthetic_fraction=0.25)), text_alignment=True,
                 alignment_weight=0.5)
    for k in ("organ_fraction", "prompt_drop", "box_jitter"):
        del newer[k]
    cfg = TrainConfig.from_dict(newer)
    assert cfg.model.text_alignment and cfg.sampling.synthetic_fraction == 0.25


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--workers", "-1"), ("--steps", "0"),
                                           ("--checkpoint-every", "0")])
def test_a_count_out_of_range_fails_before_anything_is_written(option, value, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", str(tmp_path), "--out", str(run), option, value, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option.lstrip("-") in err[0] and value in err[0], err
    assert not run.exists()
