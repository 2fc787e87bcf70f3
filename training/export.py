"""Export a training run as the model folder the application loads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Optional

import torch

from tags.config import LesionDecision, ModelConfig, OrganBoundary
from tags.model_folder import load_delta, save_model_folder
from tags.network import build_tags

from .checkpoints import load_checkpoint
from .train import TrainConfig

CARD_TEMPLATE = """# TAGS model: {targets}

**Research use only. Not for clinical use.**

- Backbone: {backbone} (frozen, base checkpoint sha256 `{sha}`), 3D adapters ({adapters}), slab size {slab}.
- Text encoder for the target sentences: {text_encoder}.
- Targets: {target_lines}
- Trained for {steps} steps ({world} process(es)) on: {datasets}.
- Preprocessing: HU window {window}, tumor grid {spacing} mm, organ grid {organ_spacing} mm.
- Organ pass: {organ_pass}

## Lesion decision
{decision}

## Organ boundary
{boundary}

## Held-out metrics
{metrics}

## Limits
{limits}
"""


def _decision_text(d: LesionDecision) -> str:
    contrast = (f", and they are at least {d.min_contrast_hu:g} HU darker than the organ's parenchyma"
                if d.min_contrast_hu is not None else "")
    depth = (f", and their deepest voxel lies at least {d.min_depth_mm:g} mm inside the organ mask"
             if d.min_depth_mm is not None else "")
    return (f"Candidate lesions (26-connected components of probability >= 0.5 with a voxel in the organ mask) "
            f"are kept when their highest probability is at least {d.min_max_probability:g}, their volume at least "
            f"{d.min_volume_ml:g} ml{contrast}{depth}. Chosen on: {d.chosen_on}.")


def boundary_text(b: Optional[OrganBoundary]) -> str:
    if b is None:
        return "The organ pass's mask as it is (no refinement)."
    return (f"The organ pass's mask is grown by the voxels within {b.band_mm:g} mm of it whose HU lies within "
            f"{b.hu_sigmas:g} robust SD of the organ's interior HU. Chosen on: {b.chosen_on}.")


def export_model(
    run: str | Path, out: str | Path, *, metrics: Optional[Dict] = None, limits: str = "", overwrite: bool = False,
    extra_metadata: Optional[Dict] = None, lesion_decision: Optional[LesionDecision] = None,
    metrics_markdown: Optional[str] = None, checkpoint: Optional[str] = None,
    organ_boundary: Optional[OrganBoundary] = None, steps: Optional[int] = None, history: Optional[str] = None,
    organ_model: Optional[str | Path] = None, organ_pass: str = "organ_model", organ_near_mm: Optional[float] = None,
) -> Path:
    """Write the model folder for the latest checkpoint of ``run`` (or the one named
    ``checkpoint``, e.g. ``"best"``: the best validated one).

    ``lesion_decision``: the decision chosen on validation cases (stored in config.json);
    ``organ_boundary``: the organ boundary refinement chosen on labelled non-test cases (idem);
    ``metrics_markdown``: the card's metrics section (default: ``metrics`` as JSON);
    ``steps``, ``history``: the training steps and how they were run, for a model trained in more
    than one run (default: the run's own steps and its ``--init`` folder);
    ``organ_model``: a model folder whose network runs the organ pass (nested as ``organ/``,
    see :mod:`tags.model_folder`), alone (``organ_pass`` "organ_model") or with the run's own
    network ("union": an organ voxel is one either finds; "near_union": the nested network's
    voxels within ``organ_near_mm`` of the run's own organ mask are added to it).
    """
    _check_near_mm(organ_pass if organ_model is not None else "own", organ_near_mm)
    run = Path(run)
    weights, _, state = load_checkpoint(run, checkpoint)
    config = ModelConfig.from_dict(state["model_config"])
    chosen = {"lesion_decision": lesion_decision, "organ_boundary": organ_boundary,
              "organ_pass": organ_pass if organ_model is not None else "own", "organ_near_mm": organ_near_mm}
    config = dataclasses.replace(config, **{k: v for k, v in chosen.items() if v is not None})
    tc = TrainConfig.from_dict(state["train_config"])
    net = build_tags(config, checkpoint=tc.backbone_checkpoint)
    if net.backbone_sha256 != state["base_checkpoint_sha256"]:
        raise ValueError("the installed base checkpoint differs from the one this run was trained on")
    # a run that did not train its adapters may be from before they were stored: identity adapters
    load_delta(net, weights, where=str(run), adapters_required=tc.train_adapters)
    text = {k: torch.tensor(v) for k, v in state["text_embeddings"].items()}
    p = config.preprocessing
    card = CARD_TEMPLATE.format(
        targets=", ".join(t.name for t in config.targets),
        backbone=config.backbone, sha=net.backbone_sha256,
        slab=config.adapter.slab_size,
        adapters=("trained" if tc.train_adapters else "kept as loaded: the identity unless the run started from trained ones")
        + ("" if config.adapter.for_organs else "; they run for tumor targets only, the organ pass sees the pretrained "
           "encoder's features"),
        text_encoder=config.text_encoder,
        target_lines="; ".join(f"{t.name} ({t.kind}: \"{t.sentence}\")" for t in config.targets),
        steps=steps or state["step"],
        world=state.get("world_size", 1),
        datasets=", ".join(Path(d).name for d in tc.datasets) + (
            f" ({history})" if history else
            f" (fine-tuned: the run started from the weights of the model folder {tc.init})" if tc.init else ""),
        window=list(p.hu_window),
        spacing=list(p.spacing),
        organ_spacing=list(p.organ_spacing),
        metrics=metrics_markdown or (json.dumps(metrics, indent=2) if metrics else "Not evaluated."),
        decision=_decision_text(config.lesion_decision),
        boundary=boundary_text(config.organ_boundary),
        limits=limits or "Not validated for clinical use.",
        organ_pass=_organ_pass_text(organ_model, config),
    )
    meta = {
        "training": {
            "steps": steps or state["step"],
            **({"history": history} if history else {}),
            "world_size": state.get("world_size", 1),
            "datasets": [Path(d).name for d in tc.datasets],
            "z_split": tc.z_split,
            "init": tc.init,
            "train_config": state["train_config"],
        },
        "metrics": metrics or {},
    }
    meta.update(extra_metadata or {})
    return save_model_folder(
        out, config=config, weights=net.delta_state_dict(), text_embeddings=text,
        base_checkpoint_sha256=net.backbone_sha256, card=card, extra_metadata=meta, overwrite=overwrite,
        organ_model=organ_model,
    )


def _check_near_mm(organ_pass: str, organ_near_mm: Optional[float]) -> None:
    """A ValueError when a distance is given for an organ pass that does not use it."""
    if organ_near_mm is not None and organ_pass != "near_union":
        raise ValueError(f"an organ distance (organ_near_mm {organ_near_mm:g}) only applies to organ_pass "
                         f"'near_union', not {organ_pass!r}")


def _organ_pass_text(organ_model: Optional[str | Path], config: ModelConfig) -> str:
    if organ_model is None:
        return "this network, with its organ targets' text prompts."
    from tags.model_folder import read_metadata

    training = read_metadata(organ_model).get("training", {})
    steps = f", trained {training['steps']} steps" if "steps" in training else ""
    network = (f"a separate network (the nested model folder `organ/`{steps}; its model card is "
               "`organ/README.md`)")
    if config.organ_pass == "union":
        return (f"this network and {network}, each with its organ targets' text prompts; an organ voxel is one "
                "either network finds (the higher of the two probabilities).")
    if config.organ_pass == "near_union":
        return (f"this network and {network}, each with its organ targets' text prompts; this network's organ "
                f"is joined by the voxels the other finds within {config.organ_near_mm:g} mm of it.")
    return f"{network}, with its organ targets' text prompts."


def attach_organ_model(model: str | Path, organ_model: str | Path, out: str | Path, *, organ_pass: str = "union",
                       organ_near_mm: Optional[float] = None, command: str = "", overwrite: bool = False) -> Path:
    """The model folder ``model`` with ``organ_model`` nested as its organ model (``organ_pass``
    "organ_model", "union" or "near_union" with ``organ_near_mm``), written to ``out``: the same weights and settings, the card's
    organ-pass line and the metadata's ``organ_model_attached`` (date, command) saying so. Its
    organ masks change, so choose the organ boundary and the lesion decision again
    (``tags-train calibrate``) before shipping it."""
    import datetime

    from tags.model_folder import AUTOMATIC_METADATA, CARD, load_model_folder

    _check_near_mm(organ_pass, organ_near_mm)
    folder = load_model_folder(model)
    if folder.organ is not None:
        raise ValueError(f"{model} has an organ model already")
    config = dataclasses.replace(folder.config, organ_pass=organ_pass,
                                 **({} if organ_near_mm is None else {"organ_near_mm": organ_near_mm}))
    line = "- Organ pass: " + _organ_pass_text(organ_model, config)
    card = (Path(model) / CARD).read_text()
    lines = [x for x in card.splitlines() if not x.startswith("- Organ pass: ")]
    at = max(i for i, x in enumerate(lines) if x.startswith("- ")) + 1 if any(x.startswith("- ") for x in lines) else 1
    card = "\n".join(lines[:at] + [line] + lines[at:]) + "\n"
    meta = {k: v for k, v in folder.metadata.items() if k not in AUTOMATIC_METADATA}
    meta["organ_model_attached"] = {"date": datetime.date.today().isoformat(), "organ_pass": organ_pass,
                                    "command": command}
    if organ_pass == "near_union":
        meta["organ_model_attached"]["organ_near_mm"] = config.organ_near_mm
    return save_model_folder(out, config=config, weights=folder.weights, text_embeddings=folder.text_embeddings,
                             base_checkpoint_sha256=folder.metadata["base_checkpoint"]["sha256"], card=card,
                             extra_metadata=meta, overwrite=overwrite, organ_model=organ_model)
