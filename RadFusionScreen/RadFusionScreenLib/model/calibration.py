"""Calibrated probabilities: a monotone map from a classifier's raw probability to one that means
what it says, fitted on the training set's out-of-fold predictions only.

Why: a classifier's output ranks cases well (AUC) yet can be far from the observed risk (the
BUSI model's test set: calibration intercept 2.18, slope 0.68), and a radiologist reads the
number as a risk. Recalibration changes the number, never the ranking.

Methods (:class:`Calibrator`):

- ``"none"``: the raw probability, unchanged.
- ``"platt"`` (Platt scaling): ``p' = expit(a · logit(p) + b)``, a logistic regression on
  logit(p) (p clipped to [1e-6, 1 − 1e-6]) fitted with Platt's smoothed targets
  ((N₊ + 1)/(N₊ + 2) for cases, 1/(N₋ + 2) for controls), which keep a and b finite when the
  predictions separate the classes; this is ``sklearn.calibration._SigmoidCalibration`` on
  logit(p), whose ``(a_, b_)`` are ``(−a, −b)`` here. ``a >= 0``: when the fit would reverse the
  ranking (a < 0, a model no better than chance out of fold) a = 0 and b alone is fitted.
- ``"isotonic"``: the non-decreasing step fit of the outcome on p (pool-adjacent-violators; as
  ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip")``), kept as its knots (x: raw
  probability, y: calibrated) and applied by linear interpolation between them, flat outside.

A calibrated probability is kept inside [1e-6, 1 − 1e-6] (a calibrated model never claims
certainty, and its logit stays finite for the calibration metrics); ``"none"`` is left as is.

Which method (:func:`select_calibrator`): nested cross-validation over the out-of-fold
probabilities. An inner stratified K-fold, grouped (one patient / duplicate group never on
both sides), fits every method on K − 1 folds and predicts the held-out one; the methods are
compared by the **log-loss** of these held-out predictions. Log-loss is a strictly proper
scoring rule: it is minimised only by the true risk, it is the likelihood Platt's fit
maximises, and it punishes confident errors hardest (a probability near 0 or 1 that held-out
cases contradict), which is the failure a shown probability must avoid; Brier's score barely
notices miscalibration near 0 and 1. The choice follows the one-standard-error rule: the
simplest method (none, then Platt, then isotonic) whose mean log-loss is within one standard
error (of the per-case paired difference) of the best, so a model that is already calibrated is
left alone and isotonic's extra freedom must pay for itself. The chosen method is then refitted
on all out-of-fold probabilities. The test set never reaches any of this.

A calibrator is stored as plain JSON numbers (:meth:`Calibrator.to_dict`, never pickle) and
checked strictly when read (:meth:`Calibrator.from_dict` raises :class:`BundleError`). Nothing
here imports scikit-learn at module level (bundles are served without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit

from RadFusionScreenLib.core.errors import BundleError, InputError

METHODS = ("none", "platt", "isotonic")  # simplest first: the order of the one-SE rule
FORMAT = "RadFusionScreen.ProbabilityCalibrator"
FORMAT_VERSION = 1
CLIP = 1e-6  # Platt's input and every calibrated output stay inside [CLIP, 1 - CLIP]
LOG_LOSS_EPS = 1e-15  # as sklearn.metrics.log_loss: a probability of exactly 0 or 1 costs 34.5 nats
MAX_KNOTS = 100_000
FORMULAS = {"none": "p' = p",
            "platt": "p' = 1 / (1 + exp(-(a * logit(clip(p)) + b))), clip to [input_clip, 1 - input_clip]",
            "isotonic": "p' = linear interpolation of (x, y) at p, flat outside [x_min, x_max]"}
_KEYS = {"none": {"format", "format_version", "method", "formula"},
         "platt": {"format", "format_version", "method", "formula", "a", "b", "input_clip", "output_clip"},
         "isotonic": {"format", "format_version", "method", "formula", "x", "y", "output_clip"}}


# ====================================================================== calibrator
@dataclass(frozen=True)
class Calibrator:
    """A fitted probability map (see the module doc); ``a``/``b`` for Platt, knots for isotonic."""

    method: str = "none"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def apply(self, probability: ArrayLike) -> np.ndarray:
        """The calibrated probability of each raw probability (NaN stays NaN)."""
        p = np.asarray(probability, dtype=float)
        if self.method == "none":
            return p.copy()
        if self.method == "platt":
            calibrated = expit(self.a * logit(np.clip(p, CLIP, 1 - CLIP)) + self.b)
        else:
            calibrated = np.interp(p, np.asarray(self.x), np.asarray(self.y))
            calibrated = np.where(np.isnan(p), np.nan, calibrated)
        return np.clip(calibrated, CLIP, 1 - CLIP)

    def raw_threshold(self, threshold: float) -> float:
        """The smallest raw probability whose calibrated value reaches ``threshold`` (0 when every one
        does, NaN when none does): where the decision falls on the classifier's own scale, e.g. on a
        SHAP waterfall, which explains the raw output."""
        t = float(threshold)
        if not math.isfinite(t) or self.method == "none":
            return t
        if self.method == "platt":
            if self.a == 0:
                return 0.0 if expit(self.b) >= t else float("nan")
            return float(expit((logit(min(max(t, CLIP), 1 - CLIP)) - self.b) / self.a))
        xs, ys = np.asarray(self.x), np.asarray(self.y)
        if ys[0] >= t:
            return 0.0
        if ys[-1] < t:
            return float("nan")
        k = int(np.argmax(ys >= t))
        return float(xs[k - 1] + (t - ys[k - 1]) / (ys[k] - ys[k - 1]) * (xs[k] - xs[k - 1]))

    def describe(self) -> str:
        """One line a reader understands."""
        if self.method == "platt":
            sign = "+" if self.b >= 0 else "−"
            return f"Platt scaling, p' = expit({self.a:.3f} · logit(p) {sign} {abs(self.b):.3f})"
        if self.method == "isotonic":
            return f"isotonic regression ({len(self.x)} knots, interpolated)"
        return "none (the classifier's probability as it is)"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON numbers: what a bundle's manifest stores."""
        record: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": self.method,
                                  "formula": FORMULAS[self.method]}
        if self.method == "platt":
            record.update(a=float(self.a), b=float(self.b), input_clip=CLIP, output_clip=CLIP)
        elif self.method == "isotonic":
            record.update(x=[float(v) for v in self.x], y=[float(v) for v in self.y], output_clip=CLIP)
        return record

    @classmethod
    def from_dict(cls, record: Any) -> "Calibrator":
        """A calibrator from :meth:`to_dict` output; anything else is refused with :class:`BundleError`."""
        if not isinstance(record, Mapping):
            raise _invalid(f"expected an object, found {type(record).__name__}")
        if record.get("format") != FORMAT or _number(record.get("format_version"), "format_version") != FORMAT_VERSION:
            raise _invalid(f"format {record.get('format')!r} version {record.get('format_version')!r}; "
                           f"this engine reads {FORMAT} version {FORMAT_VERSION}")
        method = record.get("method")
        if method not in METHODS:
            raise _invalid(f"unknown method {method!r} (known: {', '.join(METHODS)})")
        keys = set(record)
        if keys != _KEYS[method]:
            extra, missing = sorted(keys - _KEYS[method]), sorted(_KEYS[method] - keys)
            raise _invalid(f"the {method} record has unexpected keys {extra} / lacks {missing}")
        if record["formula"] != FORMULAS[method]:
            raise _invalid(f"its formula {record['formula']!r} is not the {method} formula")
        for key in ("input_clip", "output_clip"):
            if key in record and _number(record[key], key) != CLIP:
                raise _invalid(f"{key} is {record[key]!r}; this engine uses {CLIP:g}")
        if method == "platt":
            a, b = _number(record["a"], "a"), _number(record["b"], "b")
            if a < 0:
                raise _invalid(f"Platt slope a = {a!r} is negative: it would reverse the model's ranking")
            return cls("platt", a=a, b=b)
        if method == "isotonic":
            return cls("isotonic", x=_knots(record["x"], "x", strict=True), y=_knots(record["y"], "y", strict=False,
                                                                                    length=len(record["x"])))
        return cls("none")


