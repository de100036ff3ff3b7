"""Sliced Wasserstein-1 distance between two samples.

Contract: for K directions θ_k uniform on the unit sphere (CPU `torch.Generator` seeded by `seed`,
the same on every device),

    SW₁(x, y) = (1/K) Σ_k W₁(θ_kᵀx, θ_kᵀy),    W₁(u, v) = ∫ |F_u(t) - F_v(t)| dt

with F the empirical CDFs (exact for unequal sample sizes: the integral is a sum over the gaps of the
pooled sorted values, as in `scipy.stats.wasserstein_distance`). For 1-D data every direction is ±1,
so SW₁ equals scipy's W₁. Projections float32, sorting and sums float64.
"""

from __future__ import annotations

import torch

from experiments.metrics.inputs import Array, Device, as_pair
from experiments.metrics.projections import directions


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
    w = directions(torch.cat([tx, ty]), "random", n_projections, seed)
    return float(wasserstein_1d(tx @ w, ty @ w).mean())


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W₁ between the empirical distributions of matching columns.

    Args:
        u: Values `[n, k]`.
        v: Values `[m, k]`.

    Returns:
        `[k]` float64: W₁(u[:, j], v[:, j]) = Σ_i |F_u(t_i) - F_v(t_i)| (t_{i+1} - t_i) over the pooled
        sorted values t.
    """
    u_sorted = u.double().T.sort(dim=1).values.contiguous()  # [k, n]
    v_sorted = v.double().T.sort(dim=1).values.contiguous()  # [k, m]
    t = torch.cat([u_sorted, v_sorted], dim=1).sort(dim=1).values  # [k, n + m]
    left = t[:, :-1].contiguous()
    cdf_u = torch.searchsorted(u_sorted, left, right=True) / u_sorted.shape[1]
    cdf_v = torch.searchsorted(v_sorted, left, right=True) / v_sorted.shape[1]
    return ((cdf_u - cdf_v).abs() * t.diff(dim=1)).sum(dim=1)
