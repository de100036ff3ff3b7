"""Pre-emption and sharing, as a cluster inflicts them: SIGKILL mid-extraction, then a rerun; jobs of
one sweep that need the same keys run the model once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.store import KeyStore

from ..conftest import REPO

N_SAMPLES, SHARD = 160, 4
LATE = 3  # layer=late of the 4-layer tiny model
JOB = ["logger=none", f"benchmark.limit={N_SAMPLES}", f"keys.shard_size={SHARD}", "keys.batch_size=1",
       "layer=late", "metric=mmd", "analysis.n_splits=1", "metric.n_permutations=10", "report.tsne_points=60"]


def _launch(cache: Path, run_dir: Path, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "launch.py", *JOB, *extra, f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"]


def _entry(cache: Path) -> KeyStore:
    import json

    (entry,) = (cache / "keys").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    return KeyStore(cache, manifest["descriptor"], manifest["n_samples"])


@pytest.mark.slow
def test_sigkill_mid_extraction_then_rerun_gives_every_sample_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "cache"
    victim = subprocess.Popen(_launch(cache, tmp_path / "killed"), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(cache.glob("keys/*/shard-00001.layer-*.safetensors")):
        assert victim.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    n_shards = N_SAMPLES // SHARD
    left = len(_entry(cache).missing([LATE]))
    assert 0 < left < n_shards, f"kill landed outside extraction ({left} of {n_shards} shards missing)"

    done = subprocess.run(_launch(cache, tmp_path / "resumed"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "resumed" / "launch.log").read_text()
    assert f"extracting {left} of {n_shards} shards" in log
    resumed_entry = _entry(cache)
    resumed = resumed_entry.index()
    assert sorted(resumed.sample_ids) == list(range(N_SAMPLES))

    clean = subprocess.run(_launch(tmp_path / "clean", tmp_path / "clean_run"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    clean_entry = _entry(tmp_path / "clean")
    reference = clean_entry.index()
    assert torch.equal(resumed.sample, reference.sample) and torch.equal(resumed.is_image, reference.is_image)
    every_row = np.arange(len(reference.sample))
    torch.testing.assert_close(resumed_entry.read(LATE, every_row, resumed),
                               clean_entry.read(LATE, every_row, reference), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_kernel_sweep_runs_the_model_once(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "launch.py", "-m", "kernel=rbf,laplacian,linear", "logger=none", "benchmark.limit=8",
               "layer=late", "metric=mmd", "analysis.n_splits=1", "metric.n_permutations=10",
               "report.tsne_points=40", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = [(sweep / str(job) / "launch.log").read_text() for job in range(3)]
    assert sum("key cache: extracting" in log for log in logs) == 1
    assert sum("key cache hit" in log for log in logs) == 2
