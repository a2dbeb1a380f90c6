"""Model bundles: a folder a person can read that serves a fitted model without pickle.

A bundle (``models/NAME/``) holds

- ``manifest.json``: format version, task, input extraction settings, for each model
  (primary, rad-score, deep-score) a *spec* (the raw columns it needs, then its steps:
  imputation, ComBat, scaling, PCA, classifier, each naming its arrays), the nomogram,
  the decision threshold, the training summary and metrics, package versions, and the
  SHA-256 of every other file;
- ``weights.safetensors``: every numeric array (a format that cannot run code);
- XGBoost / LightGBM boosters in their own text formats (``*.xgboost.json``,
  ``*.lightgbm.txt``).

Why not pickle the scikit-learn pipeline: unpickling runs code, and a pickle ties a model to
one scikit-learn version. A bundle stores only what prediction needs. Selection steps
disappear: imputation, ComBat and scaling act per feature, so their parameters are cut to
the features that survive every selection step, and only those raw columns are required.
:class:`BundleModel` then predicts with numpy alone (boosters through their own libraries,
loaded from text), matching the fitted pipeline to ~1e-12 (trees and boosters: ~1e-7).

:func:`load_bundle` refuses, with a message naming the culprit, a bundle of a newer format,
a manifest edited outside the engine (its digest no longer matches ``bundle.lock.json``), a
bundle that claims a shipped name with another digest, a listed file that is missing or whose
SHA-256 differs, an unlisted file, a signature that does not verify, and a manifest that names
arrays the weights lack (:mod:`.trust` has the digest, lock, pins and signatures). It never
calls pickle, ``torch.load`` or ``np.load``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shutil
import uuid
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.special import expit

from RadFusionScreenLib.core.errors import BundleError, InputError
from RadFusionScreenLib.model.roles import NOMOGRAM_RESULT, SCORE_FEATURE_SETS
from RadFusionScreenLib.stats import Nomogram
from RadFusionScreenLib.model.trust import LOCK, SIGNATURE, Provenance, check_lock, check_pinned, environment_warnings, lock_bytes, \
    verify_signature
from RadFusionScreenLib.stats._validation import label_key

FORMAT = "RadFusionScreen.ModelBundle"
FORMAT_VERSION = "1"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
ENGINE_FILES = frozenset({MANIFEST, LOCK, SIGNATURE})  # written by the engine, not listed in the manifest
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".dill"})
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")


# ============================================================================ export
class _Sink:
    """Collects the arrays and files of one exported model under a name prefix."""

    def __init__(self, prefix: str) -> None:
        if not _PREFIX.match(prefix):
            raise BundleError(f"model prefix {prefix!r} must be letters, digits, '_' or '-'")
        self.prefix = prefix
        self.arrays: dict[str, np.ndarray] = {}
        self.files: dict[str, bytes] = {}

    def array(self, name: str, value: Any) -> str:
        key = f"{self.prefix}.{name}"
        self.arrays[key] = np.ascontiguousarray(value)
        return key

    def file(self, suffix: str, data: bytes) -> str:
        name = f"{self.prefix}.{suffix}"
        self.files[name] = bytes(data)
        return name


@dataclass
class _Step:
    name: str
    estimator: Any
    names_in: list[str]


ExportedModel = tuple[dict[str, Any], dict[str, np.ndarray], dict[str, bytes]]  # spec, arrays, files


def export_pipeline(model: Any, prefix: str = "model") -> ExportedModel:
    """Describe a fitted pipeline (or grid search) as a JSON spec, arrays and booster files.

    Only what prediction needs is kept: the raw columns that survive every selection step,
    and per-feature parameters (medians, ComBat, scaling) cut to those columns. Array keys
    and file names start with ``prefix``, so several models can share one bundle.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    pipeline = getattr(model, "best_estimator_", model)
    if not isinstance(pipeline, Pipeline):
        raise BundleError(f"cannot export a {type(pipeline).__name__}: a fitted scikit-learn Pipeline is needed")
    steps = [(name, step) for name, step in pipeline.steps[:-1] if step not in (None, "passthrough")]
    if not steps or not isinstance(steps[0][1], ColumnTransformer):
        raise BundleError("cannot export the pipeline: its first step must be the column selection (ColumnTransformer)")
    sink = _Sink(prefix)
    columns, names = _export_columns(steps[0][1])
    traced, final_names = _trace(steps[1:], names)
    needed = _needed_features(traced, final_names)
    ops = [_columns_op(columns, needed, sink)] + [_export_step(step, needed, sink) for step in traced]
    ops = [op for op in ops if op is not None]
    classifier = pipeline.steps[-1][1]
    spec = {
        "kind": "pipeline",
        "input_columns": _input_columns(ops),
        "features": needed,
        "selection": [_selection_record(step) for step in traced if _is_selector(step.estimator)],
        "steps": ops,
        "classifier": _export_classifier(classifier, len(_model_input_names(ops, needed)), sink),
    }
    return spec, sink.arrays, sink.files


