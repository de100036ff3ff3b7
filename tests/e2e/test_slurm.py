"""Real SLURM: `launch.py -m hydra/launcher=slurm` over both tiny models, submitted with submitit to a reachable
cluster (in CI the single-node one `scripts/slurm_local.sh up` starts), then the aggregate the callback writes.

Skipped with the reason when `sinfo` is missing or no node is usable; `KEYSPACE_REQUIRE_SLURM=1` (set by
`.ci/run`) turns that skip into a failure, so CI cannot pass without having run the jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from ..conftest import REPO

LEAN = ["benchmark.limit=8", "analysis.n_splits=2", "metric.n_permutations=20", "report.tsne_points=80",
        "logger=none"]
# sized for the single-node localhost cluster: no GRES there, 2 cores, memory not consumable
LOCAL_CLUSTER = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
                 "hydra.launcher.timeout_min=10"]


def _cluster_problem() -> str | None:
    """Why no SLURM job can run here, or None."""
    if shutil.which("sinfo") is None:
        return "sinfo not found: no SLURM client on PATH (scripts/slurm_local.sh up starts a local cluster)"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: SLURM controller unreachable"
    if done.returncode != 0:
        return f"SLURM controller unreachable: sinfo: {done.stderr.strip()}"
    states = done.stdout.split()
    if not {"idle", "mix", "alloc"} & set(states):
        return f"no usable SLURM node (node states: {states or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem and os.environ.get("KEYSPACE_REQUIRE_SLURM") == "1":
        pytest.fail(f"KEYSPACE_REQUIRE_SLURM=1 but {problem}")
    if problem:
        pytest.skip(problem)


def _sacct_states(array_id: str, n_tasks: int, timeout_s: float = 60.0) -> dict[str, str]:
    """{task id: state} from accounting, once all tasks have left PENDING/RUNNING (sacct lags a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", array_id],
                              capture_output=True, text=True, timeout=30)
        states = dict(line.split("|", 1) for line in done.stdout.split())
        if (len(states) == n_tasks and not {"PENDING", "RUNNING"} & set(states.values())) or \
                time.monotonic() > deadline:
            return states
        time.sleep(2)


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_runs_as_slurm_jobs_and_is_aggregated(slurm_cluster, tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "KEYSPACE_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "launch.py", "-m", "hydra/launcher=slurm", "model=tiny_llava,tiny_qwen",
               "benchmark=synthetic", *LEAN, *LOCAL_CLUSTER, f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # one job array of two tasks went through sbatch, and accounting saw both complete
    (script,) = sweep.glob(".submitit/*/*_submission.sh")
    array_id = script.parent.name
    sbatch = set(script.read_text().splitlines())
    assert {"#SBATCH --array=0-1%2", "#SBATCH --gpus-per-node=0", "#SBATCH --job-name=keyspace"} <= sbatch
    assert _sacct_states(array_id, 2) == {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}
    for task in (f"{array_id}_0", f"{array_id}_1"):  # each job's printed summary, in its SLURM log
        assert "cross/intra" in (sweep / ".submitit" / task / f"{task}_0_log.out").read_text()

    models = {}
    for job in ("0", "1"):
        assert '"completed"' in (sweep / job / "status.json").read_text()
        models[job] = set(pd.read_parquet(sweep / job / "results.parquet")["model"])
    assert models == {"0": {"tiny_llava"}, "1": {"tiny_qwen"}}

    # the aggregate callback ran in the submitting process after both jobs returned
    report = (sweep / "aggregate_report.txt").read_text()
    assert "2 job dirs of 2 expected: 2 completed, 0 failed, 0 incomplete, 0 missing" in report
    summary = pd.read_csv(sweep / "summary.csv")
    assert set(summary["model"]) == {"tiny_llava", "tiny_qwen"}
    assert set(summary["layer"]) == {"early", "middle", "late"}
    for name in ("figure1_tsne.png", "figure1_tsne.pdf", "figure2_boxplots.png", "figure2_boxplots.pdf"):
        assert (sweep / name).stat().st_size > 10_000, name
