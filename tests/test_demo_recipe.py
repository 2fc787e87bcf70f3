"""tags-train demo's two-phase plan: an interrupted build finishes the plan it started with, and
--reuse-training refuses a folder without both finished runs (before any work)."""

from __future__ import annotations

import pytest
import torch

from training.checkpoints import save_checkpoint
from training.cli import main
from training.demo import RUNS, phase_steps, planned_steps, record_plan, trained_phase_steps


def _started(run, step: int, steps: int) -> None:
    """A run folder whose newest checkpoint is at ``step`` of a run planned for ``steps``."""
    save_checkpoint(run, {"w": torch.zeros(1)}, {"state": {}, "param_groups": []},
                    {"step": step, "train_config": {"steps": steps}})


def test_an_interrupted_build_keeps_its_plan(tmp_path):
    assert planned_steps(tmp_path) is None  # nothing started: the build probes and plans
    first, organ = phase_steps(447)
    assert (first, organ) == (286, 161) and phase_steps(10) == (6, 4)
    _started(tmp_path / RUNS[0], 100, first)  # killed in the first phase
    assert planned_steps(tmp_path) == (first, organ)
    with pytest.raises(ValueError, match="two-phase"):
        trained_phase_steps(tmp_path)
    _started(tmp_path / RUNS[0], first, first)
    _started(tmp_path / RUNS[1], 20, 150)  # killed in the second phase, planned otherwise
    assert planned_steps(tmp_path) == (first, 150)
    assert trained_phase_steps(tmp_path) == (first, 20)


def test_a_recorded_plan_is_kept_exactly(tmp_path):
    """The plan a build wrote is what a second run finishes, also where deriving the organ
    phase from the first phase's steps would round to another count (6 + 4 -> 6 + 3)."""
    plan = phase_steps(10)
    _started(tmp_path / RUNS[0], 6, plan[0])
    assert planned_steps(tmp_path) == (6, 3)  # derived: a folder without a recorded plan
    record_plan(tmp_path, plan)
    assert planned_steps(tmp_path) == plan == (6, 4)


def test_reuse_training_refuses_a_folder_without_a_finished_build(tmp_path, capsys):
    _started(tmp_path / RUNS[0], 286, 286)  # a one-phase build folder, no baseline
    assert main(["demo", str(tmp_path), "--reuse-training"]) != 0
    assert "no finished build" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUNS[0]]  # nothing written


def test_the_step_probe_times_the_steps_after_its_first_checkpoint(tmp_path, monkeypatch):
    """The probe's seconds per step are those after its first checkpoint (the first steps also
    allocate memory; one checkpoint falls inside the timed steps, not one per step), from the
    run's own log, with the sampling asked for; the probe run is removed."""
    import json

    from training import demo
    from training.train import METRICS

    seen = {}

    def fake_train(cfg, stop_after=None):
        seen.update(checkpoint_every=cfg.checkpoint_every, stop_after=stop_after, sampling=cfg.sampling)
        run = tmp_path / "probe"
        run.mkdir()
        seconds = [9.0 + 2.0 * i for i in range(stop_after)]  # a 9 s first step, then 2 s each
        logged = [i for i in range(1, stop_after + 1) if i % cfg.checkpoint_every == 0 or i == stop_after]
        (run / METRICS).write_text("".join(json.dumps({"step": i, "seconds": seconds[i - 1]}) + "\n" for i in logged))

    monkeypatch.setattr(demo, "train", fake_train)
    monkeypatch.setattr(demo, "demo_config", lambda samples, run, steps: demo.TrainConfig(datasets=[], out=str(run)))
    assert demo.seconds_per_step({}, tmp_path / "probe", demo.ORGAN_PHASE) == pytest.approx(2.0)
    assert seen == {"checkpoint_every": demo.PROBE_CHECKPOINT_EVERY, "stop_after": demo.PROBE_STEPS,
                    "sampling": demo.ORGAN_PHASE}
    assert 0 < demo.PROBE_CHECKPOINT_EVERY < demo.PROBE_STEPS
    assert not (tmp_path / "probe").exists()


def test_the_plan_fills_the_budget_with_each_phase_at_its_own_cost():
    from training import demo

    steps = demo.planned_total_steps(1000.0, (2.0, 1.0))
    organ = round(steps * demo.ORGAN_PHASE_SHARE)
    assert 990.0 <= (steps - organ) * 2.0 + organ * 1.0 <= 1002.0
    assert demo.planned_total_steps(1.0, (2.0, 2.0)) == 10


def test_the_organ_phase_is_planned_again_from_the_first_phases_speed(tmp_path):
    """The first phase ran faster than its probe (1.6 against 2.0 s per step): the organ phase
    gets the budget it left at the probe's organ cost scaled the same way, once, and a build
    resumed after that keeps the new plan."""
    import json

    from training import demo
    from training.train import METRICS

    assert demo.replanned_organ_steps(1000.0, (300, 480.0), (2.0, 1.5)) == int(520.0 / 1.2)
    assert demo.replanned_organ_steps(1000.0, (300, 1100.0), (2.0, 1.5)) == 1  # over budget: one step
    record_plan(tmp_path, (300, 170), 1000.0, (2.0, 1.5))
    assert planned_steps(tmp_path) == (300, 170)
    run = tmp_path / RUNS[0]
    run.mkdir()
    (run / METRICS).write_text(json.dumps({"step": 250, "seconds": 400.0}) + "\n"
                               + json.dumps({"step": 250, "validation": {}}) + "\n"
                               + json.dumps({"step": 300, "seconds": 480.0}) + "\n")
    assert demo.replan_organ_phase(tmp_path) == (300, 433)
    assert planned_steps(tmp_path) == (300, 433)
    assert demo.replan_organ_phase(tmp_path) is None  # once
    assert planned_steps(tmp_path) == (300, 433)
    record_plan(tmp_path, (300, 170))  # a plan without its budget is kept as it is
    assert demo.replan_organ_phase(tmp_path) is None and planned_steps(tmp_path) == (300, 170)


def test_the_organ_network_scales_with_the_budget():
    from training import demo

    assert demo.organ_network_steps(60) == demo.ORGAN_NETWORK_STEPS
    assert demo.organ_network_steps(30) == round(demo.ORGAN_NETWORK_STEPS / 2)
    assert demo.organ_network_steps(1) == 10
