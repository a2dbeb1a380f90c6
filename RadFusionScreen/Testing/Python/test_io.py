"""Image and mask reading, label semantics and voxel-grid checks."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path
from PIL import Image as PilImage

from RadFusionScreenLib.core.errors import GeometryMismatchError, InputError, MaskError
from RadFusionScreenLib.inputs.images import (
    check_geometry,
    read_image,
    read_image_with_metadata,
    read_mask,
)


def volume(values: np.ndarray, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 30.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def ramp(shape=(6, 7, 8), dtype=np.int16) -> np.ndarray:
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


OBLIQUE = tuple(np.array([[0.0, -1.0, 0.0], [0.6, 0.0, -0.8], [0.8, 0.0, 0.6]]).ravel())

# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize("suffix, source_format", [(".nii.gz", "nifti"), (".nrrd", "nrrd"), (".mha", "metaimage")])
def test_volume_formats_round_trip_values_and_geometry(tmp_path: Path, suffix: str, source_format: str) -> None:
    original = volume(ramp(), direction=OBLIQUE)
    path = tmp_path / f"image{suffix}"
    sitk.WriteImage(original, str(path))
    image, metadata = read_image_with_metadata(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ramp())
    np.testing.assert_allclose(image.GetSpacing(), original.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), original.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), OBLIQUE, atol=1e-6)
    assert metadata["source_format"] == source_format
    assert metadata["modality"] is None and metadata["is_2d"] is False


def test_png_becomes_one_slice_volume_with_unit_geometry(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 13), dtype=np.uint8)
    path = tmp_path / "picture.png"
    PilImage.fromarray(pixels).save(path)
    image, metadata = read_image_with_metadata(path)
    assert image.GetDimension() == 3 and image.GetSize() == (13, 9, 1)
    assert image.GetSpacing() == (1.0, 1.0, 1.0) and image.GetOrigin() == (0.0, 0.0, 0.0)
    assert image.GetDirection() == tuple(np.eye(3).ravel())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], pixels)
    assert metadata["source_format"] == "png" and metadata["is_2d"] is True


def test_rgb_picture_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 255, 0)
    rgb[2, 2] = (0, 0, 255)
    rgb[3, 3] = (200, 200, 200)
    path = tmp_path / "colour.png"
    PilImage.fromarray(rgb).save(path)
    grey = sitk.GetArrayFromImage(read_image(path))[0]
    assert grey.shape == (4, 5)
    assert [grey[0, 0], grey[1, 1], grey[2, 2], grey[3, 3], grey[0, 4]] == [76, 150, 29, 200, 0]


def test_two_dimensional_nifti_gains_a_slice_axis(tmp_path: Path) -> None:
    flat = sitk.GetImageFromArray(ramp((5, 6)))
    flat.SetSpacing((0.5, 0.6))
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(flat, str(path))
    image, metadata = read_image_with_metadata(path)
    assert image.GetSize() == (6, 5, 1) and metadata["is_2d"] is True
    np.testing.assert_allclose(image.GetSpacing()[:2], (0.5, 0.6))


def nifti_with_non_finite_voxels(path: Path) -> None:
    """A float32 NIfTI whose stored voxels 0 and 5 are NaN and +Inf (patched after writing)."""
    plain = path.with_suffix("")  # .nii
    sitk.WriteImage(volume(ramp(dtype=np.float32)), str(plain))
    raw = bytearray(plain.read_bytes())
    plain.unlink()  # given nan.nii.gz, ITK's NIfTI reader opens a nan.nii beside it instead
    offset = int(np.frombuffer(bytes(raw[108:112]), dtype="<f4")[0])
    voxels = np.frombuffer(bytes(raw[offset:]), dtype="<f4").copy()
    voxels[[0, 5]] = [np.nan, np.inf]
    raw[offset:] = voxels.tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(raw)


def test_nan_voxels_are_refused_with_their_count(tmp_path: Path) -> None:
    values = ramp(dtype=np.float32)
    values[1, 2, 3] = np.nan
    values[4, 0, 0] = np.inf
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(volume(values), str(path))
    with pytest.raises(InputError, match=r"2 of 336 voxels are NaN or infinite"):
        read_image(path)


def test_nan_voxels_in_nifti_are_found_although_itk_zeroes_them(tmp_path: Path) -> None:
    path = tmp_path / "nan.nii.gz"
    nifti_with_non_finite_voxels(path)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).ravel()[5] == 0  # what ITK makes of +Inf
    with pytest.raises(InputError, match=r"2 of 336 voxels are NaN or infinite"):
        read_image(path)


def test_a_nifti_twin_beside_the_file_is_not_read_instead(tmp_path: Path) -> None:
    """ITK, asked for scan.nii.gz, opens scan.nii when both exist; the engine reads what it was given."""
    compressed, plain = tmp_path / "scan.nii.gz", tmp_path / "scan.nii"
    sitk.WriteImage(volume(ramp()), str(compressed))
    sitk.WriteImage(volume(ramp() * 0 + 7), str(plain))
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(compressed))) == 7).all()  # ITK's own choice: the twin
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(compressed)), ramp())
    assert (sitk.GetArrayFromImage(read_image(plain)) == 7).all()
    mask = read_mask(compressed, label=3)  # masks go through the same reader
    assert int(sitk.GetArrayFromImage(mask).sum()) == int((ramp() == 3).sum()) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii", "scan.nii.gz"]  # nothing left behind


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "image.nii.gz"
    with pytest.raises(InputError, match="not found") as error:
        read_image(missing)
    assert str(missing) in str(error.value)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_text("not an image")
    with pytest.raises(InputError, match="cannot read") as error:
        read_image(path)
    assert "notes.nii.gz" in str(error.value)


def test_dicom_folder_metadata_names_modality_without_patient_identifiers() -> None:
    image, metadata = read_image_with_metadata(shared_path("dicom", "sts_rtstruct", "STS_001", "CT", "dicom", "image"))
    assert metadata["source_format"] == "dicom" and metadata["modality"] == "CT" and metadata["is_2d"] is False
    assert metadata["dicom"]["NumberOfSlices"] == image.GetSize()[2] == 59
    assert not any("Patient" in key for key in metadata["dicom"])


def test_single_dicom_file_reads_as_one_slice() -> None:
    folder = shared_path("dicom", "sts_rtstruct", "STS_001", "CT", "dicom", "image")
    series = read_image(folder)
    one, metadata = read_image_with_metadata(folder / "000010.dcm")
    assert one.GetSize() == (198, 202, 1) and metadata["is_2d"] is True
    np.testing.assert_allclose(one.GetOrigin(), series.TransformIndexToPhysicalPoint((0, 0, 10)), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(one)[0], sitk.GetArrayFromImage(series)[10])


# ----------------------------------------------------------------------------- masks


def write_labels(tmp_path: Path, labels: np.ndarray, name: str = "mask.nii.gz") -> Path:
    path = tmp_path / name
    sitk.WriteImage(volume(labels), str(path))
    return path


def test_png_mask_0_255_becomes_binary(tmp_path: Path) -> None:
    pixels = np.zeros((9, 13), dtype=np.uint8)
    pixels[2:5, 3:8] = 255
    path = tmp_path / "mask.png"
    PilImage.fromarray(pixels).save(path)
    mask = read_mask(path)
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetSize() == (13, 9, 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask)[0], pixels // 255)


def test_several_labels_need_a_choice(tmp_path: Path) -> None:
    labels = np.zeros((6, 7, 8), dtype=np.uint8)
    labels[1, 1, 1], labels[2, 2, 2:4] = 1, 3
    path = write_labels(tmp_path, labels)
    with pytest.raises(MaskError, match=r"several labels \[1, 3\].*label") as error:
        read_mask(path)
    assert "--label" in str(error.value)
    chosen = read_mask(path, label=3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(chosen), (labels == 3).astype(np.uint8))
    np.testing.assert_allclose(chosen.GetSpacing(), (0.8, 0.9, 2.5), rtol=1e-6)  # float32 in NIfTI


def test_absent_label_lists_those_present(tmp_path: Path) -> None:
    labels = np.zeros((6, 7, 8), dtype=np.uint8)
    labels[1, 1, 1], labels[2, 2, 2] = 2, 5
    with pytest.raises(MaskError, match=r"label 4 is not in .*labels present: \[2, 5\]"):
        read_mask(write_labels(tmp_path, labels), label=4)


def test_empty_mask_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MaskError, match="empty"):
        read_mask(write_labels(tmp_path, np.zeros((6, 7, 8), dtype=np.uint8)))


def test_probability_map_is_not_a_label_image(tmp_path: Path) -> None:
    values = np.zeros((6, 7, 8), dtype=np.float32)
    values[2, 2, 2] = 0.4
    with pytest.raises(MaskError, match="non-integer"):
        read_mask(write_labels(tmp_path, values))


def test_mask_on_another_grid_than_its_reference_is_refused(tmp_path: Path) -> None:
    labels = np.zeros((6, 7, 8), dtype=np.uint8)
    labels[3, 3, 3] = 1
    reference = volume(ramp(), spacing=(0.8, 0.9, 3.0))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        read_mask(write_labels(tmp_path, labels), reference=reference)


@pytest.mark.parametrize("folder", ["uninformative", "uninformative_slice"])
def test_edge_masks(folder: str) -> None:
    base = shared_path("edge", folder)
    image = read_image(next((base / "image").glob("*.nii.gz")))
    with pytest.raises(MaskError, match="empty"):
        read_mask(base / "mask" / "empty_mask.nii.gz", reference=image)
    voxels = image.GetSize()[0] * image.GetSize()[1] * image.GetSize()[2]
    for name, count in [("one_voxel_mask", 1), ("full_mask", voxels), ("disconnected_mask", 3)]:
        mask = read_mask(base / "mask" / f"{name}.nii.gz", reference=image)
        assert int(sitk.GetArrayViewFromImage(mask).sum()) == count, name


# -------------------------------------------------------------------------- geometry

MISMATCHES = {
    "spacing": dict(spacing=(0.8, 0.9, 3.0)),
    "origin": dict(origin=(-10.0, 5.5, 30.0)),
    "direction": dict(direction=OBLIQUE),
}


@pytest.mark.parametrize("field", sorted(MISMATCHES))
def test_geometry_mismatch_names_both_geometries(field: str) -> None:
    image = volume(ramp())
    mask = volume(np.ones((6, 7, 8), dtype=np.uint8), **MISMATCHES[field])
    with pytest.raises(GeometryMismatchError) as error:
        check_geometry(image, mask)
    message = str(error.value)
    assert f"({field} differ" in message and "will not be resampled" in message
    image_line = next(line for line in message.splitlines() if line.strip().startswith("image:"))
    mask_line = next(line for line in message.splitlines() if line.strip().startswith("mask:"))
    for line, geometry in [(image_line, image), (mask_line, mask)]:
        assert f"size={geometry.GetSize()}" in line
        values = getattr(geometry, f"Get{field.capitalize()}")()
        assert f"{field}=(" + ", ".join(f"{v:.6g}" for v in values) + ")" in line


def test_size_mismatch() -> None:
    with pytest.raises(GeometryMismatchError, match=r"size differ[\s\S]*size=\(8, 7, 6\)[\s\S]*size=\(8, 7, 5\)"):
        check_geometry(volume(ramp()), volume(np.ones((5, 7, 8), dtype=np.uint8)))


def test_two_dimensional_mask_against_volume() -> None:
    flat = sitk.GetImageFromArray(np.ones((7, 8), dtype=np.uint8))
    with pytest.raises(GeometryMismatchError, match=r"dimension \(3D vs 2D\)[\s\S]*image: 3D[\s\S]*mask:  2D"):
        check_geometry(volume(ramp()), flat)
    one_slice = volume(np.ones((1, 7, 8), dtype=np.uint8))
    with pytest.raises(GeometryMismatchError, match=r"2D slice vs 3D volume[\s\S]*size=\(8, 7, 1\)"):
        check_geometry(volume(ramp()), one_slice)


def test_float32_header_rounding_is_tolerated() -> None:
    image = volume(ramp(), spacing=(0.976562, 0.976562, 3.27), origin=(-23.437616, -86.914146, -881.32))
    as_float32 = [tuple(float(np.float32(v)) for v in values) for values in (image.GetSpacing(), image.GetOrigin())]
    mask = volume(np.ones((6, 7, 8), dtype=np.uint8), spacing=as_float32[0], origin=as_float32[1])
    check_geometry(image, mask)
