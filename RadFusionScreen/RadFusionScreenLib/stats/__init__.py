"""Statistics of the radiomics workflow, each function matching a named R reference.

==============================  ====================================================
Function / class                Mirrors
==============================  ====================================================
roc_auc, auc_ci_delong          pROC::auc, pROC::ci.auc(method="delong")
auc_ci_bootstrap                pROC::ci.auc(method="bootstrap"), stratified
delong_test                     pROC::roc.test(method="delong", paired=TRUE)
hosmer_lemeshow_test            ResourceSelection::hoslem.test
calibration_curve               binned observed vs predicted (hoslem.test groups)
calibration_intercept_slope     rms::val.prob intercept/slope, calibration-in-the-large
decision_curve                  rmda::decision_curve (net benefit)
intraclass_correlation          psych::ICC(lmer=FALSE)
ComBatModel, combat             sva::ComBat (parametric EB), as fit / transform
Nomogram, pretty                rms::nomogram(fun=plogis), base::pretty
fit_logistic_regression         rms::lrm / glm(binomial), unpenalised ML
fit_firth_logistic_regression   brglm2::brglmFit(type="AS_mean") / logistf (Firth)
fit_logistic_or_firth           ML, or Firth where detect_separation finds separation
detect_separation               detectseparation::detect_separation (Konis' LP)
mann_whitney_test, welch_t_test wilcox.test(exact=FALSE), t.test(var.equal=FALSE)
univariate_tests                both, for every feature column
youden_threshold                pROC::coords("best", best.method="youden")
threshold_metrics               pROC::coords at a fixed threshold + binomial CIs
==============================  ====================================================

The reference values and their tolerances are described in
``../shared/reference/stats/README.md``; ``Testing/Python/test_stats_reference.py``
checks every function against them.
"""

from RadFusionScreenLib.stats.calibration import (
    CalibrationFit,
    HosmerLemeshowResult,
    calibration_curve,
    calibration_intercept_slope,
    hosmer_lemeshow_test,
)
from RadFusionScreenLib.stats.combat import ComBatModel, combat
from RadFusionScreenLib.stats.decision_curve import decision_curve
from RadFusionScreenLib.stats.icc import ICC_TYPES, intraclass_correlation
from RadFusionScreenLib.stats.logistic import (
    LogisticRegressionFit,
    SeparationError,
    detect_separation,
    fit_firth_logistic_regression,
    fit_logistic_or_firth,
    fit_logistic_regression,
)
from RadFusionScreenLib.stats.nomogram import Nomogram, NomogramAxis, pretty
from RadFusionScreenLib.stats.roc import AUCResult, DeLongTestResult, auc_ci_bootstrap, auc_ci_delong, delong_test, roc_auc
from RadFusionScreenLib.stats.threshold import (
    Proportion,
    ThresholdMetrics,
    binomial_confidence_interval,
    threshold_metrics,
    youden_threshold,
)
from RadFusionScreenLib.stats.univariate import MannWhitneyResult, WelchResult, mann_whitney_test, univariate_tests, welch_t_test

__all__ = [
    "AUCResult",
    "CalibrationFit",
    "ComBatModel",
    "DeLongTestResult",
    "HosmerLemeshowResult",
    "ICC_TYPES",
    "LogisticRegressionFit",
    "MannWhitneyResult",
    "Nomogram",
    "NomogramAxis",
    "Proportion",
    "SeparationError",
    "ThresholdMetrics",
    "WelchResult",
    "auc_ci_bootstrap",
    "auc_ci_delong",
    "binomial_confidence_interval",
    "calibration_curve",
    "calibration_intercept_slope",
    "combat",
    "decision_curve",
    "delong_test",
    "detect_separation",
    "fit_firth_logistic_regression",
    "fit_logistic_or_firth",
    "fit_logistic_regression",
    "hosmer_lemeshow_test",
    "intraclass_correlation",
    "mann_whitney_test",
    "pretty",
    "roc_auc",
    "threshold_metrics",
    "univariate_tests",
    "welch_t_test",
    "youden_threshold",
]
