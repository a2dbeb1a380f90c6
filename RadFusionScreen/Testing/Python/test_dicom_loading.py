"""'Load DICOM folder' (slicer_glue/dicom_loading/): SEG / RTSTRUCT loaded by the engine's reader
when Slicer has no plugin for them, and the report of what failed to load.

Engine part: real slicer-core scenes. The image series' volume node is made as Slicer's
DICOMScalarVolumePlugin leaves it: the engine's read of the series as a scalar volume node
with the ``DICOM.instanceUIDs`` attribute (SOP Instance UIDs in slice order). The expected
masks are the engine's own reading (``read_dicom_mask`` on ``read_dicom_series``), compared
voxel for voxel with the segmentation node exported back onto the volume by Slicer's logic.

Database part: Slicer 5.12's real ``DICOMUtils`` (``slicer_code.install()``) drives the
loading; the compiled ``ctkDICOMDatabase`` and ``ctkDICOMIndexer`` and the plugin classes are
replaced by small recording stand-ins (:class:`RecordingDicomDatabase`, :class:`Indexer`,
:class:`ScalarVolumePlugin`), since they cannot run outside the application.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared_path
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage, generate_uid

import slicer_code
from mrml_scene import headless_scene, slicer  # skips the module without slicer-core
from test_dicom import COLUMN_SPACING, ROW_SPACING, ROWS, SLICES, COLUMNS, oblique_axes, stored_values, write_series
from test_dicom_seg import square, write_structure_set
from RadFusionScreenLib.inputs.dicom_series import read_dicom_series
from RadFusionScreenLib.inputs.dicom_seg import read_dicom_mask
from RadFusionScreenLib.slicer_glue import dicom_loading
from RadFusionScreenLib.slicer_glue.dicom_loading import (
    RTSTRUCT_PLUGIN,
    SEG_PLUGIN,
    DicomLoadError,
    DicomLoadReport,
    dicom_lab_to_rgb,
    load_with_engine,
)
from RadFusionScreenLib.slicer_glue.mrml import segment_to_sitk_mask, sitk_to_volume_node

RED_LAB = (34891, 53480, 50166)  # sRGB red (1, 0, 0) in DICOM CIELab (L 53.24, a 80.09, b 67.20, D65)


# ----------------------------------------------------------------------------- writers


def slice_order(files: list[Path]) -> list[pydicom.Dataset]:
    """Headers sorted along the slice normal, as Slicer's scalar volume plugin orders them."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    normal = np.cross(*np.array(headers[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    return sorted(headers, key=lambda h: float(np.dot(normal, np.array(h.ImagePositionPatient, dtype=float))))


