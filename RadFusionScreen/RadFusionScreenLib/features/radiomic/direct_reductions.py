"""pyradiomics' feature methods with numpy's sum and NaN-aware statistics taking their direct path.

A feature of a small lesion is a few reductions over Ng x Ng x angles arrays, so the Python
wrappers around them (``numpy.sum``'s dispatch, the NaN bookkeeping of ``numpy.nanmean``,
``nanpercentile``, ``nanmedian``) cost as much as the arithmetic: ~250,000 calls per 80 LIDC
crops. :func:`with_direct_reductions` gives a feature class copies of its pyradiomics methods
whose global ``numpy`` is :data:`NUMPY_DIRECT`: numpy itself except for these four functions,
which run the computation numpy's own ends in on the same values (``numpy.add.reduce``; on an
array without NaN, ``percentile`` / ``median``), so the results are identical, bit for bit.
Anything else (another dtype, NaN present, an axis tuple, extra arguments) goes to numpy's own.
The ``radiomics`` modules are not changed.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import numpy

from RadFusionScreenLib.features.radiomic.native_calls import reading


def _sum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, **kwargs: Any) -> Any:
    """``numpy.sum``: for an ndarray it runs ``numpy.add.reduce(a, axis, dtype, out, ...)`` itself."""
    if type(a) is numpy.ndarray and kwargs.keys() <= {"keepdims"}:
        return numpy.add.reduce(a, axis, dtype, out, **kwargs)
    return numpy.sum(a, axis, dtype, out, **kwargs)


def _without_nan(a: Any, axis: Any, extra: Any) -> bool:
    """A non-empty float64 ndarray without NaN, reduced along one int axis, no other argument."""
    return (not extra and type(a) is numpy.ndarray and a.dtype == numpy.float64 and type(axis) is int
            and a.size > 0 and not numpy.isnan(a).any())


def _nanmean(a: Any, axis: Any = None, *args: Any, **kwargs: Any) -> Any:
    """``numpy.nanmean``: numpy copies the array (NaN set to 0), sums the copy with
    ``add.reduce`` and divides by the count; without NaN, so does this."""
    if not _without_nan(a, axis, args or kwargs):
        return numpy.nanmean(a, axis, *args, **kwargs)
    return numpy.add.reduce(numpy.array(a, copy=True), axis) / a.shape[axis]


def _nanpercentile(a: Any, q: Any, axis: Any = None, *args: Any, **kwargs: Any) -> Any:
    """``numpy.nanpercentile``: without NaN, numpy's percentile of the same values (numpy runs
    it row by row through ``apply_along_axis``)."""
    if not _without_nan(a, axis, args or kwargs):
        return numpy.nanpercentile(a, q, axis, *args, **kwargs)
    return numpy.percentile(a, q, axis)


def _nanmedian(a: Any, axis: Any = None, *args: Any, **kwargs: Any) -> Any:
    """``numpy.nanmedian``: without NaN, numpy's median (numpy goes through masked arrays)."""
    if not _without_nan(a, axis, args or kwargs):
        return numpy.nanmedian(a, axis, *args, **kwargs)
    return numpy.median(a, axis)


NUMPY_DIRECT = types.ModuleType("numpy_direct_reductions")
NUMPY_DIRECT.__dict__.update({name: getattr(numpy, name) for name in dir(numpy) if not name.startswith("__")})
NUMPY_DIRECT.__dict__.update(sum=_sum, nanmean=_nanmean, nanpercentile=_nanpercentile, nanmedian=_nanmedian)


def with_direct_reductions(cls: type) -> type:
    """Give ``cls`` a copy (globals: ``numpy`` = :data:`NUMPY_DIRECT`) of every method it inherits
    unchanged from its pyradiomics class; methods ``cls`` or a mixin defines stay as they are."""
    source = next(base for base in cls.__mro__ if base.__module__.startswith("radiomics."))
    for name, member in vars(source).items():
        if inspect.getattr_static(cls, name) is not member:
            continue  # overridden on our side
        if isinstance(member, types.FunctionType):
            setattr(cls, name, reading(member, numpy=NUMPY_DIRECT))
        elif isinstance(member, staticmethod) and isinstance(member.__func__, types.FunctionType):
            setattr(cls, name, staticmethod(reading(member.__func__, numpy=NUMPY_DIRECT)))
    return cls
