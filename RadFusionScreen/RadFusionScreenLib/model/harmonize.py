"""ComBat harmonisation as a scikit-learn transformer, so it can sit inside a Pipeline.

A transformer only receives ``X``, so the site (batch) and the optional biological
covariates travel in ``X`` itself, as named columns of a pandas DataFrame:

- ``site_column`` (default ``"site"``) gives each row's site / scanner;
- ``covariate_columns`` (default none) are numeric covariates whose effect ComBat preserves
  (e.g. age). Never pass the outcome label here: at prediction time it is unknown, and
  using it while harmonising the test set would leak the answer into the features;
- every other column is a feature and is harmonised.

The output holds the harmonised feature columns only (site and covariates are dropped, so
the next step sees features alone), unless ``keep_non_features=True``, which appends the
site and covariate columns unchanged after the features (as a DataFrame, so that a text
site column and float features keep their own dtypes).

Inside a Pipeline the estimator is cloned and fitted per cross-validation training fold,
so the ComBat parameters never see the held-out rows. A site unseen at fit time cannot be
harmonised: ``transform`` raises the :class:`~RadFusionScreenLib.core.errors.InputError` of
:class:`~RadFusionScreenLib.stats.ComBatModel` that names the site.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats import ComBatModel
from RadFusionScreenLib.stats._validation import check_format

FORMAT = "RadFusionScreen.ComBatHarmonizer"
FORMAT_VERSION = 1


class ComBatHarmonizer(TransformerMixin, BaseEstimator):
    """Fit ComBat (``sva::ComBat``, parametric empirical Bayes) on the rows it is given.

    Parameters
    ----------
    site_column : str
        Column of X holding the site / scanner label of each row.
    covariate_columns : sequence of str
        Numeric columns of X whose effect is preserved (no outcome label, see module doc).
    mean_only : bool
        Adjust location only (sva's ``mean.only=TRUE``), e.g. for small sites.
    keep_non_features : bool
        False (default): output the harmonised features only. True: append the site and
        covariate columns, unchanged, after them.

    Attributes
    ----------
    model_ : ComBatModel
        The fitted ComBat parameters.
    feature_columns_ : list of str
        The harmonised columns, in output order.
    feature_names_in_ : ndarray of str
        Every column of the X given to :meth:`fit`.
    """

    def __init__(
        self,
        site_column: str = "site",
        covariate_columns: Sequence[str] = (),
        mean_only: bool = False,
        keep_non_features: bool = False,
    ) -> None:
        self.site_column = site_column
        self.covariate_columns = covariate_columns
        self.mean_only = mean_only
        self.keep_non_features = keep_non_features

    # ------------------------------------------------------------------ fitting
    def fit(self, X: pd.DataFrame, y: Any = None) -> "ComBatHarmonizer":
        """Estimate ComBat parameters on these rows only (y is ignored)."""
        frame = self._as_frame(X)
        non_features = self._non_feature_columns()
        self.feature_names_in_ = np.asarray([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.feature_columns_ = [str(c) for c in frame.columns if str(c) not in non_features]
        if not self.feature_columns_:
            raise InputError(f"X holds no feature columns besides {sorted(non_features)}")
        self.model_ = ComBatModel.fit(
            frame[self.feature_columns_],
            frame[self.site_column].to_numpy(),
            self._covariates(frame),
            mean_only=self.mean_only,
        )
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray | pd.DataFrame:
        """Harmonise the feature columns with the fitted parameters (any rows, even one).

        Returns an array of the harmonised features (a DataFrame with
        ``set_output(transform="pandas")``), or, with ``keep_non_features``, always a
        DataFrame: harmonised features followed by the unchanged site / covariate columns.
        """
        check_is_fitted(self, "model_")
        frame = self._as_frame(X)
        missing = [c for c in self.feature_names_in_ if c not in frame.columns]
        if missing:
            raise InputError(f"X lacks {len(missing)} column(s) seen at fit time, e.g. {missing[:5]}")
        # A plain array in fit order: the columns were matched by name just above (and
        # ComBatModel's own name matching is quadratic in the number of features).
        features = frame[self.feature_columns_].to_numpy(dtype=float)
        values = self.model_.transform(features, frame[self.site_column].to_numpy(), self._covariates(frame))
        if not self.keep_non_features:
            return values
        # Text sites and numbers share no array type: a DataFrame keeps each column's dtype.
        harmonised = pd.DataFrame(values, index=frame.index, columns=self.feature_columns_)
        return pd.concat([harmonised, frame[self._non_feature_order()]], axis=1)

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        """Output column names: the features, then site and covariates when kept."""
        check_is_fitted(self, "model_")
        names = list(self.feature_columns_)
        if self.keep_non_features:
            names += self._non_feature_order()
        return np.asarray(names, dtype=object)

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description for a model bundle (column roles + ComBat parameters)."""
        check_is_fitted(self, "model_")
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "site_column": self.site_column,
            "covariate_columns": list(self.covariate_columns),
            "mean_only": bool(self.mean_only),
            "keep_non_features": bool(self.keep_non_features),
            "input_columns": [str(c) for c in self.feature_names_in_],
            "combat": self.model_.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComBatHarmonizer":
        """Rebuild a fitted harmonizer from :meth:`to_dict` output."""
        check_format(data, FORMAT, FORMAT_VERSION, "ComBat harmonizer parameters")
        try:
            harmonizer = cls(
                site_column=str(data["site_column"]),
                covariate_columns=tuple(data["covariate_columns"]),
                mean_only=bool(data["mean_only"]),
                keep_non_features=bool(data["keep_non_features"]),
            )
            model = ComBatModel.from_dict(data["combat"])
            input_columns = [str(c) for c in data["input_columns"]]
        except (KeyError, TypeError) as exc:
            raise InputError(f"ComBat harmonizer parameters are incomplete: {exc!r}") from None
        harmonizer._restore(model, input_columns)
        return harmonizer

    def _restore(self, model: ComBatModel, input_columns: list[str]) -> None:
        non_features = self._non_feature_columns()
        self.model_ = model
        self.feature_names_in_ = np.asarray(input_columns, dtype=object)
        self.n_features_in_ = len(input_columns)
        self.feature_columns_ = [c for c in input_columns if c not in non_features]
        if model.feature_names is not None and list(model.feature_names) != self.feature_columns_:
            raise InputError("ComBat harmonizer parameters: feature columns do not match the ComBat model")

    # ------------------------------------------------------------------ helpers
    def _non_feature_order(self) -> list[str]:
        return [self.site_column, *self.covariate_columns]

    def _non_feature_columns(self) -> set[str]:
        return set(self._non_feature_order())

    def _as_frame(self, X: Any) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise InputError(
                "ComBatHarmonizer needs a pandas DataFrame with a site column "
                f"{self.site_column!r}; got {type(X).__name__} (use set_output(transform='pandas') on earlier steps)"
            )
        frame = X.rename(columns=str)
        needed = self._non_feature_order()
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise InputError(f"X lacks the column(s) {missing} that ComBat needs (site / covariates)")
        return frame

    def _covariates(self, frame: pd.DataFrame) -> pd.DataFrame | None:
        return frame[list(self.covariate_columns)] if self.covariate_columns else None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True  # the site column may hold text
        return tags
