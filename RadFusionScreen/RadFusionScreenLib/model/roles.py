"""What each model of a comparison is for, as named fields rather than name conventions.

A comparison holds three kinds of result: candidates (every feature set x classifier, one of
which a bundle ships), the LASSO + logistic-regression models whose linear predictors are
the rad-score and deep-score, and the nomogram on those scores (+ clinical values).
"""

from __future__ import annotations

CANDIDATE = "candidate"  # may be shipped
SCORE_ONLY = "score"  # built only to make a rad/deep score (never shipped)
NOMOGRAM = "nomogram"

RAD_SCORE, DEEP_SCORE = "rad_score", "deep_score"
SCORE_FEATURE_SETS = {RAD_SCORE: "radiomic", DEEP_SCORE: "deep"}  # score -> the feature set it summarises
NOMOGRAM_RESULT = "nomogram/logistic"  # the nomogram's result name in a comparison
SHIPPED_FEATURE_SET = "fused"  # a bundle ships the best model of this set when there is one
