"""Study loading: the SDK's DICOMDataLoaderOperator, with clear messages about what it skipped.

The SDK loader skips files that are not DICOM and instances without usable UIDs, each with a
log line; when that leaves no study at all, this subclass says why in one message. Files that
cannot be parsed at all (a damaged header, a bad length field) are skipped before the SDK reads
them and listed, with the reason, on every loaded study (``skipped_files``), so a later error
about a gap in the series can name the damaged file instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pydicom
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

from tags.preprocessing import CTInputError

from .dicom_checks import element_damage
from .types import SkippedFile

log = logging.getLogger(__name__)


def why_unreadable(path: Path, error: Exception) -> SkippedFile:
    """Describe a file pydicom could not parse (no identifiers: name, size, error type)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
        size = path.stat().st_size
    except OSError:
        return SkippedFile(path.name, "cannot be read from disk", False)
    if size == 0:
        return SkippedFile(path.name, "empty file (0 bytes)", False)
    if head[128:132] == b"DICM":
        return SkippedFile(path.name, f"a DICOM file whose content cannot be parsed ({type(error).__name__})", True)
    return SkippedFile(path.name, "not a DICOM file", False)


def why_nothing_loaded(input_path: Path) -> str:
    files = [p for p in Path(input_path).rglob("*") if p.is_file()]
    if not files:
        return f"the input folder {input_path} holds no files"
    dicom, no_uid = 0, 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        dicom += 1
        if not all(str(ds.get(k, "")).strip() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
            no_uid += 1
    if dicom == 0:
        return f"none of the {len(files)} file(s) in the input folder is a DICOM file (no DICOM instances)"
    if no_uid:
        return (f"{no_uid} of {dicom} DICOM file(s) have an empty StudyInstanceUID, SeriesInstanceUID or "
                "SOPInstanceUID (anonymised too far?); a DICOM Segmentation could not reference them")
    return f"none of the {dicom} DICOM file(s) in the input folder could be loaded"


def elements_out_of_order(path: Path, ds) -> str | None:
    """Why the data elements of ``path`` (before the pixel data) are not valid DICOM, or None.

    pydicom reads a header with a damaged tag or length leniently (the elements after it become
    garbage that still parses); DICOM requires ascending tags, which such damage breaks, and
    other toolkits (and PACS) refuse the file."""
    from pydicom.filereader import data_element_generator

    try:
        with path.open("rb") as fh:
            # past the preamble and the file meta group (which has its own order)
            pydicom.filereader.read_preamble(fh, False)
            pydicom.filereader._read_file_meta_info(fh)
            ts = ds.file_meta.TransferSyntaxUID
            last = -1
            for elem in data_element_generator(fh, ts.is_implicit_VR, ts.is_little_endian, stop_when=None,
                                               defer_size=256):
                tag = int(elem.tag)
                if tag <= last:
                    return f"its data elements are out of order after ({last >> 16:04X},{last & 0xFFFF:04X})"
                last = tag
                if tag >= 0x7FE00010:
                    break
    except Exception as e:  # noqa: BLE001 - an element that cannot be read at all
        return f"its header cannot be read element by element ({type(e).__name__})"
    return None


def _position_key(ds) -> tuple:
    """(series UID, rounded position) of an instance, None parts where they cannot be read."""
    try:
        pos = tuple(round(float(v), 3) for v in ds.get("ImagePositionPatient") or ())
    except Exception:  # noqa: BLE001
        pos = None
    return str(ds.get("SeriesInstanceUID", "")), pos


class StudyLoaderOperator(DICOMDataLoaderOperator):
    """DICOMDataLoaderOperator that raises :class:`CTInputError` naming the problem when no
    study loads (ports as the SDK loader's: output ``dicom_study_list``)."""

    def load_data_to_studies(self, input_path: Path):
        """The SDK's loading of the files pydicom can parse; the others are skipped and listed.

        Each file's header is parsed by this method before the SDK parses the whole file: a file that
        breaks pydicom with anything but the SDK's expected InvalidDicomError would otherwise
        stop the whole run with the library's message. Files the SDK then drops (it skips an
        instance whose UID or position it cannot use, with a log line only) are listed too.
        """
        loading_began = time.time()
        input_path = Path(input_path)
        if not input_path.is_dir():
            raise CTInputError(f"the input folder {input_path} does not exist")
        files: List[str] = []
        self._list_files(input_path, files)  # the SDK's own listing (recursive)
        readable, skipped, headers = _parse_headers(files)
        studies = self._sdk_studies(readable)
        skipped += _dropped_by_sdk(studies, readable, headers)
        if skipped:
            log.warning("%d file(s) of the input skipped: %s", len(skipped),
                        "; ".join(f"{s.name}: {s.reason}" for s in skipped[:10]))
        if not studies:
            raise CTInputError(why_nothing_loaded(input_path))
        for study in studies:
            study.skipped_files = list(skipped)  # not tied to a study: they could not be read
            study.loading_began = loading_began  # the application's first compute (start-up ends here)
        return studies

    def _sdk_studies(self, files: List[str]):
        """The SDK's grouping of ``files`` into studies; a file it fails on is named."""
        try:
            return self._load_data(files)
        except Exception:
            # Failure path only: find the file the SDK cannot take, to name it.
            for f in files:
                try:
                    self._load_data([f])
                except Exception as e:  # noqa: BLE001
                    log.debug("the SDK loader failed on %s", Path(f).name, exc_info=True)
                    raise CTInputError(f"file {Path(f).name} cannot be loaded: a value in its DICOM header is "
                                       f"damaged ({type(e).__name__})") from None
            raise


def _parse_headers(files: List[str]) -> Tuple[List[str], List[SkippedFile], Dict[str, object]]:
    """(files pydicom parses without damage, skipped files with reasons, header per kept file)."""
    readable, skipped, headers = [], [], {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            ds.get("SOPInstanceUID"), ds.get("ImagePositionPatient")  # values the SDK reads at once
        except Exception as e:  # noqa: BLE001 - every parser failure skips the file with its reason
            log.debug("cannot parse %s", Path(f).name, exc_info=True)
            skipped.append(why_unreadable(Path(f), e))
            continue
        disorder = elements_out_of_order(Path(f), ds) or element_damage(ds)
        if disorder:
            skipped.append(SkippedFile(Path(f).name, f"a damaged DICOM file: {disorder}", True))
            continue
        readable.append(f)
        headers[f] = ds
    return readable, skipped, headers


def _dropped_by_sdk(studies, readable: List[str], headers: Dict[str, object]) -> List[SkippedFile]:
    """The parsed files the SDK left out of ``studies``, with the likely reason."""
    skipped = []
    loaded, positions = set(), set()
    for study in studies:
        for series in study.get_all_series():
            for inst in series.get_sop_instances():
                ds = inst.get_native_sop_instance()
                loaded.add(str(Path(str(getattr(ds, "filename", ""))).resolve()))
                positions.add(_position_key(ds))
    for f in readable:
        if str(Path(f).resolve()) in loaded:
            continue
        if _position_key(headers[f]) in positions:  # the SDK keeps one instance per position
            skipped.append(SkippedFile(Path(f).name, "a second instance at a slice position already loaded", False))
        else:
            skipped.append(SkippedFile(Path(f).name, "a DICOM file the loader dropped (a UID, position or "
                                       "acquisition number in its header cannot be used)", True))
    return skipped
