"""Training loop: single process or torchrun DDP (gloo on CPU, NCCL on GPUs), resumable.

Per step each rank draws one sample from an RNG seeded by (seed, rank, step), so a resumed run
draws exactly the samples the uninterrupted run would have drawn. Checkpoints are safetensors
files (trainable weights + AdamW state, the step and configs as JSON metadata; no pickle),
written atomically (:mod:`training.checkpoints`). Process group, devices and collectives:
:mod:`training.distributed`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
import types
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from monai.losses.dice import DiceCELoss
from tqdm import tqdm

from tags.config import ModelConfig, TargetSpec
from tags.device import autocast, default_precision
from tags.inference.surgery import channels_last_convs
from tags.adapters import encoder_blocks
from tags.model_folder import ModelFolder
from tags.network import TagsNet, build_tags
from tags.prompts import SlicePrompts
from tags.alignment import alignment_loss, phrase_embeddings
from tags.text import build_text_encoder, embed_targets

from .checkpoints import BEST, checkpoint_state, has_checkpoint, load_checkpoint, restore_optimizer, save_checkpoint
from .cache import cached_training_cases, preprocess
from .data import Sample, SamplingConfig
from .loader import StepSamples, group_batch, step_loader
from .fine_tune import initial_folder, load_initial
from .fused_attention import fused_attention
from .monitor import RunLog, has_validation_cases, validation_score
from .datasets import Dataset, read_dataset
from .distributed import DistContext, barrier, gather_rows, init_distributed, mean_over_ranks, rank0_decides, shutdown

TRAIN_CONFIG = "train_config.json"
"""The run's :class:`TrainConfig` as JSON (precision and model resolved), written when it starts."""
METRICS = "metrics.jsonl"
"""One line per checkpoint interval: step, mean loss, learning rate and seconds: the training time
behind that checkpoint's weights, summed over resumes (steps lost to an interruption after the
last checkpoint are trained again and counted once)."""
TRAIN_PRECISIONS = ("bf16", "fp16", "fp32")
"""Training precisions: bf16 autocast, fp16 autocast with loss scaling (CUDA only), fp32."""
PHRASES = "phrases/"
"""Prefix of the (2, E) healthy / tumor phrase embeddings of each tumor target among the stored
text embeddings (text alignment only)."""


