"""Training loop: single process or torchrun DDP (gloo on CPU, NCCL on GPUs), resumable.

Per step each rank draws one sample from an RNG seeded by (seed, rank, step), so a resumed run
draws exactly the samples the uninterrupted run would have drawn. Checkpoints are safetensors
(trainable weights + AdamW state) and JSON (step, configs): no pickle.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from monai.losses import DiceCELoss
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from tags.config import AdapterConfig, ModelConfig, PreprocessingConfig
from tags.network import TagsNet, build_tags
from tags.predictor import default_precision
from tags.alignment import alignment_loss, phrase_embeddings
from tags.text import build_text_encoder, embed_targets

from .data import SamplingConfig, augment_intensity, draw_sample, load_training_cases
from .datasets import read_dataset

CKPT_WEIGHTS = "checkpoint.safetensors"
CKPT_STATE = "checkpoint.json"
PHRASES = "phrases/"
"""Prefix of the (2, E) healthy / tumor phrase embeddings of each tumor target among the stored
text embeddings (text alignment only)."""


@dataclass
class TrainConfig:
    """Options of one training run (written to the run folder as JSON).

    ``precision``: "bf16" (autocast) or "fp32"; None: :func:`training_precision`, resolved when
    the run starts and written to the run folder as resolved.
    ``sampling``: what each step draws (real, synthetic and healthy tumor crops, organ
    negatives; :class:`training.data.SamplingConfig`).
    ``text_alignment``: add TAGS' text-alignment loss (:mod:`tags.alignment`), weighted by
    ``alignment_weight``, on tumor samples.
    """

    datasets: List[str]
    out: str
    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 20
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    text_alignment: bool = False
    alignment_weight: float = 0.5
    precision: Optional[str] = None
    seed: int = 0
    checkpoint_every: int = 50
    clip_grad: float = 1.0
    z_split: Dict[str, float] = field(default_factory=dict)
    crop_size: Optional[Tuple[int, int, int]] = None
    text_encoder: str = "minilm"
    clip_folder: Optional[str] = None
    backbone: str = "litemedsam"
    backbone_checkpoint: Optional[str] = None
    encoder_size: Optional[int] = None
    slab_size: int = 4
    roi_size: Tuple[int, int, int] = (64, 128, 128)
    organ_roi_size: Tuple[int, int, int] = (32, 128, 128)
    spacing: Tuple[float, float, float] = (1.5, 1.5, 1.5)
    organ_spacing: Tuple[float, float, float] = (4.0, 3.0, 3.0)
    train_mask_decoder: bool = False
    progress: bool = True


def _dist() -> Tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def model_config_for(cfg: TrainConfig, text_dim: int) -> ModelConfig:
    targets = {}
    for d in cfg.datasets:
        for t in read_dataset(d).targets.values():
            targets.setdefault(t.name, t)
    return ModelConfig(
        backbone=cfg.backbone,
        encoder_size=cfg.encoder_size,
        adapter=AdapterConfig(slab_size=cfg.slab_size),
        preprocessing=PreprocessingConfig(spacing=tuple(cfg.spacing), organ_spacing=tuple(cfg.organ_spacing)),
        roi_size=tuple(cfg.roi_size),
        organ_roi_size=tuple(cfg.organ_roi_size),
        text_encoder=cfg.text_encoder,
        text_dim=text_dim,
        text_alignment=cfg.text_alignment,
        targets=tuple(targets.values()),
        train_mask_decoder=cfg.train_mask_decoder,
    )


def training_precision(cfg: TrainConfig, device: torch.device) -> str:
    """``cfg.precision``, else bf16 autocast where the device multiplies bf16 natively (CUDA, CPUs
    with AMX or AVX512-BF16) and fp32 elsewhere: emulated bf16 is many times slower than fp32
    (on a 2-core AVX2 CPU a demo step did not finish in minutes)."""
    return cfg.precision or default_precision(device)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))


def _save_checkpoint(run: Path, net: TagsNet, opt: torch.optim.Optimizer, step: int, meta: Dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.delta_state_dict().items()}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tmp_w, tmp_s = run / (CKPT_WEIGHTS + ".tmp"), run / (CKPT_STATE + ".tmp")
    save_file(tensors, str(tmp_w))
    tmp_s.write_text(json.dumps({**meta, "step": step, "param_groups": sd["param_groups"]}, indent=2))
    tmp_w.replace(run / CKPT_WEIGHTS)
    tmp_s.replace(run / CKPT_STATE)


def load_checkpoint(run: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict]:
    """(model delta weights, optimizer tensors, state JSON) of a run folder."""
    tensors = load_file(str(run / CKPT_WEIGHTS))
    state = json.loads((run / CKPT_STATE).read_text())
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt = {k[len("opt."):]: v for k, v in tensors.items() if k.startswith("opt.")}
    return model, opt, state


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], groups: List[Dict]) -> None:
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def train(cfg: TrainConfig, stop_after: Optional[int] = None) -> Path:
    """Train (or resume) a run in ``cfg.out``; returns the run folder.

    ``stop_after``: stop (with a checkpoint) after this many steps of this call, to test resuming.
    """
    rank, world = _dist()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    cfg = replace(cfg, precision=training_precision(cfg, device))
    run = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    resume = (run / CKPT_STATE).is_file()
    if resume:
        weights, opt_tensors, state = load_checkpoint(run)
        text = {k: torch.tensor(v) for k, v in state["text_embeddings"].items()}
        model_cfg = ModelConfig.from_dict(state["model_config"])
    else:
        encoder = build_text_encoder(cfg.text_encoder, cfg.clip_folder)
        model_cfg = model_config_for(cfg, encoder.dim)
        text = embed_targets(encoder, {t.name: t.sentence for t in model_cfg.targets})
        if cfg.text_alignment:
            for t in model_cfg.tumor_targets:
                text[PHRASES + t.name] = phrase_embeddings(encoder, t.organ)
    net = build_tags(model_cfg, checkpoint=cfg.backbone_checkpoint)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if resume:
        net.load_state_dict(weights, strict=False)
        _restore_optimizer(opt, opt_tensors, state["param_groups"])
        start = int(state["step"])
    elif rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    text = {k: v.to(device) for k, v in text.items()}
    loss_fn = DiceCELoss(sigmoid=True, lambda_dice=0.5, lambda_ce=0.5)
    datasets = [read_dataset(d) for d in cfg.datasets]
    cases = load_training_cases(datasets, model_cfg, cfg.z_split)
    meta = {
        "model_config": model_cfg.to_dict(),
        "text_embeddings": {k: v.cpu().tolist() for k, v in text.items()},
        "base_checkpoint_sha256": net.backbone_sha256,
        "train_config": asdict(cfg),
        "world_size": world,
    }
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
    )
    net.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), disable=not cfg.progress or rank != 0, desc="train", initial=start, total=cfg.steps)
    log = run / "metrics.jsonl"
    window: List[float] = []
    t0 = time.time()
    for step in bar:
        rng = np.random.default_rng([cfg.seed, rank, step])
        s = draw_sample(
            cases, model_cfg.targets, model_cfg, rng, sampling=cfg.sampling,
            img_size=net.img_size, mask_size=net.prompt_encoder.mask_input_size[0], crop_size=cfg.crop_size,
        )
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, cfg)
        image = augment_intensity(s.image, int(rng.integers(2**31)))[None].to(device)
        organ = s.organ[None].to(device) if s.organ is not None else None
        prompts = s.prompts.to(device) if s.prompts is not None else None
        label = s.label[None].to(device)
        phrases = text.get(PHRASES + s.target.name) if cfg.text_alignment else None
        with autocast:
            out = model(image, text[s.target.name][None], prompts, organ,
                        phrases=phrases[None] if phrases is not None else None)
        logits, aligned = out if isinstance(out, tuple) else (out, None)
        loss = loss_fn(logits.float(), label)
        if aligned is not None:
            loss = loss + cfg.alignment_weight * alignment_loss(aligned.float(), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        opt.step()
        window.append(float(loss.detach()))
        bar.set_postfix(loss=f"{window[-1]:.3f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == end:
            losses = torch.tensor([float(np.mean(window))], device=device)
            if world > 1:
                dist.all_reduce(losses)
                losses /= world
            if rank == 0:
                with log.open("a") as fh:
                    fh.write(json.dumps({"step": done, "loss": float(losses), "lr": opt.param_groups[0]["lr"],
                                         "seconds": round(time.time() - t0, 1)}) + "\n")
                _save_checkpoint(run, net, opt, done, meta)
            window = []
            if world > 1:
                dist.barrier()
    if world > 1:
        _record_rank_agreement(run, net, rank, world)
    return run


def _record_rank_agreement(run: Path, net: TagsNet, rank: int, world: int) -> None:
    """Gather a checksum of every rank's trainable weights; rank 0 writes them to ddp_check.json."""
    flat = torch.cat([p.detach().double().flatten() for p in net.parameters() if p.requires_grad])
    local = torch.stack([flat.abs().sum(), flat.pow(2).sum()]).cpu()
    gathered = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    if rank == 0:
        sums = [g.tolist() for g in gathered]
        (run / "ddp_check.json").write_text(json.dumps(
            {"world_size": world, "checksums": sums, "agree": all(s == sums[0] for s in sums)}, indent=2))
