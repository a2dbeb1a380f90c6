"""Export a fitted scikit-learn pipeline as a JSON spec, numeric arrays and booster files.

Why not pickle the scikit-learn pipeline: unpickling runs code, and a pickle ties a model to
one scikit-learn version. A bundle stores only what prediction needs. Selection steps
disappear: imputation, ComBat and scaling act per feature, so their parameters are cut to
the features that survive every selection step, and only those raw columns are required.
scikit-learn is imported inside the functions, so serving a bundle never needs it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from RadFusionScreenLib.core.errors import BundleError
from RadFusionScreenLib.core.jsonable import to_jsonable
from RadFusionScreenLib.stats._validation import label_key

_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")


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
        levels = [to_jsonable(v) for v in categories]  # numpy scalars as Python values (for JSON)
        blocks.append({"type": "categorical", "columns": [col], "fill": to_jsonable(fill), "categories": levels,
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
