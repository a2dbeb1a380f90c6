"""Cohort feature extraction from a manifest: parallel, cached by content hash, error per case.

Manifest (CSV): ``case_id, image, mask`` plus any other columns (label, site, clinical
values, ...), which are passed through to the feature table unchanged. Relative paths are
resolved against the manifest's folder. An optional ``mask_label`` column overrides the
mask label value per case, and an optional ``segment`` column the DICOM SEG segment /
RTSTRUCT ROI (name or number) per case; empty cells fall back to the run's setting.
"""

from __future__ import annotations

import json
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from RadFusionScreenLib.core.errors import InputError, RadFusionError
from RadFusionScreenLib.core.files import write_atomically, write_text_atomically
from RadFusionScreenLib.features.case_features import CaseFeatureExtractor, ExtractionConfig, hash_inputs, normalise_segment

if TYPE_CHECKING:  # pandas is imported where used: spawned workers start ~0.3 s sooner without it
    import pandas as pd

REQUIRED_COLUMNS = ("case_id", "image", "mask")
ENGINE_COLUMNS = ("image", "mask", "mask_label", "segment")  # consumed, not passed through
CACHE_DIRNAME = ".radfusion_cache"
BACKENDS = ("local", "dask")
# Thread counts that native libraries read once, when they load: OpenMP (torch, OpenBLAS), MKL, ITK.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


@dataclass
class CaseTask:
    """One manifest row, resolved: what a worker needs to extract one case."""

    case_id: str
    image: str
    mask: str
    label: int | None
    passthrough: dict[str, Any]
    segment: str | int | None = None


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a cohort manifest (required columns, unique case ids)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    manifest = pd.read_csv(path, dtype={"case_id": str, "segment": str})  # "1" stays a string: names first
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise InputError(
            f"manifest {path} lacks column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)} "
            f"(found: {', '.join(manifest.columns)})"
        )
    if manifest["case_id"].isna().any():
        rows = [int(i) + 2 for i in manifest.index[manifest["case_id"].isna()]]
        raise InputError(f"manifest {path}: empty case_id on line(s) {rows}")
    duplicated = manifest["case_id"][manifest["case_id"].duplicated()].unique().tolist()
    if duplicated:
        raise InputError(f"manifest {path}: duplicate case_id(s) {', '.join(map(str, duplicated[:10]))}")
    return manifest


def manifest_tasks(
    manifest: pd.DataFrame, base_dir: Path, default_label: int | None, default_segment: str | int | None = None
) -> list[CaseTask]:
    """Resolve manifest rows into tasks (relative paths against the manifest's folder)."""
    import pandas as pd

    tasks = []
    for row in manifest.to_dict(orient="records"):
        label = row.get("mask_label")
        label = default_label if label is None or pd.isna(label) else int(label)
        segment = normalise_segment(row.get("segment"))
        passthrough = {k: v for k, v in row.items() if k not in ENGINE_COLUMNS and k != "case_id"}
        tasks.append(
            CaseTask(
                case_id=str(row["case_id"]),
                image=str(_resolve(base_dir, row["image"])),
                mask=str(_resolve(base_dir, row["mask"])),
                label=label,
                passthrough=passthrough,
                segment=default_segment if segment is None else segment,
            )
        )
    return tasks


