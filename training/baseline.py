"""Same-data, same-budget baseline: a MONAI DynUNet trained on the same crops as TAGS.

Input channels: image and organ mask (zeros for organ targets), the same information TAGS gets
from its anatomy prompts; one output channel per target. It is run through the same ROI crop,
resampling and sliding-window path as TAGS (:class:`BaselineWindowModel`), so the comparison
differs only in the network.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.losses.dice import DiceCELoss
from monai.networks.nets import DynUNet
from safetensors.torch import load_model, save_model
from torch import nn
from tqdm import tqdm

from tags.config import ModelConfig, TargetSpec
from tags.device import autocast, select_device
from tags.inference import TagsPredictor
from tags.model_folder import CONFIG, WEIGHTS

from .data import SamplingConfig, augment_intensity, draw_sample, load_training_cases
from .datasets import read_dataset
from .train import TrainConfig, loss_scaler, optimizer_step, training_precision, warmup_cosine

FILTERS = (16, 32, 64, 128)
LR = 1e-3
"""Peak AdamW learning rate of the baseline."""
SUMMARY = "summary.json"
"""Steps, seconds, precision and final loss of a baseline run, beside its config and weights."""


class BaselineNet(nn.Module):
    """DynUNet (3D), 2 input channels (image, organ), one output channel per target."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.names = [t.name for t in config.targets]
        self.unet = DynUNet(
            spatial_dims=3, in_channels=2, out_channels=len(self.names), kernel_size=[3, 3, 3, 3],
            strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2], filters=list(FILTERS), norm_name="instance",
        )

    def forward(self, x: torch.Tensor, target: str) -> torch.Tensor:
        """x: (B, 2, D, H, W) with D, H, W multiples of 8 -> logits (B, 1, D, H, W) of ``target``."""
        i = self.names.index(target)
        return self.unet(x)[:, i : i + 1]


class BaselineWindowModel:
    """The baseline network as a :class:`tags.inference.WindowModel`: TagsPredictor's ROI and
    sliding-window path runs it exactly as it runs TAGS."""

    encoder_side = None  # windows keep the trained in-plane size

    def __init__(self, net: BaselineNet) -> None:
        self.net = net.eval()
        self.config = net.config

    @classmethod
    def from_folder(cls, path: str | Path) -> "BaselineWindowModel":
        path = Path(path)
        net = BaselineNet(ModelConfig.from_json((path / CONFIG).read_text()))
        load_model(net, str(path / WEIGHTS))
        return cls(net)

    def to(self, device: torch.device) -> "BaselineWindowModel":
        self.net.to(device)
        return self

    def __call__(self, x: torch.Tensor, target: TargetSpec, trained, grid_spacing) -> torch.Tensor:
        if x.shape[1] == 1:  # organ pass: no organ channel
            x = torch.cat([x, torch.zeros_like(x)], dim=1)
        return self.net(_pad8(x), target.name)[..., : x.shape[2], : x.shape[3], : x.shape[4]]


def baseline_predictor(path: str | Path, **kwargs) -> TagsPredictor:
    """A predictor that runs the baseline in the folder at ``path`` (``train_baseline`` wrote it)."""
    return TagsPredictor(BaselineWindowModel.from_folder(path), **kwargs)


def _pad8(x: torch.Tensor) -> torch.Tensor:
    pads = []
    for n in reversed(x.shape[2:]):
        pads += [0, (-n) % 8]
    return torch.nn.functional.pad(x, pads)


def train_baseline(cfg: TrainConfig, model: ModelConfig, seconds: float, out: str | Path,
                   max_steps: Optional[int] = None, schedule: Sequence[Tuple[float, SamplingConfig]] = ()) -> Dict:
    """Train the baseline for ``seconds`` of wall time (the TAGS run's budget); write ``out``.

    The learning rate decays along a half cosine (:func:`training.train.warmup_cosine`, no
    warm-up) over the fraction of the time budget spent. ``schedule``: (fraction of the budget,
    sampling) pairs in order: from that fraction on the crops are drawn with that sampling
    instead of ``cfg.sampling`` (TAGS trained in phases with different sampling).
    """
    torch.manual_seed(cfg.seed)
    device = select_device(None)  # the device TAGS trains on, for a fair same-budget comparison
    precision = training_precision(cfg, device)
    scaler = loss_scaler(device, precision)
    net = BaselineNet(model).train().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss(sigmoid=True, lambda_dice=0.5, lambda_ce=0.5)
    cases = load_training_cases([read_dataset(d) for d in cfg.datasets], model, cfg.z_split)
    t0 = time.time()
    step = 0
    losses = []
    # Progress in seconds of the wall-time budget (the step count is not known in advance).
    bar = tqdm(total=int(seconds), disable=not cfg.progress, desc="baseline", unit="s")
    while time.time() - t0 < seconds and (max_steps is None or step < max_steps):
        frac = (time.time() - t0) / seconds
        for g in opt.param_groups:
            g["lr"] = LR * warmup_cosine(frac, warmup=0, total=1)
        rng = np.random.default_rng([cfg.seed, 7, step])
        phase = [sampling for start, sampling in schedule if frac >= start]
        sampling = dataclasses.replace(phase[-1] if phase else cfg.sampling, prompt_drop=0.0, box_jitter=0.0)
        s = draw_sample(cases, model.targets, model, rng, sampling=sampling, img_size=256, mask_size=256,
                        crop_size=cfg.crop_size)
        organ = s.organ if s.organ is not None else torch.zeros_like(s.image)
        x = _pad8(torch.cat([augment_intensity(s.image, int(rng.integers(2**31))), organ])[None]).to(device)
        y = _pad8(s.label[None]).to(device)
        with autocast(device, precision):
            logits = net(x, s.target.name)
        loss = loss_fn(logits.float(), y)
        optimizer_step(loss, opt, scaler, cfg.clip_grad)
        losses.append(float(loss.detach()))
        step += 1
        bar.update(min(int(seconds), int(time.time() - t0)) - bar.n)
        bar.set_postfix(step=step, loss=f"{losses[-1]:.3f}")
    bar.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(model.to_json())
    save_model(net.cpu(), str(out / WEIGHTS))  # handles DynUNet's shared tensors
    summary = {"steps": step, "seconds": round(time.time() - t0, 1), "precision": precision, "final_loss_mean_last10": float(np.mean(losses[-10:])),
               "parameters": sum(p.numel() for p in net.parameters()), "architecture": f"MONAI DynUNet filters {FILTERS}"}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary
