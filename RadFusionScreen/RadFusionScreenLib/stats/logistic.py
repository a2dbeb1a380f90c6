"""Logistic regression whose coefficients are reported: plain ML, and Firth's fit under separation.

:func:`fit_logistic_regression` is the unpenalised maximum-likelihood fit of ``rms::lrm`` /
``glm(binomial)`` (scikit-learn penalises by default), used for nomograms and calibration
slopes. When the outcome is completely or quasi-completely separated by the predictors the ML
estimate does not exist (some coefficient is infinite): :func:`detect_separation` says so
exactly, by the linear program of Konis (2007) that R's ``detectseparation`` uses, and
:func:`fit_firth_logistic_regression` gives Firth's bias-reduced estimate, which always
exists (``brglm2::brglmFit(type="AS_mean")`` / ``logistf``). :func:`fit_logistic_or_firth`
picks between them and records which it used in ``LogisticRegressionFit.method``.

What an R user sees on separated data: ``glm`` "converges" to huge coefficients with huge
standard errors and warns "fitted probabilities numerically 0 or 1 occurred"; ``rms::lrm``
stops without a fit (or reports that it did not converge, depending on the rms version), so
no nomogram can be drawn. ``brglm2`` / ``logistf`` give the Firth fit used here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import linprog
from scipy.special import expit

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_binary_outcome, as_float_matrix, as_float_vector

INTERCEPT = "Intercept"
FIT_METHODS = ("ml", "firth")
SEPARATION_KINDS = ("none", "quasi-complete", "complete")


@dataclass(frozen=True)
class LogisticRegressionFit:
    """A fitted logistic model: ``logit P(y=1) = offset + Σ coefficient·column``.

    ``names`` and ``coefficients`` line up; with an intercept it is first, named "Intercept".
    """

    names: tuple[str, ...]
    coefficients: np.ndarray
    standard_errors: np.ndarray
    log_likelihood: float
    n_iter: int
    fit_intercept: bool = True
    method: str = "ml"  # "ml" (maximum likelihood) or "firth" (bias-reduced, under separation)
    separation: str = "none"  # what detect_separation found on the training data

    @property
    def description(self) -> str:
        """One line for reports: how the coefficients were estimated, and why."""
        if self.method == "firth" and self.separation != "none":
            return (f"Firth's bias-reduced logistic regression: the outcome is {self.separation}ly "
                    "separated by the predictors, so no maximum-likelihood fit exists")
        return "Firth's bias-reduced logistic regression" if self.method == "firth" else "maximum likelihood (as rms::lrm)"

    def coefficient_dict(self) -> dict[str, float]:
        """Coefficients keyed by column name (intercept as "Intercept")."""
        return {name: float(value) for name, value in zip(self.names, self.coefficients)}

    def linear_predictor(self, X: ArrayLike, offset: ArrayLike | None = None) -> np.ndarray:
        """Linear predictor (log-odds) for new rows of the same columns."""
        design = _design(as_float_matrix(X, "X"), self.fit_intercept)
        if design.shape[1] != self.coefficients.size:
            raise InputError(f"X has {design.shape[1] - self.fit_intercept} columns, the model {self.names}")
        eta = design @ self.coefficients
        return eta if offset is None else eta + as_float_vector(offset, "offset", eta.size)

    def predict_proba(self, X: ArrayLike, offset: ArrayLike | None = None) -> np.ndarray:
        """Predicted probability of y = 1."""
        return expit(self.linear_predictor(X, offset))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able parameters (no pickle)."""
        return {
            "names": list(self.names),
            "coefficients": self.coefficients.tolist(),
            "standard_errors": self.standard_errors.tolist(),
            "log_likelihood": self.log_likelihood,
            "n_iter": self.n_iter,
            "fit_intercept": self.fit_intercept,
            "method": self.method,
            "separation": self.separation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LogisticRegressionFit":
        try:
            return cls(
                tuple(data["names"]),
                np.asarray(data["coefficients"], dtype=float),
                np.asarray(data["standard_errors"], dtype=float),
                float(data["log_likelihood"]),
                int(data["n_iter"]),
                bool(data["fit_intercept"]),
                _one_of(data.get("method", "ml"), FIT_METHODS, "method"),
                _one_of(data.get("separation", "none"), SEPARATION_KINDS, "separation"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"logistic regression parameters are incomplete or malformed: {exc}") from None


def _one_of(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {allowed}")
    return str(value)


def _design(X: np.ndarray, fit_intercept: bool) -> np.ndarray:
    return np.column_stack([np.ones(X.shape[0]), X]) if fit_intercept else X


def _log_likelihood(y: np.ndarray, eta: np.ndarray) -> float:
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _column_names(X: ArrayLike, count: int, feature_names: Sequence[str] | None) -> list[str]:
    if feature_names is not None:
        names = [str(name) for name in feature_names]
    elif isinstance(X, pd.DataFrame):
        names = [str(name) for name in X.columns]
    elif isinstance(X, pd.Series):
        names = [str(X.name)]
    else:
        names = [f"x{i + 1}" for i in range(count)]
    if len(names) != count:
        raise InputError(f"feature_names has {len(names)} names for {count} columns")
    return names


def fit_logistic_regression(
    X: ArrayLike,
    y: ArrayLike,
    *,
    feature_names: Sequence[str] | None = None,
    offset: ArrayLike | None = None,
    fit_intercept: bool = True,
    tol: float = 1e-12,
    max_iter: int = 100,
) -> LogisticRegressionFit:
    """Fit an unpenalised logistic regression by Newton-Raphson with step halving.

    Mirrors ``rms::lrm(y ~ x1 + ...)`` / ``glm(y ~ ..., family=binomial)``: plain maximum
    likelihood, iterated until the largest Newton step is below ``tol`` (relative to the
    coefficients' size), so coefficients agree with R to ~1e-10.

    Parameters
    ----------
    X : array_like, samples x predictors
        Numeric predictors (dummy-code factors first). May have zero columns when
        ``fit_intercept`` is True (intercept-only model).
    y : array_like of 0/1
        Outcome, 1 = event.
    feature_names : sequence of str, optional
        Column names; default DataFrame columns or x1, x2, ...
    offset : array_like, optional
        Known per-sample term added to the linear predictor (coefficient fixed at 1).
    fit_intercept : bool
        Add an intercept column (first coefficient, named "Intercept").
    tol, max_iter : float, int
        Convergence tolerance and iteration limit.

    Raises
    ------
    SeparationError
        On complete or quasi-complete separation (no finite ML estimate; use
        :func:`fit_logistic_or_firth`).
    InputError
        On a singular design.
    """
    problem = _Problem.of(X, y, feature_names, offset, fit_intercept)
    # Checked first: under quasi-complete separation Newton's steps shrink while a coefficient
    # drifts to infinity, so a step criterion (glm's too) can report a huge, meaningless fit.
    kind = problem.separation()
    if kind != "none":
        raise SeparationError(kind)
    return problem.fit_ml(tol, max_iter)


def fit_firth_logistic_regression(
    X: ArrayLike,
    y: ArrayLike,
    *,
    feature_names: Sequence[str] | None = None,
    offset: ArrayLike | None = None,
    fit_intercept: bool = True,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> LogisticRegressionFit:
    """Firth's bias-reduced logistic regression (finite even under separation).

    Maximises the penalised log-likelihood l(β) + ½·log|I(β)| (Firth 1993; Heinze & Schemper
    2002) by Newton steps on the modified score Xᵀ(y − p + h∘(½ − p)), h the hat-matrix
    diagonal, halving a step that lowers the penalised likelihood. As
    ``glm(..., method="brglmFit", type="AS_mean")`` of brglm2 and ``logistf``: standard errors
    are from (XᵀWX)⁻¹ at the estimate. Parameters as :func:`fit_logistic_regression`;
    ``separation`` of the result is what :func:`detect_separation` finds.
    """
    problem = _Problem.of(X, y, feature_names, offset, fit_intercept)
    return problem.fit_firth(tol, max_iter, problem.separation())


def fit_logistic_or_firth(
    X: ArrayLike,
    y: ArrayLike,
    *,
    feature_names: Sequence[str] | None = None,
    offset: ArrayLike | None = None,
    fit_intercept: bool = True,
) -> LogisticRegressionFit:
    """The ML fit where it exists; Firth's fit where the outcome is separated.

    The check is :func:`detect_separation` on the design (exact, not a guess from a failed
    iteration), so the same data always get the same method. ``method`` and ``separation``
    of the result say which was used and why.
    """
    problem = _Problem.of(X, y, feature_names, offset, fit_intercept)
    kind = problem.separation()  # one check decides, and is recorded
    return problem.fit_ml(1e-12, 100) if kind == "none" else problem.fit_firth(1e-12, 200, kind)


class SeparationError(InputError):
    """The outcome is (quasi-)completely separated: no finite maximum-likelihood estimate."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(
            f"the outcome is {kind}ly separated by the predictors: no finite maximum-likelihood "
            "estimate exists (rms::lrm cannot fit it either); Firth's bias-reduced fit "
            "(fit_logistic_or_firth) does"
        )


def detect_separation(X: ArrayLike, y: ArrayLike, *, fit_intercept: bool = True) -> str:
    """Whether the outcome is separated by the predictors: "none", "quasi-complete" or "complete".

    The linear programs of Konis (2007), as R's ``detectseparation::detect_separation``:
    with s = 2y − 1 and A = diag(s)·X (X with the intercept column), *complete* separation
    means some b gives A·b > 0 in every row; *quasi-complete* that some b gives A·b ≥ 0 with
    at least one row > 0. Both are scale-free, so columns are scaled to unit size first and
    b is boxed in [−1, 1].
    """
    outcome = as_binary_outcome(y, require_both=False).astype(float)
    matrix = np.asarray(X, dtype=float).reshape(outcome.size, -1)
    design = _design(matrix, fit_intercept)
    if design.shape[1] == 0 or outcome.min() == outcome.max():
        return "complete" if design.shape[1] else "none"
    scale = np.abs(design).max(axis=0)
    signed = (2 * outcome - 1)[:, None] * (design / np.where(scale > 0, scale, 1.0))
    n, p = signed.shape
    box = [(-1.0, 1.0)] * p
    # quasi: maximise Σ A·b subject to A·b >= 0
    quasi = linprog(-signed.sum(axis=0), A_ub=-signed, b_ub=np.zeros(n), bounds=box, method="highs")
    tolerance = 1e-9 * n
    if not quasi.success or -quasi.fun <= tolerance:
        return "none"
    # complete: maximise t subject to A·b >= t (variables b, t; t <= 1)
    complete = linprog(np.r_[np.zeros(p), -1.0], A_ub=np.column_stack([-signed, np.ones(n)]), b_ub=np.zeros(n),
                       bounds=box + [(None, 1.0)], method="highs")
    return "complete" if complete.success and -complete.fun > 1e-9 else "quasi-complete"


@dataclass(frozen=True)
class _Problem:
    """Validated inputs of one logistic fit."""

    design: np.ndarray
    y: np.ndarray
    offset: np.ndarray
    names: tuple[str, ...]
    fit_intercept: bool

    @classmethod
    def of(cls, X: ArrayLike, y: ArrayLike, feature_names: Sequence[str] | None, offset: ArrayLike | None,
           fit_intercept: bool) -> "_Problem":
        outcome = as_binary_outcome(y).astype(float)
        matrix = np.asarray(X, dtype=float)
        matrix = np.empty((outcome.size, 0)) if matrix.size == 0 else as_float_matrix(X, "X")
        if matrix.shape[0] != outcome.size:
            raise InputError(f"X has {matrix.shape[0]} rows but y has {outcome.size} values")
        names = _column_names(X, matrix.shape[1], feature_names)
        design = _design(matrix, fit_intercept)
        if design.shape[1] == 0:
            raise InputError("the model has no terms: give predictors or fit_intercept=True")
        base = np.zeros(outcome.size) if offset is None else as_float_vector(offset, "offset", outcome.size)
        all_names = ([INTERCEPT] if fit_intercept else []) + names
        return cls(design, outcome, base, tuple(all_names), fit_intercept)

    def separation(self) -> str:
        return detect_separation(self.design, self.y, fit_intercept=False)

    def fit_ml(self, tol: float, max_iter: int) -> LogisticRegressionFit:
        beta, n_iter = _newton_raphson(self.design, self.y, self.offset, tol, max_iter)
        return self.fit(beta, n_iter, "ml")

    def fit_firth(self, tol: float, max_iter: int, separation: str) -> LogisticRegressionFit:
        beta, n_iter = _firth_newton(self.design, self.y, self.offset, tol, max_iter)
        return self.fit(beta, n_iter, "firth", separation)

    def fit(self, beta: np.ndarray, n_iter: int, method: str, separation: str = "none") -> LogisticRegressionFit:
        eta = self.offset + self.design @ beta
        information = _information(self.design, eta)
        standard_errors = np.sqrt(np.diag(np.linalg.inv(information)))
        return LogisticRegressionFit(self.names, beta, standard_errors, _log_likelihood(self.y, eta), n_iter,
                                     self.fit_intercept, method, separation)


def _information(design: np.ndarray, eta: np.ndarray) -> np.ndarray:
    weights = expit(eta) * expit(-eta)
    return design.T @ (design * weights[:, None])


def _newton_raphson(
    design: np.ndarray, y: np.ndarray, offset: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, int]:
    beta = np.zeros(design.shape[1])
    log_lik = _log_likelihood(y, offset)
    for iteration in range(1, max_iter + 1):
        eta = offset + design @ beta
        try:
            step = np.linalg.solve(_information(design, eta), design.T @ (y - expit(eta)))
        except np.linalg.LinAlgError:
            raise InputError(
                "the logistic design is singular: predictors are collinear or constant, "
                "or the outcome is perfectly separated by them"
            ) from None
        new_beta, new_log_lik = _halve_until_better(
            lambda b: _log_likelihood(y, offset + design @ b), beta, step, log_lik)
        converged = np.max(np.abs(new_beta - beta)) <= tol * max(1.0, np.max(np.abs(new_beta)))
        beta, log_lik = new_beta, new_log_lik
        if converged:
            return beta, iteration
    raise InputError(
        f"logistic regression did not converge in {max_iter} iterations: the outcome is probably "
        "perfectly separated by the predictors (no finite maximum-likelihood estimate)"
    )


def _firth_newton(
    design: np.ndarray, y: np.ndarray, offset: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, int]:
    def penalised(b: np.ndarray) -> float:
        eta = offset + design @ b
        sign, log_det = np.linalg.slogdet(_information(design, eta))
        return _log_likelihood(y, eta) + 0.5 * log_det if sign > 0 else -np.inf

    beta = np.zeros(design.shape[1])
    objective = penalised(beta)
    for iteration in range(1, max_iter + 1):
        eta = offset + design @ beta
        mu = expit(eta)
        information = _information(design, eta)
        try:
            inverse = np.linalg.inv(information)
        except np.linalg.LinAlgError:
            raise InputError("the logistic design is singular: predictors are collinear or constant") from None
        hat = mu * (1 - mu) * np.einsum("ij,jk,ik->i", design, inverse, design)
        step = inverse @ (design.T @ (y - mu + hat * (0.5 - mu)))
        new_beta, objective = _halve_until_better(penalised, beta, step, objective)
        converged = np.max(np.abs(new_beta - beta)) <= tol * max(1.0, np.max(np.abs(new_beta)))
        beta = new_beta
        if converged:
            return beta, iteration
    raise InputError(f"Firth's logistic regression did not converge in {max_iter} iterations")


def _halve_until_better(
    objective: Callable[[np.ndarray], float], beta: np.ndarray, step: np.ndarray, current: float
) -> tuple[np.ndarray, float]:
    # Newton can overshoot far from the optimum; halving keeps the objective non-decreasing.
    for _ in range(30):
        candidate = beta + step
        value = objective(candidate)
        if value >= current - 1e-12 * abs(current):
            return candidate, value
        step = step / 2
    return beta + step, objective(beta + step)
