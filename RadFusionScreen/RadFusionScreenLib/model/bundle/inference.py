"""Prediction from an exported model with numpy alone: raw table columns in, P(case) out.

:class:`BundleModel` rebuilds nothing of scikit-learn: it applies the spec's steps (columns
and imputation, ComBat, scaling, PCA), then the classifier (logistic regression, calibrated
RBF SVM, random forest / extra trees, XGBoost, LightGBM, MLP) from the arrays (boosters
through their own libraries, loaded from text), matching the fitted pipeline to ~1e-12
(trees and boosters: ~1e-7).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.special import expit

from RadFusionScreenLib.core.errors import BundleError, InputError
from RadFusionScreenLib.model.bundle.layout import WEIGHTS
from RadFusionScreenLib.stats._validation import label_key


class BundleModel:
    """A model from a spec and its arrays: raw table columns in, P(case) out, numpy only.

    Built from :func:`export_pipeline` output, or from a loaded bundle. Nothing of
    scikit-learn is reconstructed; XGBoost / LightGBM boosters are read from their text.
    """

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                 files: Mapping[str, bytes] | None = None) -> None:
        if not isinstance(spec, Mapping) or spec.get("kind") != "pipeline":
            raise BundleError("not a model spec: expected kind 'pipeline'")
        try:
            self.spec = dict(spec)
            self.features = [str(f) for f in spec["features"]]
            self.required_columns = [str(c) for c in spec["input_columns"]]
            self._ops = [_make_op(op, arrays) for op in spec["steps"]]
            self._classifier = _make_classifier(spec["classifier"], arrays, files or {})
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"model spec is incomplete or malformed: {exc!r}") from None

    @property
    def has_linear_predictor(self) -> bool:
        return hasattr(self._classifier, "linear_predictor")

    @property
    def input_names(self) -> list[str]:
        """Names of the classifier's inputs: the features, or ``pc1 ...`` after PCA."""
        pca = [op for op in self._ops if isinstance(op, _PCAOp)]
        return [f"pc{i + 1}" for i in range(pca[0].components.shape[0])] if pca else list(self.features)

    @property
    def coefficients(self) -> pd.Series | None:
        """Logistic-regression coefficients per classifier input (None for other families)."""
        if not isinstance(self._classifier, _Logistic):
            return None
        return pd.Series(self._classifier.coef, index=self.input_names, name="coefficient")

    @property
    def intercept(self) -> float | None:
        return self._classifier.intercept if isinstance(self._classifier, _Logistic) else None

    @property
    def sites(self) -> list[str] | None:
        """Sites the model's ComBat step knows (None: no ComBat)."""
        combat = [op for op in self._ops if isinstance(op, _CombatOp)]
        return list(combat[0].sites) if combat else None

    def transform(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Per-feature values at each stage: ``raw``, ``imputed``, [``harmonised``], [``scaled``],
        [``components``]; the last stage is what the classifier receives."""
        self._check_columns(frame)
        stages: dict[str, pd.DataFrame] = {}
        values = None
        for op in self._ops:
            values = op.apply(values, frame, stages)
        return stages

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of class 1 (case) per row."""
        return self._classifier.predict_proba(self._model_input(frame))

    def linear_predictor(self, frame: pd.DataFrame) -> np.ndarray:
        """Logit of a logistic-regression model (the rad-score / deep-score)."""
        if not self.has_linear_predictor:
            raise InputError(f"a {self.spec['classifier']['type']} model has no linear predictor")
        return self._classifier.linear_predictor(self._model_input(frame))

    def _model_input(self, frame: pd.DataFrame) -> np.ndarray:
        stages = self.transform(frame)
        return next(reversed(stages.values())).to_numpy(dtype=float)

    def _check_columns(self, frame: pd.DataFrame) -> None:
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"the model needs a pandas DataFrame, got {type(frame).__name__}")
        present = set(map(str, frame.columns))
        missing = [c for c in self.required_columns if c not in present]
        if missing:
            raise InputError(f"the table lacks {len(missing)} column(s) the model needs: {missing[:10]}"
                             + (" ..." if len(missing) > 10 else ""))


