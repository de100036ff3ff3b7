"""A real basic-launcher sweep (`experiment=smoke`, in a subprocess) in which one job has a bad value.

Hydra 1.3.8's basic sweeper runs every job of the batch, then re-raises the first failure: the command
exits 1 and `on_multirun_end` (our aggregate callback) is skipped. Aggregating is then the command line's
job, `python -m experiments.aggregate <sweep dir>`, which must report the failed job and still aggregate
the one that completed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from ..conftest import REPO

LEAN = ["benchmark.limit=8", "analysis.n_splits=2", "metric.n_permutations=20", "report.tsne_points=80",
        "logger=none"]


@pytest.mark.slow
def test_failed_job_is_reported_and_the_others_aggregated(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "KEYSPACE_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "launch.py", "experiment=smoke", "model=tiny_llava", "layer.positions=[0],[99]",
               *LEAN, f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "layer.positions contains 99" in done.stderr
    assert not (sweep / "summary.csv").exists()  # the callback did not run: a job failed

    done = subprocess.run([sys.executable, "-m", "experiments.aggregate", str(sweep)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (sweep / "aggregate_report.txt").read_text()
    assert done.stdout == report
    assert "2 job dirs of 2 expected: 1 completed, 1 failed, 0 incomplete, 0 missing" in report
    assert "FAILED job 1 (tiny_llava on synthetic" in report and "layer.positions=[99]" in report
    assert "ConfigError: layer.positions contains 99, but the model has 4 decoder layers" in report

    summary = pd.read_csv(sweep / "summary.csv")
    results = pd.read_parquet(sweep / "0" / "results.parquet")
    assert set(summary["layer_index"]) == {0} and set(summary["n_jobs"]) == {1}
    assert len(summary) == results.groupby(["comparison", "metric"]).ngroups == 6
    for name in ("figure1_tsne.png", "figure1_tsne.pdf", "figure2_boxplots.png", "figure2_boxplots.pdf"):
        assert (sweep / name).stat().st_size > 10_000, name
