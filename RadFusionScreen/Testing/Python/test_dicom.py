"""DICOM series reading: slice order, geometry, rescaling, series choice and damaged input.

Synthetic series are written with pydicom under shuffled file names and instance numbers,
so only ImagePositionPatient can give the right order. Real series are compared with the
NIfTI conversions shipped beside them in ../shared/data.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared_path
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from RadFusionScreenLib.inputs.dicom_series import list_series, read_dicom_file, read_dicom_series
from RadFusionScreenLib.core.errors import DicomSeriesError

ROWS, COLUMNS, SLICES = 16, 12, 8  # rows != columns catches a swapped in-plane axis
ROW_SPACING, COLUMN_SPACING, STEP = 0.7, 0.8, 2.5


def oblique_axes(tilt_degrees: float = 20.0, turn_degrees: float = 30.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine, column cosine and normal of a plane turned about z, then tilted about x."""
    a, b = math.radians(turn_degrees), math.radians(tilt_degrees)
    turn = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rotation = tilt @ turn
    return rotation[:, 0], rotation[:, 1], rotation[:, 2]


def ds_text(values) -> list[str]:
    """Decimal strings that fit the 16-character DS limit."""
    return [f"{float(v):.10g}" for v in values]


def write_slice(
    path: Path,
    stored: np.ndarray,
    position: np.ndarray,
    row: np.ndarray,
    column: np.ndarray,
    series_uid: str,
    slope: float = 1.0,
    intercept: float = 0.0,
    instance: int = 1,
    description: str = "synthetic",
) -> None:
    """One CT slice, explicit VR little endian, int16 stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3.4", series_uid, "1.2.3.5"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Secret^Person", "SECRET-ID-42", "19500101"
    ds.Modality, ds.SeriesDescription, ds.Manufacturer = "CT", description, "RadFusion test"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = ds_text(position)
    ds.ImageOrientationPatient = ds_text([*row, *column])
    ds.PixelSpacing = ds_text([ROW_SPACING, COLUMN_SPACING])
    ds.SliceThickness = ds_text([STEP])[0]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = ds_text([slope])[0], ds_text([intercept])[0]
    ds.PixelData = stored.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path,
    stored: np.ndarray,
    slopes: list[float] | None = None,
    intercept: float = 0.0,
    seed: int = 0,
    series_uid: str | None = None,
    prefix: str = "IM",
    axes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Write slice k at origin + k·STEP·normal, under a shuffled file name and instance number."""
    folder.mkdir(parents=True, exist_ok=True)
    row, column, normal = axes or oblique_axes()
    origin = np.array([-20.5, 13.25, 101.0])
    series_uid = series_uid or generate_uid()
    shuffled = np.random.default_rng(seed).permutation(len(stored))
    slopes = slopes or [1.0] * len(stored)
    files = []
    for k, plane in enumerate(stored):
        path = folder / f"{prefix}{shuffled[k]:04d}.dcm"
        position = origin + k * STEP * normal
        write_slice(path, plane, position, row, column, series_uid, slopes[k], intercept, int(shuffled[k]) + 1)
        files.append(path)
    return {"origin": origin, "row": row, "column": column, "normal": normal, "uid": series_uid, "files": files}


def stored_values(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-500, 1500, size=(SLICES, ROWS, COLUMNS)).astype(np.int16)


