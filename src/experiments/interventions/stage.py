"""The intervention stage: fit on calibration samples, intervene on held-out ones, measure against the unmodified model.

Contract. `intervention_results(job, samples, layers, loaded)` (pipeline, `intervention.name != none`; `loaded`: the
job's model, loaded once per job):

1. Split the samples (seeded by `intervention.seed`) into calibration (`calibration_fraction`) and held-out
   parts, each capped at `max_samples`. Layers: `intervention.layers`, else the job's layers.
2. Key maps: one unmodified forward per calibration sample records the post-RoPE keys of those layers; every
   image and text key adds to running float64 moments (`transforms.Moments`: memory of one sample's keys),
   which give `KeyStatistics` (means, covariances per KV head) and the map (`transforms.key_map`).
   `attention_boost` fits nothing.
3. Each held-out sample runs alone (batch 1, no padding) twice, unmodified and intervened, each one forward
   over the prompt (`hooks.Intervene`). From each: the option choice by likelihood (`accuracy`), the image
   attention share of text queries per layer (`measure.image_share`, mean over query heads) and a capped
   pool of the intervened layers' keys.

Returns the results rows (`report.schema.INTERVENTION_METRICS`, with `condition` = the intervention and
`strength`), a per-sample table (`intervention.parquet`: one row per held-out sample and measure, unmodified
and intervened values) and the fitted statistics (saved by the pipeline as `intervention_statistics.pt`).
Intervals: percentile bootstrap over held-out samples (`metric.n_bootstrap`, `metric.ci_level`), paired (the
same resampled samples on both sides) for the `_change` metrics.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from experiments.benchmarks.sample import Sample, SkipRow
from experiments.config import JobConfig
from experiments.interventions.accuracy import choose, letter_token_ids, option_letters, skip_reason
from experiments.interventions.hooks import Intervene
from experiments.interventions.measure import image_share, pick_rows
from experiments.interventions.transforms import KeyMap, KeyStatistics, Moments, key_map, statistics_of
from experiments.keys.layers import LayerSpec, resolve_layers

if TYPE_CHECKING:
    from experiments.models import LoadedModel

log = logging.getLogger(__name__)

CHUNK_BYTES = 32 * 2**20  # scores per chunk of the recomputed attention share


def split_samples(n: int, fraction: float, cap: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and held-out sample numbers (sorted, disjoint): a seeded permutation cut at `fraction`."""
    order = np.random.default_rng(seed).permutation(n)
    cut = min(n - 1, max(1, round(fraction * n)))
    calibration, held_out = order[:cut], order[cut:]
    if cap is not None:
        calibration, held_out = calibration[:cap], held_out[:cap]
    return np.sort(calibration), np.sort(held_out)


def intervention_layers(job: JobConfig, layers: list[LayerSpec]) -> list[LayerSpec]:
    from experiments.models import decoder_depth

    if job.intervention.layers is None:
        return layers
    return resolve_layers(job.intervention.layers, job.layer.fractions, decoder_depth(job.model))


