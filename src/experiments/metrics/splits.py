"""Cross-modal comparison against intra-modal controls, over repeated random splits of the samples.

Select, then compute: `plan_splits` chooses every token from the per-token metadata alone, so the caller
reads only `rows_needed(splits)` from the key cache; `compare_modalities` then computes the metrics.

For each repeat r (seeded by (seed, r)): the samples, not the tokens, are split into disjoint halves
A and B (tokens of one image are correlated, so a token-level split would make the controls look
artificially close). Each (half, modality) group is capped at `max_tokens_per_group` tokens, drawn
stratified by sample (every sample gives about as many tokens). Then every configured metric is
computed for image(A) vs text(B), image(A) vs image(B) and text(A) vs text(B) with one permutation
test (`metrics.engine`), block ids = sample numbers so permutations move whole samples. One row per
(comparison, metric, repeat): the value, its p-value, the permutation null's mean and std, and the value
centred on the null mean (raw and in null standard deviations), so controls centre on 0 for every metric,
and the value's confidence interval from a bootstrap over the samples of each side (`metrics.bootstrap`,
`metric.n_bootstrap` replicates, BCa at `metric.ci_level`, for the metrics in `metric.bootstrap_metrics`;
NaN for the others, or when off).
`mmd_agg` writes its fused test as kernel `agg` and, from the same permutations, one row per (kernel,
bandwidth scale) of its collection, kernel `rbf@0.5` etc. (that component's MMD² and its own test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from experiments.config import KernelConfig, MetricConfig
from experiments.metrics.bootstrap import sample_bootstrap_ci
from experiments.metrics.engine import permutation_test
from experiments.metrics.jsd import parse_bins
from experiments.metrics.mmd_agg import mmd_agg_test
from experiments.metrics.permutations import TestResult
from experiments.validation import check

COMPARISONS: dict[str, tuple[bool | str, bool | str]] = {  # name -> (group of side A, of side B); True = image
    "image_vs_text": (True, False),
    "image_vs_image": (True, True),
    "text_vs_text": (False, False),
    # position-matched control (`plan_splits(text_side=...)`): text before the image block against text after
    # it, both text, so what separates them is position (RoPE / M-RoPE) and role, not modality
    "text_before_vs_text_after": ("before", "after"),
}

# metric name -> its options for `permutation_test`, from the metric and kernel config groups
OPTIONS: dict[str, Callable[[MetricConfig, KernelConfig], dict[str, Any]]] = {
    "mmd2": lambda m, k: {"kernel": k.name, "bandwidth": parse_bandwidth(k.bandwidth),
                          "bandwidth_scale": k.bandwidth_scale, "unbiased": m.unbiased},
    "mmd_agg": lambda m, k: {"kernels": list(m.agg_kernels), "bandwidth_scales": list(m.agg_bandwidth_scales),
                             "temperature": m.agg_temperature, "unbiased": m.unbiased},
    "jsd": lambda m, k: {"projection": m.jsd_projection, "n_projections": m.jsd_n_projections,
                         "bins": parse_bins(m.jsd_bins), "estimator": m.jsd_estimator},
    "energy": lambda m, k: {},
    "sliced_wasserstein": lambda m, k: {"n_projections": m.sw_n_projections},
    "c2st_auc": lambda m, k: {"folds": m.c2st_folds, "alpha": m.c2st_alpha},
}
KERNEL_METRICS = {"mmd2"}  # metrics whose rows carry the kernel name
NO_CI = {"ci_low": math.nan, "ci_high": math.nan}  # rows without a sample-bootstrap interval (mmd_agg)
AGG_KERNEL = "agg"  # kernel of the fused mmd_agg row; its breakdown rows carry `kernel@scale`, e.g. rbf@0.5


def parse_bandwidth(bandwidth: str) -> str | float:
    """`"median"` stays a rule; anything else is a number, sigma itself (the schema checked it is positive)."""
    return bandwidth if bandwidth == "median" else float(bandwidth)


@dataclass(frozen=True)
class Split:
    """One repeat: the token rows of each (half, modality) group, already capped (sorted global indices)."""

    groups: dict[tuple[str, bool | str], np.ndarray]  # ("A" | "B", is_image or "before" | "after") -> [tokens]


def sink_tokens(position: np.ndarray, norms: np.ndarray, norm_factor: float) -> np.ndarray:
    """[tokens] True for attention-sink candidates: the first position (BOS / first token) and keys whose
    norm exceeds `norm_factor` times the median key norm (tokens with massive activations)."""
    return (position == 0) | (norms > norm_factor * np.median(norms))


def text_sides(is_image: np.ndarray, sample: np.ndarray, position: np.ndarray) -> np.ndarray:
    """[tokens] -1 for text before its sample's first image token, +1 for text after its last, 0 otherwise."""
    first = np.full(sample.max() + 1, np.iinfo(np.int64).max)
    last = np.full(sample.max() + 1, -1)
    np.minimum.at(first, sample[is_image], position[is_image])
    np.maximum.at(last, sample[is_image], position[is_image])
    return np.where(~is_image & (position < first[sample]), -1, np.where(~is_image & (position > last[sample]), 1, 0))


