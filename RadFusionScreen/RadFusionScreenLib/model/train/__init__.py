"""Build and compare screening models from a cohort feature table, without leakage: every step
that learns from data is a step of one scikit-learn pipeline fitted on training rows only.

- ``columns``: which table columns form each feature set;
- ``splits``: training / test sets and cross-validation folds, never splitting a group;
- ``pipelines``: the pipeline of one feature set x classifier (imputation, ComBat, filters,
  LASSO / PCA, classifier), its hyper-parameter grid search, fitting and predicting;
- ``shared_steps_search``: that grid search, GridSearchCV's numbers with the steps before the
  classifier fitted once per inner split;
- ``cross_validation``: a whole model refitted per outer fold for out-of-fold predictions;
- ``fit_tasks``: every fit of a comparison as process-pool tasks (a feature set's classifiers on
  one row set per task);
- ``model_result``: models into :class:`ModelResult` s (nested CV, final fit, calibration,
  training threshold, test metrics);
- ``scores``: the rad-score, deep-score and nomogram;
- ``comparison``: :func:`compare_models` over every feature set x classifier (its docstring tells
  how each number is obtained) into a :class:`ModelComparison`.
"""

from __future__ import annotations

from RadFusionScreenLib.model.train.columns import (DEEP_PREFIX, FEATURE_SETS, RADIOMIC_PREFIXES, FeatureColumns,
                                                    infer_feature_columns)
from RadFusionScreenLib.model.train.comparison import ModelComparison, best_result, compare_models
from RadFusionScreenLib.model.train.cross_validation import CrossValidatedPredictions, cross_validated_predictions
from RadFusionScreenLib.model.train.model_result import ModelResult
from RadFusionScreenLib.model.train.pipelines import (CLASSIFIERS, GRID_SIZES, REDUCTIONS, ModelSettings,
                                                      build_pipeline, build_search, fit_model, linear_predictor,
                                                      make_classifier, param_grid, predict_probability,
                                                      selected_feature_names)
from RadFusionScreenLib.model.train.scores import OUTER_FOLD
from RadFusionScreenLib.model.train.splits import CohortSplit, StratifiedSiteKFold, group_labels, split_cohort

__all__ = [
    "CLASSIFIERS", "DEEP_PREFIX", "FEATURE_SETS", "GRID_SIZES", "OUTER_FOLD", "RADIOMIC_PREFIXES", "REDUCTIONS",
    "CohortSplit", "CrossValidatedPredictions", "FeatureColumns", "ModelComparison", "ModelResult", "ModelSettings",
    "StratifiedSiteKFold", "best_result", "build_pipeline", "build_search", "compare_models",
    "cross_validated_predictions", "fit_model", "group_labels", "infer_feature_columns", "linear_predictor",
    "make_classifier", "param_grid", "predict_probability", "selected_feature_names", "split_cohort",
]
