"""House style holds: ruff finds nothing in the code this repository ships."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ..conftest import REPO


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[dev]')")
def test_ruff_is_clean():
    done = subprocess.run(["ruff", "check", "src", "tests", "bench", "launch.py"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
