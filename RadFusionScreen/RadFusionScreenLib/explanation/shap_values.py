"""SHAP values of a fitted screening model, computed here rather than by the ``shap`` package.

Why not ``shap``: it depends on a PyPI package named ``slicer`` that replaces 3D Slicer's own
``slicer`` package. Every model family of :mod:`.train` has an exact or a well-defined
method instead, chosen by :func:`shap_values`:

==========================  ============================================  ==============
Classifier                   Method                                        Output space
==========================  ============================================  ==============
LogisticRegression          exact interventional (linear) SHAP:           log-odds
                            φ_j = β_j·(x_j − mean_j over the background)
XGBoost                     native exact TreeSHAP (``pred_contribs``)     log-odds
LightGBM                    native exact TreeSHAP (``pred_contrib``)      log-odds
RandomForest / ExtraTrees   path-dependent TreeSHAP (Lundberg et al.      P(case)
                            2018, Algorithm 2), averaged over the trees
Nomogram                    exact linear SHAP of its logistic terms       log-odds
SVM, MLP, other             interventional Shapley values against a       P(case)
                            background sample: exact enumeration for ≤ 8
                            features, else permutation sampling
                            (antithetic, fixed seed): an approximation
==========================  ============================================  ==============

Values are given in the space of the features that reach the classifier
(:func:`~.train.selected_feature_names`), after ComBat, the filters and scaling: these are
the model's own inputs. With a PCA reduction, principal components mean nothing to a
reader, so the explanation is given for the features that enter the PCA instead (the PCA
then belongs to the explained function: exact for a linear classifier, the model-agnostic
method otherwise). Every method is additive: base_value + Σ_j φ_j = model output.

Cost (2 cores): TreeSHAP of 300 fully grown trees for 100 cases takes about 2 s (random
forest) to 9 s (extra trees, deeper); the model-agnostic method makes
n_permutations·(p + 1) predictions of n·min(background, 50) rows, so explain a test set
rather than a large training set with it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.text import MISSING
from RadFusionScreenLib.stats import Nomogram

EXACT_MAX_FEATURES = 8  # 2^8 coalitions: exact enumeration still cheap
DEFAULT_PERMUTATIONS = 16
DEFAULT_BACKGROUND = 50


@dataclass(frozen=True)
class ShapResult:
    """SHAP values of n explained rows over the p features that reach the classifier.

    ``base_value + values.sum(axis=1)`` equals the model output in ``output`` space
    ("log-odds" or "probability") for every row. ``data`` holds the explained feature
    values (same space as ``values``), used to colour a beeswarm plot.
    """

    values: np.ndarray
    base_value: float
    feature_names: list[str]
    method: str
    output: str = "probability"
    data: np.ndarray | None = None
    exact: bool = True

    def frame(self) -> pd.DataFrame:
        """SHAP values as a DataFrame, one column per feature."""
        return pd.DataFrame(self.values, columns=self.feature_names)


# ====================================================================== public
def shap_values(
    model: Any,
    X_frame: pd.DataFrame,
    background_frame: pd.DataFrame | None = None,
    *,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    max_background: int = DEFAULT_BACKGROUND,
    seed: int = 0,
) -> ShapResult:
    """SHAP values of a fitted model from :mod:`.train` for the rows of ``X_frame``.

    Parameters
    ----------
    model : Pipeline, GridSearchCV or Nomogram
        A fitted model (``ModelResult.model``).
    X_frame : DataFrame
        Rows to explain, in the cohort table's columns (the pipeline picks its own).
    background_frame : DataFrame, optional
        Reference rows, normally the training set: the linear baseline (feature means)
        and the model-agnostic method's background. Default: ``X_frame`` itself.
        Path-dependent TreeSHAP and the native booster methods use the training covers
        stored in the trees instead.
    n_permutations : int
        Permutations of the model-agnostic method (rounded up to an even number).
    max_background : int
        Background rows kept (sampled with ``seed``) by the model-agnostic method.
    seed : int
        Seed of the background sample and the permutations.
    """
    if len(X_frame) == 0:
        raise InputError("no rows to explain")
    background_frame = X_frame if background_frame is None else background_frame
    if isinstance(model, Nomogram):
        return _nomogram_shap(model, X_frame, background_frame)
    pipeline = model.best_estimator_ if isinstance(model, GridSearchCV) else model
    if not isinstance(pipeline, Pipeline):
        raise InputError(f"cannot explain a {type(model).__name__}: "
                         "expected a fitted Pipeline, grid search or Nomogram")
    head, tail, names = _split_pipeline(pipeline)
    Z, Zb = _as_matrix(head, X_frame), _as_matrix(head, background_frame)
    classifier = tail[-1] if isinstance(tail, Pipeline) else tail
    if isinstance(classifier, LogisticRegression):
        return _linear_shap(tail, Z, Zb, names)
    if isinstance(tail, Pipeline):  # PCA in the explained function, non-linear classifier
        return _agnostic_shap(_probability_of(tail, names), Z, Zb, names, n_permutations, max_background, seed)
    native = _native_tree_shap(classifier, Z, names)
    if native is not None:
        return native
    if isinstance(classifier, (RandomForestClassifier, ExtraTreesClassifier)):
        return _forest_shap(classifier, Z, names)
    return _agnostic_shap(_probability_of(classifier), Z, Zb, names, n_permutations, max_background, seed)


def shap_summary(result: ShapResult, top: int = 20) -> pd.DataFrame:
    """Mean |SHAP| per feature, largest first, with the direction of its effect.

    ``correlation`` is Pearson's r between a feature's value and its SHAP value: positive
    when higher values push the prediction up. ``direction`` says so in words.
    """
    values = np.asarray(result.values, dtype=float)
    table = pd.DataFrame({
        "feature": result.feature_names,
        "mean_abs_shap": np.abs(values).mean(axis=0),
        "mean_shap": values.mean(axis=0),
        "correlation": _value_shap_correlation(result),
    })
    table["direction"] = [_direction(r) for r in table["correlation"]]
    table = table.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
    return table.head(int(top)) if top else table


def _value_shap_correlation(result: ShapResult) -> np.ndarray:
    if result.data is None:
        return np.full(len(result.feature_names), np.nan)
    data, values = np.asarray(result.data, dtype=float), np.asarray(result.values, dtype=float)
    out = np.full(data.shape[1], np.nan)
    for j in range(data.shape[1]):
        if np.std(data[:, j]) > 0 and np.std(values[:, j]) > 0:
            out[j] = float(np.corrcoef(data[:, j], values[:, j])[0, 1])
    return out


def _direction(r: float) -> str:
    if not np.isfinite(r):
        return MISSING
    if abs(r) < 0.3:
        return "mixed"
    return "higher value, higher risk" if r > 0 else "higher value, lower risk"


# ================================================================ pipeline split
def _split_pipeline(pipeline: Pipeline) -> tuple[Pipeline | None, Any, list[str]]:
    """(transform steps before the explained space, function after it, explained names)."""
    names = [name for name, _ in pipeline.steps]
    cut = len(names) - 1
    if "reduce" in names and isinstance(pipeline.named_steps["reduce"], PCA):
        cut = names.index("reduce")
    head = pipeline[:cut] if cut > 0 else None
    tail = pipeline[cut:] if cut < len(names) - 1 else pipeline.steps[-1][1]
    if head is None:
        raise InputError("the pipeline has no transform step before the classifier")
    return head, tail, [str(n) for n in head.get_feature_names_out()]


def _as_matrix(head: Pipeline, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(head.transform(frame), dtype=float)


def _probability_of(model: Any, names: list[str] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """P(case) of a matrix; named columns for steps that were fitted on a DataFrame (PCA)."""
    if names is None:
        return lambda Z: np.asarray(model.predict_proba(Z))[:, 1]
    return lambda Z: np.asarray(model.predict_proba(pd.DataFrame(Z, columns=names)))[:, 1]


# ======================================================================= linear
def _linear_shap(tail: Any, Z: np.ndarray, Zb: np.ndarray, names: list[str]) -> ShapResult:
    """Exact interventional SHAP of a logistic model in log-odds: β_j·(x_j − E_b[x_j]).

    With PCA before the classifier the composition is still linear in the PCA's inputs:
    logit = b + β·(C(z − μ)) = b + (Cᵀβ)·(z − μ).
    """
    if isinstance(tail, Pipeline):
        pca, classifier = tail[0], tail[-1]
        if len(tail) != 2 or not isinstance(pca, PCA) or pca.whiten:
            raise InputError("linear SHAP through a reduction needs exactly a PCA (no whitening) then the classifier")
        coef = pca.components_.T @ classifier.coef_.ravel()
        intercept = float(classifier.intercept_[0] - coef @ pca.mean_)
        method = "linear SHAP through PCA (exact, interventional)"
    else:
        coef, intercept = tail.coef_.ravel(), float(tail.intercept_[0])
        method = "linear SHAP (exact, interventional)"
    mean = Zb.mean(axis=0)
    values = (Z - mean) * coef
    return ShapResult(values, intercept + float(coef @ mean), names, method, "log-odds", Z, True)


def _nomogram_shap(nomogram: Nomogram, X_frame: pd.DataFrame, background_frame: pd.DataFrame) -> ShapResult:
    """Linear SHAP of the nomogram's logistic terms: (points_j − mean points_j) / scale."""
    points = nomogram.points(X_frame)[nomogram.predictors].to_numpy(float)
    reference = nomogram.points(background_frame)[nomogram.predictors].to_numpy(float).mean(axis=0)
    values = (points - reference) / nomogram.scale
    base = float(nomogram.total_points_to_linear_predictor(reference.sum()))
    data = _numeric_or_points(X_frame, nomogram)
    return ShapResult(values, base, list(nomogram.predictors), "linear SHAP of the nomogram terms (exact)",
                      "log-odds", data, True)


