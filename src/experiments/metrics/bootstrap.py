"""Confidence intervals of a two-sample statistic from a bootstrap over samples (whole blocks resampled).

Contract. x holds the tokens of samples A (block ids `groups_x`), y those of samples B (`groups_y`).
One replicate draws |A| samples from A with replacement and, independently, |B| from B; every token
then counts as often as its sample was drawn. The statistic of a replicate is the metric of these
weighted empirical distributions (`WEIGHTED_FUNCTIONS`: `f(z [N, d], wx [N, C], wy [N, C], **options)
-> [C]`, one column per replicate; `PREPARED` builds what no replicate changes once, the kernel matrix,
the binning or the sorted projections, and returns `f(wx, wy)` for every batch). What a metric fits
on the pooled sample stays at its observed value: the kernel bandwidth (median heuristic), the JSD
directions and bin edges, the sliced directions. Up to that, a replicate's value is the metric of the
materialised replicate (tokens repeated) for SW₁ and the plug-in JSD; MMD² and energy distance drop the
pairs between two copies of one sample (pairs the data never had; `mmd.mmd2_weighted_columns`), and the
Miller-Madow JSD uses effective sizes (`jsd.jsd_weighted_columns`), so replicates do not drift
from the estimate through the duplication alone. Known limit: SW₁ (like any plug-in distance) reads
higher on a replicate, whose distinct tokens are fewer, so in high dimension BCa can be undefined
(no replicate below the estimate) and the percentile fallback then lies above the estimate; and the
JSD's effective sizes count tokens, not samples, so on near-discrete keys repeated across samples (layer-0
keys of a shared prompt template) its interval can exclude the estimate (default job: the 5 text_vs_text
rows of layer 0).

The interval is `scipy.stats.bootstrap` with data = (block numbers of A, block numbers of B), two
independent samples, `vectorized=True` (the statistic turns a batch of resampled block numbers into
weight columns and calls the weighted function once), `batch` replicates per call, `method="BCa"`
(bias-corrected and accelerated, Efron 1987), seeded by a `numpy.random.Generator`. BCa's jackknife
calls the statistic once per sample with that sample left out: g - 1 increasing block numbers, a shape
no bootstrap resample has (those keep g). For MMD² and energy those values come from the closed form
`WeightedMMD2.leave_one_block_out`, computed once, so the interval costs about n_resamples kernel
products whatever the number of samples; the other metrics evaluate them as weight columns. When
BCa is undefined (e.g. every replicate gives the same value, or the jackknife is degenerate) the
percentile interval of the same replicates is used, and `method` says so. C2ST (refits a classifier
per replicate) and `mmd_agg` (null-scaled soft maximum) have no weighted form: their interval is NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from experiments.metrics.energy import energy_weighted, energy_weighted_columns
from experiments.metrics.inputs import Array, Device, as_groups, as_pair, block_index
from experiments.metrics.jsd import jsd_weighted, jsd_weighted_columns
from experiments.metrics.mmd_weighted import WeightedMMD2, mmd2_weighted_columns
from experiments.metrics.sliced import sliced_wasserstein_weighted, sliced_wasserstein_weighted_columns

WEIGHTED_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "mmd2": mmd2_weighted_columns,
    "jsd": jsd_weighted_columns,
    "energy": energy_weighted_columns,
    "sliced_wasserstein": sliced_wasserstein_weighted_columns,
}
# the same with z fixed: `prepare(z, **options)` computes what no replicate changes once, returns f(wx, wy)
PREPARED: dict[str, Callable[..., Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "mmd2": WeightedMMD2,
    "jsd": jsd_weighted,
    "energy": energy_weighted,
    "sliced_wasserstein": sliced_wasserstein_weighted,
}
_NEEDS_N_X = {"jsd"}  # weighted functions that take the observed x size (bin count of `auto` bins)
_NEEDS_SEED = {"mmd2", "jsd", "sliced_wasserstein"}
_NEEDS_BLOCKS = {"mmd2", "energy"}  # drop the pairs between two copies of one sample


@dataclass(frozen=True)
class BootstrapCI:
    """A sample-bootstrap confidence interval.

    Attributes:
        low: Lower end (nan when not available).
        high: Upper end (nan when not available).
        method: `BCa`, `percentile` (BCa undefined) or `none` (no interval: metric without a weighted
            form, or n_resamples 0).
        n_resamples: Number of bootstrap replicates.
        confidence_level: Two-sided level, e.g. 0.95.
    """

    low: float
    high: float
    method: str
    n_resamples: int
    confidence_level: float


def sample_bootstrap_ci(
    x: Array,
    y: Array,
    metric: str,
    *,
    groups_x: Any,
    groups_y: Any,
    n_resamples: int,
    confidence_level: float = 0.95,
    batch: int | None = None,
    seed: int = 0,
    device: Device = None,
    **options: Any,
) -> BootstrapCI:
    """Confidence interval of `metric(x, y)` from a bootstrap over the samples (blocks) of x and y.

    Args:
        x: Tokens of samples A `[n_x, d]` (torch or numpy).
        y: Tokens of samples B `[n_y, d]`.
        metric: Metric short name; one without a weighted form (`c2st_auc`, `mmd_agg`) gives NaN.
        groups_x: Sample id of each row of x `[n_x]` (None: each row its own block).
        groups_y: Sample id of each row of y `[n_y]`, disjoint from `groups_x`.
        n_resamples: Number of replicates; 0 gives NaN (method `none`).
        confidence_level: Two-sided level in (0, 1).
        batch: Replicates per call of the weighted function, bootstrap and jackknife alike (None: all at
            once). Memory is O(batch x tokens); without it BCa's jackknife, one replicate per sample, makes
            it grow with the number of samples up to the token caps.
        seed: Seed of the resampling (and of the metric's directions or median subsample).
        device: Compute device; None keeps the inputs' device (CPU for numpy).
        **options: The metric's options, as for `engine.permutation_test`.

    Returns:
        A `BootstrapCI`.

    Raises:
        ValueError: For bad inputs (naming them), `n_resamples < 0` or a level outside (0, 1).
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 0:
        raise ValueError(f"n_resamples must be an int >= 0, got {n_resamples!r}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must lie in (0, 1), got {confidence_level!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be None or an int >= 1, got {batch!r}")
    none = BootstrapCI(math.nan, math.nan, "none", n_resamples, confidence_level)
    if metric not in WEIGHTED_FUNCTIONS or n_resamples == 0:
        return none
    from scipy.stats import bootstrap

    tx, ty = as_pair(x, y, device)
    n_x, n_y = tx.shape[0], ty.shape[0]
    if groups_x is None and groups_y is None:
        groups_x, groups_y = np.arange(n_x), np.arange(n_x, n_x + n_y)
    if (groups_x is None) != (groups_y is None):
        raise ValueError("groups_x and groups_y must be given together (or neither)")
    index, g_x, g_y = block_index(as_groups(groups_x, n_x, "groups_x"), as_groups(groups_y, n_y, "groups_y"))
    z = torch.cat([tx, ty])
    extra = (({"n_x": n_x} if metric in _NEEDS_N_X else {}) | ({"seed": seed} if metric in _NEEDS_SEED else {})
             | ({"blocks": index} if metric in _NEEDS_BLOCKS else {}))
    fn = PREPARED[metric](z, **extra, **options)  # kernel matrix, bins or sorted projections: once
    block_x, block_y = index[:n_x], index[n_x:] - g_x
    left_out = fn.leave_one_block_out(n_x) if isinstance(fn, WeightedMMD2) else None  # [g_x + g_y]

    def statistic(ids_a: np.ndarray, ids_b: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = np.broadcast_shapes(ids_a.shape[:-1], ids_b.shape[:-1])
        if left_out is not None:
            for ids, g, first in ((ids_a, g_x, 0), (ids_b, g_y, g_x)):
                if (block := _left_out_block(ids, g)) is not None:
                    return np.broadcast_to(left_out[first + block], lead).copy()
        a = np.broadcast_to(ids_a, (*lead, ids_a.shape[-1])).reshape(-1, ids_a.shape[-1])
        b = np.broadcast_to(ids_b, (*lead, ids_b.shape[-1])).reshape(-1, ids_b.shape[-1])
        wx = torch.zeros(n_x + n_y, a.shape[0], dtype=torch.float32)
        wy = torch.zeros_like(wx)
        wx[:n_x] = _multiplicities(a, g_x)[:, block_x].T
        wy[n_x:] = _multiplicities(b, g_y)[:, block_y].T
        values = fn(wx.to(z.device), wy.to(z.device))
        return values.detach().double().cpu().numpy().reshape(lead)

    data = (np.arange(g_x), np.arange(g_y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate BCa warns and returns nan: handled below
        result = bootstrap(data, statistic, n_resamples=n_resamples, vectorized=True, paired=False, batch=batch,
                           confidence_level=confidence_level, method="BCa", rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isfinite(low) and math.isfinite(high):
        return BootstrapCI(low, high, "BCa", n_resamples, confidence_level)
    replicates = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    replicates = replicates[np.isfinite(replicates)]
    if not replicates.size:
        return none
    alpha = (1 - confidence_level) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return BootstrapCI(float(low), float(high), "percentile", n_resamples, confidence_level)


def _left_out_block(ids: np.ndarray, n_blocks: int) -> np.ndarray | None:
    """The block each row of a jackknife resample `[..., n_blocks - 1]` leaves out, or None if `ids` is not one.

    A jackknife row holds every block number but one, increasing; a bootstrap row has n_blocks entries.
    """
    if ids.shape[-1] != n_blocks - 1 or not bool((np.diff(ids, axis=-1) > 0).all()):
        return None
    return n_blocks * (n_blocks - 1) // 2 - ids.sum(axis=-1)


def _multiplicities(ids: np.ndarray, n_blocks: int) -> torch.Tensor:
    """`[C, n_blocks]` float32: how often each block appears in each row of the resampled ids `[C, m]`."""
    rows = ids.shape[0]
    flat = (np.arange(rows)[:, None] * n_blocks + ids).ravel()
    counts = np.bincount(flat, minlength=rows * n_blocks).reshape(rows, n_blocks)
    return torch.from_numpy(counts.astype(np.float32))