@dataclass
class TrainConfig:
    """Options of one training run (written to the run folder as JSON, :data:`TRAIN_CONFIG`).

    ``model``: the model's settings (backbone, encoder size, adapters, preprocessing, windows,
    text encoder, text alignment, ...; :class:`tags.config.ModelConfig`, whose defaults are the
    defaults of training too). Its ``targets`` and ``text_dim`` are filled in when the run
    starts, from the datasets and the text encoder (:func:`model_config_for`).
    ``precision``: "bf16" or "fp16" (autocast; fp16 with loss scaling, CUDA only) or "fp32";
    None: :func:`training_precision`, resolved when the run starts and written to the run
    folder as resolved.
    ``sampling``: what each step draws (real, synthetic and healthy tumor crops, organ
    negatives; :class:`training.data.SamplingConfig`).
    ``alignment_weight``: weight of TAGS' text-alignment loss (:mod:`tags.alignment`) on tumor
    samples, when ``model.text_alignment`` is set.
    ``warmup``: steps of linear learning-rate warm-up before the cosine decay (:func:`warmup_cosine`).
    ``batch_size``: samples per step and rank; samples of the same target and crop shape run as
    one network batch (activation memory grows with it), the others one after the other.
    ``train_slab_mix``: train the encoder input's slab convolution
    (:class:`tags.encoder.SlabEmbedding`; off: it keeps its initial or loaded weights). Its
    gradient is the only one that runs back through the frozen encoder's first stages, whose
    activations (full encoder resolution, 256 channels) must then be kept for backward: on the
    default 64 x 128 x 128 window a step took about 1.5-2x the time and 2.5x the memory
    (docs/performance.md), for a convolution the demo model had trained to weights below 0.012.
    A resumed run keeps its checkpoint's choice (its optimiser state holds these weights or not).
    ``train_adapters``: train the encoder's 3D adapters (TAGS' adaptation of the 2D encoder to
    3D; their gradient runs back through the encoder's attention stages: a demo step on 2 AVX2
    cores 7.1-7.3 s instead of 4.75-5.25 s). Off, they stay as initialised or loaded (the
    identity for a new run) and are still written to the model folder. Run folders from before
    the option are read as frozen (all of them but a few days' runs had them frozen by mistake).
    ``adapter_lr_scale``: the adapters' learning rate as a multiple of ``lr`` (their own AdamW
    param group; 1: one group for all). A resumed run keeps its checkpoint's value.
    ``init``: a model folder whose weights start the run (fine-tuning): its model settings,
    targets and text embeddings are used instead of ``model``'s, its organ boundary and lesion
    decision are dropped (choose them again for the new weights: ``tags-train calibrate``).
    A resumed run continues from its checkpoint instead.
    ``targets``: the datasets' targets this run trains (default: all of them), e.g. ``["liver"]``
    for a network that only runs the organ pass (:func:`tags.model_folder.save_model_folder`'s
    ``organ_model``).
    """

    datasets: List[str]
    out: str
    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 1000
    batch_size: int = 1
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 20
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    alignment_weight: float = 0.5
    precision: Optional[str] = None
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    workers: int = 0
    cache_dir: Optional[str] = None
    activation_checkpointing: bool = False
    train_slab_mix: bool = False
    train_adapters: bool = True
    adapter_lr_scale: float = 1.0
    validate_every: int = 0
    patience: int = 0
    dist_timeout_minutes: float = 30.0
    clip_grad: float = 1.0
    z_split: Dict[str, float] = field(default_factory=dict)
    crop_size: Optional[Tuple[int, int, int]] = None
    clip_folder: Optional[str] = None
    backbone_checkpoint: Optional[str] = None
    init: Optional[str] = None
    targets: Optional[List[str]] = None
    progress: bool = True

    def __post_init__(self) -> None:
        """One message for a count out of range, before a run folder or cache is written."""
        least = {"steps": 1, "batch_size": 1, "checkpoint_every": 1, "keep_checkpoints": 1, "workers": 0,
                 "validate_every": 0, "patience": 0}
        for name, low in least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name.replace('_', '-')} must be at least {low}, not {getattr(self, name)}")
        if not self.adapter_lr_scale > 0:
            raise ValueError(f"adapter-lr-scale must be above 0, not {self.adapter_lr_scale}")
        if self.targets is not None and not self.targets:
            raise ValueError("targets: name at least one target, or leave it unset for all of them")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`to_dict` (a run folder's :data:`TRAIN_CONFIG`, or the
        ``train_config`` of its checkpoint). Also reads older run folders: their model settings
        were flat keys (``backbone``, ``encoder_size``, ``slab_size``, ``roi_size``, ``spacing``,
        ...), and before :class:`~training.data.SamplingConfig` so were ``organ_fraction``,
        ``prompt_drop`` and ``box_jitter``."""
        d = dict(d)
        d.setdefault("train_slab_mix", True)  # run folders from before the option trained it
        d.setdefault("train_adapters", False)  # run folders from before the option had them frozen
        if "model" in d:
            model = ModelConfig.from_dict(d.pop("model"))
        else:
            model = _model_from_flat_keys(d)
        sampling = dict(d.pop("sampling", {}))
        sampling.update({f.name: d.pop(f.name) for f in fields(SamplingConfig) if f.name in d})
        if "phase_hu" in sampling:
            sampling["phase_hu"] = tuple(float(v) for v in sampling["phase_hu"])
        if d.get("crop_size") is not None:
            d["crop_size"] = tuple(int(v) for v in d["crop_size"])
        return cls(model=model, sampling=SamplingConfig(**sampling), **d)


_FLAT_MODEL_KEYS = ("backbone", "encoder_size", "roi_size", "organ_roi_size", "train_mask_decoder", "text_encoder",
                    "text_alignment")
"""Keys of the former flat TrainConfig that are :class:`ModelConfig` fields of the same name."""


def _model_from_flat_keys(d: Dict[str, Any]) -> ModelConfig:
    """Pop the former flat model keys out of ``d`` (a TrainConfig dict of an older run folder)."""
    base = ModelConfig()
    model: Dict[str, Any] = {k: d.pop(k) for k in _FLAT_MODEL_KEYS if k in d}
    for k in ("roi_size", "organ_roi_size"):
        if k in model:
            model[k] = tuple(int(v) for v in model[k])
    if "slab_size" in d:
        model["adapter"] = replace(base.adapter, slab_size=int(d.pop("slab_size")))
    grids = {k: tuple(float(v) for v in d.pop(k)) for k in ("spacing", "organ_spacing") if k in d}
    if grids:
        model["preprocessing"] = replace(base.preprocessing, **grids)
    return replace(base, **model)


def dataset_targets(datasets: Sequence[str]) -> Tuple[TargetSpec, ...]:
    """The targets of the dataset folders ``datasets``, each name once, in order of appearance."""
    targets = {}
    for d in datasets:
        for name, t in read_dataset(d).targets.items():
            targets.setdefault(name, t.spec)
    return tuple(targets.values())


def model_config_for(cfg: TrainConfig, text_dim: int) -> ModelConfig:
    """``cfg.model`` with the targets of ``cfg.datasets`` (those in ``cfg.targets`` when it is
    set) and the text encoder's width."""
    return replace(cfg.model, text_dim=text_dim, targets=chosen_targets(cfg))


