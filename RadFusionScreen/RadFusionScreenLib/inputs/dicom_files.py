"""Which files are DICOM, their headers, and the series a folder holds.

A file is DICOM when it has the DICOM preamble ('DICM' at byte 128) or a DICOM file suffix
(:func:`is_dicom_file`, also used for DICOM SEG / RTSTRUCT masks). Headers are read with the
pixel data located but not loaded, every other element decoded at once, so that a damaged or
truncated file is reported with its name (:func:`read_header`); DICOMDIR files are skipped.
A folder's headers are grouped by SeriesInstanceUID (:func:`scan_folder`) and one image series
is chosen from them (:func:`choose_series`), or the choice is refused with a listing.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from RadFusionScreenLib.core.errors import DicomSeriesError

# Objects that carry a SeriesInstanceUID but are not a grid of image slices.
NON_IMAGE_MODALITIES = frozenset(
    {"RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "PR", "KO", "REG", "RWV", "DOC", "FID", "PLAN"}
)
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR

_DEFER_BYTES = 1024  # while scanning, larger values (pixel data) are located but not loaded
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float
_UNDEFINED_LENGTH = 0xFFFFFFFF
_MAX_LISTED = 12


@dataclass(frozen=True)
class SeriesSummary:
    """One series found in a folder: enough to let a person choose it."""

    series_uid: str
    modality: str
    description: str
    is_image: bool
    files: tuple[Path, ...]

    def describe(self) -> str:
        kind = "" if self.is_image else "  [not an image series]"
        return (
            f"SeriesInstanceUID={self.series_uid}  modality={self.modality or '?'}  "
            f"description={self.description!r}  files={len(self.files)}{kind}"
        )


# --------------------------------------------------------------------------- scanning


def is_dicom_file(path: str | Path) -> bool:
    """True when the file has the DICOM preamble ('DICM' at byte 128) or a DICOM file suffix."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_preamble(path)


def scan_folder(folder: Path) -> list[tuple[SeriesSummary, list[Dataset]]]:
    """The series under ``folder`` (recursively, hidden files skipped) with their headers, image series first."""
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        header = read_header(path, must_be_dicom=False)
        if header is not None:
            by_series[str(header.SeriesInstanceUID)].append(header)
    found = [_summarise(uid, headers) for uid, headers in by_series.items()]
    return sorted(found, key=lambda item: (not item[0].is_image, item[0].series_uid))


def _summarise(series_uid: str, headers: list[Dataset]) -> tuple[SeriesSummary, list[Dataset]]:
    images = [h for h in headers if is_image_object(h)]
    kept = images or headers  # stray non-image objects inside an image series are dropped
    first = kept[0]
    summary = SeriesSummary(
        series_uid=series_uid,
        modality=str(first.get("Modality", "") or ""),
        description=str(first.get("SeriesDescription", "") or ""),
        is_image=bool(images),
        files=tuple(Path(h.filename) for h in kept),
    )
    return summary, kept


def read_header(path: Path, must_be_dicom: bool) -> Dataset | None:
    """Header of a DICOM file, pixel data located but not loaded; None for files that are not DICOM."""
    if not (must_be_dicom or is_dicom_file(path)):
        return None
    has_preamble = _has_dicom_preamble(path)
    try:
        with warnings.catch_warnings():  # vendors' over-long DS/IS strings etc. are harmless here
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=not has_preamble)
            _decode_elements(header)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise DicomSeriesError(f"{path}: corrupt or truncated DICOM file ({type(exc).__name__}: {exc})") from exc
    if _sop_class(header) == MEDIA_STORAGE_DIRECTORY:
        return None
    if "SeriesInstanceUID" not in header:
        raise DicomSeriesError(
            f"{path}: unreadable DICOM file: truncated, damaged or not DICOM at all (no SeriesInstanceUID found); "
            "remove or replace it"
        )
    _check_pixel_data_complete(path, header)
    return header