# ------------------------------------------------------------------ column selection
def _export_columns(transformer: Any) -> tuple[dict[str, Any], list[str]]:
    """Numeric (median-imputed), categorical (imputed + one-hot) and passthrough blocks."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    blocks: list[dict[str, Any]] = []
    for name, step, cols in transformer.transformers_:
        cols = [str(c) for c in cols]
        if _is_drop(step) or not cols:
            continue
        if isinstance(step, SimpleImputer):
            blocks.append(_numeric_block(step, cols))
        elif isinstance(step, Pipeline):
            blocks.extend(_categorical_blocks(step, cols))
        elif _is_passthrough(step):
            blocks.append({"type": "passthrough", "columns": cols, "output": cols})
        else:
            raise BundleError(f"cannot export column step {name!r} ({type(step).__name__})")
    names = [n for block in blocks for n in block["output"]]
    expected = [str(n) for n in transformer.get_feature_names_out()]
    if names != expected:
        raise BundleError("cannot export the column selection: its output columns could not be reproduced")
    return {"blocks": blocks}, names


def _is_drop(step: Any) -> bool:
    return isinstance(step, str) and step == "drop"


def _is_passthrough(step: Any) -> bool:
    from sklearn.preprocessing import FunctionTransformer

    if isinstance(step, str):
        return step == "passthrough"
    return isinstance(step, FunctionTransformer) and step.func is None


def _numeric_block(imputer: Any, cols: list[str]) -> dict[str, Any]:
    fill = np.asarray(imputer.statistics_, dtype=float)
    kept = [c for c, value in zip(cols, fill) if not np.isnan(value)]  # all-missing columns are dropped
    return {"type": "numeric", "columns": kept, "fill": dict(zip(cols, fill)), "output": kept}


def _categorical_blocks(pipeline: Any, cols: list[str]) -> list[dict[str, Any]]:
    """Most-frequent imputation + one-hot encoding, one block per column."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    parts = [step for _, step in pipeline.steps]
    if len(parts) != 2 or not isinstance(parts[0], SimpleImputer) or not isinstance(parts[1], OneHotEncoder):
        raise BundleError("cannot export a categorical column step other than imputation + one-hot encoding")
    imputer, encoder = parts
    if encoder.drop is not None or getattr(encoder, "infrequent_categories_", None):
        raise BundleError("cannot export a one-hot encoder with dropped or infrequent categories")
    output = [str(n) for n in encoder.get_feature_names_out(cols)]
    blocks, start = [], 0
    for col, fill, categories in zip(cols, imputer.statistics_, encoder.categories_):
        levels = [_plain(v) for v in categories]
        blocks.append({"type": "categorical", "columns": [col], "fill": _plain(fill), "categories": levels,
                       "output": output[start:start + len(levels)]})
        start += len(levels)
    return blocks


