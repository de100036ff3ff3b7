"""Median-heuristic bandwidth over the pooled sample.

Contract: σ = median of the distances over distinct pairs {i < j} of the pooled sample z (Euclidean
for `median_l2`, L1 for `median_l1`). The median of an even count is the mean of the two middle values
(numpy's convention). Exact when |z| ≤ `MAX_MEDIAN_POINTS`; otherwise over a subsample of that many
rows drawn without replacement by a CPU `torch.Generator` seeded with `seed` (so CPU and GPU agree).
`describe_rule` writes which of the two happened, for the result row.
"""

from __future__ import annotations

import torch

from experiments.metrics.kernels import Kernel

MAX_MEDIAN_POINTS = 4000


def median_subsample(n: int, seed: int, max_points: int = MAX_MEDIAN_POINTS) -> torch.Tensor | None:
    """Rows of the pooled sample the median is taken over.

    Args:
        n: Pooled sample size |z|.
        seed: Seed of the CPU generator.
        max_points: Largest size for which the median is exact.

    Returns:
        None when `n <= max_points` (all rows), else sorted int64 indices `[max_points]` on CPU.
    """
    if n <= max_points:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:max_points].sort().values


def median_of_pairs(z: torch.Tensor, p: torch.Tensor, kernel: type[Kernel]) -> float:
    """Median distance over distinct pairs, given the rows and their `pairwise` distance matrix.

    Each distinct pair appears twice off the diagonal of `p` and the m diagonal zeros sort first, so
    the r-th smallest pair (1-based) is the (m + 2r)-th smallest entry of `p`: one selection on `p`
    itself, no copy of its triangle. The middle pairs are found in float32 and their distances
    recomputed in float64 from the rows, so σ carries no float32 round-off beyond the choice of pair.

    Args:
        z: The rows the median is taken over, `[m, d]`, m ≥ 2.
        p: `kernel.pairwise(z, z)` with an exactly zero diagonal, `[m, m]`, symmetric up to float32
            round-off: if a pair's two entries differ, the larger still sits at rank m + 2r.
        kernel: The kernel class; `kernel.to_distance` maps `pairwise` output to distances.

    Returns:
        The median distance, as a Python float.
    """
    m = p.shape[0]
    flat = p.reshape(-1)
    n_pairs = m * (m - 1) // 2
    lo_rank, hi_rank = (n_pairs + 1) // 2, n_pairs // 2 + 1
    lo, lo_index = flat.kthvalue(m + 2 * lo_rank)
    hi_index = lo_index
    if hi_rank > lo_rank and int((flat <= lo).sum()) < m + 2 * hi_rank:  # next value up
        hi_index = torch.where(flat > lo, flat, torch.inf).argmin()
    middle = []
    for index in (int(lo_index), int(hi_index)):
        i, j = divmod(index, m)
        pair = kernel.pairwise(z[i : i + 1].double(), z[j : j + 1].double())
        middle.append(float(kernel.to_distance(pair)))
    return sum(middle) / 2


def describe_rule(kernel: type[Kernel], bandwidth: float | str, scale: float, n: int, seed: int) -> str:
    """Short record of how σ was chosen, e.g. `median_l2(exact) x1` or `median_l2(sub4000,seed=0) x0.5`.

    Args:
        kernel: The kernel class.
        bandwidth: `"median"` or the float σ given by the caller.
        scale: The `bandwidth_scale` factor.
        n: Pooled sample size.
        seed: Subsample seed.

    Returns:
        `none` for kernels without a bandwidth, `fixed` for a float σ, else the median rule.
    """
    if kernel.bandwidth_rule is None:
        return "none"
    if not isinstance(bandwidth, str):
        return f"fixed x{scale:g}"
    where = "exact" if n <= MAX_MEDIAN_POINTS else f"sub{MAX_MEDIAN_POINTS},seed={seed}"
    return f"{kernel.bandwidth_rule}({where}) x{scale:g}"
