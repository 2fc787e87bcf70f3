"""The whole application in-process and as `python app`, on real DICOM (registry samples, dcmqi data).

The model folder here has the demo model's shape and the real LiteMedSAM encoder but an
untrained head (tests/helpers.app_model_folder): the tests check the data path, geometry and
DICOM conformance, not segmentation quality (see the README for the demo model's numbers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from app import run
from operators.organ_seg_reader import organs_from_segs, seg_datasets
from operators.model_loader import shared_predictor
from operators.types import DISPLAY_RGB
from tags.preprocessing import prepare_ct
from training.dicom_series import read_series
from training.samples import read_nifti

from helpers import app_model_folder, dicom_errors, exact_regrid, result_files

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DCMQI_DATA = REPO / "tests" / "data" / "dcmqi"  # BSD-3 reference data from dcmqi, see its README
SAMPLE_PATIENT = ("Sample^TotalSegmentator", "TAGS-SAMPLE-TS")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    from training.sample_study import build_sample_studies

    return build_sample_studies(tmp_path_factory.mktemp("studies") / "studies")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return app_model_folder(tmp_path_factory.mktemp("models") / "tags")


@pytest.fixture(scope="module")
def totalseg_run(studies, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    run(["-i", str(studies["totalseg"]), "-o", str(out), "-m", str(model)])
    return out


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True)


def _errors(proc: subprocess.CompletedProcess) -> list:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


def test_jpeg2000_series_decodes(studies):
    files = sorted(studies["totalseg"].glob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    vol, affine = read_series(studies["totalseg"])
    assert vol.shape == (20, 512, 512)
    assert vol.min() == -1024 and 1000 < vol.max() < 3100  # air and bone in HU
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), (2.0, 0.9765625, 0.9765625))


def test_app_writes_a_conformant_seg_in_the_same_study(studies, totalseg_run):
    out = totalseg_run
    files = result_files(out)  # SEG, SR, JSON summaries, preview; no staging folder left
    seg_path = files["seg"]
    ct_files = sorted(str(p) for p in studies["totalseg"].glob("*.dcm"))
    assert dicom_errors(seg_path, ct_files) == []
    assert dicom_errors(files["sr"], [seg_path, *ct_files]) == []  # the SR with CT and SEG

    seg = pydicom.dcmread(seg_path)
    cts = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_files]
    assert seg.StudyInstanceUID == cts[0].StudyInstanceUID
    assert seg.SeriesInstanceUID not in {c.SeriesInstanceUID for c in cts}
    assert "NOT FOR CLINICAL USE" in seg.SeriesDescription
    ct_uids = {c.SOPInstanceUID for c in cts}
    refs = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for f in seg.PerFrameFunctionalGroupsSequence]
    assert refs and set(refs) <= ct_uids
    s = seg.SegmentSequence[0]
    assert (s.SegmentedPropertyTypeCodeSequence[0].CodeValue, s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("108369006", "SCT")
    assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert s.AnatomicRegionSequence[0].CodeValue == "10200004"  # liver
    assert s.SegmentAlgorithmName == "TAGS" and seg.ContentCreatorName == "TAGS^Algorithm"
    assert seg.ContributingEquipmentSequence[0].ManufacturerModelName.startswith("TAGS")
    summary = json.loads((out / "tags_results.json").read_text())
    assert summary["organs"]["liver"]["organ_source"] == "model organ pass"
    assert summary["tumors"]["liver_tumor"]["status"] == "ok"
    # the stage times, start-up (from the run() call here) first, and the work behind them
    assert list(summary["timings_s"]) == ["startup", "load", "preprocess", "organs", "tumors", "write"]
    assert all(v >= 0 for v in summary["timings_s"].values())
    windows = summary["windows"]
    assert set(windows) == {"organs", "tumors"} and windows["organs"]["liver"]["count"] >= 1
    assert "rows" not in windows["organs"]["liver"]  # a thin series: one row of organ windows, no search
    assert windows["tumors"]["liver_tumor"]["count"] >= 1 and len(windows["tumors"]["liver_tumor"]["shape"]) == 3
    assert summary["runtime"]["device"] == "cpu" and summary["runtime"]["precision"] in ("fp32", "bf16")
    lesions = json.loads(files["lesions"].read_text())["targets"]["liver_tumor"]
    assert lesions["lesion_count"] == len(lesions["lesions"]) and lesions["status"] == "ok"
    sr = pydicom.dcmread(files["sr"])
    assert sr.StudyInstanceUID == seg.StudyInstanceUID and sr.SeriesInstanceUID != seg.SeriesInstanceUID


def test_seg_read_by_dcmqi_equals_the_predictor_mask(studies, model, totalseg_run, tmp_path):
    """Independent path: pydicom reader + TagsPredictor vs dcmqi's reading of the app's SEG."""
    seg_path = next(totalseg_run.glob("SEG_*.dcm"))
    proc = _tool("segimage2itkimage", "--inputDICOM", str(seg_path), "--outputDirectory", str(tmp_path), "--outputType", "nifti")
    assert proc.returncode == 0, proc.stderr
    seg_arr, seg_aff = read_nifti(tmp_path / "1.nii.gz")

    vol, affine = read_series(studies["totalseg"])
    predictor = shared_predictor(model)
    ct = prepare_ct(vol, affine)  # the library's whole-volume step: canonical grid and body box
    organ = predictor.segment_organs(ct.hu, ct.affine, region=ct.body_box)["liver"].mask()
    expected = ct.to_source(predictor.predict(ct.hu, ct.affine, {"liver": organ})["liver_tumor"].mask())
    got = exact_regrid(seg_arr.astype(bool), seg_aff, vol.shape, affine)
    summary = json.loads((totalseg_run / "tags_results.json").read_text())
    assert expected.sum() > 100
    assert int(got.sum()) == summary["tumors"]["liver_tumor"]["voxels"]
    assert np.array_equal(got, expected), f"{(got != expected).sum()} voxels differ"


def test_organ_seg_from_another_tool_is_read_onto_the_ct_grid():
    """dcmqi's liver SEG (legacy SRT code T-62000) over three real CT slices."""
    from monai.deploy.core import Fragment
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

    folder = DCMQI_DATA
    studies = DICOMDataLoaderOperator(Fragment(), name="loader").load_data_to_studies(folder)
    cts = sorted((pydicom.dcmread(f) for f in (folder / "ct-3slice").glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    found = organs_from_segs(seg_datasets(studies), cts, {"liver": codes.SCT.Liver})
    assert set(found) == {"liver"} and "segment 1" in found["liver"].source
    import SimpleITK as sitk

    img = sitk.ReadImage(str(folder / "liver_seg.nrrd"))
    truth = sitk.GetArrayFromImage(img) > 0  # (z, y, x), z increasing = slice position increasing
    assert found["liver"].mask.shape == truth.shape
    assert found["liver"].mask.sum() > 1000
    assert np.array_equal(found["liver"].mask, truth)


def test_organ_seg_whose_frames_are_off_their_slices_is_ignored():
    from monai.deploy.core import Fragment
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

    studies = DICOMDataLoaderOperator(Fragment(), name="loader").load_data_to_studies(DCMQI_DATA)
    segs = seg_datasets(studies)
    for frame in segs[0].PerFrameFunctionalGroupsSequence:
        pos = frame.PlanePositionSequence[0].ImagePositionPatient
        pos[2] = float(pos[2]) + 5.0  # the frame now claims a position 5 mm away from its slice
    cts = sorted((pydicom.dcmread(f) for f in (DCMQI_DATA / "ct-3slice").glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    assert organs_from_segs(segs, cts, {"liver": codes.SCT.Liver}) == {}


def test_study_organ_seg_is_used_when_present(studies, model, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(studies["totalseg"], study)
    from training.registry_data import totalseg_sdist_dir
    from training.sample_study import add_organ_seg
    from training.samples import TOTALSEG_LIVER, same_grid

    vol, affine = read_series(study)
    lab, lab_aff = read_nifti(totalseg_sdist_dir() / "example_seg_dicom.nii.gz")
    liver = same_grid(lab, lab_aff, vol.shape, affine) == TOTALSEG_LIVER
    add_organ_seg(study, liver, codes.SCT.Liver)
    out = tmp_path / "out"
    run(["-i", str(study), "-o", str(out), "-m", str(model), "--organ-segments"])
    summary = json.loads((out / "tags_results.json").read_text())
    assert summary["organs"]["liver"]["organ_source"].startswith("SEG series #300")
    seg_path = next(out.glob("SEG_*.dcm"))
    assert dicom_errors(seg_path, [f for f in study.glob("*.dcm") if not f.name.startswith("SEG_")]) == []
    seg = hd.seg.segread(seg_path)
    assert [seg.get_segment_description(n).segmented_property_type.value for n in seg.segment_numbers] == ["108369006", "10200004"]
    # the preview's colours as recommended display colours (a viewer warns and guesses without them)
    assert [hd.color.CIELabColor.from_dicom_value(seg.get_segment_description(n).RecommendedDisplayCIELabValue).to_rgb()
            for n in seg.segment_numbers] == \
        [DISPLAY_RGB["tumor"], DISPLAY_RGB["organ"]]
    # the organ segment is the study's organ mask, written back voxel for voxel
    cts = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in study.glob("*.dcm") if not f.name.startswith("SEG_")),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    organ = seg.get_pixels_by_source_instance([str(d.SOPInstanceUID) for d in cts], segment_numbers=[2],
                                              assert_missing_frames_are_empty=True)[..., 0] > 0
    assert np.array_equal(organ, liver)
    assert summary["organs"]["liver"]["voxels"] == int(liver.sum())
    assert summary["tumors"]["liver_tumor"]["organ_source"].startswith("SEG series #300")
    assert "organs" not in summary["windows"]  # the organ came from the study: no organ pass ran


def test_command_line_with_map_environment_and_a_clear_failure(studies, model, tmp_path, totalseg_run):
    env = dict(os.environ, HOLOSCAN_INPUT_PATH=str(studies["totalseg"]), HOLOSCAN_OUTPUT_PATH=str(tmp_path / "out"),
               HOLOSCAN_MODEL_PATH=str(model.parent), TAGS_DEVICE="cpu")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "app")], capture_output=True, text=True, env=env, cwd=tmp_path)
    proc_seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert "device cpu (requested)" in log and "liver_tumor:" in log and "organ liver" in log
    for ident in SAMPLE_PATIENT:
        assert ident not in log
    a = json.loads((tmp_path / "out" / "tags_results.json").read_text())
    b = json.loads((totalseg_run / "tags_results.json").read_text())
    assert a["tumors"] == b["tumors"]  # same result as the in-process run (which imported all of MONAI)
    # `python app` counts its start-up from the process start: interpreter, imports, model load
    assert 0 < a["timings_s"]["startup"] < proc_seconds

    empty = tmp_path / "out2"
    proc = subprocess.run([sys.executable, str(REPO / "app"), "-i", str(studies["totalseg"]), "-o", str(empty),
                           "-m", str(tmp_path / "no-such-model")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert not empty.exists() or list(empty.iterdir()) == []


def test_options_through_the_application(studies, model, tmp_path):
    """--organ-segments by its environment variable, --ignore-study-seg, --min-lesion-ml and
    --precision, each through `python app` (a fresh process, so the load line is logged)."""
    from training.sample_study import add_organ_seg

    study = tmp_path / "study"
    shutil.copytree(studies["totalseg"], study)
    add_organ_seg(study, np.zeros((20, 512, 512), bool), codes.SCT.Liver)  # an upstream tool found no liver

    def app(out, *args, **env):
        proc = subprocess.run([sys.executable, str(REPO / "app"), "-i", str(study), "-o", str(out), "-m", str(model),
                               *args], capture_output=True, text=True, env=dict(os.environ, **env))
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout + proc.stderr, json.loads((out / "tags_results.json").read_text())

    # The study's (empty) liver SEG is used: no tumor search, so any precision runs fast.
    log, summary = app(tmp_path / "a", "--precision", "bf16", "--min-lesion-ml", "5", TAGS_ORGAN_SEGMENTS="1")
    assert "precision bf16" in log
    assert summary["tumors"]["liver_tumor"]["status"] == "organ_absent"
    seg = hd.seg.segread(next((tmp_path / "a").glob("SEG_*.dcm")))
    assert [seg.get_segment_description(n).segmented_property_type.value for n in seg.segment_numbers] == [
        "108369006", "10200004"]  # the organ segment is there (TAGS_ORGAN_SEGMENTS=1)
    lesions = json.loads((tmp_path / "a" / "tags_lesions.json").read_text())
    assert lesions["min_lesion_ml"] == 5.0

    # --ignore-study-seg: the model's organ pass instead of the study's SEG; no organ segment by default.
    log, summary = app(tmp_path / "b", "--ignore-study-seg")
    assert summary["organs"]["liver"]["organ_source"] == "model organ pass"
    seg = hd.seg.segread(next((tmp_path / "b").glob("SEG_*.dcm")))
    assert [seg.get_segment_description(n).segmented_property_type.value for n in seg.segment_numbers] == ["108369006"]


def test_an_implausible_organ_is_not_searched_and_the_sr_says_indeterminate(studies, tmp_path):
    """With the committed demo model: an upstream SEG that calls the aorta "liver" (a vessel in
    the middle of the body) is refused by the plausibility check; no tumor search runs, the
    JSON says why, and the SR says "Lesion: Indeterminate", not "Absent"."""
    from training.registry_data import totalseg_sdist_dir
    from training.sample_study import add_organ_seg
    from training.samples import same_grid

    study = tmp_path / "study"
    shutil.copytree(studies["totalseg"], study)
    vol, affine = read_series(study)
    lab, lab_aff = read_nifti(totalseg_sdist_dir() / "example_seg_dicom.nii.gz")
    aorta = same_grid(lab, lab_aff, vol.shape, affine) == 52  # TotalSegmentator class 52: aorta
    add_organ_seg(study, aorta, codes.SCT.Liver)
    out = tmp_path / "out"
    run(["-i", str(study), "-o", str(out), "-m", str(REPO / "models" / "liver-demo")])
    results = json.loads((out / "tags_results.json").read_text())
    tumor = results["tumors"]["liver_tumor"]
    assert tumor["status"] == "organ_implausible" and tumor["voxels"] == 0
    assert "centre line" in tumor["reason"] or "HU" in tumor["reason"], tumor["reason"]
    # nor is the aorta reported as the liver
    liver = results["organs"]["liver"]
    assert (liver["status"], liver["voxels"], liver["reason"]) == ("organ_implausible", 0, tumor["reason"])
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(next(out.glob("SR_*.dcm")))])
    (group,) = report.get_image_measurement_groups()
    assert [(q.name.value, q.value.value) for q in group.get_qualitative_evaluations()] == [
        (codes.SCT.Lesion.value, codes.SCT.Indeterminate.value)]
    ct_files = [f for f in study.glob("*.dcm") if not f.name.startswith("SEG_")]
    assert dicom_errors(next(out.glob("SR_*.dcm")), [next(out.glob("SEG_*.dcm")), *ct_files]) == []


def test_demo_model_on_a_chest_ct_without_liver(tmp_path):
    """The committed demo model on a chest CT whose slices hold no liver (TotalSegmentator's
    aorta-report CT above the liver, written as a DICOM study; its body fills the image's width;
    the demo recipe's organ-free training case, so a regression check, not an acceptance test on
    unseen data): the organ pass marks part of the heart, which lies left of the lungs' centre line
    and is refused, so the SEG holds no liver voxels and no tumor, the JSON says why, and the SR
    says "Lesion: Indeterminate"."""
    from tags.geometry import to_canonical
    from training.dicom_series import SeriesInfo, write_ct_series
    from training.registry_data import totalseg_sdist_dir
    from training.samples import AORTA_LIVER_FREE_FROM

    vol, aff = read_nifti(totalseg_sdist_dir() / "aorta_report" / "example_ct.nii.gz")
    canon, caff, _ = to_canonical(vol, aff)
    caff = caff.copy()
    caff[:3, 3] += caff[:3, 0] * AORTA_LIVER_FREE_FROM
    study = tmp_path / "chest"
    write_ct_series(np.ascontiguousarray(canon[AORTA_LIVER_FREE_FROM:]), caff, study,
                    SeriesInfo(patient_name="Sample^Chest", patient_id="TAGS-SAMPLE-CHEST", uid_seed="tags-test-chest"))
    out = tmp_path / "out"
    run(["-i", str(study), "-o", str(out), "-m", str(REPO / "models" / "liver-demo"), "--organ-segments"])
    results = json.loads((out / "tags_results.json").read_text())
    tumor, liver = results["tumors"]["liver_tumor"], results["organs"]["liver"]
    assert tumor["voxels"] == 0 and tumor["status"] == "organ_implausible", tumor
    assert "lungs' centre line" in tumor["reason"], tumor["reason"]
    assert (liver["status"], liver["voxels"], liver["reason"]) == ("organ_implausible", 0, tumor["reason"])
    seg = hd.seg.segread(next(out.glob("SEG_*.dcm")))
    assert not np.asarray(seg.pixel_array).any()
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(next(out.glob("SR_*.dcm")))])
    (group,) = report.get_image_measurement_groups()
    assert [q.value.value for q in group.get_qualitative_evaluations()] == [codes.SCT.Indeterminate.value]