def write_seg(path: Path, series: dict, reference: sitk.Image, segments: dict[str, np.ndarray],
              colors: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """A BINARY SEG on ``reference``'s grid: one frame per (segment, slice holding it), frames
    referencing the image slices by SOP Instance UID, the series by ReferencedSeriesSequence."""
    path.parent.mkdir(parents=True, exist_ok=True)
    headers = slice_order(series["files"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SegmentationStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SegmentationStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3.4", generate_uid(), "1.2.3.5"
    ds.Modality, ds.SeriesDescription = "SEG", "lesion SEG"
    ds.SegmentationType = "BINARY"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    referenced = Dataset()
    referenced.SeriesInstanceUID = series["uid"]
    referenced.ReferencedInstanceSequence = Sequence()
    for header in headers:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
        referenced.ReferencedInstanceSequence.append(item)
    ds.ReferencedSeriesSequence = Sequence([referenced])
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = headers[0].ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = [ROW_SPACING, COLUMN_SPACING], 2.5
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orientation]), Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.SegmentSequence, ds.PerFrameFunctionalGroupsSequence, frames = Sequence(), Sequence(), []
    for number, (name, mask) in enumerate(segments.items(), start=1):
        segment = Dataset()
        segment.SegmentNumber, segment.SegmentLabel, segment.SegmentAlgorithmType = number, name, "MANUAL"
        if colors and name in colors:
            segment.RecommendedDisplayCIELabValue = list(colors[name])
        ds.SegmentSequence.append(segment)
        for k in range(mask.shape[0]):
            if not mask[k].any():
                continue
            frame, plane, identification = Dataset(), Dataset(), Dataset()
            plane.ImagePositionPatient = [f"{v:.10g}" for v in reference.TransformIndexToPhysicalPoint((0, 0, k))]
            identification.ReferencedSegmentNumber = number
            source, derivation = Dataset(), Dataset()
            source.ReferencedSOPClassUID = headers[k].SOPClassUID
            source.ReferencedSOPInstanceUID = headers[k].SOPInstanceUID
            derivation.SourceImageSequence = Sequence([source])
            frame.PlanePositionSequence = Sequence([plane])
            frame.SegmentIdentificationSequence = Sequence([identification])
            frame.DerivationImageSequence = Sequence([derivation])
            ds.PerFrameFunctionalGroupsSequence.append(frame)
            frames.append(mask[k])
    ds.NumberOfFrames = len(frames)
    bits = np.concatenate([f.ravel() for f in frames]).astype(np.uint8)
    ds.PixelData = np.packbits(bits, bitorder="little").tobytes()  # packed across frames, as DICOM SEG says
    ds.save_as(path, enforce_file_format=True)
    return path


def write_referencing_structure_set(path: Path, series: dict, reference: sitk.Image, rois: dict,
                                    colors: dict[str, tuple[int, int, int]]) -> Path:
    """test_dicom_seg's structure set, plus the references and ROI colours a planning system writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_structure_set(path, reference, rois)
    ds = pydicom.dcmread(path)
    frame, study, referenced = Dataset(), Dataset(), Dataset()
    referenced.SeriesInstanceUID = series["uid"]
    referenced.ContourImageSequence = Sequence()
    for header in slice_order(series["files"]):
        image = Dataset()
        image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
        referenced.ContourImageSequence.append(image)
    study.RTReferencedSeriesSequence = Sequence([referenced])
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = "1.2.3.5", Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    for item in ds.ROIContourSequence:
        item.ROIDisplayColor = list(colors[names[int(item.ReferencedROINumber)]])
    ds.save_as(path)
    return path


def lesion_masks() -> dict[str, np.ndarray]:
    """Two overlapping, asymmetric segments (a flip or shift of any axis changes them)."""
    tumour = np.zeros((SLICES, ROWS, COLUMNS), dtype=bool)
    tumour[2:6, 3:9, 2:6] = True
    tumour[3, 9:12, 2] = True  # a tail: makes the shape asymmetric along rows
    rim = np.zeros_like(tumour)
    rim[1:4, 2:5, 6:10] = True
    return {"Tumour": tumour, "Rim": rim}


@pytest.fixture()
def ct_folder(tmp_path: Path) -> dict:
    """An oblique CT series (shuffled file names), its engine reading, and a SEG + RTSTRUCT on it."""
    series = write_series(tmp_path / "dicom" / "ct", stored_values(), axes=oblique_axes())
    image, _ = read_dicom_series(tmp_path / "dicom" / "ct")
    seg = write_seg(tmp_path / "dicom" / "seg" / "seg.dcm", series, image, lesion_masks(), {"Tumour": RED_LAB})
    rois = {"GTV": [square(2, 7, z=3.0), square(3, 8, z=4.0)], "Cord": [square(8, 10.5, z=2.0)]}
    rtstruct = write_referencing_structure_set(tmp_path / "dicom" / "rs" / "rs.dcm", series, image, rois,
                                               {"GTV": (255, 0, 0), "Cord": (0, 128, 255)})
    return {"series": series, "image": image, "seg": seg, "rtstruct": rtstruct, "root": tmp_path / "dicom"}


def add_volume_like_slicer(scene, image: sitk.Image, files: list[Path], name: str = "1: CT"):
    """The volume node Slicer's DICOMScalarVolumePlugin makes: the image, plus DICOM.instanceUIDs."""
    node = sitk_to_volume_node(image, name, scene)
    node.SetAttribute("DICOM.instanceUIDs", " ".join(h.SOPInstanceUID for h in slice_order(files)))
    return node


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def segment_arrays(segmentation_node, volume_node) -> dict[str, np.ndarray]:
    """Every segment exported back onto the volume's grid by Slicer's own logic, by segment name."""
    segmentation = segmentation_node.GetSegmentation()
    arrays = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        mask = segment_to_sitk_mask(segmentation_node, segment_id, volume_node)
        arrays[segmentation.GetSegment(segment_id).GetName()] = sitk.GetArrayFromImage(mask).astype(bool)
    return arrays


# ----------------------------------------------------------------------------- engine part


def test_engine_loads_seg_onto_the_referenced_volume_voxel_exact(ct_folder) -> None:
    image, series, seg = ct_folder["image"], ct_folder["series"], ct_folder["seg"]
    with headless_scene() as scene:
        other = write_series(ct_folder["root"] / "other", stored_values(seed=5), axes=oblique_axes(), seed=3)
        decoy = add_volume_like_slicer(scene, image, other["files"], "2: other series, same grid")  # listed first
        volume = add_volume_like_slicer(scene, image, series["files"])
        before = node_ids(scene)
        report = DicomLoadReport(folder=str(ct_folder["root"]), volume_node_ids=[decoy.GetID(), volume.GetID()])
        load_with_engine([seg], report, available_plugins=[RTSTRUCT_PLUGIN], volume_node_ids=report.volume_node_ids)
        assert report.problems == []
        [loaded] = report.engine_segmentations
        assert report.segmentation_node_ids == [loaded.node_id]
        node = scene.GetNodeByID(loaded.node_id)
        assert loaded.volume_node_id == volume.GetID() != decoy.GetID()
        assert loaded.segment_names == ("Tumour", "Rim") and loaded.kind == "SEG"
        assert loaded.matched_by == "SOP Instance UID, 8 of the 8 referenced images" and SEG_PLUGIN in loaded.reason
        added = {scene.GetNodeByID(i).GetClassName() for i in node_ids(scene) - before}
        assert added == {"vtkMRMLSegmentationNode", "vtkMRMLSegmentationDisplayNode"}  # no temporary node left
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        assert node.GetNodeReference(role).GetID() == volume.GetID()
        assert node.GetAttribute(dicom_loading.SOURCE_ATTRIBUTE) == str(seg)
        exported = segment_arrays(node, volume)
        for name in ("Tumour", "Rim"):
            expected = sitk.GetArrayFromImage(read_dicom_mask(seg, image, name)).astype(bool)
            np.testing.assert_array_equal(exported[name], expected)
            np.testing.assert_array_equal(expected, lesion_masks()[name])  # and the engine read what was written
        segmentation = node.GetSegmentation()
        tumour = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Tumour"))
        np.testing.assert_allclose(tumour.GetColor(), (1.0, 0.0, 0.0), atol=0.01)
        assert report.choose_inputs(scene) == (volume, node)
        summary = report.summary()
        assert "1 segmentation" in summary and "RadFusionScreen's own reader" in summary and "Tumour, Rim" in summary


def test_engine_loads_rtstruct_rois_with_names_and_colours(ct_folder) -> None:
    image, series, rtstruct = ct_folder["image"], ct_folder["series"], ct_folder["rtstruct"]
    with headless_scene() as scene:
        volume = add_volume_like_slicer(scene, image, series["files"])
        report = DicomLoadReport(folder="x")
        load_with_engine([rtstruct, ct_folder["series"]["files"][0]], report, available_plugins=[SEG_PLUGIN])
        assert report.problems == [] and len(report.engine_segmentations) == 1  # the CT slice is ignored
        loaded = report.engine_segmentations[0]
        assert loaded.segment_names == ("GTV", "Cord")
        assert RTSTRUCT_PLUGIN in loaded.reason and "SlicerRT" in loaded.reason
        node = scene.GetNodeByID(loaded.node_id)
        exported = segment_arrays(node, volume)
        for name in ("GTV", "Cord"):
            expected = sitk.GetArrayFromImage(read_dicom_mask(rtstruct, image, name)).astype(bool)
            assert expected.any()
            np.testing.assert_array_equal(exported[name], expected)
        segmentation = node.GetSegmentation()
        cord = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Cord"))
        np.testing.assert_allclose(cord.GetColor(), (0.0, 128 / 255, 1.0), atol=1e-6)


def test_plugin_present_leaves_the_object_to_slicer(ct_folder) -> None:
    with headless_scene() as scene:
        add_volume_like_slicer(scene, ct_folder["image"], ct_folder["series"]["files"])
        before = node_ids(scene)
        report = DicomLoadReport(folder="x")
        load_with_engine([ct_folder["seg"], ct_folder["rtstruct"]], report, [SEG_PLUGIN, RTSTRUCT_PLUGIN])
        assert node_ids(scene) == before
        assert report.engine_segmentations == [] and report.problems == [] and not report.needs_attention


def test_plugin_that_failed_is_replaced_by_the_engine_and_says_so(ct_folder) -> None:
    with headless_scene() as scene:
        add_volume_like_slicer(scene, ct_folder["image"], ct_folder["series"]["files"])
        report = DicomLoadReport(folder="x")
        load_with_engine([ct_folder["seg"]], report, [SEG_PLUGIN], failed_in_slicer=[ct_folder["seg"]])
        assert [s.reason for s in report.engine_segmentations] == [f"Slicer's {SEG_PLUGIN} did not load it"]


def test_referenced_series_absent_is_reported_and_scene_unchanged(ct_folder) -> None:
    with headless_scene() as scene:
        other = write_series(ct_folder["root"] / "other", stored_values(seed=5), axes=oblique_axes(), seed=3)
        add_volume_like_slicer(scene, ct_folder["image"], other["files"], "another series")
        before = node_ids(scene)
        report = DicomLoadReport(folder="x")
        load_with_engine([ct_folder["seg"]], report, [], folder_series_uids=[other["uid"]])
        assert node_ids(scene) == before and report.engine_segmentations == []
        [problem] = report.problems
        assert problem.kind == "segmentation" and ct_folder["series"]["uid"] in problem.message
        assert "which is not in the folder" in problem.message
        assert "seg.dcm: SEG not loaded" in report.summary()


def test_broken_seg_file_is_reported_and_scene_unchanged(ct_folder, tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    data = ct_folder["seg"].read_bytes()
    broken.write_bytes(data[: len(data) - 40])  # pixel data cut short: the header still reads
    with headless_scene() as scene:
        add_volume_like_slicer(scene, ct_folder["image"], ct_folder["series"]["files"])
        before = node_ids(scene)
        report = DicomLoadReport(folder="x")
        load_with_engine([broken], report, [])
        assert node_ids(scene) == before and report.segmentation_node_ids == []
        assert report.problems and all(p.subject == str(broken) for p in report.problems)
        assert all("not loaded" in p.message for p in report.problems)
        assert "broken.dcm" in report.summary()


def test_seg_cut_inside_its_header_is_reported_and_scene_unchanged(ct_folder, tmp_path: Path) -> None:
    data = ct_folder["seg"].read_bytes()
    broken = tmp_path / "cut.dcm"
    broken.write_bytes(data[: data.index(b"Tumour") + 3])  # pydicom reads the header up to the cut
    with headless_scene() as scene:
        add_volume_like_slicer(scene, ct_folder["image"], ct_folder["series"]["files"])
        before = node_ids(scene)
        report = DicomLoadReport(folder="x")
        load_with_engine([broken], report, [])
        assert node_ids(scene) == before and report.engine_segmentations == []
        assert report.problems and all(p.subject == str(broken) and "not loaded" in p.message for p in report.problems)


def test_file_pydicom_cannot_parse_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "garbled.dcm"
    data = pydicom.dcmread(shared_path("dicom", "seg_bitpacking", "mask", "mask.dcm"), stop_before_pixels=True)
    data.save_as(tmp_path / "whole.dcm")
    broken.write_bytes((tmp_path / "whole.dcm").read_bytes()[:1000])  # ends inside an element's tag
    with headless_scene() as scene:
        before = node_ids(scene)
        report = DicomLoadReport(folder="x")
        load_with_engine([broken], report, [])
        assert node_ids(scene) == before and len(report.problems) == 1
        assert "not readable as a DICOM SEG/RTSTRUCT header" in report.problems[0].message


def test_a_segment_that_cannot_be_read_is_reported_the_others_load(ct_folder, tmp_path: Path) -> None:
    masks = lesion_masks()
    masks["Outside"] = np.zeros_like(masks["Tumour"])
    masks["Outside"][4, 0, 0] = True
    seg = write_seg(tmp_path / "seg3.dcm", ct_folder["series"], ct_folder["image"], masks)
    dataset = pydicom.dcmread(seg)
    item = dataset.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0]
    item.ImagePositionPatient = [float(v) + 50.0 * n for v, n in zip(item.ImagePositionPatient, oblique_axes()[2])]
    dataset.save_as(seg)  # the last segment's frame now lies 20 slices beyond the image
    with headless_scene() as scene:
        add_volume_like_slicer(scene, ct_folder["image"], ct_folder["series"]["files"])
        report = DicomLoadReport(folder="x")
        load_with_engine([seg], report, [])
        assert report.engine_segmentations[0].segment_names == ("Tumour", "Rim")
        [problem] = report.problems
        assert "segment 3 'Outside' not loaded" in problem.message and "outside the image" in problem.message


def test_failure_while_creating_nodes_removes_everything_added(ct_folder, monkeypatch) -> None:
    calls = []
    real = slicer.util.updateSegmentBinaryLabelmapFromArray

    def second_segment_fails(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise RuntimeError("Importing of segment failed.")
        return real(*args, **kwargs)

    monkeypatch.setattr(slicer.util, "updateSegmentBinaryLabelmapFromArray", second_segment_fails)
    with headless_scene() as scene:
        add_volume_like_slicer(scene, ct_folder["image"], ct_folder["series"]["files"])
        before = node_ids(scene)
        report = DicomLoadReport(folder="x")
        load_with_engine([ct_folder["seg"]], report, [])
        assert len(calls) == 2 and node_ids(scene) == before
        assert report.segmentation_node_ids == [] and len(report.problems) == 1
        assert "creating its segmentation node failed (RuntimeError: Importing of segment failed.)" \
            in report.problems[0].message


def test_volume_found_by_series_uid_in_subject_hierarchy_when_no_instance_uids(ct_folder) -> None:
    with headless_scene() as scene:
        volume = sitk_to_volume_node(ct_folder["image"], "no instance UIDs", scene)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        item = hierarchy.GetItemByDataNode(volume) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume)
        uid_name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()
        hierarchy.SetItemUID(item, uid_name, ct_folder["series"]["uid"])
        report = DicomLoadReport(folder="x")
        load_with_engine([ct_folder["seg"]], report, [])
        [loaded] = report.engine_segmentations
        assert loaded.volume_node_id == volume.GetID() and loaded.matched_by.startswith("Series Instance UID")
        assert loaded.referenced_series_uid == ct_folder["series"]["uid"]


def test_dicom_lab_colour_conversion() -> None:
    np.testing.assert_allclose(dicom_lab_to_rgb(RED_LAB), (1.0, 0.0, 0.0), atol=0.005)
    np.testing.assert_allclose(dicom_lab_to_rgb((65535, 32896, 32896)), (1.0, 1.0, 1.0), atol=0.005)  # white
    np.testing.assert_allclose(dicom_lab_to_rgb((0, 32896, 32896)), (0.0, 0.0, 0.0), atol=0.005)
    with pytest.raises(ValueError):
        dicom_lab_to_rgb((1, 2))


# ----------------------------------------------------------------------------- real data


def test_real_bitpacked_seg_loads_onto_its_ct_voxel_exact() -> None:
    folder = shared_path("dicom", "seg_bitpacking")
    image, _ = read_dicom_series(folder / "image")
    files = sorted((folder / "image").glob("*.dcm"))
    with headless_scene() as scene:
        volume = add_volume_like_slicer(scene, image, files, "1: phantom")
        report = DicomLoadReport(folder=str(folder))
        load_with_engine([folder / "mask" / "mask.dcm"], report, [RTSTRUCT_PLUGIN])
        assert report.problems == []
        [loaded] = report.engine_segmentations
        assert loaded.segment_names == ("Liver",) and loaded.matched_by.startswith("SOP Instance UID, 3 of the 3")
        liver = segment_arrays(scene.GetNodeByID(loaded.node_id), volume)["Liver"]
    expected = sitk.GetArrayFromImage(read_dicom_mask(folder / "mask" / "mask.dcm", image)).astype(bool)
    np.testing.assert_array_equal(liver, expected)
    assert liver.sum(axis=(1, 2)).tolist() == [4, 314, 4]


@pytest.fixture(scope="module")
def sts_pet() -> dict[str, Path]:
    return {"base": shared_path("dicom", "sts_rtstruct", "STS_001", "PET")}


def test_real_rtstruct_whose_series_is_not_in_the_folder_is_reported(sts_pet) -> None:
    """The STS structure sets reference the original TCIA series; the shipped image series was re-identified."""
    base = sts_pet["base"] / "dicom"
    image, metadata = read_dicom_series(base / "image")
    with headless_scene() as scene:
        add_volume_like_slicer(scene, image, sorted((base / "image").glob("*.dcm")), "PET")
        before = node_ids(scene)
        report = DicomLoadReport(folder=str(base))
        load_with_engine([base / "mask" / "RS.dcm"], report, [], folder_series_uids=[metadata["SeriesInstanceUID"]])
        assert node_ids(scene) == before
        [problem] = report.problems
        assert "1.3.6.1.4.1.14519.5.2.1.5168.1900.279539551699081894888330051583" in problem.message
        assert "which is not in the folder" in problem.message


def test_real_rtstruct_referencing_its_series_matches_the_shipped_mask(sts_pet, tmp_path: Path) -> None:
    base = sts_pet["base"] / "dicom"
    image, metadata = read_dicom_series(base / "image")
    files = sorted((base / "image").glob("*.dcm"))
    dataset = pydicom.dcmread(base / "mask" / "RS.dcm")  # point its references at the shipped series
    study = dataset.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    referenced = study.RTReferencedSeriesSequence[0]
    referenced.SeriesInstanceUID = metadata["SeriesInstanceUID"]
    for item, header in zip(referenced.ContourImageSequence, slice_order(files)):
        item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    del referenced.ContourImageSequence[len(files):]
    for roi in dataset.ROIContourSequence:
        for contour in roi.ContourSequence:
            if "ContourImageSequence" in contour:
                del contour.ContourImageSequence
    path = tmp_path / "RS.dcm"
    dataset.save_as(path)
    with headless_scene() as scene:
        volume = add_volume_like_slicer(scene, image, files, "PET")
        report = DicomLoadReport(folder=str(base))
        load_with_engine([path], report, [SEG_PLUGIN])
        assert report.problems == []
        [loaded] = report.engine_segmentations
        gtv = segment_arrays(scene.GetNodeByID(loaded.node_id), volume)["GTV_Mass_PET"]
    np.testing.assert_array_equal(gtv, sitk.GetArrayFromImage(read_dicom_mask(path, image)).astype(bool))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(sts_pet["base"] / "nifti" / "mask" / "mask.nii.gz"))).astype(bool)
    assert 2.0 * np.count_nonzero(gtv & truth) / (gtv.sum() + truth.sum()) >= 0.999