def plan_splits(is_image: np.ndarray, sample: np.ndarray, *, n_splits: int, max_tokens_per_group: int,
                seed: int, eligible: np.ndarray | None = None, text_side: np.ndarray | None = None) -> list[Split]:
    """Choose every token the comparisons will use, from the per-token metadata alone (no keys needed).

    Args:
        is_image: [tokens] True for image tokens.
        sample: [tokens] sample number of each token (the block id).
        eligible: [tokens] False for tokens no group may take (e.g. sinks); None: every token.
        text_side: [tokens] from `text_sides`: also draw the "before" and "after" text groups of the
            position-matched control (after the other groups, so those stay the same); None: no control.

    Raises:
        ValueError: fewer than 2 samples with keys.
    """
    samples = np.unique(sample)
    if len(samples) < 2:
        raise ValueError(f"need at least 2 samples with keys to split into halves, got {len(samples)}: "
                         "raise benchmark.limit")
    splits = []
    for split in range(n_splits):
        rng = np.random.default_rng([seed, split])
        order = rng.permutation(samples)
        groups: dict[tuple[str, bool | str], np.ndarray] = {}
        for half, members in (("A", order[: len(order) // 2]), ("B", order[len(order) // 2:])):
            in_half = np.isin(sample, members) if eligible is None else np.isin(sample, members) & eligible
            for modality in (True, False):
                idx = np.flatnonzero(in_half & (is_image == modality))
                groups[half, modality] = _stratified_cap(idx, sample, max_tokens_per_group, rng)
        if text_side is not None:
            for half, members in (("A", order[: len(order) // 2]), ("B", order[len(order) // 2:])):
                in_half = np.isin(sample, members) if eligible is None else np.isin(sample, members) & eligible
                for side, value in (("before", -1), ("after", 1)):
                    idx = np.flatnonzero(in_half & (text_side == value))
                    groups[half, side] = _stratified_cap(idx, sample, max_tokens_per_group, rng)
        splits.append(Split(groups))
    return splits


def rows_needed(splits: list[Split]) -> np.ndarray:
    """Sorted unique token rows that any group of any split uses: all that must be read from the cache."""
    return np.unique(np.concatenate([idx for split in splits for idx in split.groups.values()]))


def compare_modalities(keys: torch.Tensor, rows: np.ndarray, sample: np.ndarray, splits: list[Split], *, seed: int,
                       metric: MetricConfig, kernel: KernelConfig, device: str) -> list[dict]:
    """Rows {comparison, metric, kernel, split, value, p_value, ..., ci_low, ci_high, n_x, n_y} for one layer's keys.

    Args:
        keys: [len(rows), kv_heads*head_dim] keys of one layer at the token `rows` (sorted global indices that
            include every row of `splits`, e.g. `rows_needed(splits)`).
        sample: [tokens] sample number of every token of the entry (the block id).
        splits: the groups of each repeat, from `plan_splits`.

    Raises:
        ConfigError: a metric or kernel field outside its declared valid values (`validation`).
    """
    check(metric, "metric.")
    check(kernel, "kernel.")
    out = []
    for split, plan in enumerate(splits):
        for comparison, (mod_a, mod_b) in COMPARISONS.items():
            ia, ib = plan.groups.get(("A", mod_a)), plan.groups.get(("B", mod_b))
            if ia is None or ib is None or min(len(np.unique(sample[ia])), len(np.unique(sample[ib]))) < 2:
                continue  # a control this split cannot form (not asked for, or too few samples with such tokens)
            x, y = (keys[torch.from_numpy(np.searchsorted(rows, idx))] for idx in (ia, ib))
            gx, gy = torch.from_numpy(sample[ia]), torch.from_numpy(sample[ib])
            for name in metric.names:
                common = {"comparison": comparison, "metric": name, "split": split, "n_x": len(ia), "n_y": len(ib)}
                options = OPTIONS[name](metric, kernel)
                if name == "mmd_agg":
                    agg = mmd_agg_test(x, y, n_permutations=metric.n_permutations, seed=seed + split, groups_x=gx,
                                       groups_y=gy, device=device, **options)
                    out.append(common | {"kernel": AGG_KERNEL} | _test_columns(agg) | NO_CI)
                    out.extend(common | {"kernel": c.label} | _test_columns(c) | NO_CI for c in agg.components)
                    continue
                test = permutation_test(x, y, name, n_permutations=metric.n_permutations, seed=seed + split,
                                        groups_x=gx, groups_y=gy, device=device, **options)
                replicates = metric.n_bootstrap if name in metric.bootstrap_metrics else 0
                ci = sample_bootstrap_ci(x, y, name, groups_x=gx, groups_y=gy, n_resamples=replicates,
                                         confidence_level=metric.ci_level, batch=metric.bootstrap_batch,
                                         seed=seed + split, device=device,
                                         **options)
                out.append(common | {"kernel": kernel.name if name in KERNEL_METRICS else "none"}
                           | _test_columns(test) | {"ci_low": ci.low, "ci_high": ci.high})
    return out


def _test_columns(test: TestResult) -> dict[str, float]:
    """value, p_value, null mean and std, and the value centred on the null (raw and in null standard deviations)."""
    centered = test.statistic - test.null_mean
    return {"value": test.statistic, "p_value": test.p_value, "null_mean": test.null_mean, "null_std": test.null_std,
            "value_centered": centered, "value_z": centered / test.null_std if test.null_std > 0 else math.nan}


def _stratified_cap(idx: np.ndarray, sample: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most `cap` of the token indices `idx`, taking tokens from the samples in turn (random order within)."""
    if len(idx) <= cap:
        return idx
    shuffled = idx[rng.permutation(len(idx))]
    owners = sample[shuffled]
    by_owner = np.argsort(owners, kind="stable")
    sorted_owners = owners[by_owner]
    starts = np.flatnonzero(np.r_[True, sorted_owners[1:] != sorted_owners[:-1]])
    counts = np.diff(np.r_[starts, len(sorted_owners)])
    rank = np.empty(len(shuffled), dtype=np.int64)
    rank[by_owner] = np.arange(len(shuffled)) - np.repeat(starts, counts)  # rank of each token within its sample
    return np.sort(shuffled[np.argsort(rank, kind="stable")[:cap]])
