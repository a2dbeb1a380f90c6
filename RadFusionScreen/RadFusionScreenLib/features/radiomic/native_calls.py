"""pyradiomics' compiled texture-matrix and shape code, called with the GIL released.

pyradiomics' C extension (``radiomics._cmatrices``, ``radiomics._cshape``) holds the GIL for
its whole run: on the STS_001 CT that is 3.7 s of its 6 s (the shape's mesh diameters alone
1.1 s), so threads could not overlap any of it. The C functions those extensions wrap
(``calculate_glcm`` ... in cmatrices.c, ``calculate_coefficients`` in cshape.c) are exported
from the same shared objects; :mod:`ctypes` calls them with the GIL released.

:data:`CMATRICES` and :data:`CSHAPE` have the Python-level functions of the two extension
modules (same arguments, same results) and do what their C wrappers do (array conversion,
angles, bounding box, zeroed outputs, error messages), so the matrices are the extension's
own, computed by the same code. They serve segment-based calls of the pyradiomics version
whose wrappers they mirror (``NATIVE_VERSIONS``); voxel-based calls, other versions and a
library without the symbols go to the extension itself.
"""

from __future__ import annotations

import ctypes
import types
from typing import Any

import numpy
import radiomics
from radiomics import cMatrices, cShape

# pyradiomics releases whose C wrappers (_cmatrices.c / _cshape.c) the functions below mirror.
NATIVE_VERSIONS = {"v3.1.4", "3.1.4"}

_INT_P = numpy.ctypeslib.ndpointer(numpy.intc, flags="C_CONTIGUOUS")
_BOOL_P = numpy.ctypeslib.ndpointer(numpy.bool_, flags="C_CONTIGUOUS")
_BYTE_P = numpy.ctypeslib.ndpointer(numpy.byte, flags="C_CONTIGUOUS")
_DOUBLE_P = numpy.ctypeslib.ndpointer(numpy.double, flags="C_CONTIGUOUS")
_INT = ctypes.c_int
# image, mask, size, bb, strides, angles, Na, Nd: the arguments every matrix function starts with
_MATRIX_HEAD = [_INT_P, _BOOL_P, _INT_P, _INT_P, _INT_P, _INT_P, _INT, _INT]
_SIGNATURES = {
    "calculate_glcm": [*_MATRIX_HEAD, _DOUBLE_P, _INT],
    "calculate_glszm": [*_MATRIX_HEAD, _INT_P, _INT, _INT, _INT],
    "fill_glszm": [_INT_P, _DOUBLE_P, _INT, _INT],
    "calculate_glrlm": [*_MATRIX_HEAD, _DOUBLE_P, _INT, _INT],
    "calculate_ngtdm": [*_MATRIX_HEAD, _DOUBLE_P, _INT],
    "calculate_gldm": [*_MATRIX_HEAD, _DOUBLE_P, _INT, _INT],
}


def _load(module: Any, signatures: dict[str, list]) -> ctypes.CDLL | None:
    """The extension's shared object with typed C functions (ctypes releases the GIL per call)."""
    if str(radiomics.__version__) not in NATIVE_VERSIONS or not getattr(module, "__file__", None):
        return None
    try:
        library = ctypes.CDLL(module.__file__)
        for name, argtypes in signatures.items():
            function = getattr(library, name)
            function.argtypes, function.restype = argtypes, _INT
    except (OSError, AttributeError):
        return None
    return library


_MATRICES = _load(cMatrices, _SIGNATURES)
_SHAPE = _load(cShape, {"calculate_coefficients": [_BYTE_P, _INT_P, _INT_P, _DOUBLE_P, ctypes.POINTER(ctypes.c_double),
                                                    ctypes.POINTER(ctypes.c_double), _DOUBLE_P]})
AVAILABLE = _MATRICES is not None and _SHAPE is not None
# Below this many voxels a C call takes well under a millisecond: the extension's own call is
# cheaper than the ctypes argument checks, and releasing the GIL would gain nothing.
NATIVE_MIN_VOXELS = 32768


