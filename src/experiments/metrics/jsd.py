"""Jensen-Shannon divergence between two samples, averaged over 1-D projections.

Contract. Pooled sample z = x ∪ y. For each direction w from `projections.directions` (PCA of z,
random unit directions, or none for 1-D data), project u = z·w and histogram x·w and y·w over the
same `bins` equal-width bins spanning the pooled [min u, max u] (numpy's `histogram` binning: the last
bin includes its right edge). With p, q the two normalised histograms and m = (p + q) / 2,

    JSD(p, q) = ½ Σ p log₂(p/m) + ½ Σ q log₂(q/m)    (0 log 0 = 0; in [0, 1])

which equals `scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2`; the result is the mean over
the directions. A constant projection puts both samples in one bin (JSD 0). Projections are float32,
histograms and logarithms float64, on the inputs' device (or `device`).
"""

from __future__ import annotations

import torch

from experiments.metrics.inputs import Array, Device, as_pair
from experiments.metrics.projections import directions


def jsd(
    x: Array,
    y: Array,
    projection: str = "pca",
    n_projections: int = 16,
    bins: int = 64,
    seed: int = 0,
    device: Device = None,
) -> float:
    """Jensen-Shannon divergence (base 2) between x and y, mean over 1-D projections.

    Args:
        x: First sample `[n_x, d]` (torch or numpy; `[n]` is read as `[n, 1]`).
        y: Second sample `[n_y, d]`.
        projection: `pca` (top principal directions of the pooled sample), `random` (seeded unit
            directions) or `none` (d must be 1).
        n_projections: Number of directions (at most d for `pca`).
        bins: Number of shared equal-width bins.
        seed: Seed of the random directions.
        device: Compute device; None keeps the inputs' device (CPU for numpy).

    Returns:
        The mean JSD over the projections, in [0, 1].

    Raises:
        ValueError: For bad inputs (naming `x` or `y`), an unknown projection, or `bins < 1`.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    tx, ty = as_pair(x, y, device)
    z = torch.cat([tx, ty])
    w = directions(z, projection, n_projections, seed)
    u = (z @ w).double()  # [N, k]
    idx = shared_bins(u, bins)
    n_x = tx.shape[0]
    p = _histogram(idx[:n_x], bins) / n_x
    q = _histogram(idx[n_x:], bins) / ty.shape[0]
    m = (p + q) / 2
    kl_pm = torch.xlogy(p, p).sub_(torch.xlogy(p, m)).sum(1)
    kl_qm = torch.xlogy(q, q).sub_(torch.xlogy(q, m)).sum(1)
    per_direction = (kl_pm + kl_qm) / (2 * torch.log(torch.tensor(2.0, dtype=torch.float64)))
    return float(per_direction.clamp_(0.0, 1.0).mean())


def shared_bins(u: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin index of every value, per column, over `bins` equal-width bins spanning the column's range.

    Mirrors `numpy.histogram(a, bins, range=(a.min(), a.max()))`, including its edge corrections.

    Args:
        u: Values `[N, k]`, float64.
        bins: Number of bins.

    Returns:
        Indices `[N, k]`, int64 in [0, bins).
    """
    lo, hi = u.min(dim=0).values, u.max(dim=0).values
    same = hi == lo  # numpy widens a zero range to [v - 0.5, v + 0.5]
    lo, hi = torch.where(same, lo - 0.5, lo), torch.where(same, hi + 0.5, hi)
    idx = ((u - lo) * (bins / (hi - lo))).long().clamp_(0, bins - 1)
    edges = torch.arange(bins + 1, dtype=u.dtype, device=u.device)[:, None] * ((hi - lo) / bins) + lo
    edges[-1] = hi  # numpy linspace sets the last edge exactly
    left = edges.gather(0, idx)
    idx = idx - (u < left).long()
    right = edges.gather(0, idx + 1)
    return idx + ((u >= right) & (idx != bins - 1)).long()


def _histogram(idx: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts per column: `idx [n, k]` -> `[k, bins]` float64."""
    counts = torch.zeros(idx.shape[1], bins, dtype=torch.float64, device=idx.device)
    return counts.scatter_add_(1, idx.T, torch.ones_like(idx.T, dtype=torch.float64))