# ------------------------------------------------------------------ tracing names
def _trace(steps: list[tuple[str, Any]], names: list[str]) -> tuple[list[_Step], list[str]]:
    """Follow column names through the steps after the column selection."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from RadFusionScreenLib.model.harmonize import ComBatHarmonizer

    traced = []
    for name, step in steps:
        traced.append(_Step(name, step, list(names)))
        if isinstance(step, ComBatHarmonizer):
            if step.keep_non_features:
                raise BundleError("cannot export a ComBat step that keeps the site column")
            names = [str(c) for c in step.feature_columns_]
        elif _is_selector(step):
            names = [n for n, keep in zip(names, step.get_support()) if keep]
        elif isinstance(step, PCA):
            names = [f"pc{i + 1}" for i in range(step.n_components_)]
        elif not isinstance(step, StandardScaler):
            raise BundleError(f"cannot export pipeline step {name!r} ({type(step).__name__})")
    return traced, names


def _is_selector(step: Any) -> bool:
    from sklearn.feature_selection import SelectorMixin

    return isinstance(step, SelectorMixin)


def _needed_features(traced: list[_Step], final_names: list[str]) -> list[str]:
    """Features the prediction needs: PCA needs all its inputs, otherwise the classifier's."""
    from sklearn.decomposition import PCA

    pca = [i for i, step in enumerate(traced) if isinstance(step.estimator, PCA)]
    if not pca:
        return list(final_names)
    if len(pca) > 1 or pca[0] != len(traced) - 1:
        raise BundleError("cannot export a pipeline with steps after PCA")
    return list(traced[pca[0]].names_in)


def _selection_record(step: _Step) -> dict[str, Any]:
    return {"step": step.name, "method": type(step.estimator).__name__, "inputs": len(step.names_in),
            "kept": int(np.count_nonzero(step.estimator.get_support()))}


def _subset(names_in: list[str], needed: list[str]) -> np.ndarray:
    position = {n: i for i, n in enumerate(names_in)}
    missing = [n for n in needed if n not in position]
    if missing:
        raise BundleError(f"cannot export: feature(s) {missing[:5]} do not reach this step")
    return np.array([position[n] for n in needed], dtype=int)


# ------------------------------------------------------------------ steps
def _columns_op(columns: dict[str, Any], needed: list[str], sink: _Sink) -> dict[str, Any]:
    """Raw columns + imputation, cut to the needed features (one-hot blocks whole)."""
    wanted = set(needed)
    numeric: list[str] = []
    fill: list[float] = []
    categorical, used = [], []
    for block in columns["blocks"]:
        if block["type"] == "numeric":
            keep = [c for c in block["output"] if c in wanted]
            numeric += keep
            fill += [block["fill"][c] for c in keep]
            used += keep
        elif block["type"] == "categorical" and wanted & set(block["output"]):
            if not set(block["output"]) <= wanted:
                raise BundleError(f"cannot export a selection of some one-hot levels of {block['columns'][0]!r}")
            categorical.append({"column": block["columns"][0], "fill": block["fill"],
                                "categories": block["categories"], "output": block["output"]})
            used += block["output"]
    if used != needed:
        raise BundleError("cannot export: the needed features are not in column-selection order")
    return {"op": "columns", "numeric": numeric, "fill": sink.array("impute.fill", np.asarray(fill, dtype=float)),
            "categorical": categorical}


def _export_step(step: _Step, needed: list[str], sink: _Sink) -> dict[str, Any] | None:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from RadFusionScreenLib.model.harmonize import ComBatHarmonizer

    estimator = step.estimator
    if isinstance(estimator, ComBatHarmonizer):
        return _combat_op(estimator, needed, sink)
    if isinstance(estimator, StandardScaler):
        return _scale_op(estimator, _subset(step.names_in, needed), sink)
    if isinstance(estimator, PCA):
        return _pca_op(estimator, sink)
    return None  # a selector: already applied by cutting the columns


def _combat_op(harmonizer: Any, needed: list[str], sink: _Sink) -> dict[str, Any]:
    model = harmonizer.model_
    index = _subset([str(c) for c in harmonizer.feature_columns_], needed)
    op = {
        "op": "combat", "site_column": str(harmonizer.site_column),
        "covariate_columns": [str(c) for c in harmonizer.covariate_columns],
        "sites": list(model.batches), "site_sizes": [int(n) for n in model.batch_sizes],
        "mean_only": bool(model.mean_only),
        "grand_mean": sink.array("combat.grand_mean", model.grand_mean[index]),
        "var_pooled": sink.array("combat.var_pooled", model.var_pooled[index]),
        "gamma_star": sink.array("combat.gamma_star", model.gamma_star[:, index]),
        "delta_star": sink.array("combat.delta_star", model.delta_star[:, index]),
        "adjusted": sink.array("combat.adjusted", model.adjusted[index].astype(bool)),
        "covariate_coefficients": None,
    }
    if model.covariate_coefficients is not None:
        if list(model.covariate_names) != op["covariate_columns"]:
            raise BundleError("cannot export ComBat: covariate names differ from the harmonizer's columns")
        op["covariate_coefficients"] = sink.array("combat.covariate_coefficients",
                                                  model.covariate_coefficients[:, index])
    return op


