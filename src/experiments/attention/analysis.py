"""The attention stage: does attention follow the keys? Result rows per layer and head.

Contract. `attention_results(job, samples, layers, loaded)` (`loaded`: the job's model, loaded once per job) draws
`analysis.attention_samples` samples (seeded by `analysis.seed`), runs each alone (batch 1, no padding) through the
model with its configured attention kernel, capturing post-RoPE queries and keys at the job's layers only
(`KeyCapture(queries=True)`, early exit after the deepest), and reduces each layer in chunks
(`scores.sample_statistics`). Text tokens are every non-image token. Sink keys, per sample and layer: position 0 and
keys whose norm exceeds `analysis.sink_norm_factor` x the sample's median key norm (`metrics.splits.sink_tokens`).

Rows (the results schema, `head` the query head, or the KV head for `mmd2_head`; `ATTENTION_METRICS`):
per (layer, head, query set) `attn_image_share`, `attn_utilization`, and for text queries `logit_gap`,
each the mean over samples with a percentile bootstrap interval over samples (`metric.n_bootstrap`,
`metric.ci_level`); per (layer, query set) `image_context_share` (head `all`); per (layer, KV head)
`mmd2_head` between image and text keys pooled over the samples (at most `analysis.max_tokens_per_group`
per modality, spread evenly over the samples; sinks left out under `analysis.exclude_sinks`; the job's
kernel; no test: p NaN); per layer `spearman_mmd2_share` across KV heads. Memory is bounded by the caps:
one sample's queries and keys at the job's layers, one chunk of scores, the capped key pool.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from experiments.attention.scores import SampleAttention, sample_statistics
from experiments.benchmarks.sample import Sample, SkipRow
from experiments.config import JobConfig
from experiments.keys.capture import KeyCapture, key_name, query_name
from experiments.keys.layers import LayerSpec
from experiments.metrics.splits import parse_bandwidth, sink_tokens

if TYPE_CHECKING:
    from experiments.models import LoadedModel

log = logging.getLogger(__name__)

QUERY_SETS = ("text_queries", "last_token")  # the comparison column of attention rows; + _no_sinks
NO_SINKS = "_no_sinks"


def attention_results(job: JobConfig, samples: list[Sample], layers: list[LayerSpec],
                      loaded: LoadedModel) -> pd.DataFrame:
    """Attention rows of the job (module docstring) from the job's loaded model; columns as
    `report.schema.RESULT_COLUMNS`."""
    from experiments.report.schema import results_frame

    cfg = job.analysis
    if cfg.attention_samples < 1 or not cfg.attention_chunk_mib > 0:
        raise ValueError(f"analysis.attention_samples={cfg.attention_samples} must be >= 1 and "
                         f"analysis.attention_chunk_mib={cfg.attention_chunk_mib} > 0")
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.choice(len(samples), min(len(samples), cfg.attention_samples), replace=False))
    model, adapter = loaded.model, loaded.adapter
    decoder = adapter.layers(model)
    for spec in layers:
        if getattr(adapter.attention_module(decoder[spec.index]), "sliding_window", None):
            raise NotImplementedError(f"layer {spec.index} uses sliding-window attention, which the recomputed "
                                      "causal attention does not model")
    indices = [spec.index for spec in layers]
    budget = int(cfg.attention_chunk_mib * 2**20)
    per_sample_cap = max(2, math.ceil(cfg.max_tokens_per_group / len(chosen)))
    stats: dict[int, list[SampleAttention]] = {i: [] for i in indices}
    pools: dict[int, dict[bool, list[torch.Tensor]]] = {i: {True: [], False: []} for i in indices}
    image_token = adapter.image_token_id(model)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    for number in tqdm(chosen.tolist(), desc="attention", unit="sample", leave=False):
        try:
            sample = samples[number].decoded()
        except SkipRow as err:
            log.warning("attention: skipping sample %s: %s", samples[number].id, err)
            continue
        inputs = adapter.model_inputs(loaded.processor, [sample]).to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        is_image = (inputs["input_ids"][0] == image_token).cpu()
        if not is_image.any() or (context and len(is_image) > context):
            log.warning("attention: skipping sample %s: %s", sample.id, "no image tokens" if not is_image.any()
                        else f"{len(is_image)} tokens, longer than the model's context ({context})")
            continue
        with KeyCapture(model, adapter, indices, "post_rope", torch.float32, queries=True) as capture:
            captured = capture.run(**inputs)
        if not all(bool(t.isfinite().all()) for t in captured.values()):
            log.warning("attention: skipping sample %s: queries or keys not finite", sample.id)
            continue
        for i in indices:
            attention = adapter.attention_module(decoder[i])
            q = captured.pop(query_name(i))[0].unflatten(-1, (-1, attention.head_dim))  # [S, heads, head_dim]
            k = captured.pop(key_name(i, "post_rope"))[0].unflatten(-1, (-1, attention.head_dim))  # [S, kv, hd]
            norms = k.flatten(1).norm(dim=1).cpu().numpy()
            is_sink = torch.from_numpy(sink_tokens(np.arange(len(norms)), norms, cfg.sink_norm_factor))
            stats[i].append(sample_statistics(q, k, is_image, is_sink, float(attention.scaling), budget))
            usable = ~is_sink if cfg.exclude_sinks else torch.ones_like(is_sink)
            for modality in (True, False):
                rows = ((is_image == modality) & usable).nonzero().squeeze(1).numpy()
                rows = np.sort(np.random.default_rng([cfg.seed, number, i]).permutation(rows)[:per_sample_cap])
                pools[i][modality].append(k[torch.from_numpy(rows).to(k.device)].cpu())
    out: list[dict[str, Any]] = []
    for spec in layers:
        if not stats[spec.index]:
            raise ValueError("attention: none of the drawn samples could be used (see the warnings)")
        out += _layer_rows(job, spec, stats[spec.index], pools[spec.index])
    common = {"model": job.model.name, "benchmark": job.benchmark.name, "key_site": "post_rope", "split": 0,
              "seed": cfg.seed, "prompt_style": job.benchmark.prompt_style}
    frame = results_frame([common | row for row in out])
    log.info("attention: %d samples, layers %s, %d rows", len(stats[indices[0]]), indices, len(frame))
    for spec in layers:
        mean = frame[(frame["layer_index"] == spec.index) & (frame["comparison"] == "text_queries")].groupby(
            "metric")["value"].mean()
        log.info("attention, layer %s: text queries put %.3f of their attention on image keys (mean over heads), "
                 "which are %.3f of what they see: utilisation %.3f; logit gap %+.4f; Spearman(mmd2_head, share) %s",
                 spec.label, mean["attn_image_share"], mean["image_context_share"], mean["attn_utilization"],
                 mean["logit_gap"], f"{mean['spearman_mmd2_share']:+.2f}" if np.isfinite(
                     mean["spearman_mmd2_share"]) else "n/a (< 3 KV heads)")
    return frame


def _layer_rows(job: JobConfig, spec: LayerSpec, stats: list[SampleAttention],
                pools: dict[bool, list[torch.Tensor]]) -> list[dict[str, Any]]:
    """One layer's rows from its per-sample statistics and pooled keys."""
    from scipy.stats import spearmanr

    from experiments.metrics.mmd import mmd2
    from experiments.models import resolve_device

    cfg, metric = job.analysis, job.metric
    layer = {"layer": spec.label, "layer_index": spec.index}
    rows: list[dict[str, Any]] = []

    def add(metric_name: str, comparison: str, values: np.ndarray, n_x: int, n_y: int, seed: int) -> None:
        """Rows of per-sample `values` [samples, heads] (or [samples]): mean over samples and its interval."""
        table = values if values.ndim == 2 else values[:, None]
        low, high = _bootstrap_mean(table, metric.n_bootstrap, metric.ci_level, seed)
        for head in range(table.shape[1]):
            rows.append(layer | {"comparison": comparison, "metric": metric_name, "kernel": "none",
                                 "head": str(head) if values.ndim == 2 else "all",
                                 "value": float(np.nanmean(table[:, head])), "p_value": math.nan,
                                 "ci_low": low[head], "ci_high": high[head], "n_x": n_x, "n_y": n_y})

    seed = cfg.seed + spec.index
    for variant, suffix in enumerate(("", NO_SINKS)):
        n_image = int(sum(s.n_image_keys[variant] for s in stats))
        for name in QUERY_SETS:
            share = np.stack([(s.text_share if name == "text_queries" else s.last_share)[variant] for s in stats])
            context = np.array([(s.text_context if name == "text_queries" else s.last_context)[variant]
                                for s in stats])
            n_queries = int(sum(s.n_text_queries[variant] for s in stats)) if name == "text_queries" else len(stats)
            comparison = name + suffix
            add("attn_image_share", comparison, share, n_queries, n_image, seed)
            with np.errstate(divide="ignore", invalid="ignore"):
                add("attn_utilization", comparison, share / context[:, None], n_queries, n_image, seed)
            add("image_context_share", comparison, context, n_queries, n_image, seed)
        gap = np.stack([s.logit_gap[variant] for s in stats])
        add("logit_gap", "text_queries" + suffix, gap, int(sum(s.n_text_queries[variant] for s in stats)),
            n_image, seed)
    image, text = torch.cat(pools[True]).float(), torch.cat(pools[False]).float()  # [n, kv_heads, head_dim]
    kernel = job.kernel
    mmd = np.array([mmd2(image[:, h], text[:, h], kernel=kernel.name, bandwidth=parse_bandwidth(kernel.bandwidth),
                         unbiased=metric.unbiased, bandwidth_scale=kernel.bandwidth_scale, seed=seed,
                         device=resolve_device(cfg.device))
                    for h in range(image.shape[1])])
    for head, value in enumerate(mmd):
        rows.append(layer | {"comparison": "image_vs_text", "metric": "mmd2_head", "kernel": kernel.name,
                             "head": str(head), "value": float(value), "p_value": math.nan, "ci_low": math.nan,
                             "ci_high": math.nan, "n_x": len(image), "n_y": len(text)})
    share = np.nanmean(np.stack([s.text_share[0] for s in stats]), axis=0)  # [heads]
    per_kv = share.reshape(len(mmd), -1).mean(axis=1)  # query head h -> KV head h // group
    rho, p = spearmanr(mmd, per_kv) if len(mmd) >= 3 else (math.nan, math.nan)
    rows.append(layer | {"comparison": "text_queries", "metric": "spearman_mmd2_share", "kernel": kernel.name,
                         "head": "all", "value": float(rho), "p_value": float(p), "ci_low": math.nan,
                         "ci_high": math.nan, "n_x": len(mmd), "n_y": len(mmd)})
    return rows


def _bootstrap_mean(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over samples (rows) of the mean of each column of `values` [samples, k].

    NaN rows of a column (a sample where the value is undefined) are left out of that column's means; NaN
    ends when `n_boot` is 0 or fewer than 2 samples have a value.
    """
    nan = np.full(values.shape[1], math.nan)
    if n_boot == 0 or len(values) < 2:
        return nan, nan.copy()
    draws = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: their ends are set to NaN below
        means = np.nanmean(values[draws], axis=1)  # [n_boot, k]
        low, high = np.nanquantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)
    enough = (~np.isnan(values)).sum(0) >= 2
    return np.where(enough, low, math.nan), np.where(enough, high, math.nan)
