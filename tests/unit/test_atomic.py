"""Atomic writes: whole file or none, never a leftover temporary, usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.atomic import atomic_write


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda p: Path(p).write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "x"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_failed_writer_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.parquet"
    target.write_text("old")

    def broken(path: str) -> None:
        Path(path).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]