def _scale_op(scaler: Any, index: np.ndarray, sink: _Sink) -> dict[str, Any]:
    n = scaler.n_features_in_
    mean = scaler.mean_ if scaler.with_mean else np.zeros(n)
    scale = scaler.scale_ if scaler.with_std else np.ones(n)
    return {"op": "scale", "mean": sink.array("scale.mean", np.asarray(mean, dtype=float)[index]),
            "scale": sink.array("scale.scale", np.asarray(scale, dtype=float)[index])}


def _pca_op(pca: Any, sink: _Sink) -> dict[str, Any]:
    op = {"op": "pca", "components": sink.array("pca.components", pca.components_),
          "mean": sink.array("pca.mean", pca.mean_), "whiten": bool(pca.whiten),
          "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_]}
    if pca.whiten:
        op["explained_variance"] = sink.array("pca.explained_variance", pca.explained_variance_)
    return op


def _input_columns(ops: list[dict[str, Any]]) -> list[str]:
    columns = list(ops[0]["numeric"]) + [block["column"] for block in ops[0]["categorical"]]
    for op in ops:
        if op["op"] == "combat":
            columns += [c for c in (op["site_column"], *op["covariate_columns"]) if c not in columns]
    return columns


def _model_input_names(ops: list[dict[str, Any]], needed: list[str]) -> list[str]:
    pca = [op for op in ops if op["op"] == "pca"]
    return [f"pc{i + 1}" for i in range(len(pca[0]["explained_variance_ratio"]))] if pca else needed


# ------------------------------------------------------------------ classifiers
def _export_classifier(classifier: Any, n_inputs: int, sink: _Sink) -> dict[str, Any]:
    """Classifier parameters, dispatched on the family."""
    classes = getattr(classifier, "classes_", None)
    if classes is None or [label_key(c) for c in classes] != ["0", "1"]:
        raise BundleError(f"cannot export {type(classifier).__name__}: a binary classifier of 0/1 labels is needed")
    module = type(classifier).__module__
    if module.startswith("xgboost"):
        spec = _export_xgboost(classifier, sink)
    elif module.startswith("lightgbm"):
        spec = _export_lightgbm(classifier, sink)
    else:
        spec = _export_sklearn_classifier(classifier, sink)
    return spec | {"n_inputs": int(n_inputs)}


def _export_sklearn_classifier(classifier: Any, sink: _Sink) -> dict[str, Any]:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if isinstance(classifier, LogisticRegression):
        return {"type": "logistic_regression", "coef": sink.array("lr.coef", classifier.coef_.ravel()),
                "intercept": float(classifier.intercept_[0])}
    if isinstance(classifier, CalibratedClassifierCV):
        return _export_calibrated_svm(classifier, sink)
    if isinstance(classifier, (RandomForestClassifier, ExtraTreesClassifier)):
        return _export_forest(classifier, sink)
    if isinstance(classifier, MLPClassifier):
        return _export_mlp(classifier, sink)
    raise BundleError(f"cannot export classifier {type(classifier).__name__}")


def _export_calibrated_svm(classifier: Any, sink: _Sink) -> dict[str, Any]:
    """Each cross-fitted RBF SVC with its sigmoid (Platt) calibration; probabilities are averaged."""
    from sklearn.svm import SVC

    members = []
    for i, member in enumerate(classifier.calibrated_classifiers_):
        svc = member.estimator
        if not isinstance(svc, SVC) or svc.kernel != "rbf" or member.method != "sigmoid":
            raise BundleError("cannot export a calibrated classifier other than a sigmoid-calibrated RBF SVC")
        calibrator = member.calibrators[0]
        members.append({
            "support_vectors": sink.array(f"svm.{i}.support_vectors", svc.support_vectors_),
            "dual_coef": sink.array(f"svm.{i}.dual_coef", svc.dual_coef_.ravel()),
            "intercept": float(svc.intercept_[0]), "gamma": float(svc._gamma),
            "sigmoid_a": float(calibrator.a_), "sigmoid_b": float(calibrator.b_),
        })
    return {"type": "calibrated_svm", "kernel": "rbf", "calibration": "sigmoid",
            "rule": "mean over members of 1 / (1 + exp(a f + b)), f = sum dual_coef K(sv, x) + intercept",
            "members": members}


def _export_forest(forest: Any, sink: _Sink) -> dict[str, Any]:
    """Trees as flat node arrays; a leaf's value is its class-1 probability."""
    trees = [estimator.tree_ for estimator in forest.estimators_]
    offsets = np.cumsum([0] + [tree.node_count for tree in trees])
    value = np.concatenate([tree.value[:, 0, :2] for tree in trees])
    total = value.sum(axis=1)
    probability = value[:, 1] / np.where(total == 0, 1.0, total)
    missing_left = [getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=np.uint8)) for tree in trees]

    def joined(attribute: str, dtype: Any) -> np.ndarray:
        return np.concatenate([getattr(tree, attribute) for tree in trees]).astype(dtype)

    return {
        "type": "tree_ensemble", "family": type(forest).__name__, "n_trees": len(trees),
        "rule": "go left when float32(x[feature]) <= threshold (missing: missing_left); mean of leaf probabilities",
        "node_offset": sink.array("trees.node_offset", offsets.astype(np.int64)),
        "children_left": sink.array("trees.children_left", joined("children_left", np.int64)),
        "children_right": sink.array("trees.children_right", joined("children_right", np.int64)),
        "feature": sink.array("trees.feature", joined("feature", np.int64)),
        "threshold": sink.array("trees.threshold", joined("threshold", float)),
        "missing_left": sink.array("trees.missing_left", np.concatenate(missing_left).astype(bool)),
        "probability": sink.array("trees.probability", probability),
    }


