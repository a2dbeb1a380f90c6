"""Every fit of a comparison as one list of process-pool tasks.

A model's evaluation needs its grid search fitted on each outer fold's training rows (nested
CV) and on the whole training set (the final model). One task fits *every classifier family of
one feature set* on one such row set, one after the other in one process: the steps before the
classifier (imputation, ComBat, filters, LASSO) are then fitted once in that process's fit
cache (:mod:`..fit_cache`) and reused by every family and grid candidate, whichever process
ran the previous task. The tasks of all feature sets share one pool, the largest (final fits)
first, so the cores stay busy to the end instead of idling after each model's last fold.

A second, small round refits, with the final model's hyper-parameters, only the outer folds
that chose others (what the calibration is fitted on, see :mod:`.model_result`): a fold that
chose the final hyper-parameters already holds that very fit.

Every fit is deterministic and independent of the others, and runs with single-threaded BLAS
(multi-threaded BLAS sums in another order: an MLP's lbfgs fit carries that into its last
digits), so the numbers do not depend on the number of processes, the cores, or the order the
tasks finish in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.train.cross_validation import FoldFit, process_count
from RadFusionScreenLib.model.train.pipelines import fit_model


@dataclass(frozen=True)
class RowSet:
    """Training rows of one fit (positions), and the rows it predicts (None: the final fit)."""

    label: str
    train: np.ndarray
    valid: np.ndarray | None = None


@dataclass
class FinalFit:
    model: Any
    seconds: float


@dataclass
class FitFailure:
    reason: str


FitOutput = FoldFit | FinalFit | FitFailure


@dataclass(frozen=True)
class FitTask:
    """Models (name, unfitted pipeline or grid search) fitted one after the other on one row set."""

    title: str
    models: tuple[tuple[str, Any], ...]
    rows: RowSet


def failure_reason(exc: BaseException) -> str:
    """A failed fit's message: ours as it is, a library's with its type."""
    return str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"


def fit_on_rows(models: Sequence[tuple[str, Any]], X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None,
                rows: RowSet) -> dict[str, FitOutput]:
    """Fit each model on ``rows.train``; keep the fitted model (final fit) or the held-out predictions."""
    X_train, y_train = X.iloc[rows.train], y[rows.train]
    groups_train = None if groups is None else groups[rows.train]
    X_valid = None if rows.valid is None else X.iloc[rows.valid]
    outputs: dict[str, FitOutput] = {}
    with threadpool_limits(1):  # the same sums in the main process (n_jobs=1) as in any worker
        for name, model in models:
            outputs[name] = _fit_one(model, X_train, y_train, groups_train, X_valid)
    return outputs


def _fit_one(model: Any, X_train: pd.DataFrame, y_train: np.ndarray, groups_train: np.ndarray | None,
             X_valid: pd.DataFrame | None) -> FitOutput:
    started = time.perf_counter()
    try:
        fitted = fit_model(clone(model), X_train, y_train, groups_train)
        if X_valid is None:
            return FinalFit(fitted, time.perf_counter() - started)
        return FoldFit.of(fitted, X_valid, time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 -- one degenerate model must not end the others
        return FitFailure(failure_reason(exc))


def run_fit_tasks(tasks: Sequence[FitTask], X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None,
                  n_jobs: int | None, log: Callable[[str], None]) -> list[dict[str, FitOutput]]:
    """Run the tasks over ``n_jobs`` processes (None: every core); outputs in task order."""
    outputs: list[dict[str, FitOutput] | None] = [None] * len(tasks)
    runs = Parallel(n_jobs=process_count(n_jobs, len(tasks)), return_as="generator_unordered")(
        delayed(_run_task)(index, task, X, y, groups) for index, task in enumerate(tasks))
    for done, (index, seconds, output) in enumerate(runs, start=1):
        outputs[index] = output
        log(f"{tasks[index].title}: {tasks[index].rows.label} done ({seconds:.1f} s) [{done}/{len(tasks)}]")
    return outputs  # type: ignore[return-value]


def _run_task(index: int, task: FitTask, X: pd.DataFrame, y: np.ndarray,
              groups: np.ndarray | None) -> tuple[int, float, dict[str, FitOutput]]:
    started = time.perf_counter()
    output = fit_on_rows(task.models, X, y, groups, task.rows)
    return index, time.perf_counter() - started, output
