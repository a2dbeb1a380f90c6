"""Masks from DICOM SEG and RTSTRUCT: bit packing, segment choice, placement on the image grid,
contour filling (even-odd, half-open boundary), agreement with the NIfTI masks shipped beside
the sarcoma RTSTRUCTs, and the API / CLI / manifest paths that carry a segment choice.

Agreement threshold: on all nine STS series (3 patients x CT, MR T1, PET) our rasterisation
reproduces the NIfTI masks voxel for voxel (Dice 1.0000, identical counts; see
docs/dicom-masks.md), under every boundary rule tried, since no pixel centre lies on those
outlines. The tests allow Dice >= 0.999 and counts within 0.5 %: a regression that moves
even a thin rim of boundary pixels (about 1 % of a small PET ROI) fails.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared_path
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from RadFusionScreenLib.app.cli import main
from RadFusionScreenLib.features.cohort import extract_cohort
from RadFusionScreenLib.inputs.dicom_seg import list_segments, read_dicom_mask
from RadFusionScreenLib.core.errors import InputError, MaskError
from RadFusionScreenLib.features.case_features import ExtractionConfig
from RadFusionScreenLib.inputs.images import check_geometry, read_image, read_mask

CASES = ("STS_001", "STS_002", "STS_003")
MODALITIES = ("CT", "MR_T1", "PET")
MIN_DICE = 0.999
MAX_COUNT_DIFFERENCE = 0.005


def voxels(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# ----------------------------------------------------------------------------- SEG


@pytest.fixture(scope="module")
def bitpacking() -> tuple[Path, sitk.Image]:
    folder = shared_path("dicom", "seg_bitpacking")
    return folder / "mask" / "mask.dcm", read_image(folder / "image")


@pytest.fixture(scope="module")
def pet() -> tuple[Path, sitk.Image]:
    folder = shared_path("dicom", "seg_multisegment")
    return folder / "mask" / "mask.dcm", read_image(folder / "image")


def test_seg_bitpacking_frames_not_byte_aligned_give_exact_voxels(bitpacking) -> None:
    path, reference = bitpacking
    assert reference.GetSize() == (23, 38, 3) and (23 * 38) % 8 != 0
    mask = read_dicom_mask(path, reference)
    values = voxels(mask)
    corners = np.zeros((38, 23), dtype=bool)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    round_region = voxels(reference)  # the phantom's image is 1 exactly where the SEG should be
    np.testing.assert_array_equal(values, round_region | corners[np.newaxis])
    assert values.sum(axis=(1, 2)).tolist() == [4, 314, 4]
    assert round_region[[0, 2]].sum() == 0 and round_region[1].sum() == 310
    assert mask.GetPixelID() == sitk.sitkUInt8 and set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 1}
    check_geometry(reference, mask, tolerance=1e-9)


def test_seg_bit_unpacking_agrees_with_pydicom_decoder(bitpacking) -> None:
    path, reference = bitpacking
    np.testing.assert_array_equal(voxels(read_dicom_mask(path, reference)), pydicom.dcmread(path).pixel_array == 1)


def test_io_read_mask_dispatches_seg_file_and_folder(bitpacking) -> None:
    path, reference = bitpacking
    from_file = voxels(read_mask(path, reference=reference))
    np.testing.assert_array_equal(voxels(read_mask(path.parent, reference=reference, segment="Liver")), from_file)
    assert list_segments(path.parent) == [(1, "Liver")]


def test_seg_or_rtstruct_as_the_image_is_refused(bitpacking) -> None:
    path, _ = bitpacking
    rtstruct = shared_path("dicom", "sts_rtstruct", "STS_001", "CT", "dicom", "mask")
    for given, kind in ((path, "SEG"), (path.parent, "SEG"), (rtstruct, "RTSTRUCT"), (rtstruct / "RS.dcm", "RTSTRUCT")):
        with pytest.raises(InputError, match=f"is a DICOM {kind} \\(a mask\\), not an image: pass it as the mask"):
            read_image(given)


def test_dicom_mask_needs_the_reference_and_refuses_a_label(bitpacking) -> None:
    path, reference = bitpacking
    with pytest.raises(InputError, match="needs the image it segments"):
        read_mask(path)
    with pytest.raises(MaskError, match="--segment"):
        read_mask(path, reference=reference, label=1)


def test_seg_multisegment_lists_and_picks_by_name_or_number(pet) -> None:
    path, reference = pet
    segments = list_segments(path)
    assert [n for n, _ in segments] == list(range(1, 12))
    assert segments[0] == (1, "Neoplasm, Primary") and {name for _, name in segments[1:]} == {"Neoplasm, Secondary"}
    by_number = voxels(read_dicom_mask(path, reference, 1))
    for choice in ("Neoplasm, Primary", "neoplasm, primary", "1"):
        np.testing.assert_array_equal(voxels(read_dicom_mask(path, reference, choice)), by_number)


@pytest.mark.parametrize(
    "choice, expected",
    [
        (None, "holds 11 segments"),
        ("GTV", "has no segment 'GTV'"),
        (12, "has no segment number 12"),
        ("Neoplasm, Secondary", "shared by segments 2, 3, 4"),
    ],
)
def test_seg_missing_or_wrong_segment_lists_the_available_ones(pet, choice, expected: str) -> None:
    path, reference = pet
    with pytest.raises(MaskError, match=expected) as error:
        read_dicom_mask(path, reference, choice)
    message = str(error.value)
    assert "--segment NAME|NUMBER; available: 1 'Neoplasm, Primary', 2 'Neoplasm, Secondary'" in message
    assert "11 'Neoplasm, Secondary'" in message


def test_seg_multisegment_every_segment_lies_on_the_pet_grid(pet) -> None:
    """Each frame lands on the slice its ImagePositionPatient names, pixel for pixel, over hot PET voxels."""
    path, reference = pet
    dataset = pydicom.dcmread(path)
    frames = dataset.pixel_array.astype(bool)  # pydicom's own decoder, as an independent reading
    suv = sitk.GetArrayViewFromImage(reference)
    for number in range(1, 12):
        mask = voxels(read_dicom_mask(path, reference, number))
        expected = np.zeros_like(mask)
        for item, frame in zip(dataset.PerFrameFunctionalGroupsSequence, frames):
            if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number:
                position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                column, row, k = reference.TransformPhysicalPointToIndex(position)
                assert (column, row) == (0, 0)
                expected[k] |= frame
        assert mask.any()
        np.testing.assert_array_equal(mask, expected)
        assert suv[mask].mean() > 5 * suv.mean()  # tumours are FDG-avid: a misplaced mask would not be


def _edited_seg(path: Path, tmp_path: Path, edit) -> Path:
    dataset = pydicom.dcmread(path)
    edit(dataset)
    out = tmp_path / "edited_seg.dcm"
    dataset.save_as(out)
    return out


def test_fractional_seg_is_thresholded_at_half_the_maximum(bitpacking, tmp_path: Path) -> None:
    path, reference = bitpacking
    binary = pydicom.dcmread(path).pixel_array.astype(np.uint8)
    fractional = binary * 150
    fractional[1, 30, 5], fractional[1, 31, 5] = 100, 99  # exactly half of 200 is in, just below is out

    def to_fractional(dataset: Dataset) -> None:
        dataset.SegmentationType, dataset.MaximumFractionalValue = "FRACTIONAL", 200
        dataset.SegmentationFractionalType = "PROBABILITY"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
        dataset.PixelData = fractional.tobytes()

    expected = binary.astype(bool)
    expected[1, 30, 5] = True
    mask = read_dicom_mask(_edited_seg(path, tmp_path, to_fractional), reference)
    np.testing.assert_array_equal(voxels(mask), expected)


@pytest.mark.parametrize(
    "shift, message",
    [
        ((0.35, 0.0, 0.0), "fraction of a pixel"),  # 0.5 pixel of 0.7 mm
        ((0.0, 0.0, 1.25), "0.50 slices away"),
        ((0.0, 0.0, 2.5), "outside the image"),
        ((0.7, 0.0, 0.0), "outside the image"),  # whole pixel: the corner pixels leave the grid
    ],
)
def test_seg_frames_off_the_reference_grid_are_refused(bitpacking, tmp_path: Path, shift, message: str) -> None:
    path, reference = bitpacking

    def move(dataset: Dataset) -> None:
        for item in dataset.PerFrameFunctionalGroupsSequence:
            plane = item.PlanePositionSequence[0]
            plane.ImagePositionPatient = [float(v) + s for v, s in zip(plane.ImagePositionPatient, shift)]

    with pytest.raises(MaskError, match=message):
        read_dicom_mask(_edited_seg(path, tmp_path, move), reference)


def test_seg_of_another_series_orientation_is_refused(bitpacking, tmp_path: Path) -> None:
    path, reference = bitpacking

    def rotate(dataset: Dataset) -> None:
        dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]

    with pytest.raises(MaskError, match="orientation"):
        read_dicom_mask(_edited_seg(path, tmp_path, rotate), reference)


# ------------------------------------------------------------------------ RTSTRUCT


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("case", CASES)
def test_rtstruct_agrees_with_shipped_nifti_mask(case: str, modality: str) -> None:
    base = shared_path("dicom", "sts_rtstruct", case, modality)
    reference = read_image(base / "dicom" / "image")
    ours = read_mask(base / "dicom" / "mask" / "RS.dcm", reference=reference, segment=f"GTV_Mass_{modality}")
    truth_image = sitk.ReadImage(str(base / "nifti" / "mask" / "mask.nii.gz"))
    check_geometry(reference, truth_image)
    ours_values, truth = voxels(ours), voxels(truth_image)
    assert dice(ours_values, truth) >= MIN_DICE
    assert abs(int(ours_values.sum()) - int(truth.sum())) <= MAX_COUNT_DIFFERENCE * truth.sum()


def write_structure_set(path: Path, reference: sitk.Image, rois: dict[str, list[list[tuple[float, float, float]]]]) -> Path:
    """An RTSTRUCT whose contours are given in continuous voxel indices (x, y, z) of ``reference``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "RTSTRUCT"
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, Sequence()
        for indices in contours:
            contour = Dataset()
            contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(indices)
            points = [reference.TransformContinuousIndexToPhysicalPoint(p) for p in indices]
            contour.ContourData = [round(v, 6) for point in points for v in point]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)
    return path


