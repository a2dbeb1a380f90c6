"""SHAP values (explain.py) checked against independent truth.

- every method is additive: base_value + Σ SHAP = the model's own output (decision function,
  booster margin or probability), computed here through the model's public API;
- TreeSHAP equals the Shapley values obtained by brute force: every feature subset S,
  the cover-weighted conditional expectation E[f(x) | x_S], the Shapley formula;
- TreeSHAP run on XGBoost's own trees equals XGBoost's native ``pred_contribs``;
- linear SHAP equals its closed form β_j·(x_j − mean_j);
- the model-agnostic method equals brute-force Shapley values over all permutations when
  exact, and the closed form for an additive function when sampled.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.explanation.shap_values import ShapResult, TreeArrays, _agnostic_shap, shap_summary, shap_values, tree_shap
from RadFusionScreenLib.stats import Nomogram
from RadFusionScreenLib.model.train import ModelSettings, build_pipeline, fit_model, selected_feature_names


# ------------------------------------------------------------------------ data
def make_table(n: int = 160, n_features: int = 12, seed: int = 0) -> pd.DataFrame:
    """Gaussian features, the first three carry the signal (one with an interaction)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    logit_p = 1.5 * X[:, 0] - 1.0 * X[:, 1] + 0.8 * X[:, 2] * (X[:, 0] > 0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit_p))).astype(int)
    table = pd.DataFrame(X, columns=[f"original_shape_f{j:02d}" for j in range(n_features)])
    table.insert(0, "label", y)
    table.insert(1, "site", "siteA")
    return table


def fitted(classifier: str, table: pd.DataFrame, n_columns: int | None = None, **settings) -> object:
    columns = [c for c in table.columns if c.startswith("original_")][:n_columns]
    base = dict(harmonize=False, univariate_alpha=None, correlation_threshold=None, reduction="none")
    pipeline = build_pipeline(columns, classifier, ModelSettings(**{**base, **settings}))
    if classifier == "rf":
        pipeline.set_params(classifier__n_estimators=30, classifier__min_samples_leaf=3)
    return fit_model(pipeline, table, table["label"].to_numpy())


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_table()


def assert_additive(result: ShapResult, output: np.ndarray) -> None:
    assert result.values.shape == (output.size, len(result.feature_names))
    np.testing.assert_allclose(result.base_value + result.values.sum(axis=1), output, atol=1e-6, rtol=1e-6)


# ======================================================= brute-force TreeSHAP
def conditional_expectation(tree: TreeArrays, x: np.ndarray, known: set[int], node: int = 0) -> float:
    """E[f(x) | x_S], path-dependent: follow x on known features, else average children by cover."""
    if tree.left[node] < 0:
        return float(tree.value[node])
    left, right, feature = int(tree.left[node]), int(tree.right[node]), int(tree.feature[node])
    if feature in known:
        return conditional_expectation(tree, x, known, left if x[feature] <= tree.threshold[node] else right)
    return (tree.cover[left] * conditional_expectation(tree, x, known, left)
            + tree.cover[right] * conditional_expectation(tree, x, known, right)) / tree.cover[node]


def brute_force_shapley(tree: TreeArrays, x: np.ndarray) -> np.ndarray:
    """φ_j = Σ_{S ⊆ F∖j} |S|!(p−|S|−1)!/p! · (v(S ∪ j) − v(S)), every subset enumerated."""
    p = x.size
    phi = np.zeros(p)
    for j in range(p):
        others = [k for k in range(p) if k != j]
        for size in range(p):
            weight = math.factorial(size) * math.factorial(p - size - 1) / math.factorial(p)
            for subset in itertools.combinations(others, size):
                known = set(subset)
                phi[j] += weight * (conditional_expectation(tree, x, known | {j})
                                    - conditional_expectation(tree, x, known))
    return phi


def test_tree_shap_equals_brute_force_shapley_on_small_trees() -> None:
    rng = np.random.default_rng(1)
    p = 5
    X = rng.normal(size=(120, p))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + 0.5 * rng.normal(size=120) > 0).astype(int)
    deep_tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(X, y)  # features repeat on paths
    forest = RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(X, y)  # bootstrap covers
    trees = [TreeArrays.from_sklearn(deep_tree)] + [TreeArrays.from_sklearn(t) for t in forest.estimators_]
    assert any(_has_repeated_feature_on_a_path(t) for t in trees), "the check must cover UNWIND"
    rows = X[:8]
    for tree in trees:
        ours = tree_shap(tree, rows)
        for i, x in enumerate(rows):
            np.testing.assert_allclose(ours[i], brute_force_shapley(tree, x), atol=1e-12)
        assert tree.expected_value() == pytest.approx(conditional_expectation(tree, rows[0], set()), abs=1e-12)


def _has_repeated_feature_on_a_path(tree: TreeArrays, node: int = 0, seen: tuple = ()) -> bool:
    if tree.left[node] < 0:
        return False
    feature = int(tree.feature[node])
    if feature in seen:
        return True
    return any(_has_repeated_feature_on_a_path(tree, int(child), seen + (feature,))
               for child in (tree.left[node], tree.right[node]))


