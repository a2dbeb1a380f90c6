"""Nomogram points of a logistic model (``rms::nomogram(fit, fun=plogis)`` conventions).

Each continuous predictor's axis spans ``pretty(range(training values), n=nint)``; a
categorical predictor's axis is its levels (reference level first, coefficient 0).
With R_min_j, R_max_j the min and max of β_j·tick over predictor j's axis:

- sc = maxscale / max_j(R_max_j - R_min_j): the widest predictor gets 0..maxscale points;
- points_j(x) = sc·(β_j·x - R_min_j);  total = Σ_j points_j;
- lp = (β0 + Σ_j R_min_j) + total/sc;  risk = plogis(lp).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import expit, logit

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_float_vector, label_key
from RadFusionScreenLib.stats.logistic import FIT_METHODS, INTERCEPT, LogisticRegressionFit, fit_logistic_or_firth

FORMAT = "RadFusionScreen.Nomogram"
FORMAT_VERSION = 1
_INTERCEPT_NAMES = (INTERCEPT, "(Intercept)")


def pretty(low: float, high: float, n: int = 5) -> np.ndarray:
    """R's ``pretty(c(low, high), n)``: about n+1 equally spaced round values covering the range.

    A port of R's ``R_pretty`` (src/appl/pretty.c) with its defaults: min.n = n %/% 3,
    shrink.sml = 0.75, high.u.bias = 1.5, u5.bias = 0.5 + 1.5·high.u.bias.
    """
    low, high = float(min(low, high)), float(max(low, high))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError("pretty() needs a finite range")
    unit, first, last = _pretty_unit(low, high, int(n), int(n) // 3)
    count = int(round(last - first))
    start, stop = first * unit, last * unit
    ticks = start + np.arange(count + 1) * ((stop - start) / count if count else 0.0)
    ticks[-1] = stop
    if count:
        ticks[np.abs(ticks) < 1e-14 * (stop - start) / count] = 0.0  # zap seq() rounding at 0
    return ticks


def _pretty_unit(low: float, high: float, ndiv: int, min_n: int) -> tuple[float, float, float]:
    h, h5, shrink, rounding_eps = 1.5, 0.5 + 1.5 * 1.5, 0.75, 1e-10
    dx = high - low
    if dx == 0 and high == 0:
        cell, small = 1.0, True
    else:
        cell = max(abs(low), abs(high))
        bound = 1 + (1 / (1 + h) if h5 >= 1.5 * h + 0.5 else 1.5 / (1 + h5))
        bound *= max(1, ndiv) * sys.float_info.epsilon
        small = dx < cell * bound * 3
    if small:
        cell = 9 + cell / 10 if cell > 10 else cell
        cell *= shrink
        cell = cell / min_n if min_n > 1 else cell
    else:
        cell = dx / ndiv if ndiv > 1 else dx
    base = 10.0 ** math.floor(math.log10(cell))
    unit = base
    if 2 * base - cell < h * (cell - unit):
        unit = 2 * base
        if 5 * base - cell < h5 * (cell - unit):
            unit = 5 * base
            if 10 * base - cell < h * (cell - unit):
                unit = 10 * base
    first = math.floor(low / unit + rounding_eps)
    last = math.ceil(high / unit - rounding_eps)
    while first * unit > low + rounding_eps * unit:
        first -= 1
    while last * unit < high - rounding_eps * unit:
        last += 1
    k = int(0.5 + last - first)
    if k < min_n:
        k = min_n - k
        if first >= 0:
            last, first = last + k // 2, first - (k // 2 + k % 2)
        else:
            first, last = first - k // 2, last + (k // 2 + k % 2)
    return unit, float(first), float(last)


@dataclass(frozen=True)
class NomogramAxis:
    """One predictor's axis: tick values (levels for a categorical one), β·tick and points."""

    name: str
    categorical: bool
    ticks: list
    xbeta: np.ndarray
    points: np.ndarray