def _export_xgboost(classifier: Any, sink: _Sink) -> dict[str, Any]:
    booster = classifier.get_booster()
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective != "binary:logistic":
        raise BundleError(f"cannot export an XGBoost model with objective {objective!r}")
    if getattr(classifier, "best_iteration", None) is not None:
        raise BundleError("cannot export an early-stopped XGBoost model")
    return {"type": "xgboost", "objective": objective, "file": sink.file("xgboost.json", booster.save_raw("json"))}


def _export_lightgbm(classifier: Any, sink: _Sink) -> dict[str, Any]:
    booster = classifier.booster_
    if classifier.objective_ != "binary" or getattr(classifier, "best_iteration_", 0):
        raise BundleError("cannot export a LightGBM model that is not a plain binary model")
    text = booster.model_to_string().encode()
    return {"type": "lightgbm", "objective": "binary", "file": sink.file("lightgbm.txt", text)}


def _export_mlp(mlp: Any, sink: _Sink) -> dict[str, Any]:
    if mlp.out_activation_ != "logistic":
        raise BundleError(f"cannot export an MLP with output activation {mlp.out_activation_!r}")
    return {
        "type": "mlp", "activation": mlp.activation, "out_activation": mlp.out_activation_,
        "coefs": [sink.array(f"mlp.coef{i}", w) for i, w in enumerate(mlp.coefs_)],
        "intercepts": [sink.array(f"mlp.intercept{i}", b) for i, b in enumerate(mlp.intercepts_)],
    }


# ============================================================================ predictor
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