def _numeric_or_points(frame: pd.DataFrame, nomogram: Nomogram) -> np.ndarray:
    """Predictor values for colouring; a categorical term shows its points instead."""
    points = nomogram.points(frame)
    columns = []
    for axis in nomogram.axes().values():
        column = points[axis.name] if axis.categorical else pd.to_numeric(frame[axis.name], errors="coerce")
        columns.append(np.asarray(column, dtype=float))
    return np.column_stack(columns)


# =================================================================== boosters
def _native_tree_shap(classifier: Any, Z: np.ndarray, names: list[str]) -> ShapResult | None:
    """XGBoost / LightGBM exact TreeSHAP in margin (log-odds) space; None for other models."""
    module = type(classifier).__module__
    if module.startswith("xgboost"):
        from xgboost import DMatrix

        contributions = classifier.get_booster().predict(DMatrix(Z), pred_contribs=True)
        method = "TreeSHAP (XGBoost native, exact, path-dependent)"
    elif module.startswith("lightgbm"):
        contributions = classifier.predict(Z, pred_contrib=True)
        method = "TreeSHAP (LightGBM native, exact, path-dependent)"
    else:
        return None
    contributions = np.asarray(contributions, dtype=float)
    if contributions.shape[1] != len(names) + 1:
        raise InputError(f"the booster returned {contributions.shape[1] - 1} contributions for {len(names)} features")
    return ShapResult(contributions[:, :-1], float(contributions[0, -1]), names, method, "log-odds", Z, True)


