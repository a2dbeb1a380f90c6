"""ComBat harmonisation as a fitted model that can be applied to new cases.

A port of ``sva::ComBat(dat, batch, mod, par.prior=TRUE)`` (Johnson, Li & Rabinovic 2007),
in samples x features layout, split into :meth:`ComBatModel.fit` (estimate everything on
training data) and :meth:`ComBatModel.transform` (adjust any rows, down to one new case of
a known batch, with the stored parameters). sva's conventions are kept:

- the design is ``[batch indicators, covariates]``; the grand mean is the batch-size
  weighted mean of the batch coefficients, the pooled variance divides by n (not n - p);
  covariate effects are added back, so they are preserved;
- ``delta_hat`` uses the sample variance (n - 1); the priors are method-of-moments;
- the empirical-Bayes iteration stops on sva's own (signed) rule,
  ``max(|Δγ|/γ_old, |Δδ|/δ_old) < 1e-4``, so results match sva to ~1e-12;
- ``mean_only``: γ* = (τ²γ̂ + γ̄)/(τ² + 1) and δ* = 1 (sva passes n = 1 here);
- a batch of one sample switches every batch to mean-only, as sva does (with a warning);
- features constant within a batch are left unadjusted, as sva does.

Not ported: the non-parametric prior (``par.prior=FALSE``) and ``ref.batch``. A model fitted
on a single batch is the identity (γ* = 0, δ* = 1), where sva would fail.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_float_matrix, check_format, label_key, sorted_labels

FORMAT = "RadFusionScreen.ComBat"
FORMAT_VERSION = 1
CONVERGENCE = 1e-4  # sva's it.sol default `conv`
MAX_ITERATIONS = 10_000


@dataclass(eq=False)
class ComBatModel:
    """Fitted ComBat parameters (create with :meth:`fit` or :meth:`from_dict`).

    Arrays are per feature (length F) or batch x feature; ``batches`` are canonical label
    texts (2, 2.0 and "2" are the same batch) in sorted order. With covariates, as in sva,
    ``grand_mean`` is the batch-weighted intercept (the mean at covariates = 0) and the
    per-sample standardisation mean is ``grand_mean + covariates @ covariate_coefficients``.
    """

    batches: list[str]
    batch_sizes: list[int]
    grand_mean: np.ndarray
    var_pooled: np.ndarray
    gamma_star: np.ndarray
    delta_star: np.ndarray
    adjusted: np.ndarray  # False for features left as they are (constant within a batch)
    covariate_coefficients: np.ndarray | None = None  # covariates x features
    covariate_names: list[str] | None = None
    feature_names: list[str] | None = None
    mean_only: bool = False
    diagnostics: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        features: ArrayLike,
        batch: ArrayLike,
        covariates: ArrayLike | None = None,
        mean_only: bool = False,
    ) -> "ComBatModel":
        """Estimate ComBat parameters on training data (``sva::ComBat``, parametric prior).

        Parameters
        ----------
        features : array_like, samples x features
            Training feature table (a DataFrame's columns become ``feature_names``).
        batch : array_like, one label per sample
            Site / scanner of each sample.
        covariates : array_like, samples x covariates, optional
            Numeric biological covariates whose effect is preserved (dummy-code factors;
            no intercept column: the batch indicators already span it). Equivalent to
            sva's ``mod = model.matrix(~ covariates)``.
        mean_only : bool
            Adjust the location only (sva's ``mean.only=TRUE``).
        """
        data = as_float_matrix(features, "features")
        n_samples = data.shape[0]
        keys = _batch_keys(batch, n_samples)
        levels = sorted_labels(keys)
        index = np.array([levels.index(k) for k in keys])
        sizes = np.bincount(index, minlength=len(levels))
        cov, cov_names = _covariate_matrix(covariates, n_samples, None)
        if len(levels) > 1 and np.any(sizes == 1) and not mean_only:
            warnings.warn("a batch has only one sample: using mean_only=True for all batches (as sva)", stacklevel=2)
            mean_only = True
        adjusted = ~_constant_within_a_batch(data, index, sizes)
        if not adjusted.any():
            raise InputError("every feature is constant within some batch: nothing can be harmonised")
        fitted = _fit_parameters(data[:, adjusted], index, sizes, cov, mean_only)
        model = cls(
            batches=levels,
            batch_sizes=sizes.tolist(),
            grand_mean=_widen(fitted["grand_mean"], adjusted, 0.0),
            var_pooled=_widen(fitted["var_pooled"], adjusted, 1.0),
            gamma_star=_widen(fitted["gamma_star"], adjusted, 0.0),
            delta_star=_widen(fitted["delta_star"], adjusted, 1.0),
            adjusted=adjusted,
            covariate_coefficients=None if cov is None else _widen(fitted["covariate_coefficients"], adjusted, 0.0),
            covariate_names=cov_names,
            feature_names=_feature_names(features),
            mean_only=bool(mean_only),
        )
        per_feature = ("gamma_hat", "delta_hat")
        model.diagnostics = {
            key: _widen(value, adjusted, np.nan) if key in per_feature else value
            for key, value in fitted["diagnostics"].items()
        }
        return model

    # ---------------------------------------------------------------- applying
    def transform(
        self, features: ArrayLike, batch: ArrayLike | Any, covariates: ArrayLike | None = None
    ) -> np.ndarray | pd.DataFrame:
        """Harmonise rows with the fitted parameters; works for a single new case.

        Parameters
        ----------
        features : array_like, samples x features (or one row / a 1-D vector of features)
            Same features as at fit time (DataFrame columns are matched by name).
        batch : label or array_like of labels
            Batch of each row; every batch must have been seen by :meth:`fit`.
        covariates : array_like, optional
            Required (same columns) when the model was fitted with covariates.

        Returns
        -------
        numpy.ndarray or pandas.DataFrame
            Adjusted features, a DataFrame when ``features`` was one.
        """
        data = self._feature_matrix(features)
        n_samples = data.shape[0]
        keys = _batch_keys(batch, n_samples)
        index = self._batch_index(keys)
        cov, _ = _covariate_matrix(covariates, n_samples, self.covariate_names)
        if (cov is None) != (self.covariate_coefficients is None):
            raise InputError(
                "covariates must be given exactly when the model was fitted with them "
                f"(fitted with: {self.covariate_names or 'none'})"
            )
        stand_mean = self._standardisation_mean(cov, n_samples)
        scale = np.sqrt(self.var_pooled)
        standardised = (data - stand_mean) / scale
        adjusted = (standardised - self.gamma_star[index]) / np.sqrt(self.delta_star[index])
        result = adjusted * scale + stand_mean
        result[:, ~self.adjusted] = data[:, ~self.adjusted]
        if isinstance(features, pd.DataFrame):
            return pd.DataFrame(result, index=features.index, columns=self._column_labels(features))
        return result

    def _standardisation_mean(self, cov: np.ndarray | None, n_samples: int) -> np.ndarray:
        mean = np.tile(self.grand_mean, (n_samples, 1))
        return mean if cov is None else mean + cov @ self.covariate_coefficients

    def _batch_index(self, keys: list[str]) -> np.ndarray:
        unknown = sorted({k for k in keys if k not in self.batches})
        if unknown:
            raise InputError(
                f"batch {', '.join(repr(k) for k in unknown)} was not seen when the ComBat model was "
                f"fitted, so it cannot be harmonised; known batches: {', '.join(repr(b) for b in self.batches)}"
            )
        return np.array([self.batches.index(k) for k in keys], dtype=int)

    def _feature_matrix(self, features: ArrayLike) -> np.ndarray:
        n_features = self.grand_mean.size
        if isinstance(features, pd.DataFrame) and self.feature_names is not None:
            missing = [name for name in self.feature_names if name not in map(str, features.columns)]
            if missing:
                raise InputError(f"features lack {len(missing)} column(s) the ComBat model needs: {missing[:5]}")
            features = features.rename(columns=str)[self.feature_names]
        data = np.asarray(features, dtype=float)
        if data.ndim == 1:
            data = data[None, :]  # one case given as a plain vector
        data = as_float_matrix(data, "features")
        if data.shape[1] != n_features:
            raise InputError(f"features have {data.shape[1]} columns, the ComBat model was fitted on {n_features}")
        return data

    def _column_labels(self, features: pd.DataFrame) -> list[Any]:
        return list(self.feature_names) if self.feature_names is not None else list(features.columns)

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able parameters (for a model bundle; no pickle)."""
        cov = self.covariate_coefficients
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "convention": "sva::ComBat parametric empirical Bayes, samples x features",
            "mean_only": self.mean_only,
            "feature_names": self.feature_names,
            "covariate_names": self.covariate_names,
            "grand_mean": self.grand_mean.tolist(),
            "var_pooled": self.var_pooled.tolist(),
            "covariate_coefficients": None if cov is None else {
                name: row.tolist() for name, row in zip(self.covariate_names, cov)
            },
            "adjusted": self.adjusted.tolist(),
            "batches": {
                label: {"n": size, "gamma_star": gamma.tolist(), "delta_star": delta.tolist()}
                for label, size, gamma, delta in zip(self.batches, self.batch_sizes, self.gamma_star, self.delta_star)
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComBatModel":
        """Rebuild a model from :meth:`to_dict` output, checking that it is complete and consistent."""
        check_format(data, FORMAT, FORMAT_VERSION, "ComBat parameters")
        try:
            batches = data["batches"]
            cov = data["covariate_coefficients"]
            model = cls(
                batches=list(batches),
                batch_sizes=[int(b["n"]) for b in batches.values()],
                grand_mean=np.asarray(data["grand_mean"], dtype=float),
                var_pooled=np.asarray(data["var_pooled"], dtype=float),
                gamma_star=np.asarray([b["gamma_star"] for b in batches.values()], dtype=float),
                delta_star=np.asarray([b["delta_star"] for b in batches.values()], dtype=float),
                adjusted=np.asarray(data["adjusted"], dtype=bool),
                covariate_coefficients=None if cov is None else np.asarray(list(cov.values()), dtype=float),
                covariate_names=None if cov is None else list(cov),
                feature_names=data["feature_names"],
                mean_only=bool(data["mean_only"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"ComBat parameters are incomplete or malformed: {exc!r}") from None
        model._check_shapes()
        return model

    def _check_shapes(self) -> None:
        n_features = self.grand_mean.size
        per_batch = (len(self.batches), n_features)
        problems = [
            name for name, value, shape in [
                ("var_pooled", self.var_pooled, (n_features,)),
                ("adjusted", self.adjusted, (n_features,)),
                ("gamma_star", self.gamma_star, per_batch),
                ("delta_star", self.delta_star, per_batch),
            ] if value.shape != shape
        ]
        if self.covariate_coefficients is not None and self.covariate_coefficients.shape[1:] != (n_features,):
            problems.append("covariate_coefficients")
        if self.feature_names is not None and len(self.feature_names) != n_features:
            problems.append("feature_names")
        if problems:
            raise InputError(f"ComBat parameters have inconsistent sizes: {', '.join(problems)}")
        if np.any(self.var_pooled <= 0) or np.any(self.delta_star <= 0):
            raise InputError("ComBat parameters hold a non-positive variance")


def combat(
    features: ArrayLike,
    batch: ArrayLike,
    covariates: ArrayLike | None = None,
    mean_only: bool = False,
) -> np.ndarray | pd.DataFrame:
    """Fit and apply ComBat in one step, as ``t(sva::ComBat(t(features), batch, mod))``.

    See :class:`ComBatModel`; use the model itself when new cases must be harmonised later.
    """
    return ComBatModel.fit(features, batch, covariates, mean_only).transform(features, batch, covariates)


# ---------------------------------------------------------------------- helpers
def _feature_names(features: ArrayLike) -> list[str] | None:
    return [str(c) for c in features.columns] if isinstance(features, pd.DataFrame) else None


def _batch_keys(batch: ArrayLike | Any, n_samples: int) -> list[str]:
    values = np.asarray(batch, dtype=object)
    if values.ndim == 0:  # one label for all rows, e.g. a single new case
        values = np.full(n_samples, values.item(), dtype=object)
    values = values.ravel()
    if values.size != n_samples:
        raise InputError(f"batch has {values.size} labels for {n_samples} samples")
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise InputError("batch holds a missing label")
    return [label_key(v) for v in values]


def _covariate_matrix(
    covariates: ArrayLike | None, n_samples: int, expected_names: list[str] | None
) -> tuple[np.ndarray | None, list[str] | None]:
    if covariates is None:
        return None, None
    if isinstance(covariates, pd.Series):
        covariates = covariates.to_frame()
    if isinstance(covariates, pd.DataFrame):
        names = [str(c) for c in covariates.columns]
        if expected_names is not None:
            missing = [n for n in expected_names if n not in names]
            if missing:
                raise InputError(f"covariates lack column(s) {missing} that the ComBat model was fitted with")
            covariates, names = covariates.rename(columns=str)[expected_names], list(expected_names)
    else:
        names = None
    matrix = np.asarray(covariates, dtype=object)
    if matrix.ndim == 1:
        matrix = matrix.reshape(n_samples, -1) if n_samples == 1 else matrix[:, None]
    matrix = as_float_matrix(matrix, "covariates")
    if matrix.shape[0] != n_samples:
        raise InputError(f"covariates have {matrix.shape[0]} rows for {n_samples} samples")
    if names is None:
        names = expected_names or [f"covariate_{j + 1}" for j in range(matrix.shape[1])]
    if len(names) != matrix.shape[1]:
        raise InputError(f"covariates have {matrix.shape[1]} columns, the ComBat model {len(names)}: {names}")
    return matrix, names


def _constant_within_a_batch(data: np.ndarray, index: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    constant = np.zeros(data.shape[1], dtype=bool)
    for b, size in enumerate(sizes):
        if size > 1:
            rows = data[index == b]
            constant |= np.all(rows == rows[0], axis=0)
    return constant


def _widen(values: np.ndarray, adjusted: np.ndarray, fill: float) -> np.ndarray:
    """Put per-adjusted-feature values back into full feature width."""
    shape = values.shape[:-1] + (adjusted.size,)
    full = np.full(shape, fill, dtype=float)
    full[..., adjusted] = values
    return full


def _fit_parameters(
    data: np.ndarray, index: np.ndarray, sizes: np.ndarray, cov: np.ndarray | None, mean_only: bool
) -> dict[str, Any]:
    n_batches = sizes.size
    batch_design = np.eye(n_batches)[index]
    design = batch_design if cov is None else np.hstack([batch_design, cov])
    coefficients = _least_squares(design, data)
    grand_mean = (sizes / sizes.sum()) @ coefficients[:n_batches]
    var_pooled = np.mean((data - design @ coefficients) ** 2, axis=0)
    covariate_coefficients = None if cov is None else coefficients[n_batches:]
    stand_mean = grand_mean if cov is None else grand_mean + cov @ covariate_coefficients
    standardised = (data - stand_mean) / np.sqrt(var_pooled)
    if n_batches == 1:
        warnings.warn("ComBat fitted on a single batch: the model leaves features unchanged", stacklevel=3)
        eb = _identity_adjustment(data.shape[1])
    else:
        eb = _empirical_bayes(standardised, index, sizes, mean_only)
    return {
        "grand_mean": grand_mean,
        "var_pooled": var_pooled,
        "covariate_coefficients": covariate_coefficients,
        "gamma_star": eb.pop("gamma_star"),
        "delta_star": eb.pop("delta_star"),
        "diagnostics": eb,
    }


def _least_squares(design: np.ndarray, data: np.ndarray) -> np.ndarray:
    """B = (X'X)⁻¹ X'Y, as sva solves it; a singular design means batch-confounded covariates."""
    gram = design.T @ design
    if np.linalg.matrix_rank(gram) < gram.shape[0]:
        raise InputError(
            "the ComBat design is singular: a covariate is constant or confounded with batch "
            "(ComBat adds the batch intercepts itself; do not pass an intercept column)"
        )
    return np.linalg.solve(gram, design.T @ data)


def _identity_adjustment(n_features: int) -> dict[str, Any]:
    return {"gamma_star": np.zeros((1, n_features)), "delta_star": np.ones((1, n_features))}


def _empirical_bayes(s: np.ndarray, index: np.ndarray, sizes: np.ndarray, mean_only: bool) -> dict[str, Any]:
    groups = [s[index == b] for b in range(sizes.size)]
    gamma_hat = np.array([g.mean(axis=0) for g in groups])
    delta_hat = np.ones_like(gamma_hat) if mean_only else np.array([g.var(axis=0, ddof=1) for g in groups])
    gamma_bar = gamma_hat.mean(axis=1)
    tau2 = gamma_hat.var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # mean_only: var(delta_hat) = 0 → inf priors (unused)
        a_prior, b_prior = _inverse_gamma_priors(delta_hat)
    if mean_only:
        gamma_star = _posterior_mean(gamma_hat, gamma_bar[:, None], 1, 1.0, tau2[:, None])
        delta_star, iterations = np.ones_like(gamma_hat), np.zeros(sizes.size, dtype=int)
    else:
        solved = [
            _iterate_posterior(groups[b], gamma_hat[b], delta_hat[b], gamma_bar[b], tau2[b], a_prior[b], b_prior[b])
            for b in range(sizes.size)
        ]
        gamma_star = np.array([g for g, _, _ in solved])
        delta_star = np.array([d for _, d, _ in solved])
        iterations = np.array([i for _, _, i in solved])
    return {
        "gamma_hat": gamma_hat, "delta_hat": delta_hat, "gamma_bar": gamma_bar, "tau2": tau2,
        "a_prior": a_prior, "b_prior": b_prior, "gamma_star": gamma_star, "delta_star": delta_star,
        "iterations": iterations,
    }


def _inverse_gamma_priors(delta_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Method-of-moments inverse-gamma hyper-parameters per batch (sva's aprior/bprior)."""
    m = delta_hat.mean(axis=1)
    s2 = delta_hat.var(axis=1, ddof=1)
    return (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2


def _posterior_mean(g_hat, g_bar, n, d_star, t2):
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def _posterior_variance(sum2, n, a, b):
    return (0.5 * sum2 + b) / (n / 2 + a - 1)


def _iterate_posterior(
    s_batch: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray, g_bar: float, t2: float, a: float, b: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """sva's ``it.sol``: alternate the posterior mean and variance until sva's stopping rule."""
    n = s_batch.shape[0]
    g_old, d_old = g_hat, d_hat
    for iteration in range(1, MAX_ITERATIONS + 1):
        g_new = _posterior_mean(g_hat, g_bar, n, d_old, t2)
        d_new = _posterior_variance(np.sum((s_batch - g_new) ** 2, axis=0), n, a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            # Signed ratios, no abs on the denominator: exactly sva's rule (see module doc).
            change = np.nanmax(np.concatenate([np.abs(g_new - g_old) / g_old, np.abs(d_new - d_old) / d_old]))
        g_old, d_old = g_new, d_new
        if not change > CONVERGENCE:
            return g_new, d_new, iteration
    raise InputError(f"ComBat's empirical-Bayes iteration did not converge in {MAX_ITERATIONS} steps")
