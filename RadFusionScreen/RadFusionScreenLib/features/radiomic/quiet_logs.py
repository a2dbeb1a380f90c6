"""pyradiomics' log chatter silenced while our own extractions run, and only then.

pyradiomics logs INFO and WARNING lines per case, filter and feature class (its logger
``radiomics``, whose stderr handler shows WARNING and up), and pykwalify logs every params
schema error that :class:`.extractor.RadiomicExtractor` also raises as an InputError. Inside
Slicer other extensions use pyradiomics too, so nothing is changed for the whole process: the
loggers' levels are raised for the duration of our calls and then put back; pyradiomics'
``setVerbosity`` (its handler's level) is never called.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Iterator

#: Logger name -> the level it is raised to while our extractions run (errors stay visible).
QUIET_LEVELS = {"radiomics": logging.ERROR, "pykwalify": logging.CRITICAL}

_lock = threading.Lock()
_active = 0  # quiet blocks running now (nested, or in several threads)
_saved: dict[str, int] = {}  # the levels to put back when the last one ends


@contextlib.contextmanager
def quiet_pyradiomics() -> Iterator[None]:
    """Raise the :data:`QUIET_LEVELS` loggers (never lower them) for the block, then restore their levels.

    Blocks that overlap (nested, or in several threads) share one quiet period: the first one
    in saves and raises the levels, the last one out restores them, so no block can leave
    another's raised level behind. Logger levels are process-wide: another pyradiomics user
    logging while our extraction runs is quiet for that time too.
    """
    importlib.import_module("radiomics")  # its first import sets the logger's level: before it is saved

    global _active
    with _lock:
        if _active == 0:
            for name, level in QUIET_LEVELS.items():
                logger = logging.getLogger(name)
                _saved[name] = logger.level
                logger.setLevel(max(logger.level, level))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for name, level in _saved.items():
                    logging.getLogger(name).setLevel(level)
                _saved.clear()