def chosen_targets(cfg: TrainConfig) -> Tuple[TargetSpec, ...]:
    """The targets ``cfg`` trains: the datasets' targets, restricted to ``cfg.targets`` when set
    (a ValueError names any the datasets do not have)."""
    available = dataset_targets(cfg.datasets)
    if cfg.targets is None:
        return available
    unknown = [n for n in cfg.targets if n not in {t.name for t in available}]
    if unknown:
        raise ValueError(f"targets {unknown} are not in the datasets (they have {[t.name for t in available]})")
    return tuple(t for t in available if t.name in cfg.targets)


def training_precision(cfg: TrainConfig, device: torch.device) -> str:
    """``cfg.precision``, else :func:`tags.device.default_precision`: bf16 autocast where the device
    multiplies bf16 natively (GPUs from compute capability 8.0, CPUs with AMX or AVX512-BF16),
    fp16 with loss scaling on older GPUs, fp32 on other CPUs (emulated bf16 is many times slower
    than fp32: on a 2-core AVX2 CPU a demo step did not finish in minutes)."""
    precision = cfg.precision or default_precision(device)
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"training precision must be one of {', '.join(TRAIN_PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device (its loss scaling is CUDA's); use bf16 or fp32")
    return precision


def loss_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (gradients below fp16's range would vanish); a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip: float) -> None:
    """Backward, gradient-norm clipping (on the unscaled gradients) and the optimiser step."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    apply_gradients(opt, scaler, clip)


def apply_gradients(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip: float) -> None:
    """Gradient-norm clipping (on the unscaled gradients) and the optimiser step, after the
    step's backward pass(es)."""
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    scaler.step(opt)
    scaler.update()


DECODE_CHUNK = 16
"""Slices per recomputed chunk of the mask decoder under :func:`checkpoint_activations`."""


def checkpoint_activations(net: TagsNet, decode_chunk: int = DECODE_CHUNK) -> int:
    """Recompute activations during backward instead of keeping them (``torch.utils.checkpoint``,
    non-reentrant): each adapted attention block's, and the mask decoder's in chunks of
    ``decode_chunk`` slices (it decodes every slice on its own, so the chunks give the same
    logits). Far less memory for large backbones (sam_vit_b on 1024-pixel slabs) and deep
    windows, for about one more encoder and decoder forward per step. Returns how many encoder
    blocks were wrapped."""
    blocks = [block for block, _ in encoder_blocks(net.image_encoder.encoder, net.block_kind)]
    for block in blocks:
        block.forward = types.MethodType(_recomputed_forward, block)  # an instance attribute: copies follow
    net.decode_slices = types.MethodType(functools.partial(_recomputed_decode, chunk=decode_chunk), net)
    return len(blocks)


def _recomputed_forward(block: torch.nn.Module, *args):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(type(block).forward, block, *args, use_reentrant=False)


def _recomputed_decode(net: TagsNet, emb: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, *,
                       chunk: int) -> torch.Tensor:
    """:meth:`TagsNet.decode_slices` over chunks of ``chunk`` slices, each recomputed in backward."""
    from torch.utils.checkpoint import checkpoint

    decode = type(net).decode_slices
    return torch.cat([checkpoint(decode, net, emb[i:i + chunk], sparse[i:i + chunk], dense[i:i + chunk],
                                 use_reentrant=False) for i in range(0, emb.shape[0], chunk)])


def param_groups(net: TagsNet, cfg: TrainConfig) -> List[Dict[str, Any]]:
    """The optimiser's parameter groups: the trainable tensors, the adapters' in a group of
    their own with ``lr_scale`` = ``cfg.adapter_lr_scale`` when it is not 1 (:func:`_step` sets
    each group's rate to ``cfg.lr`` times its ``lr_scale`` on the schedule)."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if cfg.adapter_lr_scale == 1.0:
        return [{"params": [p for _, p in trainable], "lr_scale": 1.0}]
    adapters = [p for n, p in trainable if n in net.adapter_keys]
    rest = [p for n, p in trainable if n not in net.adapter_keys]
    return [g for g in ({"params": rest, "lr_scale": 1.0},
                        {"params": adapters, "lr_scale": float(cfg.adapter_lr_scale)}) if g["params"]]


def warmup_cosine(position: float, warmup: float, total: float) -> float:
    """Learning-rate factor (of the peak rate) at ``position``: a linear warm-up
    ``(position + 1) / warmup`` while ``position < warmup``, then a half cosine from 1 at
    ``warmup`` down to 0 at ``total`` (and 0 after it).

    TAGS training calls it with the step index and ``warmup`` / ``total`` in steps; the baseline
    (:func:`training.baseline.train_baseline`) with the elapsed fraction of its wall-time budget,
    no warm-up and ``total`` 1. ``monai.optimizers.WarmupCosineSchedule`` cannot take a wall-time
    fraction, and on steps it gives the same cosine but another warm-up: ``k / warmup`` (rate 0
    on the first step) where this one has ``(k + 1) / warmup``; its ``warmup_multiplier`` cannot
    shift that, nor can an offset of its step count without moving the cosine
    (tests/test_train_config.py).
    """
    if position < warmup:
        return (position + 1) / warmup
    return 0.5 * (1 + math.cos(min(math.pi, math.pi * (position - warmup) / max(1, total - warmup))))


def train(cfg: TrainConfig, stop_after: Optional[int] = None) -> Path:
    """Train (or resume) a run in ``cfg.out``; returns the run folder.

    The cases are preprocessed into the cache first (:mod:`training.cache`; under torchrun the
    ranks share that work before they join the process group, so no rank waits in a collective
    meanwhile). Rank 0 decides whether to resume (a checkpoint in ``cfg.out``) and writes the
    run folder. ``stop_after``: stop (with a checkpoint) after this many steps of this call, to
    test resuming.
    """
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    datasets = [read_dataset(d) for d in cfg.datasets]
    chosen_targets(cfg)  # a target the datasets do not have: said before anything is written
    initial, requested = None, cfg.model
    # the model settings the cache's grids come from: a resumed run's own, else --init's (checked
    # before anything is written), else the command line's
    if has_checkpoint(cfg.out):
        cfg = replace(cfg, model=ModelConfig.from_dict(checkpoint_state(cfg.out)["model_config"]))
    elif cfg.init:
        initial = initial_folder(cfg.init, dataset_targets(cfg.datasets), PHRASES)
        cfg = replace(cfg, model=initial.config)
    if rank == 0 and cfg.model.adapter.for_organs != requested.adapter.for_organs:
        print("tags-train train: " + ("--init keeps the model folder's" if initial is not None else
                                      "resuming with the run's own") + " adapters for "
              + ("organ and tumor targets" if cfg.model.adapter.for_organs else "tumor targets only")
              + " (--tumor-only-adapters chooses for a new run)", file=sys.stderr)
    preprocess(datasets, cfg.model, cache_folder(cfg), cfg.z_split, progress=cfg.progress and rank == 0,
               rank=rank, world=world)
    ctx = init_distributed(cfg.dist_timeout_minutes)
    try:
        return _train(cfg, datasets, ctx, stop_after, initial)
    finally:
        shutdown(ctx)


TEXT_CACHE = "text-embeddings"
"""Sub-folder of the run's cache that keeps the text embeddings (:class:`tags.text.CachedTextEncoder`)."""


def cache_folder(cfg: TrainConfig) -> Path:
    """The preprocessed-case cache of a run: ``cfg.cache_dir``, else ``OUT/cache``."""
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache"


def _start(cfg: TrainConfig, ctx: DistContext,
           initial: Optional[ModelFolder]) -> Tuple[TrainConfig, TagsNet, Dict, Optional[Tuple]]:
    """(resolved config, network on the device, text embeddings, checkpoint or None); ``initial``:
    the ``--init`` model folder when it was read already."""
    run = Path(cfg.out)
    checkpoint = load_checkpoint(run) if rank0_decides(ctx.rank == 0 and has_checkpoint(run), ctx) else None
    if checkpoint is not None:
        state = checkpoint[2]
        recorded = TrainConfig.from_dict(state["train_config"])
        kept = {k: getattr(recorded, k) for k in ("train_slab_mix", "train_adapters", "adapter_lr_scale")
                if getattr(recorded, k) != getattr(cfg, k)}
        if kept and ctx.rank == 0:
            print("tags-train train: resuming with the run's own " + ", ".join(
                f"{k.replace('_', '-')} {v}" for k, v in kept.items()) + " (its optimizer state holds them)",
                file=sys.stderr)
        cfg = replace(cfg, train_slab_mix=recorded.train_slab_mix, train_adapters=recorded.train_adapters,
                      adapter_lr_scale=recorded.adapter_lr_scale)
        text = {k: torch.tensor(v) for k, v in state["text_embeddings"].items()}
        model_cfg = ModelConfig.from_dict(state["model_config"])
    elif cfg.init:
        initial = initial or initial_folder(cfg.init, dataset_targets(cfg.datasets), PHRASES)
        model_cfg, text = initial.config, dict(initial.text_embeddings)
    else:
        # embeddings kept with the preprocessed cases: a warm start does not load the text model
        encoder = build_text_encoder(cfg.model.text_encoder, cfg.clip_folder, cache=cache_folder(cfg) / TEXT_CACHE)
        model_cfg = model_config_for(cfg, encoder.dim)
        text = embed_targets(encoder, {t.name: t.sentence for t in model_cfg.targets})
        if model_cfg.text_alignment:
            for t in model_cfg.tumor_targets:
                text[PHRASES + t.name] = phrase_embeddings(encoder, t.organ)
    cfg = replace(cfg, model=model_cfg)  # recorded as resolved (targets, text width; a resumed run's own)
    net = build_tags(model_cfg, checkpoint=cfg.backbone_checkpoint)
    if not cfg.train_slab_mix:
        net.image_encoder.slab.requires_grad_(False)  # no backward through the frozen encoder (see TrainConfig)
    if not cfg.train_adapters:
        for adapter in net.image_encoder.adapters:
            adapter.requires_grad_(False)
    channels_last_convs(net, frozen_only=True)  # as at inference: demo step 4.0 -> 3.3 s (docs/performance.md)
    fused_attention(net)  # TinyViT: no attention maps kept for backward (docs/performance.md)
    if cfg.activation_checkpointing:
        checkpoint_activations(net)
    if checkpoint is not None:
        net.load_state_dict(checkpoint[0], strict=False)
    else:
        if cfg.init:
            load_initial(net, initial)
        if ctx.rank == 0:
            run.mkdir(parents=True, exist_ok=True)
            (run / TRAIN_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2))
    return cfg, net.to(ctx.device), {k: v.to(ctx.device) for k, v in text.items()}, checkpoint


