"""MMD² and its permutation test, from one pooled kernel matrix.

Contract. Pooled sample z = x ∪ y (x rows first, N = n_x + n_y), kernel k from `kernels.KERNELS`,
bandwidth σ from `bandwidth` (median heuristic over z, or a float) times `bandwidth_scale`.

    unbiased MMD² = Σ_{i≠j∈x} k / (n_x(n_x-1)) + Σ_{i≠j∈y} k / (n_y(n_y-1)) - 2 Σ_{i∈x,j∈y} k / (n_x n_y)
    biased MMD²   = the same with the diagonals included and denominators n_x², n_y²

(Gretton et al. 2012, JMLR 13, eq. 3 and 5). Every split is a 0/1 column s of `S [N, 1 + B]`
(`permutations.split_masks`); with K the pooled kernel matrix, r = K·1 and g = diag K,

    Σ_xx = sᵀKs,   Σ_xy = sᵀr - sᵀKs,   Σ_yy = 1ᵀr - 2sᵀr + sᵀKs,   diagonals sᵀg and 1ᵀg - sᵀg,

so all B permuted statistics come from one float32 matrix product K·S reduced in float64, with
each column's own n_x = 1ᵀs (block permutations change it); the observed split's sums are float64
row sums. Permuted statistics within float32 round-off (1e-6 of the kernel's scale) of the observed
one are returned equal to it, so p = (1 + #{permuted ≥ observed}) / (1 + B) counts them as ties.
`mmd2_columns` is the column function of `engine.permutation_test`; `mmd_test` is the same test
with the kernel's bandwidth in its result. The weighted form (the sample bootstrap) is `mmd_weighted`.

Compute: float32 on the inputs' device (or `device`), float64 for every sum over the matrix. The
kernel matrix is computed once, in row blocks of at most `BLOCK_BYTES`, each used for all splits;
shift-invariant kernels see the pooled data centred first (better float32 accuracy, same value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from experiments.metrics.bandwidth import describe_rule, median_of_pairs, median_subsample
from experiments.metrics.inputs import Array, Device, as_pair
from experiments.metrics.kernels import Kernel, kernel_class
from experiments.metrics.permutations import TestResult, null_summary, pooled_splits, split_masks

BLOCK_BYTES = 256 * 2**20
_TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class MMDTestResult(TestResult):
    """A `TestResult` of MMD² (metric `mmd2`, estimator `unbiased` or `biased`) with its kernel.

    Attributes:
        kernel: Kernel short name.
        bandwidth: σ actually used (after `bandwidth_scale`), or nan for kernels without one.
        bandwidth_rule: How σ was chosen (`bandwidth.describe_rule`), e.g. `median_l2(exact) x1`.
    """

    kernel: str
    bandwidth: float
    bandwidth_rule: str


def mmd2(
    x: Array,
    y: Array,
    kernel: str = "rbf",
    bandwidth: float | str = "median",
    unbiased: bool = True,
    bandwidth_scale: float = 1.0,
    seed: int = 0,
    device: Device = None,
) -> float:
    """Squared maximum mean discrepancy between two samples (module docstring for the formulas).

    Args:
        x: First sample `[n_x, d]` (torch or numpy; `[n]` is read as `[n, 1]`).
        y: Second sample `[n_y, d]`.
        kernel: Kernel short name (`kernels.KERNELS`).
        bandwidth: `"median"` (median distance over distinct pooled pairs) or σ itself.
        unbiased: Unbiased U-statistic (default) or biased V-statistic.
        bandwidth_scale: Factor applied to σ (bandwidth ablations).
        seed: Seed of the median subsample, used only when n_x + n_y > 4000.
        device: Compute device; None keeps the inputs' device (CPU for numpy).

    Returns:
        MMD² as a Python float (the unbiased estimate can be negative).

    Raises:
        ValueError: For bad inputs (naming `x` or `y`), an unknown kernel or a bad bandwidth.
    """
    tx, ty = as_pair(x, y, device)
    masks = split_masks(tx.shape[0], ty.shape[0], 0, seed)
    z = torch.cat([tx, ty])
    return float(_mmd2_columns(z, masks, kernel, bandwidth, bandwidth_scale, seed, unbiased)[0][0])


def mmd_test(
    x: Array,
    y: Array,
    kernel: str = "rbf",
    bandwidth: float | str = "median",
    n_permutations: int = 1000,
    seed: int = 0,
    groups_x: Any = None,
    groups_y: Any = None,
    bandwidth_scale: float = 1.0,
    unbiased: bool = True,
    device: Device = None,
) -> MMDTestResult:
    """Permutation test of H0: x and y come from one distribution, with MMD² as statistic.

    Args:
        x: First sample `[n_x, d]`.
        y: Second sample `[n_y, d]`.
        kernel: Kernel short name (`kernels.KERNELS`).
        bandwidth: `"median"` or σ itself; computed once on the pooled sample, kept for all splits.
        n_permutations: Number B of permuted splits; 0 computes the statistic only (p_value nan).
        seed: Seed of the permutations (and of the median subsample when n_x + n_y > 4000).
        groups_x: Block ids of x's rows `[n_x]` (e.g. sample ids), or None for row-level permutation.
        groups_y: Block ids of y's rows `[n_y]`; given together with `groups_x`, ids disjoint from it.
        bandwidth_scale: Factor applied to σ.
        unbiased: Unbiased (default) or biased estimator.
        device: Compute device; None keeps the inputs' device (CPU for numpy).

    Returns:
        An `MMDTestResult`. With blocks, each permutation sends whole blocks to a side, keeping the number
        of blocks per side; the rows per side then vary and each split uses its own n_x, n_y.

    Raises:
        ValueError: For bad inputs naming the input (`x`, `y`, `groups_x`, `groups_y`), an unknown
            kernel, a bad bandwidth or a negative `n_permutations`.
    """
    splits = pooled_splits(x, y, n_permutations, seed, groups_x, groups_y, device)
    n = splits.z.shape[0]
    stats, sigma = _mmd2_columns(splits.z, splits.masks, kernel, bandwidth, bandwidth_scale, seed, unbiased)
    return MMDTestResult(
        **null_summary(stats),
        n_x=splits.n_x,
        n_y=splits.n_y,
        n_permutations=n_permutations,
        metric="mmd2",
        estimator="unbiased" if unbiased else "biased",
        permutation=splits.permutation,
        kernel=kernel,
        bandwidth=math.nan if sigma is None else sigma,
        bandwidth_rule=describe_rule(kernel_class(kernel), bandwidth, bandwidth_scale, n, seed),
    )


def mmd2_columns(
    z: torch.Tensor,
    masks: torch.Tensor,
    *,
    kernel: str = "rbf",
    bandwidth: float | str = "median",
    bandwidth_scale: float = 1.0,
    unbiased: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """MMD² of every split of the pooled sample (the column function of `engine.permutation_test`).

    Args:
        z: Pooled sample `[N, d]`, float32, x rows first.
        masks: Splits `S [N, 1 + B]`, 0/1 float32 (`permutations.split_masks`; column 0 observed).
        kernel: Kernel short name (`kernels.KERNELS`).
        bandwidth: `"median"` or σ itself; computed once on the pooled sample, kept for all splits.
        bandwidth_scale: Factor applied to σ.
        unbiased: Unbiased (default) or biased estimator.
        seed: Seed of the median subsample when N > 4000.

    Returns:
        `[1 + B]` float64 on CPU.

    Raises:
        ValueError: For an unknown kernel or a bad bandwidth.
    """
    return _mmd2_columns(z, masks, kernel, bandwidth, bandwidth_scale, seed, unbiased)[0]


def _resolve_sigma(
    z: torch.Tensor,
    raw: torch.Tensor,
    full: torch.Tensor | None,
    kind: type[Kernel],
    bandwidth: float | str,
    scale: float,
    seed: int,
) -> float | None:
    """σ for the kernel: None if it has no bandwidth, else (float or pooled median) × scale.

    `z` is the pooled sample the kernel sees (maybe centred), `raw` the one passed in: the median pair
    is chosen from `full` (`pairwise` of z, if already computed) and its distance recomputed from `raw`.
    """
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"bandwidth must be 'median' or a positive float, got {bandwidth!r}")
    elif isinstance(bandwidth, bool) or not (isinstance(bandwidth, int | float) and bandwidth > 0):
        raise ValueError(f"bandwidth must be 'median' or a positive float, got {bandwidth!r}")
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"bandwidth_scale must be a positive finite float, got {scale!r}")
    if kind.bandwidth_rule is None:
        return None
    if not isinstance(bandwidth, str):
        return float(bandwidth) * scale
    idx = median_subsample(z.shape[0], seed)
    if idx is None:
        zs, sub = raw, full if full is not None else _pairwise_rows(kind, z, 0, z.shape[0])
    else:
        idx = idx.to(z.device)
        zs = raw[idx]
        sub = full[idx][:, idx] if full is not None else _pairwise_rows(kind, z[idx], 0, idx.numel())
    sigma = median_of_pairs(zs, sub, kind) * scale
    if not sigma > 0:
        raise ValueError("the median pooled distance is 0 (most rows of x and y coincide); "
                         "pass a float bandwidth")
    return sigma


def _mmd2_columns(
    z: torch.Tensor,
    masks: torch.Tensor,
    kernel: str,
    bandwidth: float | str,
    scale: float,
    seed: int,
    unbiased: bool,
) -> tuple[torch.Tensor, float | None]:
    """MMD² of every split in `masks` from one pass over the pooled kernel matrix.

    Args:
        z: Pooled sample `[N, d]`, float32.
        masks: Splits `S [N, P]`, 0/1 float32 (column 0 the observed split).
        kernel: Kernel short name.
        bandwidth: `"median"` or σ.
        scale: `bandwidth_scale`.
        seed: Median subsample seed.
        unbiased: Estimator.

    Returns:
        `(stats [P] float64 on CPU, σ or None)`. Permuted statistics within 1e-6 of the kernel scale
        |Σ_xx| / n_x² + |Σ_yy| / n_y² + 2 |Σ_xy| / (n_x n_y) of the observed split are set to the
        observed statistic (ties: the float32 GEMM and the float64 row sums differ by round-off).
    """
    kind = kernel_class(kernel)
    z, raw, full, rows = _prepare(kind, z)
    sigma = _resolve_sigma(z, raw, full, kind, bandwidth, scale, seed)
    sums = KernelSums.zeros(z.shape[0], masks.shape[1], z.device)
    s = masks.to(z.device)
    kern = kind(sigma)
    for start in range(0, z.shape[0], rows):
        stop = min(z.shape[0], start + rows)
        sums.add_block(kern.transform_(full if full is not None else _pairwise_rows(kind, z, start, stop)), s, start)
    return sums.mmd2(s, unbiased), sigma


def _prepare(kind: type[Kernel], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """`(z centred if the kernel allows, z as passed, the full pairwise matrix if it fits one block, block rows)`."""
    raw = z
    if kind.shift_invariant:
        z = z - z.mean(dim=0)
    n = z.shape[0]
    rows = max(1, BLOCK_BYTES // (4 * n))
    full = _pairwise_rows(kind, z, 0, n) if rows >= n else None
    return z, raw, full, rows


@dataclass
class KernelSums:
    """Running sums over the row blocks of one pooled kernel matrix K `[N, N]`, enough for every split's MMD².

    Attributes:
        quad: sᵀKs of every split `[P]` (column 0 filled by `mmd2` from `xsum`), float64.
        xsum: K·s₀ `[N]` (s₀ the observed split), float64.
        rsum: K·1 `[N]`, float64.
        diag: diag K `[N]`, float64.
        square: Σ_ij K_ij² (filled only with `add_block(..., squares=True)`), float64 scalar.
    """

    quad: torch.Tensor
    xsum: torch.Tensor
    rsum: torch.Tensor
    diag: torch.Tensor
    square: torch.Tensor

    @classmethod
    def zeros(cls, n: int, n_splits: int, device: torch.device) -> KernelSums:
        """Empty sums for an `[N, N]` matrix and `n_splits` = 1 + B splits."""
        f64 = torch.float64
        return cls(torch.zeros(n_splits, dtype=f64, device=device), torch.zeros(n, dtype=f64, device=device),
                   torch.zeros(n, dtype=f64, device=device), torch.zeros(n, dtype=f64, device=device),
                   torch.zeros((), dtype=f64, device=device))

    def add_block(self, blk: torch.Tensor, s: torch.Tensor, start: int, squares: bool = False) -> None:
        """Add the kernel rows `blk = K[start:start + len(blk)]` `[rows, N]` under the splits `s [N, P]`."""
        f64, n_x, stop = torch.float64, int(s[:, 0].sum()), start + blk.shape[0]
        if s.shape[1] > 1:  # permuted splits: one float32 GEMM, float64 reduction
            self.quad[1:] += torch.mm(blk, s[:, 1:]).mul_(s[start:stop, 1:]).sum(0, dtype=f64)
        self.xsum[start:stop] = blk[:, :n_x].sum(1, dtype=f64)
        self.rsum[start:stop] = self.xsum[start:stop] + blk[:, n_x:].sum(1, dtype=f64)
        self.diag[start:stop] = blk.diagonal(offset=start)
        if squares:
            self.square += blk.square().sum(dtype=f64)

    def mmd2(self, s: torch.Tensor, unbiased: bool) -> torch.Tensor:
        """MMD² of every split `[P]` float64 on CPU, ties with the observed split made exact (`_mmd2_columns`)."""
        n, f64 = s.shape[0], torch.float64
        n_x = int(s[:, 0].sum())
        quad = self.quad.clone()
        quad[0] = self.xsum[:n_x].sum()  # observed split summed in float64 throughout
        rsum, diag = self.rsum, self.diag
        sd = s.to(f64)
        nx = sd.sum(0)
        ny = n - nx
        s_r, s_g = rsum @ sd, diag @ sd
        xx, xy, yy = quad, s_r - quad, rsum.sum() - 2 * s_r + quad
        if unbiased:
            xx_mean, yy_mean = (xx - s_g) / (nx * (nx - 1)), (yy - (diag.sum() - s_g)) / (ny * (ny - 1))
        else:
            xx_mean, yy_mean = xx / nx**2, yy / ny**2
        xy_mean = xy / (nx * ny)
        stats = (xx_mean + yy_mean - 2 * xy_mean).cpu()
        kscale = float(xx[0].abs() / nx[0] ** 2 + yy[0].abs() / ny[0] ** 2 + 2 * xy_mean[0].abs())
        ties = (stats[1:] - stats[0]).abs() <= _TIE_TOLERANCE * kscale
        stats[1:][ties] = stats[0]
        return stats


def _pairwise_rows(kind: type[Kernel], z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """`kind.pairwise(z[start:stop], z)` `[stop - start, N]`, self-distances set to exactly 0."""
    p = kind.pairwise(z[start:stop], z)
    if kind.distance_based:
        p.diagonal(offset=start).zero_()
    return p
