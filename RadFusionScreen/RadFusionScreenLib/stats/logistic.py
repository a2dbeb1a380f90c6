"""Unpenalised maximum-likelihood logistic regression (as ``rms::lrm`` / ``glm(binomial)``).

Used for nomograms and calibration slopes, where the coefficients themselves are reported,
so they must be the plain ML estimates (scikit-learn penalises by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import expit

from ..errors import InputError
from ._validation import as_binary_outcome, as_float_matrix, as_float_vector

INTERCEPT = "Intercept"


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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"logistic regression parameters are incomplete or malformed: {exc}") from None


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
    InputError
        On complete or quasi-complete separation (no finite ML estimate) or a singular design.
    """
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
    beta, n_iter = _newton_raphson(design, outcome, base, tol, max_iter)
    eta = base + design @ beta
    weights = expit(eta) * expit(-eta)
    information = design.T @ (design * weights[:, None])
    standard_errors = np.sqrt(np.diag(np.linalg.inv(information)))
    all_names = ([INTERCEPT] if fit_intercept else []) + names
    return LogisticRegressionFit(
        tuple(all_names), beta, standard_errors, _log_likelihood(outcome, eta), n_iter, fit_intercept
    )


def _newton_raphson(
    design: np.ndarray, y: np.ndarray, offset: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, int]:
    beta = np.zeros(design.shape[1])
    log_lik = _log_likelihood(y, offset)
    for iteration in range(1, max_iter + 1):
        eta = offset + design @ beta
        mu = expit(eta)
        information = design.T @ (design * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(information, design.T @ (y - mu))
        except np.linalg.LinAlgError:
            raise InputError(
                "the logistic design is singular: predictors are collinear or constant, "
                "or the outcome is perfectly separated by them"
            ) from None
        new_beta, new_log_lik = _halve_until_better(design, y, offset, beta, step, log_lik)
        converged = np.max(np.abs(new_beta - beta)) <= tol * max(1.0, np.max(np.abs(new_beta)))
        beta, log_lik = new_beta, new_log_lik
        if converged:
            return beta, iteration
    raise InputError(
        f"logistic regression did not converge in {max_iter} iterations: the outcome is probably "
        "perfectly separated by the predictors (no finite maximum-likelihood estimate)"
    )


def _halve_until_better(
    design: np.ndarray, y: np.ndarray, offset: np.ndarray, beta: np.ndarray, step: np.ndarray, log_lik: float
) -> tuple[np.ndarray, float]:
    # Newton can overshoot far from the optimum; halving keeps the likelihood non-decreasing.
    for _ in range(30):
        candidate = beta + step
        candidate_log_lik = _log_likelihood(y, offset + design @ candidate)
        if candidate_log_lik >= log_lik - 1e-12 * abs(log_lik):
            return candidate, candidate_log_lik
        step = step / 2
    return beta + step, _log_likelihood(y, offset + design @ (beta + step))

