"""One job, wired: samples -> keys (cached) -> statistics -> tables, figures, summary -> W&B.

`run(cfg, output_dir)` is all `launch.py` calls. It converts the composed config to typed
dataclasses once, validates every name before any model runs, and writes `status.json` whether the
job succeeds or fails (then re-raises, so SLURM sees the failure).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import cast

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments import report
from experiments.atomic import atomic_write
from experiments.benchmarks import load_samples
from experiments.config import JobConfig
from experiments.keys.extract import extract_keys
from experiments.keys.layers import LayerSpec, resolve_layers
from experiments.metrics.kernels import kernel_class
from experiments.metrics.splits import check_metric_names, compare_modalities, parse_bandwidth
from experiments.models import DTYPES, check_model_config, decoder_depth, load_model, resolve_device
from experiments.store import KeySet, KeyStore, cache_descriptor
from experiments.tracking import check_logger, log_run

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | Path, group: str | None = None) -> None:
    """Run the job described by `cfg`, writing every artifact under `output_dir`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        job: JobConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        resolved = cast(dict, OmegaConf.to_container(cfg, resolve=True))
        _run(job, out, resolved, group)
    except BaseException as error:
        log.exception("job failed after %.1f s (output dir %s)", time.time() - started, out)
        _write_status(out, {"status": "failed", "error": f"{type(error).__name__}: {error}",
                            "traceback": traceback.format_exc(), "seconds": time.time() - started})
        raise
    _write_status(out, {"status": "completed", "seconds": time.time() - started})


def _run(job: JobConfig, out: Path, resolved: dict, group: str | None) -> None:
    if job.num_threads:
        torch.set_num_threads(job.num_threads)
    _validate(job)
    data = load_samples(job.benchmark)
    samples = data.samples
    layers = resolve_layers(job.layer.positions, job.layer.fractions, decoder_depth(job.model))
    log.info("%s on %s: %d samples, layers %s, key site %s", job.model.name, job.benchmark.name, len(samples),
             [(s.label, s.index) for s in layers], job.keys.site)
    keyset = _cached_keys(job, samples, [s.index for s in layers])

    skipped = data.skipped + keyset.skipped
    tokens = _token_stats(keyset)
    stamp = _analysis_stamp(job, layers)
    results = _reuse(out / "results.parquet", stamp)
    if results is None:
        tick = time.time()
        results = _statistics(job, keyset, layers)
        log.info("statistics: %d values in %.1f s", len(results), time.time() - tick)
        report.write_parquet(results, out / "results.parquet", {"stamp": stamp, "skipped_samples": skipped,
                                                                "n_samples_used": len(keyset.sample_ids),
                                                                **tokens})
    embedding = _reuse(out / "embedding.parquet", stamp)
    if embedding is None:
        tick = time.time()
        embedding = _embedding(job, keyset, layers)
        log.info("t-SNE of %d points in %.1f s", len(embedding), time.time() - tick)
        report.write_parquet(embedding, out / "embedding.parquet", {"stamp": stamp})
    title = f"{job.model.name} on {job.benchmark.name} ({job.keys.site} keys)"
    figures = [out / "figures" / "boxplot.png", out / "figures" / "tsne.png"]
    report.boxplot_figure(results, figures[0], title)
    report.tsne_figure(embedding, figures[1], title)

    image, text = tokens["image_tokens_per_sample"], tokens["text_tokens_per_sample"]
    header = (f"keyspace: {title}: {len(keyset.sample_ids)} samples ({len(skipped)} skipped); per sample "
              f"{image['mean']:.0f} image tokens ({image['min']}-{image['max']}) and {text['mean']:.0f} text tokens; "
              f"{int(keyset.is_image.sum())} image / {int((~keyset.is_image).sum())} text tokens cached; "
              f"{job.analysis.n_splits} splits\nresults: {out / 'results.parquet'}  figures: {out / 'figures'}")
    summary = report.summary_text(results, header)
    print(summary, flush=True)
    log.info("\n%s", summary)
    tick = time.time()
    log_run(job.logger, out, resolved, results, figures, name=f"{job.model.name}-{job.benchmark.name}", group=group)
    log.info("tracking (%s) in %.1f s", job.logger.name, time.time() - tick)