# ================================================================ forest TreeSHAP
@dataclass(frozen=True)
class TreeArrays:
    """A binary decision tree as parallel node arrays (sklearn's layout).

    Node k goes left when ``x[feature[k]] <= threshold[k]``; leaves have ``left == -1``.
    ``cover`` is the (weighted) number of training samples reaching a node; ``value`` the
    leaf's output.
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    cover: np.ndarray

    @classmethod
    def from_sklearn(cls, estimator: Any) -> "TreeArrays":
        """Class-1 probability tree of a fitted sklearn DecisionTreeClassifier."""
        tree = estimator.tree_
        values = np.asarray(tree.value[:, 0, :], dtype=float)
        totals = values.sum(axis=1)
        probability = np.divide(values[:, 1], totals, out=np.zeros_like(totals), where=totals > 0)
        return cls(tree.children_left, tree.children_right, tree.feature, tree.threshold, probability,
                   np.asarray(tree.weighted_n_node_samples, dtype=float))

    def expected_value(self) -> float:
        """Cover-weighted mean leaf value: the prediction when no feature is known."""
        leaves = self.left < 0
        return float(np.sum(self.cover[leaves] * self.value[leaves]) / self.cover[0])


def _forest_shap(forest: Any, Z: np.ndarray, names: list[str]) -> ShapResult:
    """Path-dependent TreeSHAP of every tree, averaged as the forest averages probabilities.

    sklearn compares float32 copies of the inputs with the thresholds, so the same cast is
    made here, else a value lying between float32 and float64 rounding could take the
    other branch.
    """
    if list(forest.classes_) != [0, 1]:
        raise InputError(f"TreeSHAP expects classes [0, 1], the forest has {list(forest.classes_)}")
    X = Z.astype(np.float32).astype(float)
    values = np.zeros_like(X)
    base = 0.0
    for estimator in forest.estimators_:
        tree = TreeArrays.from_sklearn(estimator)
        values += tree_shap(tree, X)
        base += tree.expected_value()
    n_trees = len(forest.estimators_)
    return ShapResult(values / n_trees, base / n_trees, names,
                      "TreeSHAP (path-dependent, exact, Lundberg et al. 2018 Algorithm 2)", "probability", Z, True)


class _Path:
    """The unique-feature path of Algorithm 2, for n samples at once.

    ``feature`` and ``zero`` (cover fractions) are the same for every sample; ``one``
    (does the sample follow this path?) and ``weight`` (the path's permutation weights)
    are per sample: arrays of shape (n, length). Element 0 is the root's placeholder.
    """

    def __init__(self, feature: list[int], zero: list[float], one: np.ndarray, weight: np.ndarray) -> None:
        self.feature, self.zero, self.one, self.weight = feature, zero, one, weight

    @classmethod
    def empty(cls, n: int) -> "_Path":
        return cls([], [], np.zeros((n, 0)), np.zeros((n, 0)))

    def extend(self, zero: float, one: np.ndarray, feature: int) -> "_Path":
        """EXTEND: add an element; subsets that exclude it scale by ``zero``, include it by ``one``.

        The paper's descending loop, in closed form per position j of the longer path:
        w'_j = zero·w_j·(L − j)/(L + 1) + one·w_{j−1}·j/(L + 1), with L the old length.
        """
        length = len(self.feature)
        n = self.one.shape[0]
        if length == 0:
            weight = np.ones((n, 1))
        else:
            j = np.arange(length + 1)
            old = np.concatenate([self.weight, np.zeros((n, 1))], axis=1)
            shifted = np.concatenate([np.zeros((n, 1)), self.weight], axis=1)
            weight = (zero * old * (length - j) + one[:, None] * shifted * j) / (length + 1)
        return _Path(self.feature + [feature], self.zero + [zero],
                     np.concatenate([self.one, one[:, None]], axis=1), weight)

    def _unwound(self, one: np.ndarray, zero: np.ndarray) -> np.ndarray:
        """UNWIND's arithmetic for the elements whose fractions are given (columns of ``one``).

        Returns weights of shape (n, k, depth): the path without each element in turn.
        """
        depth = len(self.feature) - 1
        follows = one != 0
        safe_one = np.where(follows, one, 1.0)
        carry = np.repeat(self.weight[:, depth, None], one.shape[1], axis=1)
        unwound = np.empty(one.shape + (depth,))
        for i in range(depth - 1, -1, -1):
            current = self.weight[:, i, None]
            if_one = carry * (depth + 1) / ((i + 1) * safe_one)
            if_zero = current * (depth + 1) / (zero * (depth - i))
            unwound[:, :, i] = np.where(follows, if_one, if_zero)
            carry = current - unwound[:, :, i] * zero * (depth - i) / (depth + 1)
        return unwound

    def unwind(self, index: int) -> "_Path":
        """UNWIND: drop element ``index`` (its feature is split on again lower in the tree)."""
        zero = np.array([self.zero[index]])
        weight = self._unwound(self.one[:, index:index + 1], zero)[:, 0, :]
        keep = [k for k in range(len(self.feature)) if k != index]
        return _Path([self.feature[k] for k in keep], [self.zero[k] for k in keep], self.one[:, keep], weight)

    def leaf_weights(self) -> np.ndarray:
        """Σ of the unwound weights of every real element (1..): their Shapley weights at a leaf."""
        return self._unwound(self.one[:, 1:], np.asarray(self.zero[1:])).sum(axis=2)


def tree_shap(tree: TreeArrays, X: np.ndarray) -> np.ndarray:
    """Path-dependent TreeSHAP values (n × p) of one tree (Lundberg et al. 2018, Algorithm 2).

    The conditional expectation E[f(x) | x_S] follows x at splits on features in S and
    averages both children by training cover elsewhere; the Shapley values of that game
    are computed in O(leaves · depth²) per sample, vectorised over the samples (and, at
    each leaf, over the path's features).
    """
    X = np.asarray(X, dtype=float)
    phi = np.zeros_like(X)
    internal = tree.left >= 0
    goes_left = np.zeros((X.shape[0], tree.left.size))
    goes_left[:, internal] = X[:, tree.feature[internal]] <= tree.threshold[internal]
    _recurse(tree, goes_left, phi, 0, _Path.empty(X.shape[0]), 1.0, np.ones(X.shape[0]), -1)
    return phi


def _recurse(tree: TreeArrays, goes_left: np.ndarray, phi: np.ndarray, node: int, path: _Path,
             zero: float, one: np.ndarray, feature: int) -> None:
    path = path.extend(zero, one, feature)
    if tree.left[node] < 0:
        if len(path.feature) > 1:
            features = path.feature[1:]  # unique on a path, so plain fancy-index addition is safe
            phi[:, features] += path.leaf_weights() * (path.one[:, 1:] - np.asarray(path.zero[1:])) * tree.value[node]
        return
    split = int(tree.feature[node])
    incoming_zero, incoming_one = 1.0, np.ones(goes_left.shape[0])
    if split in path.feature:
        index = path.feature.index(split)
        incoming_zero, incoming_one = path.zero[index], path.one[:, index]
        path = path.unwind(index)
    left, right, cover = int(tree.left[node]), int(tree.right[node]), tree.cover[node]
    _recurse(tree, goes_left, phi, left, path, incoming_zero * tree.cover[left] / cover,
             incoming_one * goes_left[:, node], split)
    _recurse(tree, goes_left, phi, right, path, incoming_zero * tree.cover[right] / cover,
             incoming_one * (1.0 - goes_left[:, node]), split)


# ============================================================ model-agnostic
def _agnostic_shap(predict: Callable[[np.ndarray], np.ndarray], Z: np.ndarray, Zb: np.ndarray, names: list[str],
                   n_permutations: int, max_background: int, seed: int) -> ShapResult:
    """Interventional Shapley values of P(case) against a background sample.

    v(S) = mean over background rows b of f(x_S, b_rest). With ≤ EXACT_MAX_FEATURES
    features every coalition is evaluated (exact for this background); above that,
    antithetic permutation sampling estimates them (each permutation is exactly additive,
    so the estimate is too).
    """
    rng = np.random.default_rng(seed)
    if len(Zb) > max_background:
        Zb = Zb[np.sort(rng.choice(len(Zb), size=max_background, replace=False))]
    base = float(np.mean(predict(Zb)))
    p = Z.shape[1]
    if p <= EXACT_MAX_FEATURES:
        values = _exact_interventional(predict, Z, Zb)
        method = f"interventional Shapley values, exact over all coalitions (background of {len(Zb)} rows)"
        return ShapResult(values, base, names, method, "probability", Z, True)
    values = _permutation_interventional(predict, Z, Zb, n_permutations, rng)
    pairs = max(1, -(-int(n_permutations) // 2))
    method = (f"interventional Shapley values, approximated by {2 * pairs} antithetic permutations "
              f"(seed {seed}, background of {len(Zb)} rows)")
    return ShapResult(values, base, names, method, "probability", Z, False)


def _coalition_values(predict: Callable[[np.ndarray], np.ndarray], Z: np.ndarray, Zb: np.ndarray,
                      known: np.ndarray) -> np.ndarray:
    """v(S) per explained row: mean over the background of f(x on S, background elsewhere)."""
    n, m = len(Z), len(Zb)
    rows = np.where(known, Z[:, None, :], Zb[None, :, :])  # (n, m, p)
    return predict(rows.reshape(n * m, -1)).reshape(n, m).mean(axis=1)


def _exact_interventional(predict: Callable[[np.ndarray], np.ndarray], Z: np.ndarray, Zb: np.ndarray) -> np.ndarray:
    p = Z.shape[1]
    coalitions = list(itertools.product((False, True), repeat=p))
    value = {c: _coalition_values(predict, Z, Zb, np.array(c)) for c in coalitions}
    weights = [math.factorial(s) * math.factorial(p - s - 1) / math.factorial(p) for s in range(p)]
    phi = np.zeros(Z.shape)
    for c in coalitions:
        for j in (j for j in range(p) if not c[j]):
            with_j = c[:j] + (True,) + c[j + 1:]
            phi[:, j] += weights[sum(c)] * (value[with_j] - value[c])
    return phi


def _permutation_interventional(predict: Callable[[np.ndarray], np.ndarray], Z: np.ndarray, Zb: np.ndarray,
                                n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    p = Z.shape[1]
    pairs = max(1, -(-int(n_permutations) // 2))
    phi = np.zeros(Z.shape)
    for _ in range(pairs):
        order = rng.permutation(p)
        for permutation in (order, order[::-1]):
            known = np.zeros(p, dtype=bool)
            previous = _coalition_values(predict, Z, Zb, known)
            for j in permutation:
                known[j] = True
                current = _coalition_values(predict, Z, Zb, known)
                phi[:, j] += current - previous
                previous = current
    return phi / (2 * pairs)
