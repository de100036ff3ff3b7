"""Sweep aggregation: every job dir of a sweep -> job report, `summary.csv`, Figures 1 to 3.

Contract: `aggregate(sweep_dir)` finds the job dirs under `sweep_dir` (every folder holding
`.hydra/config.yaml`), reads each one's config, overrides, `status.json` and `results.parquet`, and sorts
the jobs into completed (status `completed` and results on disk), failed (status `failed`, with its
error) and incomplete (no status: killed, or still running). Comparing the job numbers with the sweep's
size (re-expanded from `multirun.yaml` for the basic sweeper) finds the missing ones, which never wrote
a folder (e.g. a SLURM job that never started). It writes into `sweep_dir`:

    aggregate_report.txt    counts, each failed / incomplete / missing job with its overrides and error
    jobs.csv                one row per job dir: job, status, model, benchmark, overrides, error, dir
    summary.csv             per model x benchmark x layer x key_site x comparison x metric x kernel (and
                            every override that varies between the completed jobs and is not a results
                            column, e.g. kernel.bandwidth_scale): n, n_jobs, mean, std (ddof 1), a seeded
                            percentile-bootstrap 95% CI of the mean over the rows (ci_low, ci_high: split
                            and job noise only, as the splits reuse the same samples), the median p-value,
                            and sample_ci_low / sample_ci_high, the medians over the rows of each value's
                            sample-bootstrap interval (results ci_low / ci_high: whole samples resampled,
                            the uncertainty about the population; NaN where the rows have none)
    figure1_tsne.png/.pdf   rows = models, columns = benchmark x layer (2 x 6 for the paper's 2 models, 2
                            benchmarks, 3 layers), each panel marked with its decoder-layer index, from the jobs'
                            embedding.parquet
    figure2_boxplots.png/.pdf  per model, image_vs_text against the two intra-modal controls, pooled over
                            layers and benchmarks, one panel per metric (and kernel)
    figure3_depth_profile.png/.pdf  per model x benchmark (x varying key_site / override) and metric, the
                            three comparisons' mean ± std over splits against layer_index; only when some
                            model x benchmark has 3 or more layer indices (e.g. `layer=every`), else skipped
    figure4_attention_heatmaps.png/.pdf, figure5_attention_mmd_vs_share.png/.pdf  per model, layer x head
                            image attention share and per-head MMD², and MMD² against share with Spearman's
                            rho; only when some job ran `analysis.attention=true` (summary.csv then has a
                            `head` column: the attention rows are summarised per head, the others read `all`)
    figure6_remedy.png/.pdf  intervention sweeps (`intervention=...`, `experiment=remedy`): per model x
                            benchmark, the change in option-likelihood accuracy and in image attention share
                            against intervention.strength, one line per intervention, paired bootstrap
                            intervals over samples (`report.remedy_figures`); summary.csv groups on the
                            `condition` and `strength` columns

The report is printed and written even when no job completed (then `aggregate` raises). Command line:
`python -m experiments.aggregate <sweep dir>`; the Hydra callback in `callbacks.py` calls the same function
at the end of a multirun that succeeded (Hydra skips callbacks when a job fails: run this command then).
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from experiments.report.schema import COLUMN_DEFAULTS, RESULT_COLUMNS

log = logging.getLogger(__name__)

GROUP_COLUMNS = ["model", "benchmark", "layer", "layer_index", "key_site", "comparison", "metric", "kernel"]
OPTIONAL_GROUP_COLUMNS = ["head", "condition", "strength"]  # grouped on when the results have them (attention
# rows per head; intervention rows per intervention and strength)
N_BOOTSTRAP = 2000
# overrides that results columns record (condition, strength): not added as columns of their own, so the rows that
# every job of an intervention sweep repeats (the key-distance analysis) count once
RECORDED_OVERRIDES = {"intervention", "intervention.name", "intervention.strength"}
CI_LEVEL = 0.95


@dataclass
class Job:
    """One job dir of a sweep, as found on disk."""

    dir: Path
    num: int | None  # hydra.job.num (None when hydra.yaml is unreadable)
    overrides: list[str]  # the job's task overrides, e.g. ["model=tiny_qwen", "benchmark.limit=8"]
    config: dict  # .hydra/config.yaml, unresolved
    status: str  # completed | failed | incomplete
    error: str = ""
    results: pd.DataFrame | None = field(default=None, repr=False)


def aggregate(sweep_dir: str | Path, seed: int = 0) -> Path:
    """Aggregate every job of the sweep in `sweep_dir` (see the module docstring for the outputs).

    Args:
        sweep_dir: A Hydra sweep dir (holding `multirun.yaml` and one dir per job).
        seed: Seed of the bootstrap resampling.

    Returns:
        The path of `summary.csv`.

    Raises:
        FileNotFoundError: `sweep_dir` holds no job dir.
        RuntimeError: No job completed (the report is written first).
    """
    sweep = Path(sweep_dir)
    jobs = find_jobs(sweep)
    if not jobs:
        raise FileNotFoundError(f"no job dirs (folders with .hydra/config.yaml) under {sweep}")
    expected = expected_jobs(sweep)
    numbers = {job.num for job in jobs}
    missing = [n for n in range(expected or 0) if n not in numbers]
    completed = [job for job in jobs if job.status == "completed"]
    _write_jobs_table(jobs, sweep / "jobs.csv")
    report = _report_text(sweep, jobs, expected, missing)
    if not completed:
        _finish_report(sweep, report)
        raise RuntimeError(f"no completed job in {sweep} (see {sweep / 'aggregate_report.txt'})")

    from experiments.report import sweep_figures
    from experiments.report.attention_figures import has_attention
    from experiments.report.figures import MIN_PROFILE_LAYERS
    from experiments.report.remedy_figures import has_interventions, remedy_figure

    varying = _varying_overrides(completed)
    results = pd.concat([_tagged(job, varying) for job in completed], ignore_index=True)
    for column, default in COLUMN_DEFAULTS.items():  # jobs written before a column was added read its default
        if column in results:
            results[column] = (results[column].astype(float) if isinstance(default, float)
                               else results[column].astype(object)).fillna(default)
    summary = summarize(results, seed=seed)
    summary_path = sweep / "summary.csv"
    summary.to_csv(summary_path, index=False)
    embedding = _embeddings(completed)
    title = f"sweep {sweep.name}: {len(completed)} completed job{'s' if len(completed) > 1 else ''}"
    written = [summary_path]
    if len(embedding):
        indices = results.dropna(subset=["layer_index"]).drop_duplicates(["model", "layer"])
        indices = indices.set_index(["model", "layer"])["layer_index"].astype(int).to_dict()
        written += sweep_figures.tsne_grid(embedding, sweep / "figure1_tsne", title, indices)
    written += sweep_figures.comparison_boxplots(results, sweep / "figure2_boxplots", title)
    by = ["model", "benchmark", *[c for c in ["key_site", *varying] if results[c].nunique() > 1]]
    profiles = sweep_figures.depth_profiles(results, sweep / "figure3_depth_profile", title, by)
    if not profiles:
        note = (f"figure3_depth_profile skipped: no {' x '.join(by)} has results at {MIN_PROFILE_LAYERS} or more "
                "layer indices")
        log.info(note)
        report.append(note)
    written += profiles
    if has_attention(results):
        written += sweep_figures.attention_figures(results, sweep, title)
    if has_interventions(results):
        written += remedy_figure(results, sweep / "figure6_remedy", title)
    report += [f"summary: {summary_path} ({len(summary)} rows from {len(completed)} jobs)",
               "written: " + ", ".join(p.name for p in written)]
    _finish_report(sweep, report)
    return summary_path


def find_jobs(sweep: Path) -> list[Job]:
    """Every job dir under `sweep` with its status; results are read for completed jobs only."""
    from omegaconf import OmegaConf

    jobs = []
    for config_path in sorted(sweep.rglob(".hydra/config.yaml")):
        job_dir = config_path.parent.parent
        hydra_dir = config_path.parent
        try:
            num: int | None = int(OmegaConf.load(hydra_dir / "hydra.yaml").hydra.job.num)
        except Exception:  # a truncated or absent hydra.yaml must not hide the job
            num = None
        overrides_path = hydra_dir / "overrides.yaml"
        overrides = [str(o) for o in OmegaConf.load(overrides_path)] if overrides_path.exists() else []
        job = Job(dir=job_dir, num=num, overrides=overrides, status="incomplete",
                  config=cast(dict, OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)))
        status_path = job_dir / "status.json"
        status = json.loads(status_path.read_text()) if status_path.exists() else {}
        if status.get("status") == "failed":
            job.status, job.error = "failed", str(status.get("error", "unknown error"))
        elif status.get("status") == "completed" and (job_dir / "results.parquet").exists():
            job.status, job.results = "completed", pd.read_parquet(job_dir / "results.parquet")
        elif status.get("status") == "completed":
            job.error = "status completed but results.parquet is missing"
        else:
            job.error = "no status.json: killed, still running, or never started"
        jobs.append(job)
    return sorted(jobs, key=lambda j: (j.num is None, j.num or 0, str(j.dir)))


def expected_jobs(sweep: Path) -> int | None:
    """The number of jobs the basic sweeper launches for `sweep/multirun.yaml`; None when unknown."""
    path = sweep / "multirun.yaml"
    if not path.exists():
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.load(path).hydra
    if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = [f"{key}={value}" for key, value in (hydra_cfg.sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception as error:  # e.g. a glob sweep, which needs the config loader to expand
        log.warning("cannot expand the sweep of %s (%s): missing jobs are not detected", path, error)
        return None


def summarize(results: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Mean, std (ddof 1), bootstrap CI of the mean and median p-value per group of result rows.

    Args:
        results: Result rows of one or more jobs, with a `job` column; `head` (when present) and every other
            column that is not a results column (a varying override) are grouped on too.
        seed: Bootstrap seed; each group's generator is seeded by (seed, CRC32 of the group's key) and
            resamples the sorted values, so a group's interval depends neither on the other groups nor on
            the order in which the jobs were read.

    Returns:
        One row per group: the group columns, n, n_jobs, mean, std, ci_low, ci_high (split bootstrap of the
        mean), p_value_median, sample_ci_low, sample_ci_high (median of the rows' sample-bootstrap ends).
    """
    # An ablation repeats the rows of what it does not vary (the JSD rows of every job of a kernel sweep):
    # identical rows are one measurement, counted once, so they do not narrow the interval.
    results = results.drop_duplicates(subset=[c for c in results.columns if c != "job"])
    known = set(RESULT_COLUMNS) | {"job"}
    keys = GROUP_COLUMNS + [c for c in OPTIONAL_GROUP_COLUMNS if c in results] + [c for c in results.columns
                                                                               if c not in known]
    rows = []
    for key, part in results.groupby(keys, sort=True, dropna=False):
        values = np.sort(part["value"].to_numpy(dtype=np.float64))  # row order must not change the interval
        low, high = bootstrap_ci(values, seed=[seed, zlib.crc32(repr(key).encode())])
        p_values = part["p_value"].dropna()
        sample_ci = {f"sample_{c}": part[c].median() if c in part and part[c].notna().any() else np.nan
                     for c in ("ci_low", "ci_high")}
        rows.append({**dict(zip(keys, key, strict=True)), "n": len(values), "n_jobs": part["job"].nunique(),
                     "mean": values.mean(), "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                     "ci_low": low, "ci_high": high,
                     "p_value_median": p_values.median() if len(p_values) else np.nan, **sample_ci})
    return pd.DataFrame(rows)