def square(low: float, high: float, z: float = 1.0) -> list[tuple[float, float, float]]:
    return [(low, low, z), (high, low, z), (high, high, z), (low, high, z)]


def test_rtstruct_even_odd_fill_and_half_open_boundary(bitpacking, tmp_path: Path) -> None:
    _, reference = bitpacking
    rois = {
        "on_centres": [square(2, 5)],  # outline through pixel centres: 2, 3, 4 in; 5 out (area 3 x 3)
        "ring_with_island": [square(1.5, 9.5), square(3.5, 6.5), square(4.5, 5.5)],
    }
    path = write_structure_set(tmp_path / "rs.dcm", reference, rois)
    assert list_segments(path) == [(1, "on_centres"), (2, "ring_with_island")]
    on_centres = voxels(read_dicom_mask(path, reference, "on_centres"))
    expected = np.zeros_like(on_centres)
    expected[1, 2:5, 2:5] = True
    np.testing.assert_array_equal(on_centres, expected)
    ring = voxels(read_dicom_mask(path, reference, 2))
    expected = np.zeros_like(ring)
    expected[1, 2:10, 2:10] = True
    expected[1, 4:7, 4:7] = False
    expected[1, 5, 5] = True
    np.testing.assert_array_equal(ring, expected)
    assert ring.sum() == 64 - 9 + 1