def _invalid(what: str) -> BundleError:
    return BundleError(f"the bundle's probability calibration is invalid: {what}. The bundle is refused; "
                       "re-export it with radfusion train")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(f"{name} must be a finite number, found {value!r}")
    return float(value)


def _knots(values: Any, name: str, strict: bool, length: int | None = None) -> tuple[float, ...]:
    if not isinstance(values, list) or not 2 <= len(values) <= MAX_KNOTS:
        raise _invalid(f"isotonic {name} must be a list of 2 to {MAX_KNOTS} numbers")
    if length is not None and len(values) != length:
        raise _invalid(f"isotonic x and y differ in length ({length} and {len(values)})")
    knots = np.array([_number(v, f"isotonic {name}") for v in values])
    if knots.min() < 0 or knots.max() > 1:
        raise _invalid(f"isotonic {name} must lie in [0, 1]")
    steps = np.diff(knots)
    if np.any(steps <= 0) if strict else np.any(steps < 0):
        raise _invalid(f"isotonic {name} must be {'strictly increasing' if strict else 'non-decreasing'}")
    return tuple(float(v) for v in knots)


# ========================================================================= fitting
def fit_calibrator(method: str, probability: ArrayLike, y: ArrayLike) -> Calibrator:
    """Fit one method on raw probabilities and 0/1 outcomes (see the module doc)."""
    p, outcome = _inputs(probability, y)
    if method == "none":
        return Calibrator("none")
    if method == "platt":
        a, b = platt_fit(logit(np.clip(p, CLIP, 1 - CLIP)), outcome)
        return Calibrator("platt", a=a, b=b)
    if method == "isotonic":
        x, fitted = isotonic_knots(p, outcome)
        return Calibrator("isotonic", x=tuple(map(float, x)), y=tuple(map(float, fitted)))
    raise InputError(f"unknown calibration method {method!r}: use one of {', '.join(METHODS)}")