def write_rtstruct(path: Path) -> None:
    """A minimal structure set: a series of its own, no pixel data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", generate_uid()
    ds.Modality, ds.SeriesDescription, ds.StructureSetLabel = "RTSTRUCT", "contours", "GTV"
    ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------ synthetic series


def test_shuffled_oblique_series_has_dicom_geometry_and_slice_order(tmp_path: Path) -> None:
    stored = stored_values()
    stored[2, 3, 4] = 20000
    series = write_series(tmp_path, stored, slopes=[2.0] * SLICES, intercept=-1024.0)
    image, metadata = read_dicom_series(tmp_path)

    assert image.GetSize() == (COLUMNS, ROWS, SLICES)
    assert image.GetPixelID() == sitk.sitkInt32  # 20000·2 − 1024 does not fit int16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored.astype(np.int64) * 2 - 1024)
    np.testing.assert_allclose(image.GetSpacing(), (COLUMN_SPACING, ROW_SPACING, STEP), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), series["origin"], atol=1e-6)
    expected_direction = np.column_stack([series["row"], series["column"], series["normal"]])
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), expected_direction, atol=1e-6)
    # The DICOM definition itself: voxel (i, j, k) lies at IPP_k + i·Δcol·row + j·Δrow·column.
    for index in [(0, 0, 0), (11, 0, 3), (5, 15, 7)]:
        i, j, k = index
        expected = series["origin"] + k * STEP * series["normal"]
        expected = expected + i * COLUMN_SPACING * series["row"] + j * ROW_SPACING * series["column"]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), expected, atol=1e-5)
    assert metadata["NumberOfSlices"] == SLICES and metadata["Modality"] == "CT"


def test_series_metadata_has_no_patient_identifiers(tmp_path: Path) -> None:
    write_series(tmp_path, stored_values())
    _, metadata = read_dicom_series(tmp_path)
    text = repr(metadata)
    assert "Secret" not in text and "SECRET-ID-42" not in text and "19500101" not in text
    assert set(metadata) >= {"Modality", "SeriesInstanceUID", "SeriesDescription", "Manufacturer", "NumberOfSlices"}


def test_integer_rescale_that_fits_stays_int16(tmp_path: Path) -> None:
    stored = stored_values()
    write_series(tmp_path, stored, intercept=-1000.0)
    image, _ = read_dicom_series(tmp_path)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored - 1000)


def test_slopes_varying_by_slice_give_float_values_of_each_slice(tmp_path: Path) -> None:
    stored = stored_values()
    slopes = [0.5, 1.0, 1.25, 2.0, 0.75, 3.0, 1.5, 0.25]
    write_series(tmp_path, stored, slopes=slopes, intercept=-10.0)
    image, _ = read_dicom_series(tmp_path)
    assert image.GetPixelID() == sitk.sitkFloat32
    expected = stored * np.array(slopes)[:, None, None] - 10.0
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), expected, rtol=0, atol=1e-4)


def test_missing_slice_is_reported_with_its_position(tmp_path: Path) -> None:
    series = write_series(tmp_path, stored_values())
    series["files"][4].unlink()  # the slice at 4·STEP along the normal
    distance_before = float(series["origin"] @ series["normal"]) + 3 * STEP
    with pytest.raises(DicomSeriesError, match="missing slice") as error:
        read_dicom_series(tmp_path)
    assert f"{distance_before:.3f}" in str(error.value)
    assert series["files"][3].name in str(error.value)


def test_duplicate_slice_position_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, stored_values())
    copy = pydicom.dcmread(series["files"][2])
    copy.SOPInstanceUID = generate_uid()
    copy.save_as(tmp_path / "copy_of_slice.dcm")
    with pytest.raises(DicomSeriesError, match="same position"):
        read_dicom_series(tmp_path)


def test_inconsistent_orientation_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, stored_values())
    odd = pydicom.dcmread(series["files"][5])
    odd.ImageOrientationPatient = ds_text([1, 0, 0, 0, 1, 0])
    odd.save_as(series["files"][5])
    with pytest.raises(DicomSeriesError, match="ImageOrientationPatient"):
        read_dicom_series(tmp_path)


def test_two_series_are_listed_and_one_can_be_chosen(tmp_path: Path) -> None:
    first = write_series(tmp_path, stored_values(1), prefix="A", seed=3)
    second_values = stored_values(2)[:5]
    second = write_series(tmp_path, second_values, prefix="B", seed=4)
    with pytest.raises(DicomSeriesError) as error:
        read_dicom_series(tmp_path)
    message = str(error.value)
    for uid, count in [(first["uid"], SLICES), (second["uid"], 5)]:
        assert uid in message and f"files={count}" in message
    assert "modality=CT" in message and "synthetic" in message and "series_uid" in message

    image, metadata = read_dicom_series(tmp_path, series_uid=second["uid"])
    assert metadata["SeriesInstanceUID"] == second["uid"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), second_values)
    with pytest.raises(DicomSeriesError, match="not found"):
        read_dicom_series(tmp_path, series_uid="1.2.999")


def test_non_dicom_files_are_skipped_quietly(tmp_path: Path) -> None:
    stored = stored_values()
    write_series(tmp_path, stored)
    (tmp_path / "README.txt").write_text("exported by a PACS\n")
    (tmp_path / "NOTES").write_bytes(b"no preamble, no suffix")
    image, _ = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored)


@pytest.mark.parametrize("cut", ["pixel data", "header"])
def test_truncated_file_is_named(tmp_path: Path, cut: str) -> None:
    series = write_series(tmp_path, stored_values())
    damaged = series["files"][6]
    data = damaged.read_bytes()
    damaged.write_bytes(data[:-100] if cut == "pixel data" else data[:140])
    with pytest.raises(DicomSeriesError, match="truncated") as error:
        read_dicom_series(tmp_path)
    assert damaged.name in str(error.value)


def test_file_with_dicom_suffix_but_no_dicom_content_is_named(tmp_path: Path) -> None:
    write_series(tmp_path, stored_values())
    (tmp_path / "broken.dcm").write_bytes(b"this is not DICOM at all")
    with pytest.raises(DicomSeriesError, match="broken.dcm"):
        read_dicom_series(tmp_path)


def test_structure_set_alone_is_not_an_image_series(tmp_path: Path) -> None:
    write_rtstruct(tmp_path / "rs.dcm")
    with pytest.raises(DicomSeriesError, match="no image series") as error:
        read_dicom_series(tmp_path)
    assert "RTSTRUCT" in str(error.value)


def test_structure_set_beside_an_image_series_is_ignored(tmp_path: Path) -> None:
    stored = stored_values()
    write_series(tmp_path / "ct", stored)
    write_rtstruct(tmp_path / "rs" / "rs.dcm")
    image, _ = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored)
    assert [s.is_image for s in list_series(tmp_path)] == [True, False]


def test_single_slice_file_keeps_its_position(tmp_path: Path) -> None:
    series = write_series(tmp_path, stored_values()[:2])
    image, metadata = read_dicom_file(series["files"][1])
    assert image.GetSize() == (COLUMNS, ROWS, 1) and metadata["NumberOfSlices"] == 1
    np.testing.assert_allclose(image.GetOrigin(), series["origin"] + STEP * series["normal"], atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), (COLUMN_SPACING, ROW_SPACING, STEP), atol=1e-6)


# ----------------------------------------------------------------------- real data


def assert_same_image(actual: sitk.Image, expected: sitk.Image, geometry_atol: float = 1e-3) -> None:
    assert actual.GetSize() == expected.GetSize()
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), atol=geometry_atol)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=geometry_atol)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=geometry_atol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))


@pytest.mark.parametrize("case", ["STS_001", "STS_002", "STS_003"])
def test_sarcoma_ct_series_matches_its_nifti(case: str) -> None:
    base = shared_path("dicom", "sts_rtstruct", case, "CT")
    image, metadata = read_dicom_series(base / "dicom" / "image")
    assert metadata["Modality"] == "CT"
    assert_same_image(image, sitk.ReadImage(str(base / "nifti" / "image" / "image.nii.gz")))


def test_ibsi_ct_phantom_series_matches_its_nifti() -> None:
    # Its files are named in descending position order: file-name order would flip the volume.
    base = shared_path("ibsi", "ibsi_1_ct_radiomics_phantom")
    image, _ = read_dicom_series(base / "dicom" / "image")
    assert image.GetPixelID() == sitk.sitkInt16  # unsigned stored, intercept -1000: narrowed
    assert_same_image(image, sitk.ReadImage(str(base / "nifti" / "image" / "phantom.nii.gz")))


def test_ibsi_digital_phantom_multiframe_dicom_holds_the_nifti_voxels() -> None:
    """The DICOM version (an enhanced multi-frame file) is coronal with 1 mm voxels; the NIfTI
    is axial with the IBSI's 2 mm voxels. The voxel values agree once the DICOM's row axis
    (pointing to -z) is matched with the NIfTI's slice axis."""
    base = shared_path("ibsi", "ibsi_1_digital_phantom")
    image, metadata = read_dicom_series(base / "dicom" / "image")
    nifti = sitk.ReadImage(str(base / "nifti" / "image" / "phantom.nii.gz"))
    assert metadata["Modality"] == "MR" and metadata["NumberOfSlices"] == 4
    assert image.GetSize() == (5, 4, 4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    assert image.GetSpacing() == (1.0, 1.0, 1.0) and nifti.GetSpacing() == (2.0, 2.0, 2.0)
    dicom_voxels = sitk.GetArrayFromImage(image)  # (y, row, column) = (y, -z, x)
    np.testing.assert_array_equal(dicom_voxels.transpose(1, 0, 2), sitk.GetArrayFromImage(nifti))


def test_sarcoma_folder_lists_image_series_and_structure_set() -> None:
    found = list_series(shared_path("dicom", "sts_rtstruct", "STS_001", "CT", "dicom"))
    assert [(s.modality, s.is_image) for s in found] == [("CT", True), ("RTSTRUCT", False)]
    assert len(found[0].files) == 59


@pytest.mark.parametrize(
    "parts, kind",
    [
        (("dicom", "sts_rtstruct", "STS_001", "CT", "dicom", "mask"), "RTSTRUCT"),
        (("dicom", "seg_bitpacking", "mask"), "SEG"),
    ],
)
def test_real_segmentation_folder_alone_is_refused(parts: tuple[str, ...], kind: str) -> None:
    with pytest.raises(DicomSeriesError, match="no image series") as error:
        read_dicom_series(shared_path(*parts))
    assert kind in str(error.value)


def test_real_series_under_shuffled_names_reads_the_same(tmp_path: Path) -> None:
    source = shared_path("dicom", "sts_rtstruct", "STS_002", "CT", "dicom", "image")
    files = sorted(source.glob("*.dcm"))
    for file, new_index in zip(files, np.random.default_rng(7).permutation(len(files))):
        shutil.copy(file, tmp_path / f"slice_{new_index:03d}.dcm")
    assert_same_image(read_dicom_series(tmp_path)[0], read_dicom_series(source)[0], geometry_atol=0)


def test_real_series_with_a_truncated_slice_names_it(tmp_path: Path) -> None:
    for file in shared_path("dicom", "sts_rtstruct", "STS_002", "CT", "dicom", "image").glob("*.dcm"):
        shutil.copy(file, tmp_path / file.name)
    damaged = tmp_path / "000010.dcm"
    damaged.write_bytes(damaged.read_bytes()[:-1000])  # large pixel data: located, not loaded, while scanning
    with pytest.raises(DicomSeriesError, match="truncated") as error:
        read_dicom_series(tmp_path)
    assert "000010.dcm" in str(error.value)
