"""Memory against benchmark size: the whole job at LLaVA key width on 250, 1,000 and 4,000 samples.

Each size runs `launch.py` (extraction, statistics, t-SNE, figures; W&B off) in a fresh process on a
fresh cache, with keys as wide as LLaVA-1.5-7B's (32 KV heads x 128 = 4,096 dims per token) on a narrow
model body (hidden size 64, 4 decoder layers) so CPU time stays low. It prints, per size: peak RSS of
the job process (`wait4`'s ru_maxrss), its ratio to the smallest size (the baseline, measured in the
same run), key-cache bytes per sample, and seconds per stage (from the job's status.json). DESIGN's
"select, then read" target: peak RSS at 4,000 samples within 1.25x of 250.

    python bench/scale.py                           # 250, 1000, 4000 samples (about 20 GB of disk, ~15 min)
    python bench/scale.py --sizes 100,400 --work-dir /scratch/keyspace-scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDE_LLAVA = ["model=tiny_llava", "model.name=wide_llava", "model.architecture.text_config.num_attention_heads=32",
              "model.architecture.text_config.num_key_value_heads=32", "model.architecture.text_config.head_dim=128"]
STAGES = ("samples", "extract", "read", "statistics", "embedding", "figures")


def run_job(samples: int, work: Path, extra: list[str]) -> dict:
    """One job in its own process; returns peak RSS, wall time, cache bytes and the job's stage seconds."""
    cache, out = work / f"cache-{samples}", work / f"job-{samples}"
    command = [sys.executable, "launch.py", *WIDE_LLAVA, f"benchmark.limit={samples}", "logger=none",
               f"paths.cache_dir={cache}", f"hydra.run.dir={out}", *extra]
    started = time.time()
    with open(work / f"job-{samples}.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.time() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {samples}-sample job failed; see {work / f'job-{samples}.log'}")
    job_status = json.loads((out / "status.json").read_text())
    metadata = _results_metadata(out / "results.parquet")
    return {"samples": samples, "peak_rss": usage.ru_maxrss * 1024, "wall": wall,
            "cache_bytes_per_sample": metadata["cache_bytes_per_sample"], "stages": job_status["stage_seconds"]}


def _results_metadata(path: Path) -> dict:
    from experiments.report import read_metadata

    return read_metadata(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="250,1000,4000", help="sample counts; the first is the baseline")
    parser.add_argument("--work-dir", type=Path, default=None, help="caches and job dirs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the caches and job dirs")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="keyspace-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for samples in (int(s) for s in args.sizes.split(",")):
            rows.append(run_job(samples, work, args.overrides))
            print(f"{samples} samples done in {rows[-1]['wall']:.0f} s", file=sys.stderr, flush=True)
            if not args.keep:  # free the disk before the next, larger size
                shutil.rmtree(work / f"cache-{samples}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["peak_rss"]
    print(f"\nwhole job, LLaVA-width keys (32 x 128), {os.cpu_count()} CPUs; baseline: {rows[0]['samples']} samples")
    print("| samples | peak RSS (MB) | RSS / baseline | cache MB / sample | wall s | "
          + " | ".join(f"{s} s" for s in STAGES) + " |")
    print("|---" * (5 + len(STAGES)) + "|")
    for row in rows:
        stages = " | ".join(f"{row['stages'].get(s, 0.0):.1f}" for s in STAGES)
        print(f"| {row['samples']} | {row['peak_rss'] / 1e6:.0f} | {row['peak_rss'] / base:.2f}x | "
              f"{row['cache_bytes_per_sample'] / 1e6:.2f} | {row['wall']:.0f} | {stages} |")


if __name__ == "__main__":
    main()