# ----------------------------------------------------------------------------- database part


class RecordingDicomDatabase:
    """Stand-in for the compiled ctkDICOMDatabase (CTK Libs/DICOM/Core/ctkDICOMDatabase.h): the
    ``isOpen`` property and ``seriesForFile`` / ``filesForSeries`` / ``fileValue`` /
    ``fileValueExists``, with tags as "gggg,eeee" strings. Files are indexed from their pydicom
    headers by :class:`Indexer`; every call is recorded."""

    isOpen = True

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.headers: dict[str, pydicom.Dataset] = {}

    def index(self, folder: str) -> None:
        for path in slicer.util.getFilesInDirectory(folder):
            try:
                self.headers[path] = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # the real indexer skips what DCMTK cannot read
                continue

    def seriesForFile(self, path: str) -> str:
        self.calls.append(("seriesForFile", path))
        header = self.headers.get(path)
        return str(header.SeriesInstanceUID) if header is not None else ""

    def filesForSeries(self, series_uid: str, hits: int = -1) -> list[str]:
        self.calls.append(("filesForSeries", series_uid))
        return [p for p, h in self.headers.items() if str(h.SeriesInstanceUID) == series_uid]

    def fileValue(self, path: str, tag: str) -> str:
        self.calls.append(("fileValue", path, tag))
        group, element = (int(part, 16) for part in tag.split(","))
        header = self.headers.get(path)
        value = header.get((group, element)) if header is not None else None
        return "" if value is None else str(value.value)

    def fileValueExists(self, path: str, tag: str) -> bool:
        return self.fileValue(path, tag) != ""