def _train(cfg: TrainConfig, datasets: List[Dataset], ctx: DistContext, stop_after: Optional[int],
           initial: Optional[ModelFolder] = None) -> Path:
    cfg = replace(cfg, precision=training_precision(cfg, ctx.device))
    run = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    cfg, net, text, checkpoint = _start(cfg, ctx, initial)
    model_cfg = cfg.model
    opt = torch.optim.AdamW(param_groups(net, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if checkpoint is not None:
        restore_optimizer(opt, checkpoint[1], checkpoint[2]["param_groups"])
        start = int(checkpoint[2]["step"])
    model = net
    if ctx.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=True)
    cases = cached_training_cases(datasets, model_cfg, cache_folder(cfg), cfg.z_split)
    samples = StepSamples(cases, model_cfg, cfg.sampling, seed=cfg.seed, rank=ctx.rank, steps=cfg.steps,
                          img_size=net.img_size, mask_size=net.prompt_encoder.mask_input_size[0],
                          crop_size=cfg.crop_size, batch_size=cfg.batch_size)
    meta = {
        "model_config": model_cfg.to_dict(),
        "text_embeddings": {k: v.cpu().tolist() for k, v in text.items()},
        "base_checkpoint_sha256": net.backbone_sha256,
        "train_config": cfg.to_dict(),
        "world_size": ctx.world,
    }
    reporter = _Reporter(cfg, datasets, ctx, net, opt, text, meta, checkpoint[2] if checkpoint is not None else {})
    net.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), disable=not cfg.progress or ctx.rank != 0, desc="train", initial=start,
               total=cfg.steps)
    loss_fn = DiceCELoss(sigmoid=True, lambda_dice=0.5, lambda_ce=0.5)
    scaler = reporter.scaler
    loader = step_loader(samples, start, end, workers=cfg.workers, pin_memory=ctx.device.type == "cuda")
    try:
        for step, batch in zip(bar, loader):
            reporter.losses.append(_step(cfg, model, opt, scaler, loss_fn, text, batch, ctx.device, step))
            if reporter.after_step(step + 1, end, batch[0]):
                break
    finally:
        reporter.close()
    if ctx.world > 1:
        _record_rank_agreement(run, net, ctx)
    return run


