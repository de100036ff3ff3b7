"""Pre-emption through real SLURM: SIGUSR2 mid-extraction (what SLURM sends before a time limit or a
pre-emption) makes submitit checkpoint and requeue the job; the requeued job extracts only the missing
shards, and the sweep ends with every sample cached exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from experiments.store import KeyStore

from ..conftest import REPO
from .test_slurm import LOCAL_CLUSTER, slurm_cluster  # noqa: F401  (fixture)

N_SAMPLES, SHARD = 1200, 8


def _wait_for(predicate, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes(slurm_cluster, tmp_path):  # noqa: F811
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    command = [sys.executable, "launch.py", "-m", "hydra/launcher=slurm", "model=tiny_llava", "logger=none",
               f"benchmark.limit={N_SAMPLES}", f"keys.shard_size={SHARD}", "keys.batch_size=1", "layer=late",
               "metric=mmd", "analysis.n_splits=1", "metric.n_permutations=10", "report.tsne_points=60",
               *LOCAL_CLUSTER, f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    job_id = None
    try:
        _wait_for(lambda: list(cache.glob("keys/*/shard-00002.layer-*.safetensors")), "the first shards")
        (job_dir,) = [d for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]
        job_id = job_dir.name
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)

        def requeued() -> bool:  # SLURM holds a requeued job for 2 minutes; release it now
            state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
            return "PENDING" in state.stdout

        _wait_for(requeued, "the requeued job", timeout_s=120)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
        output, _ = launcher.communicate(timeout=600)
    finally:
        launcher.kill()
        if job_id is not None:
            subprocess.run(["scancel", job_id], timeout=30)
    assert launcher.returncode == 0, output[-3000:]

    log = (sweep / "0" / "launch.log").read_text()
    n_shards = N_SAMPLES // SHARD
    assert f"extracting {n_shards} of {n_shards} shards" in log
    resumed = [int(line.split("extracting ")[1].split(" of")[0]) for line in log.splitlines()
               if "key cache: extracting" in line][1:]
    assert len(resumed) == 1 and 0 < resumed[0] < n_shards, log
    assert "Caught signal SIGUSR2" in (job_dir / f"{job_id}_0_log.err").read_text()

    (entry,) = (cache / "keys").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    index = KeyStore(cache, manifest["descriptor"], manifest["n_samples"]).index()
    assert sorted(index.sample_ids) == list(range(N_SAMPLES))
    assert (sweep / "summary.csv").exists()