class Indexer:
    """Stand-in for ctk.ctkDICOMIndexer: ``addDirectory(database, folder, copyFiles)`` indexes the
    folder; ``fail_after_indexing`` makes it raise as the real indexer does on a database error."""

    fail_after_indexing = False
    fail_before_indexing = False

    def addDirectory(self, database, folder, copyFiles=False):
        if self.fail_before_indexing:
            raise RuntimeError("database is locked")
        database.index(folder)
        if self.fail_after_indexing:
            raise RuntimeError("database is locked")

    def waitForImportFinished(self):
        pass


class Loadable:
    """Shaped like DICOMLib.DICOMPlugin.DICOMLoadable (a plain, hashable object)."""

    def __init__(self, files, name, confidence):
        self.files, self.name, self.confidence = list(files), name, confidence
        self.tooltip, self.warning, self.selected = name, "", True


class ScalarVolumePlugin:
    """Stand-in for Slicer's DICOMScalarVolumePlugin: one loadable per image series (SEG and
    RTSTRUCT excluded, as the real plugin's examineFiles does); load makes the volume node from
    the engine's read and sets DICOM.instanceUIDs."""

    loadType = "Scalar Volume"

    def examineForImport(self, file_lists):
        loadables = []
        for files in file_lists:
            headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            if any(str(h.Modality) in ("SEG", "RTSTRUCT") for h in headers):
                continue
            loadables.append(Loadable(files, str(headers[0].SeriesDescription), 0.5))
        return loadables

    def examine(self, file_lists):
        return []

    def load(self, loadable):
        image, _ = read_dicom_series(Path(loadable.files[0]).parent)
        return add_volume_like_slicer(slicer.mrmlScene, image, [Path(f) for f in loadable.files], loadable.name)