@pytest.mark.parametrize(
    "contours, message",
    [
        ([square(2, 5, z=1.5)], "0.50 slices away"),
        ([square(2, 5, z=3.0)], "outside the image"),
        ([square(-4, 5)], "outside the image"),
        ([square(2, 5, z=1.0), square(8, 12, z=1.2)], "different planes"),
        ([[(2, 2, 0.0), (5, 2, 1.0), (5, 5, 1.0), (2, 5, 0.0)]], "not parallel to the slices"),
    ],
)
def test_rtstruct_contours_off_the_grid_are_refused(bitpacking, tmp_path: Path, contours, message: str) -> None:
    _, reference = bitpacking
    path = write_structure_set(tmp_path / "rs.dcm", reference, {"roi": contours})
    with pytest.raises(MaskError, match=message):
        read_dicom_mask(path, reference)


@pytest.fixture(scope="module")
def sts002(tmp_path_factory) -> dict[str, Path]:
    """STS_002 CT with a two-ROI structure set: its GTV renamed 'GTV_Mass', plus a shrunken copy."""
    base = shared_path("dicom", "sts_rtstruct", "STS_002", "CT")
    dataset = pydicom.dcmread(base / "dicom" / "mask" / "RS.dcm")
    dataset.StructureSetROISequence[0].ROIName = "GTV_Mass"
    roi = copy.deepcopy(dataset.StructureSetROISequence[0])
    roi.ROINumber, roi.ROIName = 2, "GTV_core"
    contours = copy.deepcopy(dataset.ROIContourSequence[0])
    contours.ReferencedROINumber = 2
    for contour in contours.ContourSequence:
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        centre = points.mean(axis=0)
        contour.ContourData = [round(v, 4) for v in (centre + 0.5 * (points - centre)).ravel()]
    dataset.StructureSetROISequence.append(roi)
    dataset.ROIContourSequence.append(contours)
    folder = tmp_path_factory.mktemp("sts002")
    dataset.save_as(folder / "two_rois.dcm")
    return {"image": base / "dicom" / "image", "rtstruct": base / "dicom" / "mask" / "RS.dcm",
            "two_rois": folder / "two_rois.dcm", "nifti": base / "nifti" / "mask" / "mask.nii.gz"}


