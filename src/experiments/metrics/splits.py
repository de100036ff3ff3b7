"""Cross-modal comparison against intra-modal controls, over repeated random splits of the samples.

Select, then compute: `plan_splits` chooses every token from the per-token metadata alone, so the caller
reads only `rows_needed(splits)` from the key cache; `compare_modalities` then computes the metrics.

For each repeat r (seeded by (seed, r)): the samples, not the tokens, are split into disjoint halves
A and B (tokens of one image are correlated, so a token-level split would make the controls look
artificially close). Each (half, modality) group is capped at `max_tokens_per_group` tokens, drawn
stratified by sample (every sample gives about as many tokens). Then every configured metric is
computed for image(A) vs text(B), image(A) vs image(B) and text(A) vs text(B), with block ids =
sample numbers so permutation tests move whole samples. One row per (comparison, metric, repeat).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from experiments.config import KernelConfig, MetricConfig
from experiments.metrics import c2st_auc, energy_distance, jsd, mmd2, mmd_test, sliced_wasserstein

COMPARISONS = {  # name -> (modality of the A side, modality of the B side); True = image
    "image_vs_text": (True, False),
    "image_vs_image": (True, True),
    "text_vs_text": (False, False),
}

MetricFn = Callable[..., tuple[float, float]]


def _mmd2(x, y, gx, gy, metric: MetricConfig, kernel: KernelConfig, seed: int, device: str) -> tuple[float, float]:
    options: dict[str, Any] = dict(kernel=kernel.name, bandwidth=parse_bandwidth(kernel.bandwidth),
                   bandwidth_scale=kernel.bandwidth_scale, unbiased=metric.unbiased, seed=seed, device=device)
    if metric.n_permutations == 0:
        return mmd2(x, y, **options), math.nan
    test = mmd_test(x, y, n_permutations=metric.n_permutations, groups_x=gx, groups_y=gy, **options)
    return test.statistic, test.p_value


def _jsd(x, y, gx, gy, metric: MetricConfig, kernel: KernelConfig, seed: int, device: str) -> tuple[float, float]:
    value = jsd(x, y, projection=metric.jsd_projection, n_projections=metric.jsd_n_projections,
                bins=metric.jsd_bins, seed=seed, device=device)
    return value, math.nan


def _energy(x, y, gx, gy, metric: MetricConfig, kernel: KernelConfig, seed: int, device: str) -> tuple[float, float]:
    return energy_distance(x, y, device=device), math.nan


def _sliced(x, y, gx, gy, metric: MetricConfig, kernel: KernelConfig, seed: int, device: str) -> tuple[float, float]:
    return sliced_wasserstein(x, y, n_projections=metric.sw_n_projections, seed=seed, device=device), math.nan


def _c2st(x, y, gx, gy, metric: MetricConfig, kernel: KernelConfig, seed: int, device: str) -> tuple[float, float]:
    return c2st_auc(x.cpu(), y.cpu(), groups_x=gx, groups_y=gy, folds=metric.c2st_folds, seed=seed), math.nan


METRICS: dict[str, MetricFn] = {"mmd2": _mmd2, "jsd": _jsd, "energy": _energy, "sliced_wasserstein": _sliced,
                                "c2st_auc": _c2st}
KERNEL_METRICS = {"mmd2"}  # metrics whose rows carry the kernel name


def parse_bandwidth(bandwidth: str) -> str | float:
    """`"median"` stays a rule; anything else must be a number (sigma itself)."""
    if bandwidth == "median":
        return bandwidth
    try:
        return float(bandwidth)
    except ValueError:
        raise ValueError(f"kernel.bandwidth={bandwidth!r}: use 'median' or a positive number") from None


def check_metric_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"metric.names contains unknown {unknown}; valid metrics: {sorted(METRICS)}")


@dataclass(frozen=True)
class Split:
    """One repeat: the token rows of each (half, modality) group, already capped (sorted global indices)."""

    groups: dict[tuple[str, bool], np.ndarray]  # ("A" | "B", is_image) -> [group tokens]


def plan_splits(is_image: np.ndarray, sample: np.ndarray, *, n_splits: int, max_tokens_per_group: int,
                seed: int) -> list[Split]:
    """Choose every token the comparisons will use, from the per-token metadata alone (no keys needed).

    Args:
        is_image: [tokens] True for image tokens.
        sample: [tokens] sample number of each token (the block id).

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
        groups = {}
        for half, members in (("A", order[: len(order) // 2]), ("B", order[len(order) // 2:])):
            in_half = np.isin(sample, members)
            for modality in (True, False):
                idx = np.flatnonzero(in_half & (is_image == modality))
                groups[half, modality] = _stratified_cap(idx, sample, max_tokens_per_group, rng)
        splits.append(Split(groups))
    return splits


def rows_needed(splits: list[Split]) -> np.ndarray:
    """Sorted unique token rows that any group of any split uses: all that must be read from the cache."""
    return np.unique(np.concatenate([idx for split in splits for idx in split.groups.values()]))


def compare_modalities(keys: torch.Tensor, rows: np.ndarray, sample: np.ndarray, splits: list[Split], *, seed: int,
                       metric: MetricConfig, kernel: KernelConfig, device: str) -> list[dict]:
    """Rows {comparison, metric, kernel, split, value, p_value, n_x, n_y} for one layer's keys.

    Args:
        keys: [len(rows), kv_heads*head_dim] keys of one layer at the token `rows` (sorted global indices that
            include every row of `splits`, e.g. `rows_needed(splits)`).
        sample: [tokens] sample number of every token of the entry (the block id).
        splits: the groups of each repeat, from `plan_splits`.

    Raises:
        ValueError: an unknown metric name.
    """
    check_metric_names(metric.names)
    out = []
    for split, plan in enumerate(splits):
        for comparison, (mod_a, mod_b) in COMPARISONS.items():
            ia, ib = plan.groups["A", mod_a], plan.groups["B", mod_b]
            x, y = (keys[torch.from_numpy(np.searchsorted(rows, idx))] for idx in (ia, ib))
            gx, gy = torch.from_numpy(sample[ia]), torch.from_numpy(sample[ib])
            for name in metric.names:
                value, p_value = METRICS[name](x, y, gx, gy, metric, kernel, seed + split, device)
                out.append({"comparison": comparison, "metric": name,
                            "kernel": kernel.name if name in KERNEL_METRICS else "none", "split": split,
                            "value": float(value), "p_value": float(p_value), "n_x": len(ia), "n_y": len(ib)})
    return out


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
