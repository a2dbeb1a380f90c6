"""An in-memory cache of fitted pipeline steps, for scikit-learn's ``Pipeline(memory=...)``.

In a model comparison the steps before the classifier (imputation, ComBat, filters, LASSO)
are fitted on the same training rows again and again: once per grid candidate and per
classifier family. ``joblib.Memory`` avoids the refits but hashes and pickles every step's
input and output (DataFrames with thousands of named columns), which cost about as much as
the fits it saved. This cache keys a fit by the step's parameters and a vectorised hash of
its input rows and labels, and keeps the fitted step in this process:

- a hit returns the fitted step and its ``transform`` of the input: for a step whose
  ``fit_transform`` is scikit-learn's generic ``fit(X).transform(X)`` that is the very same
  computation, so results are bit-identical; steps with their own ``fit_transform``
  (ColumnTransformer, PCA) keep their output instead;
- it pickles as a name only (parallel workers get an empty cache of their own) and holds
  at most ``size`` fits, least recently used first out.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

_CACHES: OrderedDict[str, OrderedDict] = OrderedDict()  # per process: cache name -> fits
_KEEP_CACHES = 2


class FitCache:
    """Memory-like object for ``Pipeline(memory=FitCache())``; :meth:`clear` frees it."""

    def __init__(self, name: str | None = None, size: int = 256) -> None:
        self.name = name or uuid.uuid4().hex
        self.size = size

    def __reduce__(self):
        return FitCache, (self.name, self.size)

    @property
    def _fits(self) -> OrderedDict:
        if self.name not in _CACHES:
            _CACHES[self.name] = OrderedDict()
            while len(_CACHES) > _KEEP_CACHES:
                _CACHES.popitem(last=False)
        _CACHES.move_to_end(self.name)
        return _CACHES[self.name]

    def clear(self) -> None:
        _CACHES.pop(self.name, None)

    def cache(self, func: Callable, ignore: Any = None, **kwargs: Any) -> Callable:
        """``func(transformer, X, y, ...)`` returning ``(Xt, fitted)``, memoised on (transformer, X, y)."""
        def cached(transformer, X, y=None, *args, **kwargs):
            key = (_estimator_key(transformer), _data_key(X), _data_key(y))
            fits = self._fits
            if key in fits:
                fits.move_to_end(key)
                fitted, output = fits[key]
                return (fitted.transform(X) if output is None else output), fitted
            output, fitted = func(transformer, X, y, *args, **kwargs)
            fits[key] = (fitted, None if _generic_fit_transform(fitted) else output)
            while len(fits) > self.size:
                fits.popitem(last=False)
            return output, fitted

        return cached


def _generic_fit_transform(estimator: Any) -> bool:
    return type(estimator).fit_transform is TransformerMixin.fit_transform


_PLAIN = (str, int, float, bool, type(None))


def _estimator_key(value: Any) -> Any:
    """Everything that defines an unfitted step: class, parameters (nested), output container."""
    if isinstance(value, BaseEstimator):
        params = value.get_params(deep=False)
        output = getattr(value, "_sklearn_output_config", None)
        return (type(value).__module__, type(value).__qualname__, repr(output),
                tuple((name, _estimator_key(params[name])) for name in sorted(params)))
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, _PLAIN) for v in value):  # e.g. a ColumnTransformer's thousands of column names
            return (type(value).__name__, repr(value))
        return (type(value).__name__, tuple(_estimator_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _estimator_key(value[k])) for k in sorted(value)))
    return repr(value)


def _data_key(data: Any) -> Any:
    """Shape, column names, index and a digest of the values and dtypes: one buffer per dtype
    (numbers hashed as raw bytes, objects such as site names through pandas' vectorised hash)."""
    if data is None:
        return None
    digest = hashlib.blake2b(digest_size=20)
    if isinstance(data, (pd.DataFrame, pd.Series)):
        frame = data.to_frame() if isinstance(data, pd.Series) else data
        dtypes = frame.dtypes.to_numpy()
        for dtype in sorted(set(dtypes), key=str):
            columns = np.flatnonzero(dtypes == dtype)
            digest.update(str(dtype).encode())
            digest.update(columns.tobytes())
            _update(digest, (frame if columns.size == frame.shape[1] else frame.iloc[:, columns]).to_numpy())
        _update(digest, np.asarray(frame.index, dtype=object))
        return ("frame", frame.shape, tuple(frame.columns.tolist()), digest.hexdigest())
    array = np.asarray(data)
    _update(digest, array)
    return ("array", array.shape, str(array.dtype), digest.hexdigest())


def _update(digest: Any, values: np.ndarray) -> None:
    """Feed an array's values to ``digest``; a C- or F-ordered numeric block is read in place
    (a DataFrame's float block is F-ordered), its order marked so no two layouts collide."""
    if values.dtype == object:
        digest.update(pd.util.hash_array(values.ravel()).tobytes())
    elif values.flags.c_contiguous:
        digest.update(b"C" + str(values.dtype).encode())
        digest.update(values.reshape(-1).view(np.uint8))
    elif values.flags.f_contiguous:
        digest.update(b"F" + str(values.dtype).encode())
        digest.update(values.T.reshape(-1).view(np.uint8))
    else:
        digest.update(b"C" + str(values.dtype).encode())
        digest.update(np.ascontiguousarray(values).reshape(-1).view(np.uint8))
