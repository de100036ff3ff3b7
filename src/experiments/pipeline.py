"""One job, wired: samples -> keys (cached) -> statistics -> tables, figures, summary -> W&B.

`run(cfg, output_dir)` is all `launch.py` calls. It converts the composed config to typed
dataclasses once, checks every field against its declared valid values (`validation`) before the
benchmark or the model loads, and writes `status.json` whether the job succeeds or fails (then
re-raises, so SLURM sees the failure; a `ConfigError` is logged in one line, without a traceback).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from functools import cache, partial
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments import report
from experiments.atomic import atomic_write
from experiments.attention import attention_results
from experiments.benchmarks import load_samples
from experiments.config import JobConfig
from experiments.interventions import intervention_results
from experiments.keys.extract import extract_keys
from experiments.keys.layers import LayerSpec, resolve_layers
from experiments.metrics.paired import paired_distances, paired_test
from experiments.metrics.splits import (
    compare_modalities,
    plan_splits,
    rows_needed,
    sink_tokens,
    text_sides,
)
from experiments.models import LoadedModel, decoder_depth, load_model, resolve_device
from experiments.report.attention_figures import attention_figures, has_attention
from experiments.report.schema import results_frame
from experiments.store import KeyStore, TokenIndex, cache_descriptor, store_dtype
from experiments.tracking import log_run
from experiments.validation import ConfigError, check

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | Path, group: str | None = None) -> None:
    """Run the job described by `cfg`, writing every artifact under `output_dir`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        job: JobConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        resolved = cast(dict, OmegaConf.to_container(cfg, resolve=True))
        seconds = _run(job, out, resolved, group)
    except BaseException as error:
        if isinstance(error, ConfigError):
            log.error("%s", error)  # the message names the field and the fix; Hydra prints it again, alone
        else:
            log.exception("job failed after %.1f s (output dir %s)", time.time() - started, out)
        _write_status(out, {"status": "failed", "error": f"{type(error).__name__}: {error}",
                            "traceback": traceback.format_exc(), "seconds": time.time() - started})
        raise
    _write_status(out, {"status": "completed", "seconds": time.time() - started, "stage_seconds": seconds})