def _resolve(base_dir: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base_dir / path


class FeatureCache:
    """One small JSON file per case, named by the content hash of its inputs and settings."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, row: dict[str, Any]) -> None:
        if self.folder is None:
            return
        write_text_atomically(self.folder / f"{key}.json", json.dumps(row))


# --- worker side -------------------------------------------------------------------------
# One extractor (one CNN in memory) per process and extraction settings: a worker process
# (local pool or Dask worker) builds it on its first case and reuses it for every other.
_WORKER_EXTRACTORS: dict[str, CaseFeatureExtractor] = {}


def _worker_extractor(config: dict[str, Any]) -> CaseFeatureExtractor:
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _WORKER_EXTRACTORS:
        _WORKER_EXTRACTORS[key] = CaseFeatureExtractor(ExtractionConfig(**config))
    return _WORKER_EXTRACTORS[key]


def _extract_task(task: CaseTask, key: str | None, config: dict[str, Any]) -> dict[str, Any]:
    """Extract one case; any failure becomes the row's error message, never an exception."""
    extractor = _worker_extractor(config)
    extractor.config.label = task.label
    extractor.config.segment = task.segment
    try:
        features = extractor.extract_paths(task.image, task.mask)
        return {"row": features.row(), "error": "", "key": key}
    except RadFusionError as error:
        return {"row": {}, "error": str(error), "key": None}
    except Exception as error:  # a bug or a library failure: keep the cohort going, say what happened
        last = traceback.extract_tb(error.__traceback__)[-1]
        message = f"{type(error).__name__}: {error} (at {Path(last.filename).name}:{last.lineno})"
        return {"row": {}, "error": message, "key": None}


# --- driver side -------------------------------------------------------------------------
def extract_cohort(
    manifest_path: str | Path,
    output_path: str | Path,
    config: ExtractionConfig | None = None,
    workers: int = 1,
    cache_dir: str | Path | None = "auto",
    progress: bool = True,
    on_case: Callable[[str, str], None] | None = None,
    backend: str = "local",
    scheduler: Any = None,
) -> pd.DataFrame:
    """Extract every case of a manifest into one CSV (written atomically) and return it.

    ``cache_dir="auto"`` keeps the cache beside the output file; ``None`` disables it.
    ``backend="dask"`` runs the same per-case task on a Dask cluster: ``scheduler`` is the
    scheduler address (``tcp://host:8786``), a ``distributed.Client``, or None for a local
    cluster of ``workers`` processes. Image paths must be readable by the workers.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    config = config or ExtractionConfig()
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    tasks = manifest_tasks(manifest, manifest_path.parent, config.label, config.segment)
    if cache_dir == "auto":
        cache_dir = Path(output_path).parent / CACHE_DIRNAME
    cache = FeatureCache(Path(cache_dir) if cache_dir else None)
    config_dict = asdict(config)

    results: dict[str, dict[str, Any]] = {}
    pending: list[tuple[CaseTask, str | None]] = []
    fingerprint = config.fingerprint() if cache.folder is not None else None
    for task in tasks:
        key = _cache_key(task, fingerprint) if fingerprint is not None else None  # no cache: nothing to hash
        cached = cache.get(key) if key else None
        if cached is not None:
            results[task.case_id] = {"row": cached, "error": "", "key": key, "cached": True}
        else:
            pending.append((task, key))

    run = _run_dask(pending, config_dict, workers, scheduler) if backend == "dask" else _run(pending, config_dict, workers)
    for case_id, outcome in _with_progress(run, progress, len(tasks), len(results)):
        results[case_id] = outcome
        if outcome["key"] and not outcome["error"]:
            cache.put(outcome["key"], outcome["row"])
        if on_case is not None:
            on_case(case_id, outcome["error"])

    table = _assemble(tasks, results)
    write_csv_atomic(table, Path(output_path))
    return table


def _cache_key(task: CaseTask, fingerprint: dict[str, Any]) -> str | None:
    """None when an input is missing: the worker then reports the error for that case."""
    paths = [Path(task.image), Path(task.mask)]
    if not all(p.exists() for p in paths):
        return None
    settings = {**fingerprint, "label": task.label, "segment": task.segment}
    return hash_inputs(paths, settings)


def _run(
    pending: list[tuple[CaseTask, str | None]], config: dict[str, Any], workers: int
) -> Iterable[tuple[str, dict[str, Any]]]:
    if workers <= 1 or len(pending) <= 1:
        for task, key in pending:
            yield task.case_id, _extract_task(task, key, config)
        return
    threads_per_worker = max(1, (os.cpu_count() or 1) // workers)
    # spawn, not fork: torch and OpenMP thread pools do not survive a fork safely.
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_worker_extractor,  # the CNN is loaded once per worker, before its first case
        initargs=(config,),
    )
    try:
        with _worker_thread_env(threads_per_worker):  # the pool spawns its workers on these submits
            futures = {pool.submit(_extract_task, task, key, config): task for task, key in pending}
        yield from collect_outcomes(as_completed(futures), futures)
    finally:
        # Workers take ~0.4 s to unload torch: let them exit while the table is written.
        pool.shutdown(wait=False, cancel_futures=True)


def collect_outcomes(completed: Iterable[Any], tasks: Mapping[Any, CaseTask]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(case_id, outcome) of finished futures (local pool or Dask); a future that raised, e.g.
    because its worker process died (a crash in a compiled library, out of memory), becomes
    that case's error and the cohort goes on. ``_extract_task`` itself never raises."""
    for future in completed:
        case_id = tasks[future].case_id
        try:
            yield case_id, future.result()
        except Exception as error:  # noqa: BLE001 -- one case must not take the batch down
            yield case_id, {"row": {}, "key": None, "error": (
                f"{type(error).__name__} while extracting case {case_id}: {str(error) or 'the worker process ended'}. "
                "Cases whose worker died are not cached: re-run to retry them (finished cases come from the cache)")}


@contextmanager
def _worker_thread_env(threads: int) -> Iterator[None]:
    """Thread-count variables for the worker processes spawned inside this block.

    Each worker gets its share of the cores for OpenBLAS, torch (OpenMP) and ITK alike, and it
    must have it from its start: unpickling its first call already loads numpy, whose OpenBLAS
    then sizes its pool to every core and spins between calls (two workers on two cores lost
    ~20 % of throughput, measured on BUSI); ITK's default is every core per filter.
    """
    saved = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    os.environ.update({name: str(threads) for name in THREAD_ENV_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_dask(
    pending: list[tuple[CaseTask, str | None]], config: dict[str, Any], workers: int, scheduler: Any
) -> Iterable[tuple[str, dict[str, Any]]]:
    """The same task on a Dask cluster (an existing one, or a local one for this run)."""
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError:
        raise InputError("the dask backend needs the optional packages dask and distributed "
                         "(pip install 'dask[distributed]')") from None
    if not pending:
        return
    cluster = None
    if isinstance(scheduler, Client):
        client = scheduler
    elif scheduler:
        client = Client(scheduler)
    else:
        # Dask's nanny already sets OMP/MKL/OpenBLAS threads to 1 per worker; ITK's likewise.
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                               dashboard_address=None, env={"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"})
        client = Client(cluster)
    try:
        futures = {client.submit(_extract_task, task, key, config, pure=False): task for task, key in pending}
        yield from collect_outcomes(dask_completed(futures), futures)
    finally:
        if client is not scheduler:
            client.close()
        if cluster is not None:
            cluster.close()


def _with_progress(outcomes: Iterable[tuple[str, dict[str, Any]]], enabled: bool, total: int,
                   done: int) -> Iterable[tuple[str, dict[str, Any]]]:
    from tqdm import tqdm

    with tqdm(total=total, initial=done, unit="case", desc="extract", disable=not enabled, dynamic_ncols=True) as bar:
        for outcome in outcomes:
            yield outcome
            bar.update(1)


def _assemble(tasks: list[CaseTask], results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Rows in manifest order: case_id, passed-through columns, error, metadata + features."""
    import pandas as pd

    rows = []
    for task in tasks:
        outcome = results[task.case_id]
        rows.append({"case_id": task.case_id, **task.passthrough, "error": outcome["error"], **outcome["row"]})
    return pd.DataFrame(rows)


def write_csv_atomic(table: pd.DataFrame, path: Path) -> None:
    """Write to a temporary file beside the target, then rename: never a half-written CSV."""
    write_atomically(path, lambda temporary: table.to_csv(temporary, index=False))