def _inputs(probability: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probability, dtype=float).ravel()
    outcome = np.asarray(y).ravel()
    if p.size != outcome.size or p.size == 0:
        raise InputError(f"calibration needs one probability per outcome (got {p.size} and {outcome.size})")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise InputError("calibration needs finite probabilities in [0, 1]")
    if not np.isin(outcome, (0, 1)).all():
        raise InputError("calibration needs 0/1 outcomes")
    return p, outcome.astype(float)


def platt_fit(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of ``expit(a · score + b)`` with Platt's smoothed targets, by Newton's method (convex,
    so the optimum is unique); a is constrained to >= 0."""
    n_pos = float(y.sum())
    n_neg = y.size - n_pos
    target = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    b_only = float(logit(target.mean()))
    if np.ptp(score) == 0:
        return 0.0, b_only
    design = np.column_stack([score, np.ones_like(score)])
    theta = np.array([0.0, b_only])

    def loss(params: np.ndarray) -> float:
        z = design @ params
        return float(np.sum(np.logaddexp(0, z) - target * z))

    current = loss(theta)
    for _ in range(100):
        q = expit(design @ theta)
        gradient = design.T @ (q - target)
        hessian = (design * (q * (1 - q))[:, None]).T @ design
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        scale = 1.0
        while scale > 1e-10 and loss(theta - scale * step) > current + 1e-14 * abs(current):
            scale /= 2
        theta = theta - scale * step
        updated = loss(theta)
        if abs(current - updated) <= 1e-15 * max(1.0, abs(current)) and np.max(np.abs(gradient)) < 1e-9 * y.size:
            break
        current = updated
    if theta[0] < 0:
        return 0.0, b_only
    return float(theta[0]), float(theta[1])


def isotonic_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the non-decreasing least-squares fit of y on x (pool-adjacent-violators over the
    distinct x, tied x averaged), keeping only the ends of each flat run, as scikit-learn does."""
    values, inverse = np.unique(x, return_inverse=True)
    weights = np.bincount(inverse).astype(float)
    means = np.bincount(inverse, weights=y) / weights
    block_value, block_weight, block_size = [], [], []
    for value, weight in zip(means, weights):
        block_value.append(value)
        block_weight.append(weight)
        block_size.append(1)
        while len(block_value) > 1 and block_value[-2] > block_value[-1]:
            w = block_weight[-2] + block_weight[-1]
            v = (block_value[-2] * block_weight[-2] + block_value[-1] * block_weight[-1]) / w
            size = block_size[-2] + block_size[-1]
            del block_value[-1], block_weight[-1], block_size[-1]
            block_value[-1], block_weight[-1], block_size[-1] = v, w, size
    fitted = np.repeat(block_value, block_size)
    if fitted.size < 3:
        return values, fitted
    keep = np.ones(fitted.size, dtype=bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return values[keep], fitted[keep]


# ======================================================================= selection
@dataclass
class CalibrationSelection:
    """The chosen, refitted calibrator and how it was chosen (nested CV on out-of-fold probabilities)."""

    calibrator: Calibrator
    log_loss: dict[str, float]  # mean held-out log-loss per method (inner folds)
    log_loss_se: dict[str, float]  # standard error of each method's paired difference to the best
    fold: np.ndarray  # inner fold of each training row (-1: no inner CV)
    n_training: int
    held_out: np.ndarray | None = None  # chosen method's held-out (inner-fold) calibrated probabilities
    remarks: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.calibrator.method

    def apply(self, probability: ArrayLike) -> np.ndarray:
        return self.calibrator.apply(probability)

    def to_dict(self) -> dict[str, Any]:
        """How the method was chosen, as JSON (the calibrator itself: ``calibrator.to_dict()``)."""
        n_folds = int(self.fold.max()) + 1 if self.fold.size else 0
        return {"method": self.method, "description": self.calibrator.describe(),
                "fitted_on": f"the training set's out-of-fold probabilities ({self.n_training} cases; the final "
                             "model's configuration refitted on the outer cross-validation folds, never the test set)",
                "rule": f"lowest held-out log-loss over {n_folds} grouped, stratified inner folds, one-standard-"
                        "error rule towards the simpler method (none, Platt, isotonic)",
                "inner_folds": n_folds, "log_loss": dict(self.log_loss), "log_loss_se": dict(self.log_loss_se),
                "remarks": list(self.remarks)}


def select_calibrator(probability: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None, n_splits: int = 5,
                      random_state: int = 0, methods: Sequence[str] = METHODS) -> CalibrationSelection:
    """Choose and fit the calibration of out-of-fold ``probability`` (see the module doc).

    ``groups``: rows that must share an inner fold (patient, duplicate group); None: each row
    its own group. Too few cases for an inner fold of each class leave the model uncalibrated
    (``"none"``) with a remark.
    """
    p, outcome = _inputs(probability, y)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "none" not in methods:
        raise InputError(f"calibration methods must include 'none' and come from {METHODS}, got {list(methods)}")
    ordered = [m for m in METHODS if m in methods]
    splits = min(int(n_splits), int(outcome.sum()), int(outcome.size - outcome.sum()))
    reason = ("the out-of-fold probabilities are all equal" if np.ptp(p) == 0 else
              f"too few cases of one class ({splits}) for 2 inner folds" if splits < 2 else None)
    fold = np.full(p.size, -1)
    if reason is None:
        try:
            fold = inner_folds(outcome, groups, splits, random_state)
        except (ValueError, InputError) as exc:
            reason = f"the inner folds cannot be made ({exc})"
    if reason is not None:
        return CalibrationSelection(Calibrator("none"), {}, {}, fold, p.size, None,
                                    [f"not calibrated: {reason}"])
    held_out = {m: np.empty(p.size) for m in ordered}
    for k in range(splits):
        train, valid = fold != k, fold == k
        for method in ordered:
            held_out[method][valid] = fit_calibrator(method, p[train], outcome[train]).apply(p[valid])
    losses = {m: log_loss_per_case(outcome, held_out[m]) for m in ordered}
    mean = {m: float(losses[m].mean()) for m in ordered}
    best = min(ordered, key=lambda m: mean[m])
    se = {m: float(np.std(losses[m] - losses[best], ddof=1) / math.sqrt(p.size)) for m in ordered}
    chosen = next(m for m in ordered if mean[m] - mean[best] <= se[m])
    calibrator = fit_calibrator(chosen, p, outcome)
    remarks = []
    if calibrator.method == "platt" and calibrator.a == 0:
        remarks.append("Platt's slope is 0: the out-of-fold probabilities rank the cases no better than chance, so "
                       "the calibrated probability is the same for every case")
    return CalibrationSelection(calibrator, mean, se, fold, p.size, held_out[chosen], remarks)


def inner_folds(y: np.ndarray, groups: ArrayLike | None, n_splits: int, random_state: int) -> np.ndarray:
    """Inner fold of each row: stratified by outcome, groups kept whole (as the outer folds)."""
    from RadFusionScreenLib.model.train.splits import StratifiedSiteKFold

    fold = np.full(y.size, -1)
    group_ids = None if groups is None else np.asarray(groups, dtype=object)
    for k, (_, valid) in enumerate(StratifiedSiteKFold(n_splits, random_state=random_state)
                                   .split(np.zeros(y.size), y.astype(int), group_ids)):
        fold[valid] = k
    return fold


def log_loss_per_case(y: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """−[y log p + (1 − y) log(1 − p)], p clipped to [1e-15, 1 − 1e-15] (as sklearn.metrics.log_loss)."""
    p = np.clip(probability, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


# ========================================================================= metrics
def calibration_metrics(y: ArrayLike, probability: ArrayLike, conf_level: float = 0.95) -> dict[str, Any]:
    """How well ``probability`` is calibrated on outcomes ``y``, as JSON numbers.

    Calibration intercept (in-the-large) and slope (``stats.calibration_intercept_slope``,
    as rms::val.prob) with Wald intervals (estimate ± z·SE), Hosmer-Lemeshow over 10 risk
    groups (``stats.hosmer_lemeshow_test``, as hoslem.test), mean predicted vs observed rate.
    Probabilities of exactly 0 or 1 are clipped to [1e-6, 1 − 1e-6] for the logit (``clip``
    says so). A statistic that does not exist on these data is None with its ``*_error``.
    """
    from scipy.stats import norm

    from RadFusionScreenLib.stats import calibration_intercept_slope, hosmer_lemeshow_test

    outcome = np.asarray(y, dtype=float).ravel()
    p = np.asarray(probability, dtype=float).ravel()
    clip = CLIP if np.any((p <= 0) | (p >= 1)) else None
    z = float(norm.ppf(0.5 + conf_level / 2))
    entry: dict[str, Any] = {"n": int(p.size), "clip": clip, "conf_level": conf_level,
                             "ci_method": "Wald (estimate ± z·SE)", "mean_predicted": float(p.mean()),
                             "observed_rate": float(outcome.mean())}
    try:
        hl = hosmer_lemeshow_test(outcome, p, g=10)
        entry["hosmer_lemeshow"] = {"statistic": hl.statistic, "df": hl.df, "p_value": hl.p_value,
                                    "n_groups": hl.n_groups}
    except InputError as exc:
        entry.update(hosmer_lemeshow=None, hosmer_lemeshow_error=str(exc))
    try:
        if np.ptp(p) == 0:
            raise InputError("every probability is the same: the calibration slope is undefined")
        fit = calibration_intercept_slope(outcome, p, clip=clip)
    except InputError as exc:
        entry.update(intercept=None, slope=None, intercept_ci=None, slope_ci=None, intercept_slope_error=str(exc))
        return entry
    entry.update(intercept=fit.intercept, intercept_se=fit.intercept_se,
                 intercept_ci=[fit.intercept - z * fit.intercept_se, fit.intercept + z * fit.intercept_se],
                 slope=fit.slope, slope_se=fit.slope_se,
                 slope_ci=[fit.slope - z * fit.slope_se, fit.slope + z * fit.slope_se], slope_method=fit.slope_method)
    return entry
