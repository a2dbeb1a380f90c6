"""The core helpers (core.files, core.jsonable, core.text): small extensions get their tests here."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from RadFusionScreenLib.core.files import write_atomically
from RadFusionScreenLib.core.jsonable import to_jsonable


# ------------------------------------------------------------------ core.files
def test_write_atomically_temporary_suffix_defaults_to_the_paths_and_can_be_given(tmp_path):
    seen: list[Path] = []

    def write(temporary: Path) -> None:
        seen.append(temporary)
        with gzip.open(temporary, "wb") if temporary.name.endswith(".gz") else open(temporary, "wb") as stream:
            stream.write(b"data")

    write_atomically(tmp_path / "a.nii.gz", write)
    write_atomically(tmp_path / "b", write, suffix=".nii.gz")  # a path without a suffix, a chosen format
    assert seen[0].name.endswith(".tmp.nii.gz") and seen[1].name.endswith(".tmp.nii.gz")
    assert all(path.parent == tmp_path for path in seen)
    assert gzip.decompress((tmp_path / "b").read_bytes()) == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b"]


def test_write_atomically_leaves_the_target_as_it_was_on_error(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("previous")

    def failing(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, failing, suffix="")
    assert target.read_text() == "previous" and list(tmp_path.iterdir()) == [target]


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
def test_files_written_by_a_library_get_the_umask_permissions(tmp_path):
    previous = os.umask(0o027)
    try:
        path = write_atomically(tmp_path / "x.csv", lambda temporary: temporary.write_text("a\n1\n"))
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------------ core.jsonable
def test_to_jsonable_unknown_can_be_a_function_raising_the_callers_error():
    class ManifestError(ValueError):
        pass

    def refuse(value):
        raise ManifestError(f"cannot write a {type(value).__name__}")

    assert to_jsonable({"a": (1.5, float("nan"))}, unknown=refuse) == {"a": [1.5, None]}  # not called for data
    with pytest.raises(ManifestError, match="cannot write a object"):
        to_jsonable({"a": [object()]}, unknown=refuse)
    assert to_jsonable({1: object}, unknown=lambda value: value.__name__) == {"1": "object"}