def _decode_elements(header: Dataset) -> None:
    """Decode every element but pixel data now: pydicom decodes lazily, so a damaged value
    representation (a flipped byte: found by the fuzzer) would otherwise fail later, far
    from the file's name."""
    for tag in list(header.keys()):
        if tag not in _PIXEL_DATA_TAGS:
            header[tag]


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _check_pixel_data_complete(path: Path, header: Dataset) -> None:
    """Image files whose pixel data is missing or shorter than declared are truncated."""
    element = next((header.get_item(tag, keep_deferred=True) for tag in _PIXEL_DATA_TAGS if tag in header), None)
    if element is None:
        if "Image Storage" in _sop_class_name(header) and _modality(header) not in NON_IMAGE_MODALITIES:
            raise DicomSeriesError(f"{path}: truncated DICOM image file (no pixel data); remove or replace it")
        return
    if not isinstance(element, RawDataElement) or element.length == _UNDEFINED_LENGTH:
        return  # already loaded (small) or encapsulated: GDCM reports damage when decoding
    if element.value is not None:
        declared_end, available = element.length, len(element.value)
    else:
        declared_end, available = element.value_tell + element.length, path.stat().st_size
    if available < declared_end:
        raise DicomSeriesError(
            f"{path}: truncated DICOM file (pixel data incomplete: {available} of {declared_end} bytes present); "
            "remove or replace it"
        )


def _sop_class(header: Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    uid = header.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return str(uid or "")


def _sop_class_name(header: Dataset) -> str:
    uid = _sop_class(header)
    return pydicom.uid.UID(uid).name if uid else ""


def _modality(header: Dataset) -> str:
    return str(header.get("Modality", "") or "").upper()


def is_image_object(header: Dataset) -> bool:
    """Whether the object is an image (pixel data, rows and columns, not a non-image modality)."""
    has_pixels = any(tag in header for tag in _PIXEL_DATA_TAGS)
    return has_pixels and "Rows" in header and "Columns" in header and _modality(header) not in NON_IMAGE_MODALITIES


def object_kind(header: Dataset | None) -> str:
    """What the object is, for messages: modality, SOP class name, whether it has pixel data."""
    if header is None:
        return "not a DICOM object"
    modality = _modality(header)
    name = _sop_class_name(header) or "unknown SOP class"
    pixels = "with pixel data" if any(tag in header for tag in _PIXEL_DATA_TAGS) else "no pixel data"
    return f"{modality or 'no modality'}, {name}, {pixels}"


# --------------------------------------------------------------------------- choosing


def choose_series(
    folder: Path, found: list[tuple[SeriesSummary, list[Dataset]]], series_uid: str | None
) -> tuple[SeriesSummary, list[Dataset]]:
    """The series named by ``series_uid``, else the folder's only image series; refused with a listing otherwise."""
    if not found:
        raise DicomSeriesError(f"no DICOM files found in {folder}")
    if series_uid is not None:
        for summary, headers in found:
            if summary.series_uid == series_uid.strip():
                if not summary.is_image:
                    raise DicomSeriesError(
                        f"series {series_uid} in {folder} is not an image series ({_kinds_of(headers)})"
                    )
                return summary, headers
        raise DicomSeriesError(f"series {series_uid} not found in {folder}; it holds:\n{_listing(found)}")
    images = [item for item in found if item[0].is_image]
    if not images:
        raise DicomSeriesError(
            f"{folder} holds no image series, only non-image DICOM objects:\n{_listing(found)}\n"
            "(a segmentation such as RTSTRUCT or SEG belongs beside an image series, not instead of one)"
        )
    if len(images) > 1:
        raise DicomSeriesError(
            f"{folder} holds {len(images)} image series; choose one with series_uid (CLI: --series-uid):\n"
            f"{_listing(images)}"
        )
    return images[0]


def _listing(found: Iterable[tuple[SeriesSummary, list[Dataset]]]) -> str:
    lines = [f"  - {summary.describe()}" for summary, _ in found]
    if len(lines) > _MAX_LISTED:
        lines = lines[:_MAX_LISTED] + [f"  ... and {len(lines) - _MAX_LISTED} more"]
    return "\n".join(lines)


def _kinds_of(headers: list[Dataset]) -> str:
    kinds = sorted({object_kind(h) for h in headers})
    return "; ".join(kinds)