def _run(job: JobConfig, out: Path, resolved: dict, group: str | None) -> dict[str, float]:
    """The job body; returns seconds per stage (written into status.json)."""
    check(job)
    if job.num_threads:
        torch.set_num_threads(job.num_threads)
    seconds: dict[str, float] = {}
    tick = time.time()
    data = load_samples(job.benchmark)
    samples = data.samples
    layers = resolve_layers(job.layer.positions, job.layer.fractions, decoder_depth(job.model))
    log.info("%s on %s: %d samples, layers %s, key site %s", job.model.name, job.benchmark.name, len(samples),
             [(s.label, s.index) for s in layers], job.keys.site)
    seconds["samples"], tick = time.time() - tick, time.time()
    store = KeyStore(job.paths.cache_dir, cache_descriptor(job, data.commit), len(samples))
    model = cache(partial(load_model, job.model))  # loaded on first need, once for every stage of the job
    extract_missing(job, store, samples, [s.index for s in layers], model)
    index = store.index()
    seconds["extract"], tick = time.time() - tick, time.time()

    skipped = data.skipped + index.skipped
    n_used = len(index.sample_ids)
    cache_bytes = store.layer_bytes([s.index for s in layers]) / n_used
    tokens = _token_stats(index)
    stamp = _analysis_stamp(job, layers, store.descriptor)
    results = _reuse(out / "results.parquet", stamp)
    embedding = _reuse(out / "embedding.parquet", stamp)
    if results is None or embedding is None:
        fresh_results, fresh_embedding, sinks = _analyse(job, store, index, layers, results is None,
                                                         embedding is None, seconds)
        if results is None:
            results = fresh_results
            if job.analysis.attention:  # queries beside keys, attention per layer x head (experiments.attention)
                tick = time.time()
                results = pd.concat([results, attention_results(job, samples, layers, model())],
                                    ignore_index=True)
                seconds["attention"] = time.time() - tick
            if job.intervention.name != "none":  # image keys changed in the forward (experiments.interventions)
                tick = time.time()
                rows, per_sample, statistics = intervention_results(job, samples, layers, model())
                results = pd.concat([results, rows], ignore_index=True)
                report.write_parquet(per_sample, out / "intervention.parquet", {"stamp": stamp})
                atomic_write(out / "intervention_statistics.pt", lambda p: torch.save(statistics, p))
                seconds["intervention"] = time.time() - tick
            report.write_parquet(results, out / "results.parquet", {
                "stamp": stamp, "skipped_samples": skipped, "n_samples_used": n_used,
                "cache_bytes_per_sample": cache_bytes, "sink_tokens_excluded": sinks, **tokens})
        if embedding is None:
            embedding = fresh_embedding
            report.write_parquet(embedding, out / "embedding.parquet", {"stamp": stamp})
    if job.analysis.paired_samples and _reuse(out / "paired.parquet", stamp) is None:
        tick = time.time()
        paired, tests = _paired(job, store, index, layers)
        report.write_parquet(paired, out / "paired.parquet", {"stamp": stamp, "wilcoxon_p": tests})
        seconds["paired"] = time.time() - tick
    tick = time.time()
    title = f"{job.model.name} on {job.benchmark.name} ({job.keys.site} keys)"
    figures = [out / "figures" / "boxplot.png", out / "figures" / "tsne.png"]
    report.boxplot_figure(results, figures[0], title)
    report.tsne_figure(embedding, figures[1], title)
    if results["layer_index"].nunique() >= report.MIN_PROFILE_LAYERS:
        figures.append(out / "figures" / "depth_profile.png")
        report.depth_profile_figure(results, figures[-1], title)
    if has_attention(results):
        figures += attention_figures(results, out / "figures", title)
    seconds["figures"] = time.time() - tick

    image, text = tokens["image_tokens_per_sample"], tokens["text_tokens_per_sample"]
    header = (f"keyspace: {title}: {n_used} samples ({len(skipped)} skipped); per sample "
              f"{image['mean']:.0f} image tokens ({image['min']}-{image['max']}) and {text['mean']:.0f} text tokens; "
              f"{int(index.is_image.sum())} image / {int((~index.is_image).sum())} text tokens cached, "
              f"{cache_bytes / 2**20:.2f} MiB of keys per sample ({len(layers)} layers, {store_dtype(job)}); "
              f"{job.analysis.n_splits} splits\nresults: {out / 'results.parquet'}  figures: {out / 'figures'}")
    summary = report.summary_text(results, header)
    print(summary, flush=True)
    log.info("\n%s", summary)
    tick = time.time()
    log_run(job.logger, out, resolved, results, figures, name=f"{job.model.name}-{job.benchmark.name}", group=group)
    seconds["tracking"] = time.time() - tick
    log.info("tracking (%s) in %.1f s", job.logger.name, seconds["tracking"])
    return seconds


def _analysis_stamp(job: JobConfig, layers: list[LayerSpec], keys: dict) -> str:
    """Hash of everything the tables depend on (`keys`: the key cache's descriptor): a rerun (requeue) reuses
    tables with the same stamp."""
    inputs = {"keys": keys, "layers": [(s.label, s.index) for s in layers],
              **{name: asdict(getattr(job, name)) for name in ("analysis", "metric", "kernel", "report")}}
    if job.intervention.name != "none":  # only then, so stamps of jobs without one stay as they were
        inputs["intervention"] = asdict(job.intervention)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _reuse(path: Path, stamp: str) -> pd.DataFrame | None:
    """The table at `path` if an earlier attempt of this job wrote it with the same stamp."""
    if path.exists() and report.read_metadata(path).get("stamp") == stamp:
        log.info("%s already written by an earlier attempt: reused", path.name)
        return pd.read_parquet(path)
    return None


def _token_stats(index: TokenIndex) -> dict[str, dict[str, float]]:
    """Mean, min and max image and text tokens per sample (before the per-sample cap)."""
    counts = torch.tensor(list(index.token_counts.values()), dtype=torch.float64)  # [samples, 2]
    return {f"{name}_tokens_per_sample": {"mean": float(column.mean()), "min": int(column.min()),
                                         "max": int(column.max())}
            for name, column in (("image", counts[:, 0]), ("text", counts[:, 1]))}