def _analysis_stamp(job: JobConfig, layers: list[LayerSpec]) -> str:
    """Hash of everything the tables depend on: a rerun (requeue) reuses tables with the same stamp."""
    inputs = {"keys": cache_descriptor(job, [s.index for s in layers]), "labels": [s.label for s in layers],
              **{name: asdict(getattr(job, name)) for name in ("analysis", "metric", "kernel", "report")}}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _reuse(path: Path, stamp: str) -> pd.DataFrame | None:
    """The table at `path` if an earlier attempt of this job wrote it with the same stamp."""
    if path.exists() and report.read_metadata(path).get("stamp") == stamp:
        log.info("%s already written by an earlier attempt: reused", path.name)
        return pd.read_parquet(path)
    return None


def _token_stats(keyset: KeySet) -> dict[str, dict[str, float]]:
    """Mean, min and max image and text tokens per sample (before the per-sample cap)."""
    counts = torch.tensor(list(keyset.token_counts.values()), dtype=torch.float64)  # [samples, 2]
    return {f"{name}_tokens_per_sample": {"mean": float(column.mean()), "min": int(column.min()),
                                         "max": int(column.max())}
            for name, column in (("image", counts[:, 0]), ("text", counts[:, 1]))}


def _validate(job: JobConfig) -> None:
    """Fail on bad names before loading anything (each error names the field and the valid values)."""
    check_model_config(job.model)
    check_metric_names(job.metric.names)
    kernel_class(job.kernel.name)
    parse_bandwidth(job.kernel.bandwidth)
    check_logger(job.logger)
    if job.keys.store_dtype not in DTYPES:
        raise ValueError(f"keys.store_dtype={job.keys.store_dtype!r}: use one of {list(DTYPES)}")


def _cached_keys(job: JobConfig, samples: list, layers: list[int]) -> KeySet:
    """Keys from the cache; extracts (under the entry's lock) only the shards that are missing."""
    store = KeyStore(job.paths.cache_dir, cache_descriptor(job, layers), len(samples))
    with store.lock():
        store.remove_partial_files()
        missing = store.missing()
        if not missing:
            log.info("key cache hit: all %d shards in %s, no forward pass", store.n_shards, store.dir)
        else:
            log.info("key cache: extracting %d of %d shards into %s", len(missing), store.n_shards, store.dir)
            loaded = load_model(job.model)
            for shard in tqdm(missing, desc="key shards", unit="shard"):
                numbers = store.shard_samples(shard)
                records, skipped = extract_keys(
                    loaded, [(n, samples[n]) for n in numbers], layers, job.keys.site, job.keys.batch_size,
                    job.keys.max_tokens_per_sample, job.keys.seed, getattr(torch, job.keys.store_dtype),
                    num_workers=job.keys.num_workers)
                store.write(shard, records, skipped)
    return store.load()


def _statistics(job: JobConfig, keyset: KeySet, layers: list[LayerSpec]) -> pd.DataFrame:
    device = resolve_device(job.analysis.device)
    rows = []
    for spec in tqdm(layers, desc="statistics", unit="layer"):
        for row in compare_modalities(
                keyset.keys[spec.index].float(), keyset.is_image, keyset.sample, n_splits=job.analysis.n_splits,
                max_tokens_per_group=job.analysis.max_tokens_per_group, seed=job.analysis.seed,
                metric=job.metric, kernel=job.kernel, device=device):
            rows.append({"model": job.model.name, "benchmark": job.benchmark.name, "layer": spec.label,
                         "layer_index": spec.index, "key_site": job.keys.site, **row, "seed": job.analysis.seed,
                         "prompt_style": job.benchmark.prompt_style})
    return pd.DataFrame(rows)


def _embedding(job: JobConfig, keyset: KeySet, layers: list[LayerSpec]) -> pd.DataFrame:
    frames = []
    for spec in tqdm(layers, desc="t-SNE", unit="layer"):
        frame = report.embed_keys(keyset.keys[spec.index].float(), keyset.is_image, keyset.sample,
                                  n_points=job.report.tsne_points, pca_dim=job.report.tsne_pca_dim,
                                  perplexity=job.report.perplexity, seed=job.report.seed)
        frame["sample_id"] = frame.pop("sample_number").map(keyset.sample_ids)
        frames.append(frame.assign(model=job.model.name, benchmark=job.benchmark.name, layer=spec.label))
    return pd.concat(frames, ignore_index=True)


def _write_status(out: Path, status: dict) -> None:
    atomic_write(out / "status.json", lambda p: Path(p).write_text(json.dumps(status, indent=2)))
