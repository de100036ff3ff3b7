"""Sliced Wasserstein-1 distance between two samples, for one split or every split of a permutation test.

Contract: for K directions θ_k uniform on the unit sphere (CPU `torch.Generator` seeded by `seed`,
the same on every device),

    SW₁(x, y) = (1/K) Σ_k W₁(θ_kᵀx, θ_kᵀy),    W₁(u, v) = ∫ |F_u(t) - F_v(t)| dt

with F the empirical CDFs (exact for unequal sample sizes: the integral is a sum over the gaps of the
pooled sorted values, as in `scipy.stats.wasserstein_distance`). For 1-D data every direction is ±1,
so SW₁ equals scipy's W₁.

All splits at once (`sliced_wasserstein_columns`): the directions and the projections of the pooled
sample z do not depend on the split, so each projection is sorted once, t₁ ≤ … ≤ t_N. For a split s
(0/1 per row, n_x = Σ s), the cumulative count c_i of x rows among the first i sorted rows gives
F_x(t_i) = c_i / n_x and F_y(t_i) = (i - c_i) / n_y, and W₁ = Σ_{i<N} |F_x(t_i) - F_y(t_i)| (t_{i+1} - t_i)
(tied values have a zero gap, so their order does not matter). Written as
W₁ = N / (n_x n_y) · Σ_i |c_i - i n_x / N| (t_{i+1} - t_i), it costs a few passes over `[1 + B, K, N]`.
Float32 on z's device (counts are exact; the sum over i is a cascade sum), float64 across directions;
memory is bounded by `BLOCK_BYTES` by taking the directions in chunks.

Weighted rows (`sliced_wasserstein_weighted_columns`, the sample bootstrap): with weights a, b per row,
F_x(t_i) = Σ_{j≤i} a_(j) / Σ a and F_y likewise, the same sum over the gaps; for integer weights it is
SW₁ of the materialised replicate (rows repeated by their weights) with the same directions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from experiments.metrics.inputs import Array, Device, as_pair, check_weights
from experiments.metrics.permutations import split_masks
from experiments.metrics.projections import directions

BLOCK_BYTES = 256 * 2**20


def sliced_wasserstein(
    x: Array,
    y: Array,
    n_projections: int = 128,
    seed: int = 0,
    device: Device = None,
) -> float:
    """Mean 1-D Wasserstein-1 distance over random unit projections.

    Args:
        x: First sample `[n_x, d]` (torch or numpy; `[n]` is read as `[n, 1]`).
        y: Second sample `[n_y, d]`.
        n_projections: Number K of random directions.
        seed: Seed of the directions.
        device: Compute device; None keeps the inputs' device (CPU for numpy).

    Returns:
        SW₁ as a Python float, in the units of the data.

    Raises:
        ValueError: For bad inputs (naming `x` or `y`) or `n_projections < 1`.
    """
    tx, ty = as_pair(x, y, device)
    masks = split_masks(tx.shape[0], ty.shape[0], 0, seed)
    return float(sliced_wasserstein_columns(torch.cat([tx, ty]), masks, n_projections=n_projections, seed=seed)[0])


def sliced_wasserstein_columns(
    z: torch.Tensor,
    masks: torch.Tensor,
    *,
    n_projections: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """SW₁ of every split of the pooled sample (the column function of `engine.permutation_test`).

    Args:
        z: Pooled sample `[N, d]`, float32, x rows first.
        masks: Splits `S [N, 1 + B]`, 0/1 float32 (`permutations.split_masks`; column 0 observed).
        n_projections: Number K of random directions.
        seed: Seed of the directions.

    Returns:
        `[1 + B]` float64 on z's device; column 0 equals `sliced_wasserstein(x, y, n_projections, seed)`.

    Raises:
        ValueError: If `n_projections < 1`.
    """
    w = directions(z, "random", n_projections, seed)
    values, order = (z @ w).sort(dim=0)  # [N, K] each
    gaps = values.diff(dim=0).T  # [K, N - 1]
    s = masks.to(device=z.device, dtype=torch.float32).T.contiguous()  # [1 + B, N]
    n, k = order.shape
    n_x = s.sum(dim=1, dtype=torch.float64)  # [1 + B]
    expected = (n_x / n).to(torch.float32)[:, None, None] * torch.arange(1, n, device=z.device)  # i n_x / N
    total = torch.zeros(s.shape[0], dtype=torch.float64, device=z.device)
    chunk = max(1, BLOCK_BYTES // (4 * n * s.shape[0]))
    for start in range(0, k, chunk):
        counts = s[:, order[:-1, start : start + chunk].T].cumsum(dim=2)  # [1 + B, k', N - 1]: c_i
        excess = counts.sub_(expected).abs_().mul_(gaps[start : start + chunk])  # |c_i - i n_x / N| (t_{i+1} - t_i)
        total += excess.sum(dim=2).sum(dim=1, dtype=torch.float64)
    return total * n / (n_x * (n - n_x)) / k


def sliced_wasserstein_weighted_columns(
    z: torch.Tensor,
    wx: torch.Tensor,
    wy: torch.Tensor,
    *,
    n_projections: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """SW₁ between the weighted empirical distributions of the pooled rows, one per column.

    Args:
        z: Pooled sample `[N, d]`, float32.
        wx: x-side weights `[N, C]`, non-negative (e.g. bootstrap multiplicities).
        wy: y-side weights `[N, C]`.
        n_projections: Number K of random directions.
        seed: Seed of the directions.

    Returns:
        `[C]` float64 on z's device; for integer weights `sliced_wasserstein` of the materialised
        replicate (rows repeated by their weights), same directions.

    Raises:
        ValueError: If `n_projections < 1` or the weights are bad.
    """
    return sliced_wasserstein_weighted(z, n_projections=n_projections, seed=seed)(wx, wy)


def sliced_wasserstein_weighted(
    z: torch.Tensor, *, n_projections: int = 128, seed: int = 0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`sliced_wasserstein_weighted_columns` with z fixed: directions and sorted projections computed once.

    Returns:
        `f(wx [N, C], wy [N, C]) -> [C]` float64 on z's device.

    Raises:
        ValueError: If `n_projections < 1` (here) or the weights are bad (when called).
    """
    w = directions(z, "random", n_projections, seed)
    values, order = (z @ w).sort(dim=0)  # [N, K] each
    gaps = values.diff(dim=0).T  # [K, N - 1]

    def columns(wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
        return _weighted_sum(order, gaps, wx, wy)

    return columns


def _weighted_sum(order: torch.Tensor, gaps: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """Mean over directions of Σ_i |F_x(t_i) - F_y(t_i)| (t_{i+1} - t_i) for weighted rows (module docstring)."""
    weights = check_weights(wx, wy, order.shape[0]).to(order.device).T.contiguous()  # [2C, N]
    totals = weights.sum(dim=1)[:, None, None]  # [2C, 1, 1]
    n, k = order.shape
    c = wx.shape[1]
    total = torch.zeros(c, dtype=torch.float64, device=order.device)
    chunk = max(1, BLOCK_BYTES // (4 * n * 2 * c))
    for start in range(0, k, chunk):
        cdf = weights[:, order[:-1, start : start + chunk].T].cumsum(dim=2).div_(totals)  # [2C, k', N - 1]
        excess = (cdf[:c] - cdf[c:]).abs_().mul_(gaps[start : start + chunk])
        total += excess.sum(dim=2).sum(dim=1, dtype=torch.float64)
    return total / k
