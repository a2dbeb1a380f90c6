"""Property-based fuzzing (hypothesis) of the DICOM-series and mask readers.

The property: whatever the bytes or arrays, a reader either returns a consistent image or
raises one of the engine's documented errors (:class:`RadFusionError` subclasses, each with
a message); never another exception, never a hang. Budget: a fixed number of examples per
test (``FUZZ_EXAMPLES``, default 40; set the environment variable higher for a longer run),
seeded through hypothesis' database-free derandomised mode so CI runs are reproducible.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from RadFusionScreenLib.core.errors import RadFusionError
from RadFusionScreenLib.inputs.images import read_image, read_mask
from test_dicom import stored_values, write_series

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _template_series(root: Path) -> list[Path]:
    folder = root / "template"
    if not folder.exists():
        write_series(folder, stored_values()[:4])
    return sorted(folder.iterdir())


def _read_or_documented_error(path: Path):
    try:
        image = read_image(path)
    except RadFusionError as error:
        assert str(error), "an error without a message"
        return None
    assert image.GetDimension() == 3 and all(s > 0 for s in image.GetSize())
    assert np.isfinite(sitk.GetArrayViewFromImage(image)).all()
    return image


# one mutation of one file of the series
mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("delete_tag"), st.sampled_from(["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                                     "Rows", "PixelData", "RescaleSlope", "SeriesInstanceUID",
                                                     "BitsAllocated", "Modality"]), st.just(0)),
    st.tuples(st.just("set_tag"), st.sampled_from(["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"]),
              st.integers(0, 3)),
)


@FUZZ
@given(file_index=st.integers(0, 3), mutation=mutations)
def test_dicom_series_reader_under_mutated_files(tmp_path_factory, file_index, mutation):
    root = tmp_path_factory.getbasetemp() / "fuzz_dicom"
    template = _template_series(root)
    folder = root / "case"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(template[0].parent, folder)
    target = folder / template[file_index].name
    kind, where, value = mutation
    if kind in ("flip", "truncate"):
        data = bytearray(target.read_bytes())
        where = where % len(data)
        target.write_bytes(bytes(data[:where]) if kind == "truncate" else
                           bytes(data[:where]) + bytes([data[where] ^ value]) + bytes(data[where + 1:]))
    else:
        ds = pydicom.dcmread(target)
        if kind == "delete_tag":
            delattr(ds, where)
        else:
            ds[where].value = [["1e400", "0", "0"], ["0", "0", "0", "0", "0", "0"], ["0", "-1"], ["nan", "1", "1"]][value]
        ds.save_as(target)
    _read_or_documented_error(folder)


_ELEMENTS = {
    np.uint8: st.sampled_from([0, 0, 1, 2, 255]),
    np.int16: st.sampled_from([0, 0, 1, 2, -1, -32768]),
    np.float32: st.sampled_from([0.0, 0.0, 1.0, 0.5, -1.0, float("nan"), float("inf")]),
    np.float64: st.sampled_from([0.0, 1.0, 2.0, 1e-9, float("nan"), -float("inf")]),
}
mask_arrays = st.sampled_from(list(_ELEMENTS)).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9),
                             elements=_ELEMENTS[dtype]))


@FUZZ
@given(array=mask_arrays, label=st.one_of(st.none(), st.integers(-1, 3)))
def test_mask_reader_under_arbitrary_label_images(tmp_path_factory, array, label):
    folder = tmp_path_factory.getbasetemp() / "fuzz_mask"
    folder.mkdir(exist_ok=True)
    path = folder / "mask.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    try:
        mask = read_mask(path, label=label)
    except RadFusionError as error:
        assert str(error)
        return
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    assert set(values.tolist()) <= {0, 1} and 1 in values