# ------------------------------------------------------------------ ops
def _array(arrays: Mapping[str, np.ndarray], key: str, ndim: int | None = None) -> np.ndarray:
    if key not in arrays:
        raise BundleError(f"{WEIGHTS} lacks the array {key!r} that the manifest names")
    value = np.asarray(arrays[key])
    if ndim is not None and value.ndim != ndim:
        raise BundleError(f"array {key!r} has {value.ndim} dimensions, expected {ndim}")
    return value


def _make_op(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
    kinds = {"columns": _ColumnsOp, "combat": _CombatOp, "scale": _ScaleOp, "pca": _PCAOp}
    if spec.get("op") not in kinds:
        raise BundleError(f"unknown model step {spec.get('op')!r}")
    return kinds[spec["op"]](spec, arrays)


def _frame(values: np.ndarray, index: pd.Index, names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(values, index=index, columns=names)


class _ColumnsOp:
    """Read raw columns, impute (training medians / most frequent level), one-hot encode."""

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.numeric = [str(c) for c in spec["numeric"]]
        self.fill = _array(arrays, spec["fill"], 1).astype(float)
        self.categorical = list(spec["categorical"])
        if self.fill.size != len(self.numeric):
            raise BundleError("imputation values do not match the model's numeric columns")
        self.names = self.numeric + [n for block in self.categorical for n in block["output"]]

    def apply(self, values: Any, frame: pd.DataFrame, stages: dict[str, pd.DataFrame]) -> np.ndarray:
        frame = frame.rename(columns=str)
        raw = _numeric_values(frame, self.numeric)
        stages["raw"] = pd.concat([_frame(raw, frame.index, self.numeric)]
                                  + [frame[[b["column"]]] for b in self.categorical], axis=1)
        imputed = np.where(np.isnan(raw), self.fill, raw)
        encoded = [imputed] + [_one_hot(frame[b["column"]], b) for b in self.categorical]
        result = np.hstack(encoded) if encoded else imputed
        stages["imputed"] = _frame(result, frame.index, self.names)
        return result


def _numeric_values(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Float matrix of the columns; text that is not a number is an error naming the column."""
    out = np.empty((len(frame), len(columns)))
    for j, column in enumerate(columns):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = np.isnan(values) & frame[column].notna().to_numpy()
        if bad.any():
            raise InputError(f"column {column!r} holds a non-numeric value: {frame[column][bad].iloc[0]!r}")
        out[:, j] = values
    return out


def _one_hot(values: pd.Series, block: Mapping[str, Any]) -> np.ndarray:
    """One column per training level (unknown levels: all zeros, as handle_unknown="ignore")."""
    filled = values.astype(object).where(values.notna(), block["fill"]).to_numpy(dtype=object)
    levels = np.empty(len(block["categories"]), dtype=object)
    levels[:] = block["categories"]
    return (filled[:, None] == levels[None, :]).astype(float)


class _CombatOp:
    """ComBat adjustment (``ComBatModel.transform``) for the model's features and known sites."""

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.site_column = str(spec["site_column"])
        self.covariates = [str(c) for c in spec["covariate_columns"]]
        self.sites = [str(s) for s in spec["sites"]]
        self.grand_mean = _array(arrays, spec["grand_mean"], 1)
        self.var_pooled = _array(arrays, spec["var_pooled"], 1)
        self.gamma = _array(arrays, spec["gamma_star"], 2)
        self.delta = _array(arrays, spec["delta_star"], 2)
        self.adjusted = _array(arrays, spec["adjusted"], 1).astype(bool)
        key = spec["covariate_coefficients"]
        self.coefficients = None if key is None else _array(arrays, key, 2)
        n = self.grand_mean.size
        shapes_ok = (self.gamma.shape == self.delta.shape == (len(self.sites), n)
                     and self.var_pooled.size == self.adjusted.size == n
                     and (self.coefficients is None or self.coefficients.shape == (len(self.covariates), n)))
        if not shapes_ok:
            raise BundleError("ComBat parameters have inconsistent sizes")

    def apply(self, values: np.ndarray, frame: pd.DataFrame, stages: dict[str, pd.DataFrame]) -> np.ndarray:
        index = self._site_index(frame)
        mean = np.tile(self.grand_mean, (values.shape[0], 1))
        if self.coefficients is not None:
            mean = mean + self._covariates(frame) @ self.coefficients
        scale = np.sqrt(self.var_pooled)
        standardised = (values - mean) / scale
        result = (standardised - self.gamma[index]) / np.sqrt(self.delta[index]) * scale + mean
        result[:, ~self.adjusted] = values[:, ~self.adjusted]
        stages["harmonised"] = _frame(result, frame.index, list(stages["imputed"].columns))
        return result

    def _site_index(self, frame: pd.DataFrame) -> np.ndarray:
        known = ", ".join(repr(s) for s in self.sites)
        column = frame.rename(columns=str)[self.site_column]
        if column.isna().any():
            raise InputError(f"site column {self.site_column!r} has a missing value; the model's ComBat step "
                             f"needs a known site: {known}")
        keys = [label_key(v) for v in column]
        unseen = sorted({k for k in keys if k not in self.sites})
        if unseen:
            raise InputError(f"site(s) {', '.join(map(repr, unseen))} in column {self.site_column!r} were not in "
                             f"the training data, so ComBat cannot harmonise them; known sites: {known}")
        return np.array([self.sites.index(k) for k in keys], dtype=int)

    def _covariates(self, frame: pd.DataFrame) -> np.ndarray:
        values = _numeric_values(frame.rename(columns=str), self.covariates)
        if np.isnan(values).any():
            bad = [c for c, missing in zip(self.covariates, np.isnan(values).any(axis=0)) if missing]
            raise InputError(f"ComBat covariate(s) {bad} have missing values")
        return values


class _ScaleOp:
    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.mean = _array(arrays, spec["mean"], 1)
        self.scale = _array(arrays, spec["scale"], 1)

    def apply(self, values: np.ndarray, frame: pd.DataFrame, stages: dict[str, pd.DataFrame]) -> np.ndarray:
        if values.shape[1] != self.mean.size:
            raise BundleError(f"scaling has {self.mean.size} features, the data {values.shape[1]}")
        result = (values - self.mean) / self.scale
        stages["scaled"] = _frame(result, frame.index, list(stages["imputed"].columns))
        return result


class _PCAOp:
    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.components = _array(arrays, spec["components"], 2)
        self.mean = _array(arrays, spec["mean"], 1)
        self.whiten = bool(spec["whiten"])
        self.variance = _array(arrays, spec["explained_variance"], 1) if self.whiten else None

    def apply(self, values: np.ndarray, frame: pd.DataFrame, stages: dict[str, pd.DataFrame]) -> np.ndarray:
        result = (values - self.mean) @ self.components.T
        if self.variance is not None:
            result = result / np.sqrt(self.variance)
        names = [f"pc{i + 1}" for i in range(result.shape[1])]
        stages["components"] = _frame(result, frame.index, names)
        return result


# ------------------------------------------------------------------ classifiers
def _make_classifier(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], files: Mapping[str, bytes]) -> Any:
    kinds = {"logistic_regression": _Logistic, "calibrated_svm": _CalibratedSVM, "tree_ensemble": _TreeEnsemble,
             "xgboost": _XGBoost, "lightgbm": _LightGBM, "mlp": _MLP}
    if spec.get("type") not in kinds:
        raise BundleError(f"unknown classifier type {spec.get('type')!r}")
    return kinds[spec["type"]](spec, arrays, files)


def _check_width(values: np.ndarray, n_inputs: int, what: str) -> None:
    if values.shape[1] != n_inputs:
        raise BundleError(f"the {what} takes {n_inputs} inputs, the model steps give {values.shape[1]}")


class _Logistic:
    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], files: Mapping[str, bytes]) -> None:
        self.coef = _array(arrays, spec["coef"], 1)
        self.intercept = float(spec["intercept"])

    def linear_predictor(self, values: np.ndarray) -> np.ndarray:
        _check_width(values, self.coef.size, "logistic regression")
        return values @ self.coef + self.intercept

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        return expit(self.linear_predictor(values))