class _Reporter:
    """After each step: the loss log and checkpoint at each interval, validation every
    ``validate_every`` steps with the best checkpoint and early stopping (rank 0 writes)."""

    def __init__(self, cfg: TrainConfig, datasets: List[Dataset], ctx: DistContext, net: TagsNet,
                 opt: torch.optim.Optimizer, text: Dict[str, torch.Tensor], meta: Dict, resumed: Dict):
        self.cfg, self.ctx, self.net, self.opt, self.text, self.meta = cfg, ctx, net, opt, text, meta
        self.run = Path(cfg.out)
        self.datasets = datasets
        self.validating = cfg.validate_every > 0 and has_validation_cases(self.datasets)
        if cfg.validate_every > 0 and not self.validating and ctx.rank == 0:
            print("tags-train train: no validation case with a label in the datasets (dataset.json "
                  '"validation"): --validate-every is ignored', file=sys.stderr)
        self.best = dict(resumed.get("validation_state", {"best_score": None, "best_step": None, "stale": 0}))
        self.log = RunLog(self.run) if ctx.rank == 0 else None
        self.scaler = loss_scaler(ctx.device, cfg.precision)
        if resumed.get("loss_scaler"):
            self.scaler.load_state_dict(resumed["loss_scaler"])
        self.losses: List[torch.Tensor] = []
        # seconds of training behind the resumed weights (steps lost to an interruption after
        # the last checkpoint are trained again, so their time is not counted twice)
        self.t0 = time.time() - float(resumed.get("seconds", 0.0))

    def after_step(self, done: int, end: int, sample) -> bool:
        """Report after step ``done``; True when training stops early (every rank agrees)."""
        stop = False
        if self.validating and done % self.cfg.validate_every == 0:
            stop = rank0_decides(self.ctx.rank == 0 and self._validate(done), self.ctx)
        if done % self.cfg.checkpoint_every == 0 or done == end or stop:
            loss = mean_over_ranks(float(torch.stack(self.losses).float().mean()), self.ctx)  # one sync
            self.losses = []
            if self.ctx.rank == 0:
                state = self._state(done)
                self._write({"step": done, "loss": loss, "lr": self.opt.param_groups[0]["lr"],
                             "seconds": state["seconds"]})
                self.log.training(done, loss, self.opt.param_groups[0]["lr"])
                self.log.preview(done, sample.image, sample.label)
                save_checkpoint(self.run, self.net.delta_state_dict(), self.opt.state_dict(), state,
                                keep_last=self.cfg.keep_checkpoints)
            barrier(self.ctx)
        return stop

    def _validate(self, done: int) -> bool:
        """Validate, keep the best checkpoint; True when ``patience`` validations did not improve."""
        result = validation_score(self.net, self.text, self.datasets, device=self.ctx.device,
                                  precision=self.cfg.precision)
        self.net.train()
        score, best = result["score"], self.best["best_score"]
        if score is not None and (best is None or score > best):
            self.best.update(best_score=score, best_step=done, stale=0)
            save_checkpoint(self.run, self.net.delta_state_dict(), self.opt.state_dict(), self._state(done),
                            name=BEST)
        else:
            self.best["stale"] += 1
        self._write({"step": done, "validation": result, **self.best})
        self.log.validation(done, result)
        return self.cfg.patience > 0 and self.best["stale"] >= self.cfg.patience

    def _state(self, done: int) -> Dict:
        return {**self.meta, "step": done, "seconds": round(time.time() - self.t0, 1),
                "validation_state": dict(self.best), "loss_scaler": self.scaler.state_dict()}

    def _write(self, line: Dict) -> None:
        with (self.run / METRICS).open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def _step(cfg: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          loss_fn: DiceCELoss, text: Dict[str, torch.Tensor], batch: List[Sample], device: torch.device,
          step: int) -> torch.Tensor:
    """One optimisation step on the samples ``batch`` of ``step``: each group of samples of the
    same target and shape (:func:`training.loader.group_batch`) runs as one network batch and
    adds its share of the mean loss to the gradients (under DDP the gradients are reduced once,
    after the last group); returns the mean loss (detached, on the device: no host sync)."""
    for g in opt.param_groups:
        g["lr"] = cfg.lr * g.get("lr_scale", 1.0) * warmup_cosine(step, cfg.warmup, cfg.steps)
    opt.zero_grad(set_to_none=True)
    groups = group_batch(batch)
    total = torch.zeros((), device=device)
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            loss = _group_loss(cfg, model, loss_fn, text, group, device) * (len(group) / len(batch))
            scaler.scale(loss).backward()
        total += loss.detach()
    apply_gradients(opt, scaler, cfg.clip_grad)
    return total


