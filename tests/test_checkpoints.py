"""Training checkpoints: atomic files, the newest k kept, interrupted writes ignored, older run
folders still read."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from training.checkpoints import (
    CHECKPOINTS, checkpoint_files, checkpoint_state, has_checkpoint, load_checkpoint, restore_optimizer,
    save_checkpoint,
)


def _opt():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.full((3,), 0.5)
    opt.step()
    return p, opt


def test_newest_kept_and_an_interrupted_write_is_ignored(tmp_path):
    p, opt = _opt()
    assert not has_checkpoint(tmp_path)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, {"w": p.detach() * step}, opt.state_dict(), {"step": step}, keep_last=2)
    assert [f.name for f in checkpoint_files(tmp_path)] == ["step-0000002.safetensors", "step-0000003.safetensors"]
    # A run killed while writing step 4 leaves only a temporary file: step 3 is still the newest.
    (tmp_path / CHECKPOINTS / "step-0000004.safetensors.tmp").write_bytes(b"partial")
    weights, opt_tensors, state = load_checkpoint(tmp_path)
    assert state["step"] == 3 and checkpoint_state(tmp_path)["step"] == 3
    assert torch.equal(weights["w"], p.detach() * 3)
    q = torch.nn.Parameter(torch.ones(3))
    restored = torch.optim.AdamW([q], lr=0.5)
    restore_optimizer(restored, opt_tensors, state["param_groups"])
    assert restored.param_groups[0]["lr"] == 0.1
    assert torch.equal(restored.state[q]["exp_avg"], opt.state[p]["exp_avg"])


def test_legacy_run_folder_is_read(tmp_path):
    save_file({"model.w": torch.zeros(2)}, str(tmp_path / "checkpoint.safetensors"))
    (tmp_path / "checkpoint.json").write_text(json.dumps({"step": 7, "param_groups": []}))
    assert has_checkpoint(tmp_path) and checkpoint_state(tmp_path)["step"] == 7
    assert load_checkpoint(tmp_path)[0]["w"].shape == (2,)