# ============================================================================ bundle
@dataclass
class Bundle:
    """A loaded bundle: the primary model, rad/deep-score models, nomogram and threshold."""

    path: Path
    manifest: dict[str, Any]
    model: BundleModel
    score_models: dict[str, BundleModel]
    nomogram: Nomogram | None
    threshold: float
    clinical_fill: dict[str, Any]
    digest: str = ""  # SHA-256 over the canonical manifest, which lists every file's SHA-256
    provenance: Provenance = Provenance("unsigned")
    warnings: list[str] = field(default_factory=list)  # software differences that can change its inputs

    @property
    def required_columns(self) -> list[str]:
        """Every table column the bundle reads (primary, score models, nomogram predictors)."""
        columns = list(self.model.required_columns)
        for model in self.score_models.values():
            columns += [c for c in model.required_columns if c not in columns]
        for name in self.nomogram.predictors if self.nomogram is not None else ():
            if name not in self.score_models and name not in columns:
                columns.append(name)
        return columns

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Probability and decision (probability >= threshold), scores, nomogram points and risk."""
        result = pd.DataFrame(index=frame.index)
        result["probability"] = self.model.predict_proba(frame)
        decision = pd.array(result["probability"] >= self.threshold, dtype="Int64")
        result["decision"] = decision if np.isfinite(self.threshold) else pd.array([pd.NA] * len(frame), dtype="Int64")
        for name, model in self.score_models.items():
            result[name] = model.linear_predictor(frame)
        if self.nomogram is not None:
            points = self.nomogram.points(self._nomogram_input(frame, result))
            for column in points.columns:
                label = column if column in ("total_points", "linear_predictor", "probability") else f"points_{column}"
                result[f"nomogram_{label}"] = points[column].to_numpy()
        return result

    def _nomogram_input(self, frame: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
        data = pd.DataFrame(index=frame.index)
        for name in self.nomogram.predictors:
            if name in scores.columns:
                data[name] = scores[name]
                continue
            if name not in frame.columns:
                raise InputError(f"the nomogram needs the clinical column {name!r}, which the table lacks")
            values = frame[name]
            if values.isna().any():
                if name not in self.clinical_fill:
                    raise InputError(f"clinical column {name!r} has missing values and the bundle stores no "
                                     "training value to fill them with")
                values = values.astype(object).where(values.notna(), self.clinical_fill[name])
            data[name] = values
        return data


# ------------------------------------------------------------------ writing
def write_bundle(
    out_dir: str | os.PathLike,
    comparison: Any,
    *,
    name: str,
    extraction: Mapping[str, Any],
    training_summary: Mapping[str, Any],
    feature_set: str = "fused",
    classifier: str | None = None,
) -> Path:
    """Write the comparison's model of ``feature_set`` (best by CV AUC, or ``classifier``),
    its rad/deep-score models and nomogram as a bundle folder; returns the folder.

    The folder is built beside ``out_dir`` and renamed into place, so a failure never
    leaves a half-written bundle; an existing folder is replaced only if it is a bundle.
    """
    primary = _primary_result(comparison, feature_set, classifier)
    arrays: dict[str, np.ndarray] = {}
    files: dict[str, bytes] = {}
    models = {"primary": _model_entry(primary, "primary", arrays, files)}
    for score, result in _score_results(comparison).items():
        models[score] = _model_entry(result, score, arrays, files)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": str(name),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": {"type": "binary screening", "output": "probability that the case is positive (label 1)",
                 "decision": "positive when probability >= decision_threshold"},
        "extraction": dict(extraction),
        "input": _input_summary(models),
        "models": models,
        "nomogram": _nomogram_entry(comparison),
        "decision_threshold": primary.threshold,
        "training": dict(training_summary),
        "settings": _settings_dict(comparison.settings),
        "notes": list(comparison.notes),
        "packages": _package_versions(models),
    }
    return _write_atomically(Path(out_dir), manifest, arrays, files)


def _primary_result(comparison: Any, feature_set: str, classifier: str | None) -> Any:
    try:
        return comparison.shipped_result(feature_set, classifier)
    except InputError as exc:
        raise BundleError(str(exc)) from None


def _score_results(comparison: Any) -> dict[str, Any]:
    """The models behind rad_score / deep_score (``ModelComparison.score_models``)."""
    found = {}
    for score in SCORE_FEATURE_SETS:
        if score not in comparison.scores_train.columns:
            continue
        name = comparison.score_models.get(score)
        if name not in comparison.results:
            raise BundleError(f"the comparison has {score} but not the model that made it")
        found[score] = comparison.results[name]
    return found


def _model_entry(result: Any, prefix: str, arrays: dict[str, np.ndarray], files: dict[str, bytes]) -> dict[str, Any]:
    spec, model_arrays, model_files = export_pipeline(result.model, prefix)
    arrays.update(model_arrays)
    files.update(model_files)
    return {"result": result.name, "feature_set": result.feature_set, "classifier": result.classifier,
            "best_params": result.best_params, "threshold": result.threshold, "metrics": result.row(), "spec": spec}


def _nomogram_entry(comparison: Any) -> dict[str, Any] | None:
    nomogram = comparison.nomogram
    if nomogram is None:
        return None
    result = comparison.results.get(NOMOGRAM_RESULT)
    fill = dict(getattr(comparison, "clinical_fill", None) or {})
    for term in nomogram.to_dict()["terms"]:  # the reference (most frequent) level fills a categorical gap
        if term["categorical"] and term["name"] not in fill:
            fill[term["name"]] = term["ticks"][0]
    return {"model": nomogram.to_dict(), "clinical_fill": fill,
            "threshold": None if result is None else result.threshold,
            "metrics": None if result is None else result.row()}


def _input_summary(models: Mapping[str, Any]) -> dict[str, Any]:
    columns: list[str] = []
    sites = None
    for entry in models.values():
        spec = entry["spec"]
        columns += [c for c in spec["input_columns"] if c not in columns]
        for op in spec["steps"]:
            if op["op"] == "combat":
                sites = {"site_column": op["site_column"], "known_sites": op["sites"]}
    return {"required_columns": columns, "combat": sites}


def _settings_dict(settings: Any) -> dict[str, Any]:
    if not is_dataclass(settings):
        return {}
    return {f.name: _jsonable(getattr(settings, f.name), repr_unknown=True) for f in fields(settings)}


def _package_versions(models: Mapping[str, Any]) -> dict[str, str]:
    from importlib import metadata

    from RadFusionScreenLib.core.version import __version__

    types = {entry["spec"]["classifier"]["type"] for entry in models.values()}
    names = ["numpy", "pandas", "scipy", "scikit-learn", "safetensors"]
    names += ["xgboost"] if "xgboost" in types else []
    names += ["lightgbm"] if "lightgbm" in types else []
    versions = {"python": platform.python_version(), "radfusionscreen": __version__}
    for package in names:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _plain(value: Any) -> Any:
    """A numpy scalar as the matching Python value (for JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def _jsonable(value: Any, repr_unknown: bool = False) -> Any:
    """JSON-safe copy: numpy scalars/arrays as Python values, NaN/inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, repr_unknown) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v, repr_unknown) for v in value]
    value = _plain(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if repr_unknown:
        return repr(value)
    raise BundleError(f"cannot write a {type(value).__name__} into the manifest: {value!r}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(target: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                      files: dict[str, bytes]) -> Path:
    """Everything is serialised in memory first, written to a sibling folder, then renamed."""
    from safetensors.numpy import save

    _check_target(target)
    contents = {WEIGHTS: save(arrays, metadata={"format": FORMAT})} | files
    manifest = _jsonable(manifest) | {"files": {path: _sha256(data) for path, data in sorted(contents.items())}}
    contents[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    contents[LOCK] = lock_bytes(manifest)
    target.parent.mkdir(parents=True, exist_ok=True)
    return _replace_folder(target, contents)


def _replace_folder(target: Path, contents: Mapping[str, bytes]) -> Path:
    """Write every file into a sibling staging folder, then swap it in for ``target``."""
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for path, data in contents.items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            _write_file(staging / path, data)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise BundleError(f"cannot write a bundle to {target}: it is a file")
    if target.is_dir() and any(target.iterdir()) and not _is_bundle(target):
        raise BundleError(f"refusing to overwrite {target}: the folder exists and is not a model bundle")


def _is_bundle(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _swap_into_place(staging: Path, target: Path) -> None:
    """Old bundle aside, new one in, old one removed; the old one comes back if the swap fails."""
    if not target.exists():
        staging.rename(target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ loading
def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle (version, SHA-256 of every listed file, no pickle files).

    Raises :class:`BundleError` naming the file or version that stops it.
    """
    folder = Path(path)
    manifest = _read_manifest(folder)
    digest = check_lock(folder, manifest)
    check_pinned(folder, manifest, digest)
    contents = _verified_files(folder, manifest)
    provenance = verify_signature(folder, digest)
    arrays = _load_weights(contents)
    try:
        models = {key: BundleModel(entry["spec"], arrays, contents) for key, entry in manifest["models"].items()}
        primary = models.pop("primary")
        nomogram_entry = manifest.get("nomogram")
        nomogram = None if nomogram_entry is None else Nomogram.from_dict(nomogram_entry["model"])
        threshold = manifest["decision_threshold"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{folder / MANIFEST} is incomplete: {exc!r}") from None
    except BundleError:
        raise
    except InputError as exc:
        raise BundleError(f"{folder / MANIFEST}: {exc}") from None
    return Bundle(folder, manifest, primary, models, nomogram, float("nan") if threshold is None else float(threshold),
                  dict((nomogram_entry or {}).get("clinical_fill") or {}), digest, provenance,
                  environment_warnings(manifest))


def _read_manifest(folder: Path) -> dict[str, Any]:
    file = folder / MANIFEST
    if not file.is_file():
        raise BundleError(f"{folder} is not a model bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{file} cannot be read as JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file} is not a {FORMAT} manifest")
    _check_version(manifest.get("format_version"), file)
    return manifest


def _check_version(version: Any, file: Path) -> None:
    try:
        number = int(str(version))
    except ValueError:
        raise BundleError(f"{file} has an unreadable format version {version!r}") from None
    if number > int(FORMAT_VERSION):
        raise BundleError(f"the bundle has format version {number}, newer than version {FORMAT_VERSION} that this "
                          "engine reads: update RadFusionScreen to use it")
    if number != int(FORMAT_VERSION):
        raise BundleError(f"the bundle has format version {number}; this engine reads version {FORMAT_VERSION}")


def _verified_files(folder: Path, manifest: Mapping[str, Any]) -> dict[str, bytes]:
    """Bytes of every listed file after checking its SHA-256; unlisted pickle files refused."""
    listed = manifest.get("files")
    if not isinstance(listed, dict) or WEIGHTS not in listed:
        raise BundleError(f"{folder / MANIFEST} lists no files (it must list {WEIGHTS})")
    contents = {}
    for name, digest in listed.items():
        file = _inside(folder, name)
        if not file.is_file():
            raise BundleError(f"the bundle file {name!r} is missing from {folder}")
        data = file.read_bytes()
        if _sha256(data) != digest:
            raise BundleError(f"the bundle file {name!r} has been modified: its SHA-256 does not match the manifest")
        contents[name] = data
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder).as_posix()
        if relative in contents or relative in ENGINE_FILES:
            continue
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise BundleError(f"the bundle folder holds {relative!r}, a pickle-like file it does not list: "
                              "bundles never contain pickles; remove it")
        if file.is_file():
            raise BundleError(f"the bundle folder holds {relative!r}, a file its manifest does not list: a bundle is "
                              "exported whole by RadFusionScreen; remove the file (or re-export the bundle)")
    return contents


def _inside(folder: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or relative.suffix.lower() in PICKLE_SUFFIXES:
        raise BundleError(f"the manifest lists a file the bundle may not hold: {name!r}")
    return folder.joinpath(*relative.parts)


def _load_weights(contents: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(contents[WEIGHTS])
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise BundleError(f"{WEIGHTS} cannot be read: {exc}") from None


MODEL_CARD = "README.md"


def write_model_card(path: str | os.PathLike, text: str) -> Path:
    """Put (or replace) the bundle's model card ``README.md`` and list its SHA-256.

    A model card is written after training, by people: the bundle is verified first (a
    damaged bundle is not re-locked), then rebuilt beside the old one and swapped in, so an
    interrupted write leaves the previous bundle intact. The digest changes, so the new lock
    is written and an old signature is dropped (sign again).
    """
    folder = Path(path)
    manifest = _read_manifest(folder)
    check_lock(folder, manifest)
    contents = _verified_files(folder, manifest)
    contents[MODEL_CARD] = text.encode("utf-8")
    manifest["files"] = {name: _sha256(data) for name, data in sorted(contents.items())}
    contents[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    contents[LOCK] = lock_bytes(manifest)
    return _replace_folder(folder, contents)
