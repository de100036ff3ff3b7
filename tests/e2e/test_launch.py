"""`launch.py` as a user runs it, in a subprocess: a multirun over two models and two layers."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from .. import wandb_offline
from ..conftest import REPO


@pytest.mark.slow
def test_multirun_two_models_two_layers(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "KEYSPACE_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "launch.py", "-m", "model=tiny_llava,tiny_qwen", "layer=early,late",
               "benchmark.limit=6", "analysis.n_splits=2", "metric.n_permutations=20",
               "report.tsne_points=60", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "results.parquet").exists())
    assert len(jobs) == 4
    seen = {tuple(pd.read_parquet(j / "results.parquet")[["model", "layer"]].drop_duplicates().iloc[0])
            for j in jobs}
    assert seen == {(m, layer) for m in ("tiny_llava", "tiny_qwen") for layer in ("early", "late")}
    assert "cross/intra" in done.stdout
    for job in jobs:  # one offline W&B run per job, grouped by the sweep
        (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
        assert wandb_offline.group(run_file) == str(sweep)


def test_unknown_model_is_refused_before_running(tmp_path):
    done = subprocess.run([sys.executable, "launch.py", "model=llava13", f"hydra.run.dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Could not find 'model/llava13'" in done.stderr and "tiny_llava" in done.stderr
