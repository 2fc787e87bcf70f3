"""Lesion report on known synthetic lesions in a real CT series: SR conformance, SR == JSON.

No model is involved: the Segmentation handed to the writers is built from known masks on the
TotalSegmentator sample series (real pixels, JPEG 2000), read through the SDK operators.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from operators.ct_preprocess_operator import prepare_series
from operators.lesion_report_operator import LESIONS_JSON, PREVIEW_PNG, write_report
from operators.seg_writer import write_seg
from operators.types import Segmentation, TargetOutcome
from tags.config import PreprocessingConfig
from tags.targets import organ_target, tumor_target

from helpers import dicom_errors


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    from monai.deploy.core import Fragment
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
    from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

    from app.app import CT_SELECTION_RULES
    from operators.ct_series_selector import CTSeriesSelectorOperator
    from training.sample_study import build_totalseg_study

    study = build_totalseg_study(tmp_path_factory.mktemp("study") / "totalseg")
    f = Fragment()
    studies = DICOMDataLoaderOperator(f, name="l").load_data_to_studies(study)
    selection = CTSeriesSelectorOperator(f, name="s").filter(json.loads(CT_SELECTION_RULES), studies)
    image = DICOMSeriesToVolumeOperator(f, name="v").convert_to_image(selection)
    datasets = [s.get_native_sop_instance() for s in selection[0].selected_series[0].series.get_sop_instances()]
    return prepare_series(image, datasets), study


def _ellipsoid(shape, spacing, centre, semi):
    idx = np.indices(shape).astype(float) * np.asarray(spacing)[:, None, None, None]
    return sum(((idx[i] - centre[i]) / semi[i]) ** 2 for i in range(3)) <= 1.0


def _result(ct, tumor_mask):
    p = ct.prepared
    liver = np.zeros(p.hu.shape, bool)
    liver[:, 180:420, 40:300] = True
    return Segmentation(
        ct=ct,
        tumors=[TargetOutcome(tumor_target("liver", 2), tumor_mask, "ok", "test", p.voxel_ml)],
        organs=[TargetOutcome(organ_target("liver", 1), liver, "ok", "test", p.voxel_ml)],
        model_name="TAGS test", model_version="0" * 12, hu_window=PreprocessingConfig().hu_window,
    )


def _write(ct, mask, out: Path, min_ml=0.1):
    result = _result(ct, mask)
    out.mkdir()
    seg_path, seg = write_seg(result, out)
    info = write_report(result, seg, out, min_lesion_ml=min_ml)
    return seg_path, out / info["sr_file"], info


def test_sr_of_known_lesions(ct, tmp_path):
    series, study = ct
    p = series.prepared
    sp = p.spacing
    lesions = [_ellipsoid(p.hu.shape, sp, c, a) for c, a in (((20, 250, 120), (8, 18, 11)), ((16, 330, 220), (5, 7, 7)))]
    tiny = np.zeros(p.hu.shape, bool)
    tiny[10, 300, 60] = True  # one voxel, below the minimum size
    seg_path, sr_path, info = _write(series, lesions[0] | lesions[1] | tiny, tmp_path / "out")

    cts = sorted(study.glob("*.dcm"))
    assert dicom_errors(sr_path, [seg_path, *cts]) == []
    assert dicom_errors(seg_path, cts) == []
    target = info["targets"]["liver_tumor"]
    assert target["lesion_count"] == 2
    for got, m, semi in zip(target["lesions"], lesions, ((8, 18, 11), (5, 7, 7))):
        assert got["voxels"] == int(m.sum())
        assert abs(got["long_axis_mm"] - 2 * max(semi[1:])) <= max(sp[1:]) + 1e-3  # one voxel (+ JSON rounding)
        assert abs(got["short_axis_mm"] - 2 * min(semi[1:])) <= max(sp[1:]) + 1e-3
        assert got["mean_hu"] == pytest.approx(float(p.hu[m].mean()), abs=1e-3)
        assert got["organ"] == "liver"

    # read back with highdicom: every measurement equals the JSON
    sr = hd.sr.srread(sr_path)
    assert sr.StudyInstanceUID == series.study_uid and "NOT FOR CLINICAL USE" in sr.SeriesDescription
    report = hd.sr.MeasurementReport.from_sequence([sr])  # the document root is the TID 1500 container
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for group, got in zip(groups, target["lesions"]):
        assert str(group.tracking_identifier) == f"liver_tumor lesion {got['number']}"
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg_path.stem[4:] and ref.referenced_segment_numbers == [1]
        values = {(m.name.value, m.derivation.value if m.derivation else None): m.value for m in group.get_measurements()}
        assert values[(codes.SCT.Volume.value, None)] == pytest.approx(got["volume_ml"], abs=1e-3)
        assert values[(codes.SCT.LongAxis.value, None)] == pytest.approx(got["long_axis_mm"], abs=0.01)
        assert values[(codes.SCT.ShortAxis.value, None)] == pytest.approx(got["short_axis_mm"], abs=0.01)
        assert values[(codes.DCM.AttenuationCoefficient.value, codes.SCT.Mean.value)] == pytest.approx(got["mean_hu"], abs=0.05)
        assert values[(codes.DCM.AttenuationCoefficient.value, codes.SCT.Maximum.value)] == pytest.approx(got["max_hu"], abs=0.05)
        assert group.finding_sites[0].value.value == codes.SCT.Liver.value

    png = Image.open(tmp_path / "out" / PREVIEW_PNG)
    assert png.size[0] >= 512 and not png.info  # no text chunks


def test_no_lesion_says_so(ct, tmp_path):
    series, study = ct
    seg_path, sr_path, info = _write(series, np.zeros(series.prepared.hu.shape, bool), tmp_path / "out")
    assert info["targets"]["liver_tumor"]["lesion_count"] == 0
    assert dicom_errors(sr_path, [seg_path, *sorted(study.glob("*.dcm"))]) == []
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(sr_path)])
    assert report.get_volumetric_roi_measurement_groups() == []
    (group,) = report.get_image_measurement_groups()
    assert str(group.tracking_identifier) == "liver_tumor: no lesion"
    assert [(q.name.value, q.value.value) for q in group.get_qualitative_evaluations()] == [
        (codes.SCT.Lesion.value, codes.SCT.Absent.value)]
    assert json.loads((tmp_path / "out" / LESIONS_JSON).read_text())["targets"]["liver_tumor"]["lesions"] == []
