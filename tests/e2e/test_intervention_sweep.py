"""The remedy sweep end to end, offline: `experiment=remedy` on the tiny families and the synthetic benchmark,
every intervention at strengths 0 and 1, through the basic launcher (a subprocess), then the aggregate.

Checks what the grid must give whatever the (random) weights: at strength 0 every intervention leaves every
answer and attention share as they were (change exactly 0); at strength 1 mean_shift and coral shrink the key
gap (key_mmd2_change < 0) and attention_boost raises the image attention share; summary.csv keeps the
interventions and strengths apart; figure6_remedy is written.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from ..conftest import REPO


@pytest.mark.slow
def test_remedy_sweep_runs_offline_on_tiny_models(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "KEYSPACE_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "launch.py", "experiment=remedy", "model=tiny_llava,tiny_qwen", "benchmark=synthetic",
               "benchmark.limit=10", "intervention.strength=0,1", "metric.n_bootstrap=50", "report.tsne_points=60",
               "logger=none", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.concat([pd.read_parquet(p) for p in sweep.glob("*/results.parquet")], ignore_index=True)
    remedy = results[results["condition"] != "none"]
    assert set(remedy["condition"]) == {"mean_shift", "coral", "random_shift", "attention_boost"}
    assert set(remedy["model"]) == {"tiny_llava", "tiny_qwen"} and set(remedy["strength"]) == {0.0, 1.0}
    zero = remedy[remedy["strength"] == 0]
    for metric in ("accuracy_change", "answer_change_rate", "image_share_change", "key_mmd2_change"):
        assert (zero[zero["metric"] == metric]["value"] == 0).all(), metric
    one = remedy[remedy["strength"] == 1].set_index(["model", "condition", "metric"])["value"]
    for model in ("tiny_llava", "tiny_qwen"):
        assert one[(model, "mean_shift", "key_mmd2_change")] < 0
        assert one[(model, "coral", "key_mmd2_change")] < 0
        assert one[(model, "attention_boost", "image_share_change")] > 0
    summary = pd.read_csv(sweep / "summary.csv")
    accuracy = summary[summary["metric"] == "accuracy"]
    assert len(accuracy) == 2 * 4 * 2  # model x intervention x strength, never pooled
    for name in ("figure6_remedy.png", "figure6_remedy.pdf"):
        assert (sweep / name).stat().st_size > 10_000, name
