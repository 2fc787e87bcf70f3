"""CT preprocessing operator: SDK volume -> canonical HU volume with its checked geometry.

Whole-volume, model-independent work only (the model grid, HU window and ROI come later from
the model folder's config): geometry from the DICOM attributes (:mod:`operators.ct_geometry`),
HU sanity, canonical orientation, spacing as floats and the body box, through the library's
single definition :func:`tags.preprocessing.prepare_ct`.
"""

from __future__ import annotations

import logging
import time
from typing import List

import numpy as np
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec

from tags.preprocessing import CTInputError, prepare_ct

from .ct_geometry import series_affine
from .types import CTSeries, StageTimings

MIN_SLICES = 8
"""Fewer slices than this are not a 3D CT volume the model can use (its windows and 3D adapters
span several slices); such series are refused rather than padded into a meaningless result."""

log = logging.getLogger(__name__)


def prepare_series(image: Image, datasets: List) -> CTSeries:
    """Check and prepare the volume the SDK built from ``datasets`` (its sorted slices)."""
    volume = image.asnumpy() if isinstance(image, Image) else np.asarray(image)
    if volume.ndim != 3 or volume.shape[0] != len(datasets):
        raise CTInputError(f"volume shape {volume.shape} does not match the {len(datasets)} slices of the series")
    if volume.shape[0] < MIN_SLICES:
        raise CTInputError(f"the CT series has {volume.shape[0]} slices; at least {MIN_SLICES} are needed for a 3D volume")
    missing = sum(1 for d in datasets if not str(d.get("SOPInstanceUID", "")).strip())
    if missing:
        raise CTInputError(
            f"{missing} of {len(datasets)} CT instances have an empty SOPInstanceUID; "
            "a DICOM Segmentation could not reference them"
        )
    first = datasets[0]
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(first.get(key, "")).strip():
            raise CTInputError(f"the CT series has an empty {key}")
    affine = series_affine(datasets)
    prepared = prepare_ct(volume, affine)
    sp = prepared.spacing
    label = (
        f"series #{first.get('SeriesNumber', '?')} ({volume.shape[0]} slices, {volume.shape[1]}x{volume.shape[2]}, "
        f"spacing z/y/x {sp[0]:.2f}/{sp[1]:.2f}/{sp[2]:.2f} mm)"
    )
    return CTSeries(prepared, list(datasets), str(first.StudyInstanceUID), str(first.SeriesInstanceUID), label)


GAP_WORDS = ("not evenly spaced", "slice(s) with a position", "slices; at least")


def blame_damaged_files(error: CTInputError, skipped: List) -> CTInputError:
    """A gap in the series while damaged DICOM files were skipped: the damaged files are the
    likely missing slices, so the message names them first."""
    damaged = [s for s in skipped if s.damaged_dicom]
    if not damaged or not any(w in str(error) for w in GAP_WORDS):
        return error
    names = ", ".join(f"{s.name} ({s.reason})" for s in damaged[:5])
    return CTInputError(f"{len(damaged)} damaged DICOM file(s) in the input, likely slices of this series: {names}; "
                        f"without them {error}")


def blame_strays(error: CTInputError, datasets: List, others: List) -> CTInputError:
    """A gap in the series while another CT instance of the input lies at a position inside it
    that no slice of the series has: that instance (its Series Instance UID damaged or changed)
    is the likely missing slice, so the message names it."""
    if not others or not any(w in str(error) for w in GAP_WORDS[:1]):
        return error
    from .dicom_checks import file_label

    try:
        iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        z = sorted(float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])) for d in datasets)
    except Exception:  # noqa: BLE001 - the geometry error itself is reported
        return error
    strays = []
    for o in others:
        try:
            oz = float(np.dot(normal, [float(v) for v in o.ImagePositionPatient]))
        except Exception:  # noqa: BLE001
            continue
        if z[0] < oz < z[-1] and min(abs(oz - v) for v in z) > 0.1:
            strays.append(file_label(o))
    if not strays:
        return error
    return CTInputError(f"CT file(s) {', '.join(strays[:5])} lie at missing slice positions of the series but carry "
                        f"another Series (or Study) Instance UID, damaged or changed; without them {error}")


class CTPreprocessOperator(Operator):
    """Checks the selected CT series and prepares its volume.

    Named inputs:
        image: the SDK Image from DICOMSeriesToVolumeOperator.
        study_selected_series_list: the selection the image was made from.

    Named output:
        ct: :class:`~operators.types.CTSeries`.
    """

    def __init__(self, fragment: Fragment, *args, started: float | None = None, **kwargs) -> None:
        """``started``: when the run started, seconds since the epoch (the start-up time is
        counted from it)."""
        self.started = started
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("image")
        spec.input("study_selected_series_list")
        spec.output("ct")

    def compute(self, op_input, op_output, context) -> None:
        image = op_input.receive("image")
        selection = op_input.receive("study_selected_series_list")
        timings = StageTimings()
        loading_began = getattr(selection[0].study, "loading_began", None)
        if loading_began is not None:  # set by StudyLoaderOperator, the first operator to compute
            if self.started is not None:
                timings.record("startup", loading_began - self.started)
            timings.record("load", time.time() - loading_began)
        with timings.stage("preprocess"):
            series = selection[0].selected_series[0].series
            datasets = [s.get_native_sop_instance() for s in series.get_sop_instances()]
            skipped = list(getattr(selection[0].study, "skipped_files", []))
            try:
                ct = prepare_series(image, datasets)
            except CTInputError as e:
                e = blame_damaged_files(e, skipped)
                raise blame_strays(e, datasets, getattr(selection[0].study, "other_ct_instances", [])) from None
            ct.skipped_files = skipped
        ct.timings = timings
        log.info("CT %s selected and prepared in %.1f s", ct.label, timings["preprocess"])
        op_output.emit(ct, "ct")