@pytest.mark.parametrize("name", ["totalseg", "lits117"])
def test_demo_model_on_the_sample_studies(studies, tmp_path, name):
    """The committed demo model as `bash scripts/demo.sh` runs it: the healthy TotalSegmentator
    study gets an SR that says no lesion was found ("Lesion: Absent", no lesion group) and a
    lesion list that agrees; the LiTS-117 study (liver tumors) still gets its tumors reported."""
    out = tmp_path / "out"
    run(["-i", str(studies[name]), "-o", str(out), "-m", str(REPO / "models" / "liver-demo")])
    lesions = json.loads((out / "tags_lesions.json").read_text())["targets"]["liver_tumor"]
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(next(out.glob("SR_*.dcm")))])
    evaluations = [(q.name.value, q.value.value) for g in report.get_image_measurement_groups()
                   for q in g.get_qualitative_evaluations()]
    volume_groups = report.get_volumetric_roi_measurement_groups()
    if name == "totalseg":
        assert lesions["status"] == "ok" and lesions["lesion_count"] == 0, lesions
        assert evaluations == [(codes.SCT.Lesion.value, codes.SCT.Absent.value)]
        assert len(volume_groups) == 0
    else:
        assert lesions["lesion_count"] >= 3, lesions
        assert (codes.SCT.Lesion.value, codes.SCT.Absent.value) not in evaluations
        assert len(volume_groups) == lesions["lesion_count"]