def _group_loss(cfg: TrainConfig, model: torch.nn.Module, loss_fn: DiceCELoss, text: Dict[str, torch.Tensor],
                group: List[Sample], device: torch.device) -> torch.Tensor:
    """Mean loss of samples of one target and shape, stacked into a (B, 1, D, H, W) batch."""
    target = group[0].target.name
    stack = lambda ts: torch.stack(ts).to(device, non_blocking=True) if ts[0] is not None else None  # noqa: E731
    image, organ, label = (stack([getattr(s, k) for s in group]) for k in ("image", "organ", "label"))
    prompts = SlicePrompts.cat([s.prompts for s in group]).to(device) if group[0].prompts is not None else None
    phrases = text.get(PHRASES + target) if cfg.model.text_alignment else None
    b = len(group)
    with autocast(device, cfg.precision):
        out = model(image, text[target][None].expand(b, -1), prompts, organ,
                    phrases=phrases[None].expand(b, *phrases.shape) if phrases is not None else None,
                    adapt=cfg.model.adapter.runs_for(group[0].target.kind))
    logits, aligned = out if isinstance(out, tuple) else (out, None)
    loss = loss_fn(logits.float(), label)
    if aligned is not None:
        loss = loss + cfg.alignment_weight * alignment_loss(aligned.float(), label)
    return loss


def _record_rank_agreement(run: Path, net: TagsNet, ctx: DistContext) -> None:
    """Gather a checksum of every rank's trainable weights; rank 0 writes them to ddp_check.json."""
    flat = torch.cat([p.detach().double().flatten() for p in net.parameters() if p.requires_grad])
    sums = gather_rows(torch.stack([flat.abs().sum(), flat.pow(2).sum()]), ctx)
    if ctx.rank == 0:
        (run / "ddp_check.json").write_text(json.dumps(
            {"world_size": ctx.world, "checksums": sums, "agree": all(s == sums[0] for s in sums)}, indent=2))
