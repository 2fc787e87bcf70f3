"""Bad input: every case is made from real DICOM and run through the whole application.

Each case is either processed correctly or refused with one `error:` line naming the problem
and a non-zero exit; the output folder never holds anything but complete results.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from app import main
from tags.geometry import affine_from_spacing
from training.dicom_series import SeriesInfo, read_series, write_ct_series

from helpers import app_model_folder, dicom_errors, result_files


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The TotalSegmentator sample study: 20 real slices, JPEG 2000."""
    from training.sample_study import build_totalseg_study

    return build_totalseg_study(tmp_path_factory.mktemp("study") / "totalseg")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return app_model_folder(tmp_path_factory.mktemp("models") / "tags")


@pytest.fixture(scope="module")
def crop(study):
    """Real CT pixels (20 x 160 x 160 around the liver region) for series written from scratch."""
    vol, _ = read_series(study)
    return vol[:, 150:310, 40:200].copy()


def _run(input_dir: Path, model: Path, out: Path, capsys, *extra: str):
    code = main(["-i", str(input_dir), "-o", str(out), "-m", str(model), *extra])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    return code, errors


def _refused(input_dir, model, tmp_path, capsys, pattern: str, *extra: str):
    out = tmp_path / "out"
    code, errors = _run(input_dir, model, out, capsys, *extra)
    assert code != 0
    assert len(errors) == 1 and pattern in errors[0], errors
    assert not out.exists(), list(out.iterdir())  # not even the folder this run would have made
    return errors[0]


def _processed(input_dir, model, tmp_path, capsys, *extra: str) -> dict:
    out = tmp_path / "out"
    code, errors = _run(input_dir, model, out, capsys, *extra)
    assert code == 0 and errors == []
    files = result_files(out)
    cts = [f for f in input_dir.iterdir() if f.suffix == ".dcm" and f.stat().st_size and not f.name.startswith("SEG_")]
    assert dicom_errors(files["seg"], cts) == []
    assert dicom_errors(files["sr"], [files["seg"], *cts]) == []
    return json.loads((out / "tags_results.json").read_text())


def _copy(study: Path, dest: Path) -> Path:
    shutil.copytree(study, dest)
    return dest


def _slices(folder: Path):
    files = [f for f in sorted(folder.iterdir()) if f.suffix == ".dcm" and not f.name.startswith("SEG_")]
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def _edit(files, fn) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


# -- refused ------------------------------------------------------------------------------------


def test_empty_folder(model, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    _refused(tmp_path / "in", model, tmp_path, capsys, "holds no files")


def test_only_non_dicom_files(model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "notes.txt").write_text("not an image\n")
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "README.txt", d / "README")
    _refused(d, model, tmp_path, capsys, "no DICOM instances")


def test_mr_instead_of_ct(model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), d)
    _refused(d, model, tmp_path, capsys, "found 1 series: MR")