def xgboost_trees(booster) -> list[TreeArrays]:
    """XGBoost's dumped trees as TreeArrays: x < split ⇔ x ≤ the float32 just below split."""
    return [_xgboost_tree(nodes.reset_index(drop=True)) for _, nodes in booster.trees_to_dataframe().groupby("Tree")]


def _xgboost_tree(nodes: pd.DataFrame) -> TreeArrays:
    position = {node_id: k for k, node_id in enumerate(nodes["ID"])}  # node ids may have gaps
    leaf = (nodes["Feature"] == "Leaf").to_numpy()
    children = {column: np.array([-1 if is_leaf else position[c] for is_leaf, c in zip(leaf, nodes[column])])
                for column in ("Yes", "No")}
    split = nodes["Split"].fillna(0).to_numpy(np.float32)
    return TreeArrays(
        left=children["Yes"], right=children["No"],
        feature=np.array([-2 if is_leaf else int(f[1:]) for is_leaf, f in zip(leaf, nodes["Feature"])]),
        threshold=np.nextafter(split, np.float32(-np.inf)).astype(float),
        value=nodes["Gain"].to_numpy(float), cover=nodes["Cover"].to_numpy(float),
    )


def test_tree_shap_on_xgboost_trees_equals_native_pred_contribs() -> None:
    xgboost = pytest.importorskip("xgboost")
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] * X[:, 3] + 0.5 * rng.normal(size=200) > 0).astype(int)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=4, learning_rate=0.3, n_jobs=1, random_state=0)
    model.fit(X, y)
    native = model.get_booster().predict(xgboost.DMatrix(X[:40]), pred_contribs=True)
    trees = xgboost_trees(model.get_booster())
    ours = sum(tree_shap(tree, X[:40].astype(float)) for tree in trees)
    np.testing.assert_allclose(ours, native[:, :-1], atol=2e-5)  # xgboost works in float32
    margin = model.predict(X[:40], output_margin=True)
    np.testing.assert_allclose(native[:, -1] + ours.sum(axis=1), margin, atol=2e-5)


# ==================================================================== linear
def test_linear_shap_equals_closed_form_and_adds_up_to_the_logit(table: pd.DataFrame) -> None:
    model = fitted("lr", table, reduction="lasso")
    train, test = table.iloc[:100], table.iloc[100:]
    result = shap_values(model, test, background_frame=train)
    Z, Zb = np.asarray(model[:-1].transform(test)), np.asarray(model[:-1].transform(train))
    beta = model[-1].coef_.ravel()
    np.testing.assert_allclose(result.values, beta * (Z - Zb.mean(axis=0)), atol=1e-12)
    assert result.feature_names == selected_feature_names(model)
    assert result.output == "log-odds" and result.exact
    assert_additive(result, model.decision_function(test))
    # default background: the explained rows themselves, so SHAP values average to zero
    own = shap_values(model, test)
    np.testing.assert_allclose(own.values.mean(axis=0), 0.0, atol=1e-12)


def test_linear_shap_through_pca_is_given_for_the_features_entering_the_pca(table: pd.DataFrame) -> None:
    model = fitted("lr", table, reduction="pca")
    result = shap_values(model, table.iloc[:50], background_frame=table)
    names = [str(n) for n in model[:-2].get_feature_names_out()]
    assert result.feature_names == names and not any(n.startswith("pca") for n in names)
    assert "PCA" in result.method
    assert_additive(result, model.decision_function(table.iloc[:50]))


def test_grid_search_is_unwrapped(table: pd.DataFrame) -> None:
    columns = [c for c in table.columns if c.startswith("original_")]
    pipeline = build_pipeline(columns, "lr", ModelSettings(harmonize=False, univariate_alpha=None))
    search = GridSearchCV(pipeline, {"classifier__C": [0.1, 1.0]}, cv=3, scoring="roc_auc")
    search = fit_model(search, table, table["label"].to_numpy())
    result = shap_values(search, table.iloc[:20], table)
    assert_additive(result, search.decision_function(table.iloc[:20]))


# ================================================================ tree models
def test_forest_tree_shap_adds_up_to_the_forest_probability(table: pd.DataFrame) -> None:
    model = fitted("rf", table)
    rows = table.iloc[:40]
    result = shap_values(model, rows)
    assert result.output == "probability" and "TreeSHAP" in result.method
    assert_additive(result, model.predict_proba(rows)[:, 1])
    # the planted signal dominates
    top = shap_summary(result, top=3)["feature"].tolist()
    assert "original_shape_f00" in top and "original_shape_f01" in top


@pytest.mark.parametrize("classifier", ["xgboost", "lightgbm"])
def test_native_booster_shap_adds_up_to_the_margin(table: pd.DataFrame, classifier: str) -> None:
    pytest.importorskip(classifier)
    model = fitted(classifier, table)
    rows = table.iloc[:40]
    result = shap_values(model, rows)
    assert result.output == "log-odds" and "native" in result.method
    probability = model.predict_proba(rows)[:, 1]
    assert_additive(result, logit(probability))