def intervention_results(job: JobConfig, samples: list[Sample], layers: list[LayerSpec], loaded: LoadedModel
                         ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Rows, per-sample table and statistics of the job's intervention (module docstring), from the job's
    loaded model."""
    cfg = job.intervention
    specs = intervention_layers(job, layers)
    indices = [s.index for s in specs]
    calibration, held_out = split_samples(len(samples), cfg.calibration_fraction, cfg.max_samples, cfg.seed)
    model, adapter = loaded.model, loaded.adapter
    attention = {i: adapter.attention_module(adapter.layers(model)[i]) for i in indices}
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype

    def inputs_of(number: int) -> tuple[Sample, Any] | None:
        try:
            sample = samples[number].decoded()
        except SkipRow as err:
            log.warning("intervention: skipping sample %s: %s", samples[number].id, err)
            return None
        inputs = adapter.model_inputs(loaded.processor, [sample]).to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return sample, inputs

    statistics: dict[int, KeyStatistics] = {}
    maps: dict[int, KeyMap] | None = None
    if cfg.name != "attention_boost":
        moments = {i: {True: Moments(), False: Moments()} for i in indices}
        for number in tqdm(calibration.tolist(), desc="calibration", unit="sample", leave=False):
            if (got := inputs_of(number)) is None:
                continue
            with Intervene(model, adapter, indices, record=True) as hook:
                hook.forward(got[1], logits_to_keep=1)
                is_image = hook.is_image[0].cpu()  # type: ignore[index]
                for i in indices:
                    keys = hook.recorded[i][1].cpu()  # [S, kv_heads, head_dim]
                    moments[i][True].add(keys[is_image])
                    moments[i][False].add(keys[~is_image])
        statistics = {i: statistics_of(moments[i][True], moments[i][False]) for i in indices}
        maps = {i: key_map(cfg.name, statistics[i], cfg.shrinkage, seed=cfg.seed + i) for i in indices}
    boost = cfg.strength if cfg.name == "attention_boost" else None

    per_sample: list[dict[str, Any]] = []
    key_pools: dict[tuple[int, str], dict[bool, list[torch.Tensor]]] = {
        (i, side): {True: [], False: []} for i in indices for side in ("unmodified", "intervened")}
    cap = max(2, math.ceil(cfg.max_tokens_per_group / max(1, len(held_out))))
    skipped: dict[str, int] = {}
    for number in tqdm(held_out.tolist(), desc=f"intervention {cfg.name}", unit="sample", leave=False):
        if (got := inputs_of(number)) is None:
            skipped["undecodable"] = skipped.get("undecodable", 0) + 1
            continue
        sample, inputs = got
        reason = skip_reason(sample)
        if reason is not None:
            skipped[reason.split(" ")[0]] = skipped.get(reason.split(" ")[0], 0) + 1
        letters = option_letters(sample) if reason is None else []
        token_ids = letter_token_ids(loaded.processor.tokenizer, letters) if letters else []
        row: dict[str, Any] = {"sample_id": sample.id, "gold": sample.answer, "skip_reason": reason or ""}
        shares: dict[int, dict[str, float]] = {i: {} for i in indices}
        for side in ("unmodified", "intervened"):
            changed = side == "intervened"
            with Intervene(model, adapter, indices, maps=maps if changed else None, strength=cfg.strength,
                           boost=boost if changed else None, heads=cfg.heads, record=True) as hook:
                logits = hook.forward(inputs, logits_to_keep=1).logits[0, -1]
                is_image = hook.is_image[0]  # type: ignore[index]
                rows = pick_rows(is_image, cap, [cfg.seed, number])
                for i in indices:
                    q, k = hook.recorded[i]
                    shares[i][side] = float(np.nanmean(image_share(
                        q, k, is_image, float(attention[i].scaling), CHUNK_BYTES,
                        boost if side == "intervened" else None, cfg.heads, hook.visible[i],
                        getattr(attention[i], "attn_logit_softcapping", None))))
                    flat = k.flatten(1).float().cpu()
                    for modality in (True, False):
                        key_pools[(i, side)][modality].append(flat[torch.from_numpy(rows[modality])])
            if token_ids:
                index, _ = choose(logits, token_ids)
                row[f"choice_{side}"] = letters[index]
        correct = {side: float(row.get(f"choice_{side}") == sample.answer) if token_ids else math.nan
                   for side in ("unmodified", "intervened")}
        per_sample.append({**row, "measure": "answer", "layer_index": -1, **correct})
        for i in indices:
            per_sample.append({**row, "measure": "image_share", "layer_index": i,
                               "unmodified": shares[i]["unmodified"], "intervened": shares[i]["intervened"]})
    table = pd.DataFrame(per_sample)
    if table.empty:
        raise ValueError("intervention: no held-out sample could be used (see the warnings)")
    rows_out = _rows(job, specs, table, key_pools)
    log.info("intervention %s at strength %g on layers %s: %d calibration / %d held-out samples; skipped for "
             "accuracy: %s", cfg.name, cfg.strength, indices, len(calibration), len(held_out), skipped or "none")
    stored = {"name": cfg.name, "strength": cfg.strength, "shrinkage": cfg.shrinkage, "heads": cfg.heads,
              "calibration_samples": [samples[n].id for n in calibration],
              "held_out_samples": [samples[n].id for n in held_out], "skipped_for_accuracy": skipped,
              "layers": {i: {**statistics[i].as_dict(), "matrix": maps[i].matrix, "offset": maps[i].offset}
                         for i in statistics if maps is not None}}
    return rows_out, table, stored


def _rows(job: JobConfig, specs: list[LayerSpec], table: pd.DataFrame,
          key_pools: dict[tuple[int, str], dict[bool, list[torch.Tensor]]]) -> pd.DataFrame:
    """Results rows from the per-sample table and the key pools."""
    from experiments.attention.analysis import _bootstrap_mean
    from experiments.metrics.mmd import mmd2
    from experiments.metrics.splits import parse_bandwidth
    from experiments.models import resolve_device
    from experiments.report.schema import results_frame

    cfg, metric, kernel = job.intervention, job.metric, job.kernel
    common = {"model": job.model.name, "benchmark": job.benchmark.name, "key_site": "post_rope", "split": 0,
              "seed": cfg.seed, "prompt_style": job.benchmark.prompt_style, "condition": cfg.name,
              "strength": float(cfg.strength), "head": "all", "p_value": math.nan}
    out: list[dict[str, Any]] = []

    def mean_rows(values: np.ndarray, layer: dict[str, Any], comparison: str, name: str, seed: int) -> None:
        """`name` (mean of the intervened values) and `name_change` (paired: intervened - unmodified)."""
        for metric_name, column in ((name, values[:, 1]), (f"{name}_change", values[:, 1] - values[:, 0])):
            low, high = _bootstrap_mean(column[:, None], metric.n_bootstrap, metric.ci_level, seed)
            out.append(common | layer | {"comparison": comparison, "metric": metric_name, "kernel": "none",
                                         "value": float(np.nanmean(column)), "ci_low": float(low[0]),
                                         "ci_high": float(high[0]), "n_x": int(np.isfinite(column).sum()),
                                         "n_y": int(np.isfinite(column).sum())})

    answers = table[(table["measure"] == "answer") & (table["skip_reason"] == "")]
    every = {"layer": "all", "layer_index": -1}
    if len(answers):
        mean_rows(answers[["unmodified", "intervened"]].to_numpy(), every, "answers", "accuracy", cfg.seed)
        changed = (answers["choice_unmodified"] != answers["choice_intervened"]).to_numpy(float)
        low, high = _bootstrap_mean(changed[:, None], metric.n_bootstrap, metric.ci_level, cfg.seed)
        out.append(common | every | {"comparison": "answers", "metric": "answer_change_rate", "kernel": "none",
                                     "value": float(changed.mean()), "ci_low": float(low[0]),
                                     "ci_high": float(high[0]), "n_x": len(changed), "n_y": len(changed)})
    device = resolve_device(job.analysis.device)
    for spec in specs:
        layer = {"layer": spec.label, "layer_index": spec.index}
        shares = table[(table["measure"] == "image_share") & (table["layer_index"] == spec.index)]
        mean_rows(shares[["unmodified", "intervened"]].to_numpy(), layer, "text_queries", "image_share",
                  cfg.seed + spec.index)
        values = {}
        for side in ("unmodified", "intervened"):
            pool = key_pools[(spec.index, side)]
            image, text = torch.cat(pool[True]), torch.cat(pool[False])
            values[side] = mmd2(image, text, kernel=kernel.name, bandwidth=parse_bandwidth(kernel.bandwidth),
                                unbiased=metric.unbiased, bandwidth_scale=kernel.bandwidth_scale, seed=cfg.seed,
                                device=device)
        for name, value in (("key_mmd2", values["intervened"]),
                            ("key_mmd2_change", values["intervened"] - values["unmodified"])):
            out.append(common | layer | {"comparison": "image_vs_text", "metric": name, "kernel": kernel.name,
                                         "value": float(value), "ci_low": math.nan, "ci_high": math.nan,
                                         "n_x": len(image), "n_y": len(text)})
    return results_frame(out)
