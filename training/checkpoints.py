"""Training checkpoints: one safetensors file per saved step, written atomically, the last k kept.

A checkpoint is ``RUN/checkpoints/step-NNNNNNN.safetensors``: the trainable (delta) weights as
``model.*`` tensors, the AdamW state as ``opt.<param index>.<name>`` tensors and the run's state
(step, param groups, model configuration, text embeddings, ...) as JSON in the file's metadata.
It is written to a temporary name, flushed to disk and renamed, so a run killed at any moment
leaves either the previous checkpoint or the new one, never half of each. Run folders written
before this layout (``checkpoint.safetensors`` + ``checkpoint.json``) are still read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
"""Folder of a run that holds its checkpoints."""
BEST = "best"
"""Name of the best validated checkpoint (``checkpoints/best.safetensors``), never pruned."""
LEGACY_WEIGHTS, LEGACY_STATE = "checkpoint.safetensors", "checkpoint.json"
_NAME = re.compile(r"^step-(\d{7})\.safetensors$")


def checkpoint_files(run: str | os.PathLike) -> List[Path]:
    """The complete checkpoints of ``run``, oldest first (temporary files are not listed)."""
    folder = Path(run) / CHECKPOINTS
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.safetensors") if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def has_checkpoint(run: str | os.PathLike) -> bool:
    return bool(checkpoint_files(run)) or (Path(run) / LEGACY_STATE).is_file()


def save_checkpoint(run: str | os.PathLike, weights: Dict[str, torch.Tensor], optimizer: Dict,
                    state: Dict, *, keep_last: int = 2, name: Optional[str] = None) -> Path:
    """Write the checkpoint of ``state["step"]`` atomically; remove all but the ``keep_last``
    newest. ``weights``: the trainable weights; ``optimizer``: ``Optimizer.state_dict()``;
    ``name`` (e.g. :data:`BEST`): write ``checkpoints/<name>.safetensors`` instead, kept apart
    from the step checkpoints."""
    folder = Path(run) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    for idx, st in optimizer["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    meta = {**state, "param_groups": optimizer["param_groups"]}
    final = folder / (f"{name}.safetensors" if name else f"step-{int(state['step']):07d}.safetensors")
    tmp = final.with_name(final.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    for old in checkpoint_files(run)[:-max(1, keep_last)] if name is None else []:
        old.unlink(missing_ok=True)
    return final


def checkpoint_state(run: str | os.PathLike) -> Optional[Dict]:
    """The state JSON of the newest checkpoint of ``run`` (no tensors read), or None."""
    files = checkpoint_files(run)
    if files:
        with safe_open(str(files[-1]), framework="pt") as f:
            return json.loads(f.metadata()["state"])
    legacy = Path(run) / LEGACY_STATE
    return json.loads(legacy.read_text()) if legacy.is_file() else None


def load_checkpoint(run: str | os.PathLike, name: Optional[str] = None
                    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict]:
    """(model delta weights, optimizer tensors, state JSON) of the newest checkpoint of ``run``,
    or of the one called ``name`` (e.g. :data:`BEST`)."""
    files = checkpoint_files(run)
    if name is not None:
        files = [Path(run) / CHECKPOINTS / f"{name}.safetensors"]
        if not files[0].is_file():
            raise FileNotFoundError(f"{run}: no {name} checkpoint ({files[0]})")
    if files:
        with safe_open(str(files[-1]), framework="pt") as f:  # tensors and state in one read
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            state = json.loads(f.metadata()["state"])
    elif (Path(run) / LEGACY_STATE).is_file():
        tensors = load_file(str(Path(run) / LEGACY_WEIGHTS))
        state = json.loads((Path(run) / LEGACY_STATE).read_text())
    else:
        raise FileNotFoundError(f"{run}: no training checkpoint (tags-train train writes {CHECKPOINTS}/)")
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt = {k[len("opt."):]: v for k, v in tensors.items() if k.startswith("opt.")}
    return model, opt, state


def restore_optimizer(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], groups: List[Dict]) -> None:
    """Load the optimizer tensors and param groups of :func:`load_checkpoint` into ``opt``."""
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})