class FailingSegPlugin:
    """A SEG plugin that offers the SEG and fails to load it (as when its converter is missing)."""

    loadType = "DICOMSegmentation"

    def examineForImport(self, file_lists):
        return [Loadable(files, "lesion SEG", 0.95) for files in file_lists
                if str(pydicom.dcmread(files[0], stop_before_pixels=True).Modality) == "SEG"]

    def examine(self, file_lists):
        return []

    def load(self, loadable):
        raise RuntimeError("dcmqi binary 'segimage2itkimage' not found.")


@pytest.fixture()
def slicer_dicom(monkeypatch):
    """Slicer 5.12's real DICOMUtils, importable as ``DICOMLib.DICOMUtils`` as in the application,
    on the recording database and indexer; yields (database, plugins dict)."""
    slicer_code.install()
    import ctk

    if importlib.util.find_spec("requests") is None:  # DICOMUtils imports it for DICOMweb only
        requests = types.ModuleType("requests")
        auth_base = type("AuthBase", (), {})  # read in DICOMUtils' annotations at import time
        requests.auth = types.SimpleNamespace(AuthBase=auth_base, HTTPBasicAuth=type("HTTPBasicAuth", (auth_base,), {}))
        monkeypatch.setitem(sys.modules, "requests", requests)
    monkeypatch.delitem(sys.modules, "DICOMUtils", raising=False)
    dicom_utils = importlib.import_module("DICOMUtils")
    assert Path(dicom_utils.__file__).is_relative_to(slicer_code.SLICER_PYTHON)
    monkeypatch.setitem(sys.modules, "DICOMLib", types.SimpleNamespace(DICOMUtils=dicom_utils))
    monkeypatch.setattr(ctk, "ctkDICOMIndexer", Indexer, raising=False)
    monkeypatch.setattr(Indexer, "fail_after_indexing", False)
    monkeypatch.setattr(Indexer, "fail_before_indexing", False)
    database = RecordingDicomDatabase()
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    with headless_scene() as scene:
        plugins = {"DICOMScalarVolumePlugin": ScalarVolumePlugin}
        slicer.modules.dicomPlugins = plugins
        yield database, plugins, scene