def test_only_a_localizer(study, model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    src = _slices(study)[10]
    shutil.copy(src, d / "loc.dcm")

    def localizer(ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal scout

    _edit([d / "loc.dcm"], localizer)
    _refused(d, model, tmp_path, capsys, "LOCALIZER (1 instance(s))")


def test_enhanced_ct_multiframe(model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("eCT_Supplemental.dcm"), d)
    _refused(d, model, tmp_path, capsys, "Enhanced CT Image Storage")


def test_rgb_secondary_capture(model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("SC_rgb.dcm"), d)
    _refused(d, model, tmp_path, capsys, "Secondary Capture")


def test_truncated_file(study, model, crop, tmp_path, capsys):
    d = tmp_path / "in"
    files = write_ct_series(crop, affine_from_spacing((2.0, 0.98, 0.98)), d, SeriesInfo(uid_seed="truncated"))
    data = files[7].read_bytes()
    files[7].write_bytes(data[: len(data) - 20000])
    _refused(d, model, tmp_path, capsys, "CT instance number 8 of 20 has incomplete pixel data")


def test_zero_byte_file_in_a_series_is_ignored(study, model, tmp_path, capsys):
    d = _copy(study, tmp_path / "in")
    (d / "empty.dcm").write_bytes(b"")
    summary = _processed(d, model, tmp_path, capsys)
    assert summary["ct"]["series"].startswith("series #1 (20 slices")


def test_gap_in_slice_positions(study, model, tmp_path, capsys):
    d = _copy(study, tmp_path / "in")
    _slices(d)[9].unlink()
    _refused(d, model, tmp_path, capsys, "not evenly spaced")


def test_mixed_orientations(study, model, tmp_path, capsys):
    d = _copy(study, tmp_path / "in")

    def rotate(ds):
        ds.ImageOrientationPatient = [0.9961947, 0.0871557, 0, -0.0871557, 0.9961947, 0]  # 5 degrees in-plane

    _edit(_slices(d)[12:], rotate)
    _refused(d, model, tmp_path, capsys, "mixes slice orientations")


def test_gantry_tilt(crop, model, tmp_path, capsys):
    a = affine_from_spacing((2.0, 0.98, 0.98))
    a[1, 0] = 2.0 * np.tan(np.radians(15))  # each slice shifted along y: a 15 degree tilt
    write_ct_series(crop, a, tmp_path / "in", SeriesInfo(uid_seed="tilt"))
    _refused(tmp_path / "in", model, tmp_path, capsys, "gantry tilt")


def test_coronal_acquisition(crop, model, tmp_path, capsys):
    a = np.zeros((4, 4))
    a[3, 3] = 1
    a[1, 0], a[2, 1], a[0, 2] = 2.0, -0.98, 0.98  # slices along y (coronal), rows towards feet
    write_ct_series(crop, a, tmp_path / "in", SeriesInfo(uid_seed="coronal"))
    _refused(tmp_path / "in", model, tmp_path, capsys, "no axial ORIGINAL/PRIMARY CT")


def test_missing_pixel_spacing(study, model, tmp_path, capsys):
    d = _copy(study, tmp_path / "in")
    _edit(_slices(d), lambda ds: delattr(ds, "PixelSpacing"))
    _refused(d, model, tmp_path, capsys, "has no PixelSpacing")


def test_fewer_than_8_slices(study, model, tmp_path, capsys):
    d = _copy(study, tmp_path / "in")
    for f in _slices(d)[5:]:
        f.unlink()
    _refused(d, model, tmp_path, capsys, "has 5 slices; at least 8")


def test_over_the_voxel_limit(study, model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TAGS_MAX_VOXELS", str(512 * 512 * 10))
    _refused(study, model, tmp_path, capsys, "the CT series has 5 M voxels (512x512x20); the limit is 3 M")


def test_instances_without_uids(model, tmp_path, capsys):
    """The TotalSegmentator example series exactly as its package ships it (UIDs emptied)."""
    from training.registry_data import totalseg_sdist_dir

    _refused(totalseg_sdist_dir() / "example_ct_dicom", model, tmp_path, capsys,
             "20 of 20 DICOM file(s) have an empty StudyInstanceUID")


@pytest.mark.parametrize("extra,env,message", [
    (["--bogus"], {}, "unknown argument: --bogus"),
    (["stray"], {}, "unknown argument: stray"),
    (["--min-lesion-ml", "-1"], {}, "--min-lesion-ml must be 0 or more, not -1.0"),
    ([], {"TAGS_MIN_LESION_ML": "small"}, "$TAGS_MIN_LESION_ML 'small' is not a number"),
    (["--max-voxels", "0"], {}, "--max-voxels must be more than 0, not 0"),
    (["--min-lesion-ml", "small"], {}, "$TAGS_MIN_LESION_ML 'small' is not a number"),
    ([], {"TAGS_PRECISION": "fp8"}, "precision 'fp8' (--precision / $TAGS_PRECISION) is not fp32, bf16 or fp16"),
    (["--precision", "fp8"], {}, "precision 'fp8' (--precision / $TAGS_PRECISION) is not fp32, bf16 or fp16"),
    (["--device", "gpu0"], {}, "device 'gpu0' (--device / $TAGS_DEVICE) is not a torch device"),
    (["--device"], {}, "argument --device: expected one argument"),
    (["-l", "LOUD"], {}, "log level 'LOUD' (-l / --log-level) is not DEBUG, INFO, WARN, ERROR or CRITICAL"),
])
def test_bad_options(study, model, tmp_path, capsys, monkeypatch, extra, env, message):
    """An option or environment variable the application cannot use: one error line naming it,
    exit code 1, nothing written (checked before any DICOM file is read)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _refused(study, model, tmp_path, capsys, message, *extra)


@pytest.mark.parametrize("damage", ["missing", "changed", "version"])
def test_bad_model_folder(study, model, tmp_path, capsys, damage):
    bad = tmp_path / "model"
    if damage != "missing":
        shutil.copytree(model, bad)
    if damage == "changed":
        data = bytearray((bad / "weights.safetensors").read_bytes())
        data[-1] ^= 1
        (bad / "weights.safetensors").write_bytes(bytes(data))
        _refused(study, bad, tmp_path, capsys, "weights.safetensors in model folder")
    elif damage == "version":
        from tags.model_folder import _seal, read_metadata

        meta = read_metadata(bad)
        meta["format_version"] = 99
        meta.pop("metadata_sha256")
        (bad / "metadata.json").write_text(_seal(meta))
        _refused(study, bad, tmp_path, capsys, "format version 99")
    else:
        _refused(study, bad, tmp_path, capsys, "model folder not found")


# -- processed ----------------------------------------------------------------------------------


def test_duplicate_slice_positions_keep_one_instance(study, model, tmp_path, capsys):
    """A slice sent twice (new SOP Instance UID, same position and pixels): the SDK keeps one
    instance per position, so the volume is the original 20 slices and the SEG references them."""
    d = _copy(study, tmp_path / "in")
    src = _slices(d)[4]
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["duplicate"])
    ds.save_as(d / "duplicate.dcm")
    summary = _processed(d, model, tmp_path, capsys)
    assert summary["ct"]["series"].startswith("series #1 (20 slices")


def test_two_ct_series_the_larger_is_chosen(study, model, tmp_path, capsys):
    d = _copy(study, tmp_path / "in")
    small_uid = generate_uid(entropy_srcs=["small series"])

    def second_series(ds):
        ds.SeriesInstanceUID, ds.SeriesNumber = small_uid, 0
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "2"])

    for f in _slices(study)[:10]:
        ds = pydicom.dcmread(f)
        second_series(ds)
        ds.save_as(d / f"small_{ds.InstanceNumber}.dcm")
    summary = _processed(d, model, tmp_path, capsys)
    assert summary["ct"]["series"].startswith("series #1 (20 slices")  # not series #0 (10 slices)
    seg = pydicom.dcmread(next((tmp_path / "out").glob("SEG_*.dcm")))
    ref = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert ref == pydicom.dcmread(_slices(study)[0], stop_before_pixels=True).SeriesInstanceUID


def test_target_organ_absent_gives_a_valid_empty_result(study, model, tmp_path, capsys):
    """An upstream organ SEG that found no liver: the tumor target is not searched; the SEG is
    valid with an empty tumor segment and the summary says organ_absent."""
    from training.sample_study import add_organ_seg

    d = _copy(study, tmp_path / "in")
    add_organ_seg(d, np.zeros((20, 512, 512), bool), codes.SCT.Liver)
    summary = _processed(d, model, tmp_path, capsys)
    tumor = summary["tumors"]["liver_tumor"]
    assert tumor["status"] == "organ_absent" and tumor["voxels"] == 0
    seg_path = next((tmp_path / "out").glob("SEG_*.dcm"))
    assert int(pydicom.dcmread(seg_path).pixel_array.sum()) == 0
    lesions = json.loads((tmp_path / "out" / "tags_lesions.json").read_text())["targets"]["liver_tumor"]
    assert lesions["status"] == "organ_absent" and lesions["lesion_count"] == 0
    assert tumor["reason"] == "the organ mask is empty"
    import highdicom as hd

    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    sr_path = next((tmp_path / "out").glob("SR_*.dcm"))
    assert (seg.SeriesNumber, pydicom.dcmread(sr_path, stop_before_pixels=True).SeriesNumber) == (9901, 9902)
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(sr_path)])
    (group,) = report.get_image_measurement_groups()
    assert [(q.name.value, q.value.value) for q in group.get_qualitative_evaluations()] == [
        (codes.SCT.Lesion.value, codes.SCT.Absent.value)]


# -- what the README promises, each at its boundary ---------------------------------------------


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient"])
def test_missing_position_or_orientation(study, model, tmp_path, capsys, keyword):
    d = _copy(study, tmp_path / "in")
    victim = _slices(d)[6]
    number = pydicom.dcmread(victim, stop_before_pixels=True).InstanceNumber
    _edit([victim], lambda ds: delattr(ds, keyword))
    _refused(d, model, tmp_path, capsys, f"CT instance number {number} of 20 has no {keyword}")


def test_mixed_image_sizes(crop, model, tmp_path, capsys):
    d = tmp_path / "in"
    write_ct_series(crop, affine_from_spacing((2.0, 0.98, 0.98)), d, SeriesInfo(uid_seed="sizes"))
    small = write_ct_series(crop[:, :128, :128], affine_from_spacing((2.0, 0.98, 0.98)), tmp_path / "small",
                            SeriesInfo(uid_seed="sizes"))  # same series and instance UIDs, other size
    shutil.copy(small[3], sorted(d.iterdir())[3])
    _refused(d, model, tmp_path, capsys, "mixes image sizes [(128, 128), (160, 160)]")


def test_non_dicom_file_beside_a_series_is_ignored(study, model, tmp_path, capsys):
    d = _copy(study, tmp_path / "in")
    (d / "readme.txt").write_text("exported by a PACS\n")
    (d / "thumbnail.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    summary = _processed(d, model, tmp_path, capsys)
    assert summary["ct"]["series"].startswith("series #1 (20 slices")


def test_equal_series_the_lowest_series_number_is_chosen(study, model, tmp_path, capsys):
    d = _copy(study, tmp_path / "in")
    other_uid = generate_uid(entropy_srcs=["same size series"])
    for f in _slices(study):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesNumber = other_uid, 7
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "7"])
        ds.save_as(d / f"other_{ds.InstanceNumber}.dcm")
    summary = _processed(d, model, tmp_path, capsys)
    assert summary["ct"]["series"].startswith("series #1 (20 slices")  # not series #7


@pytest.mark.parametrize("degrees, refused", [(0.4, False), (0.6, True)])
def test_gantry_tilt_limit(crop, model, tmp_path, capsys, degrees, refused):
    a = affine_from_spacing((2.0, 0.98, 0.98))
    a[1, 0] = 2.0 * np.tan(np.radians(degrees))
    write_ct_series(crop[:8], a, tmp_path / "in", SeriesInfo(uid_seed=f"tilt{degrees}"))
    if refused:
        _refused(tmp_path / "in", model, tmp_path, capsys, "gantry tilt")
    else:
        _processed(tmp_path / "in", model, tmp_path, capsys)


def test_eight_slices_are_enough_seven_are_not(crop, model, tmp_path, capsys):
    write_ct_series(crop[:8], affine_from_spacing((2.0, 0.98, 0.98)), tmp_path / "in8", SeriesInfo(uid_seed="eight"))
    _processed(tmp_path / "in8", model, tmp_path, capsys)
    write_ct_series(crop[:7], affine_from_spacing((2.0, 0.98, 0.98)), tmp_path / "in7", SeriesInfo(uid_seed="seven"))
    shutil.rmtree(tmp_path / "out")
    _refused(tmp_path / "in7", model, tmp_path, capsys, "has 7 slices; at least 8")


def test_default_voxel_limit_is_512x512x1000(monkeypatch):
    from app.app import max_voxels

    monkeypatch.delenv("TAGS_MAX_VOXELS", raising=False)
    assert max_voxels() == 512 * 512 * 1000


def test_a_failed_run_leaves_an_existing_output_folder_as_it_was(study, model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("results of an earlier run\n")
    (tmp_path / "in").mkdir()
    code, errors = _run(tmp_path / "in", model, out, capsys)
    assert code != 0 and len(errors) == 1
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]
    assert (out / "earlier.txt").read_text() == "results of an earlier run\n"


def test_the_error_line_is_the_last_line(study, model, tmp_path):
    """As `python app`: whatever Holoscan logs before it, `error:` is the last line of stderr."""
    import subprocess
    import sys

    d = _copy(study, tmp_path / "in")
    for f in _slices(d)[5:]:
        f.unlink()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "app"), "-i", str(d),
                           "-o", str(tmp_path / "out"), "-m", str(model)], capture_output=True, text=True)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "5 slices" in lines[-1], lines[-3:]