def extract_missing(job: JobConfig, store: KeyStore, samples: list, layers: list[int],
                    model: Callable[[], LoadedModel] | None = None) -> None:
    """Extract (under the entry's lock) only the (shard, layer) files of `layers` that the cache lacks.

    `model` gives the loaded model when extraction needs one (default: `load_model(job.model)`), so a job
    whose keys are all cached loads no model, and one that loads it shares it with its later stages. Public
    so that a notebook (`experiments.api.extract`) fills the same cache entry as a job would.
    """
    with store.lock(job.paths.cache_lock, job.paths.cache_lock_stale_s):
        store.remove_partial_files()
        missing = store.missing(layers)
        if not missing:
            log.info("key cache hit: all %d shards of layers %s in %s, no forward pass", store.n_shards, layers,
                     store.dir)
            return
        lacking = sorted({layer for gap in missing.values() for layer in gap})
        log.info("key cache: extracting %d of %d shards into %s (layers %s)", len(missing), store.n_shards,
                 store.dir, lacking)
        loaded = model() if model else load_model(job.model)
        dtype = getattr(torch, store_dtype(job))
        for shard, gap in tqdm(missing.items(), desc="key shards", unit="shard"):
            numbers = store.shard_samples(shard)
            records, skipped = extract_keys(
                loaded, [(n, samples[n]) for n in numbers], gap, job.keys.site, job.keys.batch_size,
                job.keys.max_tokens_per_sample, job.keys.seed, dtype, num_workers=job.keys.num_workers)
            store.write(shard, gap, records, skipped)