def test_folder_load_reports_files_that_are_not_dicom_and_loads_seg_by_engine(ct_folder, slicer_dicom) -> None:
    database, _, scene = slicer_dicom
    root = ct_folder["root"]
    (root / "notes.txt").write_text("scanned by the registrar\n")
    report = dicom_loading.loadDicomFolder(root)
    assert len(report.volume_node_ids) == 1 and len(report.engine_segmentations) == 2
    volume = scene.GetNodeByID(report.volume_node_ids[0])
    assert {s.kind for s in report.engine_segmentations} == {"SEG", "RTSTRUCT"}
    assert all(s.volume_node_id == volume.GetID() for s in report.engine_segmentations)
    assert [(p.kind, Path(p.subject).name, p.message) for p in report.problems] == [
        ("file", "notes.txt", "not a DICOM file; not imported")]
    summary = report.summary()
    assert "notes.txt: not a DICOM file; not imported" in summary and "1 image volume, 2 segmentations" in summary
    chosen_volume, chosen_segmentation = report.choose_inputs(scene)
    assert chosen_volume is volume and chosen_segmentation.GetID() in report.segmentation_node_ids
    assert ("seriesForFile", os.path.abspath(root / "notes.txt")) in database.calls


def test_folder_load_reports_import_dicom_false_and_still_loads_what_was_imported(ct_folder, slicer_dicom) -> None:
    Indexer.fail_after_indexing = True
    report = dicom_loading.loadDicomFolder(ct_folder["root"])
    assert len(report.volume_node_ids) == 1
    [problem] = [p for p in report.problems if p.kind == "import"]
    assert "DICOMUtils.importDicom returned False" in problem.message
    assert "importDicom returned False" in report.summary()