def test_rtstruct_two_rois_pick_by_name_or_number(sts002) -> None:
    reference = read_image(sts002["image"])
    assert list_segments(sts002["two_rois"]) == [(1, "GTV_Mass"), (2, "GTV_core")]
    gtv = voxels(read_mask(sts002["two_rois"], reference=reference, segment="GTV_Mass"))
    np.testing.assert_array_equal(gtv, voxels(sitk.ReadImage(str(sts002["nifti"]))))
    core = voxels(read_mask(sts002["two_rois"], reference=reference, segment=2))
    assert 0 < core.sum() < 0.4 * gtv.sum() and not (core & ~gtv).any()
    with pytest.raises(MaskError, match="available: 1 'GTV_Mass', 2 'GTV_core'"):
        read_mask(sts002["two_rois"], reference=reference)


def test_segment_on_a_label_image_is_refused(sts002) -> None:
    reference = read_image(sts002["image"])
    with pytest.raises(MaskError, match="label image, not a DICOM SEG/RTSTRUCT"):
        read_mask(sts002["nifti"], reference=reference, segment="GTV_Mass")


def test_cli_features_with_rtstruct_and_segment(sts002, tmp_path: Path, capsys) -> None:
    output = tmp_path / "one.csv"
    args = ["features", str(sts002["image"]), str(sts002["two_rois"]), "--no-deep", "-o", str(output)]
    assert main(args + ["--segment", "GTV_Mass"]) == 0
    row = pd.read_csv(output)
    assert row.loc[0, "roi_voxels"] == voxels(sitk.ReadImage(str(sts002["nifti"]))).sum() == 17090
    output.unlink()
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "holds 2 segments" in error and "--segment NAME|NUMBER; available: 1 'GTV_Mass', 2 'GTV_core'" in error
    assert not output.exists()


def test_manifest_segment_column_per_case(sts002, tmp_path: Path) -> None:
    rows = [
        {"case_id": "gtv", "image": sts002["image"], "mask": sts002["two_rois"], "segment": "GTV_Mass"},
        {"case_id": "core", "image": sts002["image"], "mask": sts002["two_rois"], "segment": "2"},
        {"case_id": "single_roi", "image": sts002["image"], "mask": sts002["rtstruct"], "segment": ""},
        {"case_id": "unchosen", "image": sts002["image"], "mask": sts002["two_rois"], "segment": ""},
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = ExtractionConfig(deep=None, modality="CT", params=str(_shape_only_params(tmp_path)))
    table = extract_cohort(manifest, tmp_path / "features.csv", config, progress=False).set_index("case_id")
    assert "segment" not in table.columns  # consumed like mask_label, not passed through
    assert table.loc["gtv", "roi_voxels"] == table.loc["single_roi", "roi_voxels"] == 17090
    assert 0 < table.loc["core", "roi_voxels"] < 17090
    assert table.loc[["gtv", "core", "single_roi"], "error"].fillna("").eq("").all()
    assert "holds 2 segments" in table.loc["unchosen", "error"]
    assert ExtractionConfig(segment="GTV").fingerprint() != ExtractionConfig().fingerprint()
    assert ExtractionConfig(segment=2.0).segment == 2 and ExtractionConfig(segment=" ").segment is None


def _shape_only_params(folder: Path) -> Path:
    """Shape features only: the manifest test is about masks, not about texture run time."""
    path = folder / "shape.yaml"
    path.write_text("imageType:\n  Original: {}\nfeatureClass:\n  shape: []\nsetting:\n  label: 1\n")
    return path


def test_screening_mask_path_takes_a_segment(sts002) -> None:
    from RadFusionScreenLib.serving.screening import case_images

    image, mask, modality = case_images(str(sts002["image"]), str(sts002["two_rois"]), None, None, "GTV_Mass")
    assert modality == "CT" and voxels(mask).sum() == 17090 and mask.GetSize() == image.GetSize()
    with pytest.raises(InputError, match="not a DICOM SEG/RTSTRUCT file"):
        case_images(image, mask, None, None, "GTV_Mass")