def _extension(image: Any, voxel_based: tuple) -> bool:
    """Whether to call the extension itself: voxel-based, no usable library, or a small image."""
    return bool(voxel_based) or _MATRICES is None or numpy.size(image) < NATIVE_MIN_VOXELS


def _volume(image: Any, mask: Any, copy_mask: bool = False) -> tuple:
    """try_parse_arrays + set_bb: int32 image and bool mask (C order), size, strides, whole-array box."""
    image = numpy.require(image, numpy.intc, ["C_CONTIGUOUS", "ALIGNED"])
    mask = numpy.array(mask, dtype=numpy.bool_, order="C", copy=True if copy_mask else None)
    if image.ndim != mask.ndim:
        raise ValueError("Expected image and mask to have equal number of dimensions.")
    if image.shape != mask.shape:
        raise ValueError("Dimensions of image and mask do not match.")
    size = numpy.array(image.shape, dtype=numpy.intc)
    strides = numpy.array([stride // image.itemsize for stride in image.strides], dtype=numpy.intc)
    box = numpy.concatenate([numpy.zeros_like(size), size - 1]).astype(numpy.intc)
    return image, mask, size, box, strides


def _angles(size: numpy.ndarray, distances: Any, bidirectional: bool, force2D: bool,  # noqa: N803
            force2Ddimension: int) -> numpy.ndarray:  # noqa: N803
    """build_angles_arr, through the extension's own generate_angles (no distances: [1])."""
    angles = cMatrices.generate_angles(size, numpy.asarray(distances), int(bidirectional), int(force2D),
                                       int(force2Ddimension))
    return numpy.require(angles, numpy.intc, ["C_CONTIGUOUS", "ALIGNED"])


def _failed(ok: bool, message: str) -> None:
    if not ok:
        raise IndexError(message)


def calculate_glcm(image, mask, distances, Ng, force2D, force2Ddimension, *voxel_based):  # noqa: N803
    if _extension(image, voxel_based):
        return cMatrices.calculate_glcm(image, mask, distances, Ng, force2D, force2Ddimension, *voxel_based)
    image, mask, size, box, strides = _volume(image, mask)
    angles = _angles(size, distances, False, force2D, force2Ddimension)
    glcm = numpy.zeros((1, int(Ng), int(Ng), len(angles)))
    _failed(_MATRICES.calculate_glcm(image, mask, size, box, strides, angles, len(angles), image.ndim, glcm, int(Ng)),
            "Calculation of GLCM Failed.")
    return glcm, angles


def calculate_glszm(image, mask, Ng, Ns, force2D, force2Ddimension, *voxel_based):  # noqa: N803
    if _extension(image, voxel_based):
        return cMatrices.calculate_glszm(image, mask, Ng, Ns, force2D, force2Ddimension, *voxel_based)
    image, mask, size, box, strides = _volume(image, mask, copy_mask=True)  # the zone search clears mask voxels
    angles = _angles(size, [1], True, force2D, force2Ddimension)
    zones = numpy.empty(2 * int(Ns) + 1, dtype=numpy.intc)
    regions = _MATRICES.calculate_glszm(image, mask, size, box, strides, angles, len(angles), image.ndim, zones,
                                        int(Ng), int(Ns), 1)
    _failed(regions >= 0, "Calculation of GLSZM Failed.")
    glszm = numpy.zeros((1, int(Ng), max(regions, 1)))
    _failed(_MATRICES.fill_glszm(zones, glszm, int(Ng), max(regions, 1)), "Error filling GLSZM.")
    return glszm


def calculate_glrlm(image, mask, Ng, Nr, force2D, force2Ddimension, *voxel_based):  # noqa: N803
    if _extension(image, voxel_based):
        return cMatrices.calculate_glrlm(image, mask, Ng, Nr, force2D, force2Ddimension, *voxel_based)
    image, mask, size, box, strides = _volume(image, mask)
    angles = _angles(size, [1], False, force2D, force2Ddimension)
    glrlm = numpy.zeros((1, int(Ng), int(Nr), len(angles)))
    _failed(_MATRICES.calculate_glrlm(image, mask, size, box, strides, angles, len(angles), image.ndim, glrlm, int(Ng),
                                      int(Nr)), "Calculation of GLRLM Failed.")
    return glrlm, angles


def calculate_ngtdm(image, mask, distances, Ng, force2D, force2Ddimension, *voxel_based):  # noqa: N803
    if _extension(image, voxel_based):
        return cMatrices.calculate_ngtdm(image, mask, distances, Ng, force2D, force2Ddimension, *voxel_based)
    image, mask, size, box, strides = _volume(image, mask)
    angles = _angles(size, distances, True, force2D, force2Ddimension)
    ngtdm = numpy.zeros((1, int(Ng), 3))
    _failed(_MATRICES.calculate_ngtdm(image, mask, size, box, strides, angles, len(angles), image.ndim, ngtdm, int(Ng)),
            "Calculation of NGTDM Failed.")
    return ngtdm


def calculate_gldm(image, mask, distances, Ng, alpha, force2D, force2Ddimension, *voxel_based):  # noqa: N803
    if _extension(image, voxel_based):
        return cMatrices.calculate_gldm(image, mask, distances, Ng, alpha, force2D, force2Ddimension, *voxel_based)
    image, mask, size, box, strides = _volume(image, mask)
    angles = _angles(size, distances, True, force2D, force2Ddimension)
    gldm = numpy.zeros((1, int(Ng), 2 * len(angles) + 1))
    _failed(_MATRICES.calculate_gldm(image, mask, size, box, strides, angles, len(angles), image.ndim, gldm, int(Ng),
                                     int(alpha)), "Calculation of GLDM Failed.")
    return gldm


def calculate_coefficients(mask, spacing):
    """cshape's surface area, volume and the four mesh diameters of a 3D mask."""
    if _SHAPE is None or numpy.size(mask) < NATIVE_MIN_VOXELS:
        return cShape.calculate_coefficients(mask, spacing)
    mask = numpy.require(mask, numpy.byte, ["C_CONTIGUOUS", "ALIGNED"])
    spacing = numpy.require(spacing, numpy.double, ["C_CONTIGUOUS", "ALIGNED"])
    if mask.ndim != 3 or spacing.ndim != 1:
        raise ValueError("Expected a 3D array for mask, 1D for spacing.")
    if spacing.shape[0] != mask.ndim:
        raise ValueError("Expecting spacing array to have shape (3,).")
    size = numpy.array(mask.shape, dtype=numpy.intc)
    strides = numpy.array([stride // mask.itemsize for stride in mask.strides], dtype=numpy.intc)
    surface, volume, diameters = ctypes.c_double(), ctypes.c_double(), numpy.zeros(4)
    if _SHAPE.calculate_coefficients(mask, size, strides, spacing, ctypes.byref(surface), ctypes.byref(volume),
                                     diameters):
        raise RuntimeError("Calculation of Shape coefficients failed.")
    return surface.value, volume.value, tuple(float(d) for d in diameters)


# getattr: pyradiomics sets cMatrices / cShape to None when its extension failed to import
CMATRICES = types.SimpleNamespace(calculate_glcm=calculate_glcm, calculate_glszm=calculate_glszm,
                                  calculate_glrlm=calculate_glrlm, calculate_ngtdm=calculate_ngtdm,
                                  calculate_gldm=calculate_gldm,
                                  generate_angles=getattr(cMatrices, "generate_angles", None))
CSHAPE = types.SimpleNamespace(calculate_coefficients=calculate_coefficients,
                               calculate_coefficients2D=getattr(cShape, "calculate_coefficients2D", None))


def reading(function: types.FunctionType, **names: Any) -> types.FunctionType:
    """pyradiomics' own ``function``, its module globals ``names`` (cMatrices, cShape, ...)
    replaced for this copy only; the pyradiomics module itself is not changed."""
    copy = types.FunctionType(function.__code__, {**function.__globals__, **names}, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__, copy.__doc__ = function.__kwdefaults__, function.__doc__
    copy.__qualname__ = function.__qualname__
    return copy