class _CalibratedSVM:
    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], files: Mapping[str, bytes]) -> None:
        self.members = [
            (_array(arrays, m["support_vectors"], 2), _array(arrays, m["dual_coef"], 1), float(m["intercept"]),
             float(m["gamma"]), float(m["sigmoid_a"]), float(m["sigmoid_b"]))
            for m in spec["members"]
        ]
        if not self.members:
            raise BundleError("a calibrated SVM needs at least one member")

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        total = np.zeros(values.shape[0])
        for support, dual, intercept, gamma, a, b in self.members:
            _check_width(values, support.shape[1], "SVM")
            squared = ((values[:, None, :] - support[None, :, :]) ** 2).sum(axis=2)
            decision = np.exp(-gamma * squared) @ dual + intercept
            total += expit(-(a * decision + b))
        return total / len(self.members)


class _TreeEnsemble:
    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], files: Mapping[str, bytes]) -> None:
        offsets = _array(arrays, spec["node_offset"], 1).astype(np.int64)
        self.roots = offsets[:-1]
        local_left = _array(arrays, spec["children_left"], 1).astype(np.int64)
        local_right = _array(arrays, spec["children_right"], 1).astype(np.int64)
        tree_of_node = np.repeat(np.arange(self.roots.size), np.diff(offsets))
        if tree_of_node.size != local_left.size:
            raise BundleError("tree node arrays do not match the node offsets")
        base = offsets[tree_of_node]
        self.leaf = local_left < 0
        self.left = np.where(self.leaf, -1, local_left + base)
        self.right = np.where(self.leaf, -1, local_right + base)
        self.feature = np.maximum(_array(arrays, spec["feature"], 1).astype(np.int64), 0)
        self.threshold = _array(arrays, spec["threshold"], 1).astype(float)
        self.missing_left = _array(arrays, spec["missing_left"], 1).astype(bool)
        self.probability = _array(arrays, spec["probability"], 1).astype(float)
        self.n_inputs = int(spec["n_inputs"])

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        _check_width(values, self.n_inputs, "tree ensemble")
        # scikit-learn trees compare float32 inputs with float64 thresholds
        x = values.astype(np.float32).astype(np.float64)
        rows = np.arange(x.shape[0])[:, None]
        node = np.tile(self.roots, (x.shape[0], 1))
        active = ~self.leaf[node]
        while active.any():
            value = x[rows, self.feature[node]]
            go_left = (value <= self.threshold[node]) | (np.isnan(value) & self.missing_left[node])
            node = np.where(active, np.where(go_left, self.left[node], self.right[node]), node)
            active = ~self.leaf[node]
        return self.probability[node].mean(axis=1)