def test_folder_where_nothing_imports_raises_a_clear_error(ct_folder, slicer_dicom) -> None:
    Indexer.fail_before_indexing = True
    (ct_folder["root"] / "notes.txt").write_text("x")
    with pytest.raises(DicomLoadError, match="No DICOM series found") as error:
        dicom_loading.loadDicomFolder(ct_folder["root"])
    message = str(error.value)
    assert "importDicom returned False" in message and "notes.txt: not a DICOM file" in message
    assert isinstance(error.value, ValueError) and error.value.report.volume_node_ids == []


def test_folder_seg_whose_plugin_fails_is_loaded_by_engine_and_both_reported(ct_folder, slicer_dicom) -> None:
    _, plugins, _ = slicer_dicom
    plugins[SEG_PLUGIN] = FailingSegPlugin
    report = dicom_loading.loadDicomFolder(ct_folder["root"])
    reasons = {s.kind: s.reason for s in report.engine_segmentations}
    assert reasons == {"SEG": f"Slicer's {SEG_PLUGIN} did not load it",
                       "RTSTRUCT": f"Slicer's {RTSTRUCT_PLUGIN} is not installed or is disabled (it comes with the "
                                   "SlicerRT extension)"}
    failed = [p for p in report.problems if p.kind == "series" and SEG_PLUGIN in p.message]
    assert len(failed) == 1 and "could not load 'lesion SEG' as DICOMSegmentation" in failed[0].message