def _analyse(job: JobConfig, store: KeyStore, index: TokenIndex, layers: list[LayerSpec], statistics: bool,
             embedding: bool, seconds: dict[str, float]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Statistics and t-SNE, one layer at a time, each reading only the token rows it uses from the cache.

    t-SNE runs on at most `report.tsne_max_layers` of the layers, evenly spaced (first and last included).
    `analysis.text_tokens=content` keeps only the samples' own text among the text tokens. With
    `analysis.exclude_sinks`, each layer's sink tokens (`splits.sink_tokens`, from the stored key norms)
    are left out before any token is chosen; returns their count per layer label.
    """
    is_image, sample = index.is_image.numpy(), index.sample.numpy()
    text_ok = _usable_tokens(job, index)
    side = text_sides(is_image, sample, index.position.numpy()) if job.analysis.position_control else None
    pick = np.unique(np.linspace(0, len(layers) - 1, min(len(layers), job.report.tsne_max_layers)).round())
    embedded = {layers[int(i)].index for i in pick}
    device = resolve_device(job.analysis.device)
    rows: list[dict] = []
    frames = []
    sinks: dict[str, int] = {}
    empty = np.zeros(0, dtype=np.int64)
    seconds.update(read=0.0, statistics=0.0, embedding=0.0)
    for spec in tqdm(layers, desc="analyse layers", unit="layer"):
        tick = time.time()
        eligible = text_ok
        if job.analysis.exclude_sinks:
            flagged = sink_tokens(index.position.numpy(), store.read_norms(spec.index, index),
                                  job.analysis.sink_norm_factor)
            sinks[spec.label] = int(flagged.sum())
            eligible = ~flagged if eligible is None else eligible & ~flagged
        splits = plan_splits(is_image, sample, n_splits=job.analysis.n_splits, eligible=eligible, text_side=side,
                             max_tokens_per_group=job.analysis.max_tokens_per_group, seed=job.analysis.seed)
        stat_rows = rows_needed(splits) if statistics else empty
        embed_rows = (report.embedding_rows(is_image, n_points=job.report.tsne_points, seed=job.report.seed,
                                            eligible=eligible) if embedding and spec.index in embedded else empty)
        needed = np.union1d(stat_rows, embed_rows)
        keys = store.read(spec.index, needed, index).float()  # [len(needed), dim]
        seconds["read"] += time.time() - tick
        tick = time.time()
        if statistics:
            for row in compare_modalities(keys, needed, sample, splits, seed=job.analysis.seed, metric=job.metric,
                                          kernel=job.kernel, device=device):
                rows.append({"model": job.model.name, "benchmark": job.benchmark.name, "layer": spec.label,
                             "layer_index": spec.index, "key_site": job.keys.site, **row, "seed": job.analysis.seed,
                             "prompt_style": job.benchmark.prompt_style})
        seconds["statistics"] += time.time() - tick
        tick = time.time()
        if len(embed_rows):
            frame = report.embed_keys(keys[torch.from_numpy(np.searchsorted(needed, embed_rows))],
                                      is_image[embed_rows], sample[embed_rows], pca_dim=job.report.tsne_pca_dim,
                                      perplexity=job.report.perplexity, seed=job.report.seed)
            frame["sample_id"] = frame.pop("sample_number").map(index.sample_ids)
            frames.append(frame.assign(model=job.model.name, benchmark=job.benchmark.name, layer=spec.label))
        seconds["embedding"] += time.time() - tick
        log.info("layer %s: %d of %d token rows read%s", spec.label, len(needed), len(sample),
                 f", {sinks[spec.label]} sink tokens left out" if spec.label in sinks else "")
        del keys
    log.info("analysis of %d layers: read %.1f s, statistics %.1f s, t-SNE %.1f s", len(layers), seconds["read"],
             seconds["statistics"], seconds["embedding"])
    return (results_frame(rows),
            pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), sinks)


def _usable_tokens(job: JobConfig, index: TokenIndex) -> np.ndarray | None:
    """[tokens] False for text tokens `analysis.text_tokens` leaves out (content: template, system, special);
    None when every token may be used."""
    if job.analysis.text_tokens == "all":
        return None
    return index.is_image.numpy() | index.is_content.numpy()


def _paired(job: JobConfig, store: KeyStore, index: TokenIndex,
            layers: list[LayerSpec]) -> tuple[pd.DataFrame, dict[str, float]]:
    """Own vs other-sample image-text distances (`metrics.paired`) of up to `analysis.paired_samples` samples.

    Each layer is read `keys.shard_size` samples at a time and reduced to per-sample means, so memory stays
    bounded; text tokens follow `analysis.text_tokens`. Returns the table and the Wilcoxon p per layer label.
    """
    sample, is_image = index.sample.numpy(), index.is_image.numpy()
    usable = _usable_tokens(job, index)
    numbers = np.unique(sample)
    rng = np.random.default_rng(job.analysis.seed)
    chosen = np.sort(rng.choice(numbers, min(len(numbers), job.analysis.paired_samples), replace=False))
    chunks = np.array_split(chosen, -(-len(chosen) // job.keys.shard_size))
    frames, tests = [], {}
    for spec in tqdm(layers, desc="paired distances", unit="layer"):
        means: dict[bool, list[torch.Tensor]] = {True: [], False: []}
        for chunk in chunks:
            rows = np.flatnonzero(np.isin(sample, chunk) if usable is None else np.isin(sample, chunk) & usable)
            keys = store.read(spec.index, rows, index).double()  # [rows, dim]
            owner = torch.from_numpy(np.searchsorted(chunk, sample[rows]))
            for modality in (True, False):
                pick = torch.from_numpy(is_image[rows] == modality)
                sums = torch.zeros(len(chunk), keys.shape[1], dtype=torch.float64)
                sums.index_add_(0, owner[pick], keys[pick])
                counts = torch.bincount(owner[pick], minlength=len(chunk)).double()
                means[modality].append(sums / counts[:, None])  # NaN rows: a sample without that modality
        image_means, text_means = torch.cat(means[True]), torch.cat(means[False])
        complete = ~(image_means.isnan().any(dim=1) | text_means.isnan().any(dim=1))
        own, other = paired_distances(image_means[complete], text_means[complete])
        tests[spec.label] = paired_test(own, other)
        log.info("layer %s: image-text distance inside a sample %.4g vs to other samples %.4g (medians over %d "
                 "samples), Wilcoxon p %.3g", spec.label, np.median(own), np.median(other), len(own),
                 tests[spec.label])
        frames.append(pd.DataFrame({"model": job.model.name, "benchmark": job.benchmark.name, "layer": spec.label,
                                    "layer_index": spec.index, "key_site": job.keys.site,
                                    "sample_id": [index.sample_ids[int(n)] for n in chosen[complete.numpy()]],
                                    "own_distance": own, "other_distance": other}))
    return pd.concat(frames, ignore_index=True), tests


def _write_status(out: Path, status: dict) -> None:
    atomic_write(out / "status.json", lambda p: Path(p).write_text(json.dumps(status, indent=2)))