class _XGBoost:
    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], files: Mapping[str, bytes]) -> None:
        import xgboost

        self.booster = xgboost.Booster()
        self.booster.load_model(bytearray(_file(files, spec["file"])))
        self.booster.set_param({"nthread": 1})
        self.n_inputs = int(spec["n_inputs"])

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        _check_width(values, self.n_inputs, "XGBoost model")
        return np.asarray(self.booster.inplace_predict(values), dtype=float).ravel()


class _LightGBM:
    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], files: Mapping[str, bytes]) -> None:
        import lightgbm

        self.booster = lightgbm.Booster(model_str=_file(files, spec["file"]).decode())
        self.n_inputs = int(spec["n_inputs"])

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        _check_width(values, self.n_inputs, "LightGBM model")
        return np.asarray(self.booster.predict(values, num_threads=1), dtype=float).ravel()


_ACTIVATIONS = {"identity": lambda x: x, "logistic": expit, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0)}


class _MLP:
    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], files: Mapping[str, bytes]) -> None:
        self.coefs = [_array(arrays, key, 2) for key in spec["coefs"]]
        self.intercepts = [_array(arrays, key, 1) for key in spec["intercepts"]]
        if spec["activation"] not in _ACTIVATIONS or spec["out_activation"] != "logistic":
            raise BundleError(f"unknown MLP activation {spec['activation']!r} / {spec['out_activation']!r}")
        self.activation = _ACTIVATIONS[spec["activation"]]

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        _check_width(values, self.coefs[0].shape[0], "MLP")
        hidden = values
        for weights, bias in zip(self.coefs[:-1], self.intercepts[:-1]):
            hidden = self.activation(hidden @ weights + bias)
        return expit(hidden @ self.coefs[-1] + self.intercepts[-1]).ravel()


def _file(files: Mapping[str, bytes], name: str) -> bytes:
    if name not in files:
        raise BundleError(f"the bundle lacks the file {name!r} that the manifest names")
    return files[name]