@dataclass(frozen=True)
class _Term:
    name: str
    ticks: tuple  # floats, or level keys for a categorical term
    coefficients: tuple[float, ...]  # one per tick for categorical terms, else one
    categorical: bool

    def xbeta_at_ticks(self) -> np.ndarray:
        if self.categorical:
            return np.asarray(self.coefficients, dtype=float)
        return self.coefficients[0] * np.asarray(self.ticks, dtype=float)

    def xbeta(self, values: pd.Series) -> np.ndarray:
        if not self.categorical:
            return self.coefficients[0] * as_float_vector(values, self.name)
        lookup = dict(zip(self.ticks, self.coefficients))
        keys = [label_key(v) for v in values]
        unknown = sorted({k for k in keys if k not in lookup})
        if unknown:
            raise InputError(
                f"{self.name} has level(s) {unknown} the nomogram does not know; known: {list(self.ticks)}"
            )
        return np.array([lookup[k] for k in keys])


class Nomogram:
    """Points, total points, linear predictor and risk of a fitted logistic model.

    Build it with :meth:`fit` (fits the logistic regression itself: ML, or Firth's fit when
    the outcome is separated; ``fit_method`` says which),
    :meth:`from_coefficients` (from given coefficients and the training data) or
    :meth:`from_dict`.
    """

    def __init__(
        self,
        intercept: float,
        terms: Sequence[_Term],
        maxscale: float = 100.0,
        nint: int = 10,
        lp_range: tuple[float, float] | None = None,
        logistic_fit: LogisticRegressionFit | None = None,
        fit_method: str = "ml",
    ) -> None:
        if not terms:
            raise InputError("a nomogram needs at least one predictor")
        self.intercept = float(intercept)
        self.terms = list(terms)
        self.maxscale = float(maxscale)
        self.nint = int(nint)
        self.lp_range = None if lp_range is None else (float(min(lp_range)), float(max(lp_range)))
        self.logistic_fit = logistic_fit
        if fit_method not in FIT_METHODS:
            raise InputError(f"fit_method must be one of {FIT_METHODS}, got {fit_method!r}")
        self.fit_method = logistic_fit.method if logistic_fit is not None else fit_method
        ranges = [(xb.min(), xb.max()) for xb in (t.xbeta_at_ticks() for t in self.terms)]
        self._r_min = np.array([lo for lo, _ in ranges])
        widest = max(hi - lo for lo, hi in ranges)
        if widest <= 0:
            raise InputError("every predictor has a zero coefficient: the nomogram has no scale")
        self.scale = self.maxscale / widest
        self.intercept_info = self.intercept + float(self._r_min.sum())

    @property
    def predictors(self) -> list[str]:
        return [t.name for t in self.terms]

    # ------------------------------------------------------------ construction
    @classmethod
    def from_coefficients(
        cls,
        coefficients: Mapping[str, float],
        training_data: pd.DataFrame,
        categorical: Mapping[str, Sequence[Any]] | None = None,
        maxscale: float = 100.0,
        nint: int = 10,
    ) -> "Nomogram":
        """Nomogram from logistic coefficients, with axes from the training data's ranges.

        Parameters
        ----------
        coefficients : mapping
            "Intercept" and one entry per continuous predictor; a categorical predictor
            ``sex`` with levels [0, 1] has ``"sex=1"`` (rms naming; reference level omitted).
        training_data : pandas.DataFrame
            Training predictors; continuous axes are ``pretty(range, nint)`` of these.
        categorical : mapping name -> levels, optional
            Levels of each categorical predictor, reference level first.
        maxscale, nint : float, int
            rms defaults 100 and 10.
        """
        categorical = {name: [label_key(v) for v in levels] for name, levels in (categorical or {}).items()}
        intercept_key = next((k for k in _INTERCEPT_NAMES if k in coefficients), None)
        if intercept_key is None:
            raise InputError(f"coefficients need an intercept entry named {INTERCEPT!r}")
        names = _predictor_names(coefficients, intercept_key, categorical)
        terms = [
            _categorical_term(name, categorical[name], coefficients) if name in categorical
            else _continuous_term(name, float(coefficients[name]), training_data, nint)
            for name in names
        ]
        nomogram = cls(coefficients[intercept_key], terms, maxscale, nint)
        training_lp = nomogram.points(training_data)["linear_predictor"]
        nomogram.lp_range = (float(training_lp.min()), float(training_lp.max()))
        return nomogram

    @classmethod
    def fit(
        cls,
        training_data: pd.DataFrame,
        y: ArrayLike,
        categorical: Mapping[str, Sequence[Any]] | None = None,
        maxscale: float = 100.0,
        nint: int = 10,
    ) -> "Nomogram":
        """Fit ``lrm(y ~ all columns)`` (unpenalised ML) and build its nomogram.

        Categorical columns (given with their levels, reference first) are dummy-coded
        as ``name=level``. The fit is kept as ``.logistic_fit``. Where the outcome is
        (quasi-)completely separated, so that no ML fit exists (rms::lrm fails), Firth's
        bias-reduced fit is used instead and ``fit_method`` is "firth".
        """
        categorical = {name: [label_key(v) for v in levels] for name, levels in (categorical or {}).items()}
        design = _dummy_coded(training_data, categorical)
        logistic_fit = fit_logistic_or_firth(design, y)
        nomogram = cls.from_coefficients(logistic_fit.coefficient_dict(), training_data, categorical, maxscale, nint)
        nomogram.logistic_fit = logistic_fit
        nomogram.fit_method = logistic_fit.method
        return nomogram

    # ------------------------------------------------------------------ using
    def axes(self) -> dict[str, NomogramAxis]:
        """Every predictor's axis (ticks, β·tick, points), as drawn by rms."""
        result = {}
        for term, r_min in zip(self.terms, self._r_min):
            xbeta = term.xbeta_at_ticks()
            result[term.name] = NomogramAxis(term.name, term.categorical, list(term.ticks), xbeta,
                                             self.scale * (xbeta - r_min))
        return result

    def points(self, data: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """Points per predictor, total points, linear predictor and probability per row.

        Parameters
        ----------
        data : DataFrame (or a mapping for one patient) with a column per predictor.
        """
        frame = pd.DataFrame([data]) if isinstance(data, Mapping) else data
        missing = [t.name for t in self.terms if t.name not in frame.columns]
        if missing:
            raise InputError(f"the nomogram needs value(s) for {missing}")
        result = pd.DataFrame(index=frame.index)
        for term, r_min in zip(self.terms, self._r_min):
            result[term.name] = self.scale * (term.xbeta(frame[term.name]) - r_min)
        result["total_points"] = result[self.predictors].sum(axis=1)
        result["linear_predictor"] = self.total_points_to_linear_predictor(result["total_points"].to_numpy())
        result["probability"] = expit(result["linear_predictor"])
        return result

    def total_points_to_linear_predictor(self, total_points: ArrayLike) -> np.ndarray:
        """lp = intercept_info + total/sc."""
        return self.intercept_info + np.asarray(total_points, dtype=float) / self.scale

    def linear_predictor_to_total_points(self, linear_predictor: ArrayLike) -> np.ndarray:
        """Total points at which the lp axis shows a given value."""
        return (np.asarray(linear_predictor, dtype=float) - self.intercept_info) * self.scale

    def probability_to_total_points(self, probability: ArrayLike) -> np.ndarray:
        """Total points at which the risk axis shows a given probability (rms ``fun.at``)."""
        return self.linear_predictor_to_total_points(logit(np.asarray(probability, dtype=float)))

    def scales(self) -> dict[str, dict[str, np.ndarray]]:
        """The total-points, linear-predictor and risk axes drawn under the predictors.

        As ``rms::nomogram``: lp ticks = ``pretty(range(training lp), nint)``; total-points
        ticks = ``pretty(c(0, max(maxscale, sc·max(lp ticks - intercept_info))), nint)``;
        risk ticks = ``pretty(plogis(range(lp ticks)), nint)`` inside that range. Each
        axis gives its tick ``values`` and their ``total_points`` positions. Risk positions
        are the exact inverse; rms interpolates plogis on a 1000-point grid, which moves
        its ticks by up to ~1e-4 points.
        """
        if self.lp_range is None:
            raise InputError("the nomogram does not know the training range of the linear predictor")
        lp_ticks = pretty(*self.lp_range, self.nint)
        widest_total = max(self.maxscale, self.scale * np.max(lp_ticks - self.intercept_info))
        total_ticks = pretty(0.0, widest_total if len(self.terms) > 1 else self.maxscale, self.nint)
        risk_low, risk_high = expit(lp_ticks.min()), expit(lp_ticks.max())
        risk_ticks = pretty(risk_low, risk_high, self.nint)
        risk_ticks = risk_ticks[(risk_ticks >= risk_low) & (risk_ticks <= risk_high)]
        return {
            "total_points": {"values": total_ticks, "total_points": total_ticks},
            "linear_predictor": {"values": lp_ticks, "total_points": self.linear_predictor_to_total_points(lp_ticks)},
            "probability": {"values": risk_ticks, "total_points": self.probability_to_total_points(risk_ticks)},
        }

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description (intercept, terms with ticks and coefficients, scale)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "intercept": self.intercept,
            "maxscale": self.maxscale,
            "nint": self.nint,
            "lp_range": None if self.lp_range is None else list(self.lp_range),
            "scale": self.scale,
            "intercept_info": self.intercept_info,
            "fit_method": self.fit_method,
            "terms": [
                {
                    "name": t.name,
                    "categorical": t.categorical,
                    "ticks": list(t.ticks),
                    "coefficients": list(t.coefficients),
                }
                for t in self.terms
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Nomogram":
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise InputError(f"not nomogram parameters of format {FORMAT!r} version {FORMAT_VERSION}")
        try:
            terms = [
                _Term(t["name"], tuple(t["ticks"]), tuple(float(c) for c in t["coefficients"]), bool(t["categorical"]))
                for t in data["terms"]
            ]
            lp_range = data.get("lp_range")
            return cls(float(data["intercept"]), terms, float(data["maxscale"]), int(data["nint"]),
                       None if lp_range is None else tuple(lp_range), fit_method=data.get("fit_method", "ml"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"nomogram parameters are incomplete or malformed: {exc!r}") from None


def _predictor_names(coefficients: Mapping[str, float], intercept_key: str, categorical: dict) -> list[str]:
    names: list[str] = []
    for key in coefficients:
        if key == intercept_key:
            continue
        name = key.split("=", 1)[0] if "=" in key else key
        if "=" in key and name not in categorical:
            raise InputError(f"coefficient {key!r} looks categorical: give the levels of {name!r} in `categorical`")
        if name not in names:
            names.append(name)
    return names


def _continuous_term(name: str, beta: float, training_data: pd.DataFrame, nint: int) -> _Term:
    if name not in training_data.columns:
        raise InputError(f"training data lack the predictor {name!r} needed for its axis range")
    values = as_float_vector(training_data[name], name)
    return _Term(name, tuple(float(t) for t in pretty(values.min(), values.max(), nint)), (beta,), False)


def _categorical_term(name: str, levels: list[str], coefficients: Mapping[str, float]) -> _Term:
    betas = [0.0] + [float(coefficients.get(f"{name}={level}", np.nan)) for level in levels[1:]]
    if any(np.isnan(betas)):
        missing = [f"{name}={lvl}" for lvl, b in zip(levels, betas) if np.isnan(b)]
        raise InputError(f"coefficients lack {missing} (the first level, {levels[0]!r}, is the reference)")
    return _Term(name, tuple(levels), tuple(betas), True)


def _dummy_coded(data: pd.DataFrame, categorical: dict[str, list[str]]) -> pd.DataFrame:
    columns = {}
    for name in data.columns:
        if name in categorical:
            keys = [label_key(v) for v in data[name]]
            unknown = sorted(set(keys) - set(categorical[name]))
            if unknown:
                raise InputError(f"{name} has level(s) {unknown} not listed in categorical[{name!r}]")
            for level in categorical[name][1:]:
                columns[f"{name}={level}"] = [float(k == level) for k in keys]
        else:
            columns[str(name)] = data[name]
    return pd.DataFrame(columns, index=data.index)
