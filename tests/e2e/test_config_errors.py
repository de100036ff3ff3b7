"""Configuration errors through `launch.py`: one line naming the field, no traceback, nothing extracted or launched."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ..conftest import REPO

FOUR = ["analysis.n_splits=0", "keys.max_tokens_per_sample=0", "analysis.max_tokens_per_group=1", "kernel.bandwidth=-3"]


@pytest.mark.slow
@pytest.mark.parametrize("override", FOUR)
def test_the_four_overrides_of_issue_14_fail_fast_with_a_fresh_cache(tmp_path, override):
    """`python launch.py <override>`: under 15 s on 2 cores, one line naming the field, no key extracted."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), override, "logger=none",
                           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    field = override.split("=")[0]
    assert done.returncode == 1 and seconds < 15, (seconds, output[-2000:])
    assert "Traceback" not in output and [line for line in output.splitlines() if f"{field}=" in line], output
    assert not (tmp_path / "cache" / "keys").exists()


@pytest.mark.slow
def test_a_sweep_is_checked_job_by_job_before_any_job_runs(tmp_path):
    """A bad value in some jobs of a multirun stops it in the submitting process: one line per bad job."""
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), "-m", "kernel=rbf,linear",
                           "analysis.n_splits=1,0", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert "configuration error in 2 of 4 jobs, nothing was launched" in output
    assert len([line for line in output.splitlines() if "analysis.n_splits=0: use an integer >= 1" in line]) == 2
    assert not list((tmp_path / "sweep").glob("*/status.json")) and not (tmp_path / "cache" / "keys").exists()


@pytest.mark.slow
def test_a_sweep_job_failing_on_a_config_error_prints_its_message_without_a_traceback(tmp_path):
    """An error only the job can see (a layer beyond the model's depth) ends the sweep with its one message."""
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), "-m", "layer.positions=[99]", "logger=none",
                           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert "layer.positions contains 99, but the model has 4 decoder layers" in done.stderr