# ============================================================ model-agnostic
def brute_force_interventional(predict, x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Shapley values by the permutation definition, all p! orders, v(S) = mean_b f(x_S, b_rest)."""
    p = x.size

    def value(known: list[int]) -> float:
        rows = background.copy()
        rows[:, known] = x[known]
        return float(predict(rows).mean())

    phi = np.zeros(p)
    orders = list(itertools.permutations(range(p)))
    for order in orders:
        for k, j in enumerate(order):
            phi[j] += value(list(order[:k + 1])) - value(list(order[:k]))
    return phi / len(orders)


def test_agnostic_shap_is_exact_for_few_features(table: pd.DataFrame) -> None:
    model = fitted("svm", table, n_columns=4)
    rows, background = table.iloc[:5], table.iloc[100:130]
    result = shap_values(model, rows, background)
    assert result.exact and "exact" in result.method and result.output == "probability"
    assert_additive(result, model.predict_proba(rows)[:, 1])
    Z, Zb = np.asarray(model[:-1].transform(rows)), np.asarray(model[:-1].transform(background))
    predict = lambda data: model[-1].predict_proba(data)[:, 1]  # noqa: E731
    for i in range(len(rows)):
        np.testing.assert_allclose(result.values[i], brute_force_interventional(predict, Z[i], Zb), atol=1e-12)


def test_agnostic_shap_sampling_is_additive_and_exact_for_an_additive_function() -> None:
    rng = np.random.default_rng(3)
    Z, Zb = rng.normal(size=(10, 12)), rng.normal(size=(70, 12))
    weights = rng.normal(size=12)
    result = _agnostic_shap(lambda data: data @ weights, Z, Zb, [f"f{j}" for j in range(12)],
                            n_permutations=4, max_background=50, seed=0)
    assert not result.exact and "approximated" in result.method
    assert "background of 50 rows" in result.method  # subsampled
    used = Zb[np.sort(np.random.default_rng(0).choice(70, size=50, replace=False))]
    np.testing.assert_allclose(result.values, weights * (Z - used.mean(axis=0)), atol=1e-12)


def test_agnostic_shap_sampling_on_an_mlp_is_additive_and_seeded(table: pd.DataFrame) -> None:
    model = fitted("mlp", table)
    rows = table.iloc[:10]
    first = shap_values(model, rows, table, n_permutations=4, max_background=20)
    again = shap_values(model, rows, table, n_permutations=4, max_background=20)
    assert not first.exact
    assert_additive(first, model.predict_proba(rows)[:, 1])
    np.testing.assert_array_equal(first.values, again.values)


def test_tree_model_after_pca_is_explained_model_agnostically_for_the_pca_inputs(table: pd.DataFrame) -> None:
    model = fitted("rf", table, reduction="pca")
    rows = table.iloc[:6]
    result = shap_values(model, rows, table, n_permutations=2, max_background=10)
    assert result.feature_names == [str(n) for n in model[:-2].get_feature_names_out()]
    assert not result.exact and "permutations" in result.method
    assert_additive(result, model.predict_proba(rows)[:, 1])


# =================================================================== nomogram
def test_nomogram_shap_adds_up_to_its_linear_predictor() -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"rad_score": rng.normal(size=150), "deep_score": rng.normal(size=150),
                          "sex": rng.choice(["F", "M"], size=150)})
    y = (rng.random(150) < 1 / (1 + np.exp(-(frame["rad_score"] + 0.5 * (frame["sex"] == "M"))))).astype(int)
    nomogram = Nomogram.fit(frame, y, categorical={"sex": ["F", "M"]})
    result = shap_values(nomogram, frame.iloc[:30], frame)
    assert result.feature_names == ["rad_score", "deep_score", "sex"]
    assert_additive(result, nomogram.points(frame.iloc[:30])["linear_predictor"].to_numpy())
    beta = nomogram.logistic_fit.coefficient_dict()["rad_score"]
    expected = beta * (frame["rad_score"].iloc[:30] - frame["rad_score"].mean())
    np.testing.assert_allclose(result.values[:, 0], expected, atol=1e-10)


# ==================================================================== summary
def test_summary_sorts_by_mean_absolute_shap_and_gives_the_direction(table: pd.DataFrame) -> None:
    model = fitted("lr", table, reduction="lasso")
    result = shap_values(model, table)
    summary = shap_summary(result, top=3)
    assert len(summary) == min(3, len(result.feature_names))
    assert summary["mean_abs_shap"].is_monotonic_decreasing
    np.testing.assert_allclose(summary["mean_abs_shap"].iloc[0], np.abs(result.values).mean(axis=0).max())
    direction = dict(zip(summary["feature"], summary["direction"]))
    assert direction["original_shape_f00"] == "higher value, higher risk"
    assert direction["original_shape_f01"] == "higher value, lower risk"
    assert len(shap_summary(result, top=0)) == len(result.feature_names)


def test_refuses_what_it_cannot_explain(table: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="cannot explain"):
        shap_values(object(), table)
    with pytest.raises(InputError, match="no rows"):
        shap_values(fitted("lr", table), table.iloc[:0])
