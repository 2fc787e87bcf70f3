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
    assert "no finished two-phase build" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUNS[0]]  # nothing written