def bootstrap_ci(values: np.ndarray, seed: int | list[int] = 0, n_boot: int = N_BOOTSTRAP,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` [n]: resample n with replacement, n_boot times."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _varying_overrides(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs and that no results column already records.

    `layer.*` overrides (e.g. a sweep `layer.positions=[0],[1],[2]`) are recorded by the layer and layer_index
    columns, so one layer per job still pools into one depth profile.
    """
    known = set(GROUP_COLUMNS) | {"prompt_style"} | RECORDED_OVERRIDES
    table = [dict(o.split("=", 1) for o in job.overrides if "=" in o) for job in jobs]
    keys = list(dict.fromkeys(k for row in table for k in row))
    return [k for k in keys if k not in known and not k.startswith("layer.")
            and len({row.get(k, "") for row in table}) > 1]


def _tagged(job: Job, extra: list[str]) -> pd.DataFrame:
    """The job's results with a `job` column and one column per varying override."""
    assert job.results is not None
    values = dict(o.split("=", 1) for o in job.overrides if "=" in o)
    return job.results.assign(job=job.num if job.num is not None else str(job.dir),
                              **{k: values.get(k, "") for k in extra})


def _embeddings(jobs: list[Job]) -> pd.DataFrame:
    """Embedding rows of the first completed job per (model, benchmark, layer)."""
    frames = [pd.read_parquet(job.dir / "embedding.parquet") for job in jobs
              if (job.dir / "embedding.parquet").exists()]
    if not frames:
        return pd.DataFrame()
    seen: set[tuple] = set()
    kept = []
    for frame in frames:
        for key, part in frame.groupby(["model", "benchmark", "layer"], sort=False):
            if key not in seen:
                seen.add(key)
                kept.append(part)
    return pd.concat(kept, ignore_index=True)


def _describe(job: Job) -> str:
    model = job.config.get("model", {}).get("name", "?")
    benchmark = job.config.get("benchmark", {}).get("name", "?")
    return f"job {job.num} ({model} on {benchmark}; overrides: {' '.join(job.overrides) or 'none'}) in {job.dir}"


def _report_text(sweep: Path, jobs: list[Job], expected: int | None, missing: list[int]) -> list[str]:
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "incomplete")}
    lines = [f"keyspace aggregate of {sweep}: {len(jobs)} job dirs"
             + (f" of {expected} expected" if expected is not None else "")
             + f": {counts['completed']} completed, {counts['failed']} failed, {counts['incomplete']} incomplete, "
             f"{len(missing)} missing"]
    lines += [f"FAILED {_describe(j)}: {j.error}" for j in jobs if j.status == "failed"]
    lines += [f"INCOMPLETE {_describe(j)}: {j.error}" for j in jobs if j.status == "incomplete"]
    lines += [f"MISSING job {n}: no job dir" for n in missing]
    return lines


def _write_jobs_table(jobs: list[Job], path: Path) -> None:
    pd.DataFrame([{"job": j.num, "status": j.status, "model": j.config.get("model", {}).get("name"),
                   "benchmark": j.config.get("benchmark", {}).get("name"), "overrides": " ".join(j.overrides),
                   "error": j.error, "dir": str(j.dir)} for j in jobs]).to_csv(path, index=False)


def _finish_report(sweep: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    (sweep / "aggregate_report.txt").write_text(text)
    print(text, end="", flush=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m experiments.aggregate <sweep dir> [--seed N]`."""
    parser = argparse.ArgumentParser(prog="python -m experiments.aggregate", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra sweep dir (multirun.yaml + one dir per job)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    try:
        aggregate(args.sweep_dir, seed=args.seed)
    except (FileNotFoundError, RuntimeError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
