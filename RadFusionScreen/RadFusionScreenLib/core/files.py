"""All-or-nothing file writes: a reader (or a crash) never sees half a file or half a folder."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], *, suffix: str | None = None) -> Path:
    """``write(temporary)`` writes the content to a temporary file beside ``path`` (same file
    system, same suffix so format-sniffing writers such as SimpleITK's pick the right one),
    then it replaces ``path`` in one rename. On any error the temporary file is removed and
    ``path`` is left as it was. ``suffix``: the temporary file's suffix instead of ``path``'s
    (e.g. the format to write to a path without one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` into ``path``, flushed to disk first (the file's permissions follow the umask)."""
    return write_atomically(path, lambda temporary: _write_synced(temporary, data))


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomically(path, text.encode("utf-8"))


def replace_folder(target: str | os.PathLike, contents: Mapping[str, bytes]) -> Path:
    """A folder holding exactly ``contents`` (relative path -> bytes) at ``target``: written into a
    sibling staging folder, then swapped in; the old folder goes only after the new one is whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for name, data in contents.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            _write_synced(staging / name, data)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:  # "x": a fresh file, created with the umask's permissions
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    previous = target.parent / f".{target.name}.previous-{uuid.uuid4().hex[:8]}"
    os.replace(target, previous)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)
