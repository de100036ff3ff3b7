"""Aggregated MMD: one permutation test over kernels × bandwidths (MMD-FUSE style), with its breakdown.

Contract. The collection is every (kernel k, scale c) of `kernels × bandwidth_scales`, kernel k with
bandwidth σ_kc = c · σ_k, σ_k the median heuristic of k over the pooled sample z (`bandwidth`; one
pairwise-distance matrix per kernel, every bandwidth derived from it). For each component and each split
s of `masks` (column 0 observed, the rest permuted) the unbiased (or biased) MMD²_kc(s) is computed as in
`mmd.mmd2_columns` (the same masks, one GEMM per component). The fused statistic of a split is

    u_kc(s) = MMD²_kc(s) / (N_kc · √2 · (1/n_x(s) + 1/n_y(s)))       (≈ a z-score under the null)
    N_kc²   = Σ_{i≠j} K̃_ij² / (N (N - 1)),   K̃ = H K_kc H the pooled kernel matrix, centred
    FUSE(s) = (1/τ) log( (1/L) Σ_kc exp(τ · u_kc(s)) )                (soft maximum, L components)

with τ the `temperature` (τ → ∞: max over components; τ → 0: their mean). As in MMD-FUSE (Biggs, Schrab
and Gretton 2023, NeurIPS, "MMD-FUSE: learning and combining kernels for two-sample testing without data
splitting", eq. 3-4), the normaliser depends on the pooled sample only, never on the split, so FUSE is a
function of the split and the permutation test on it, p = (1 + #{FUSE(permuted) ≥ FUSE(observed)}) /
(1 + B), keeps its level exactly (no multiple-testing correction, unlike MMDAgg's, Schrab et al. 2023,
JMLR 24). Unlike MMD-FUSE's uncentred Σ K², the centred N_kc scales with the null standard deviation of
MMD²_kc (for large bandwidths K ≈ 1 - ‖a-b‖²/2σ², whose uncentred norm would swamp the signal), so
every bandwidth competes on the same footing; the factor √2 (1/n_x + 1/n_y) is the row-level null
standard deviation of the unbiased MMD² in units of N_kc (block permutations widen it for every component).

`mmd_agg_columns` is the column function of `engine.permutation_test` (metric `mmd_agg`); `mmd_agg_test`
runs the same test and also returns every component's MMD², its own p-value and null from the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from experiments.metrics.inputs import Array, Device
from experiments.metrics.kernels import KERNELS, kernel_class
from experiments.metrics.mmd import KernelSums, _pairwise_rows, _prepare, _resolve_sigma
from experiments.metrics.permutations import TestResult, null_summary, pooled_splits

AGG_KERNELS = tuple(sorted(name for name, cls in KERNELS.items() if cls.bandwidth_rule is not None))


@dataclass(frozen=True)
class Component:
    """One (kernel, bandwidth) of the collection and its statistics on every split.

    Attributes:
        kernel: Kernel short name.
        scale: Factor on the median bandwidth.
        sigma: σ = scale × median (σ₁ for laplacian).
        label: `kernel@scale`, e.g. `rbf@0.5` (the `kernel` column of its result rows).
        mmd2: MMD² of every split `[1 + B]` float64 (column 0 observed).
        fused_input: u of every split `[1 + B]` float64: MMD² in approximate null standard deviations.
    """

    kernel: str
    scale: float
    sigma: float
    label: str
    mmd2: torch.Tensor
    fused_input: torch.Tensor


@dataclass(frozen=True)
class ComponentResult(TestResult):
    """A component's own permutation test (metric `mmd2`), from the aggregated test's masks.

    Attributes:
        kernel: Kernel short name.
        scale: Factor on the median bandwidth.
        sigma: The bandwidth used.
        label: `kernel@scale`.
    """

    kernel: str
    scale: float
    sigma: float
    label: str


@dataclass(frozen=True)
class MMDAggResult(TestResult):
    """The fused test (metric `mmd_agg`, statistic FUSE) and its per-component breakdown.

    Attributes:
        components: One `ComponentResult` per (kernel, scale), kernels outer, scales inner.
    """

    components: tuple[ComponentResult, ...]


def check_collection(kernels: Sequence[str], bandwidth_scales: Sequence[float], temperature: float) -> None:
    """Validate the collection; a ValueError names the option and, for kernels, lists the valid names.

    Raises:
        ValueError: An empty or duplicated collection, a kernel without a bandwidth or unknown, a scale or
            temperature that is not a positive finite number.
    """
    if not kernels or len(set(kernels)) != len(kernels):
        raise ValueError(f"kernels must be a non-empty list without repeats, got {list(kernels)}")
    bad = [k for k in kernels if k not in AGG_KERNELS]
    if bad:
        raise ValueError(f"kernels {bad} unknown or without a bandwidth; valid kernels: {', '.join(AGG_KERNELS)}")
    scales = list(bandwidth_scales)
    if not scales or len(set(scales)) != len(scales) or not all(
            isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) and c > 0 for c in scales):
        raise ValueError(f"bandwidth_scales must be distinct positive finite numbers, got {scales}")
    if isinstance(temperature, bool) or not (isinstance(temperature, int | float) and math.isfinite(temperature)
                                             and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")


def mmd_agg_components(
    z: torch.Tensor,
    masks: torch.Tensor,
    kernels: Sequence[str],
    bandwidth_scales: Sequence[float],
    unbiased: bool = True,
    seed: int = 0,
) -> list[Component]:
    """Every component's MMD² and normalised value u on every split (module docstring).

    Per kernel: one pairwise-distance matrix (in row blocks when large), one median, then per scale a
    copy turned into kernel values and reduced against all splits.

    Args:
        z: Pooled sample `[N, d]`, float32, x rows first.
        masks: Splits `S [N, 1 + B]`, 0/1 float32 (column 0 observed).
        kernels: Kernel short names with a bandwidth (`AGG_KERNELS`).
        bandwidth_scales: Factors on each kernel's median bandwidth.
        unbiased: Unbiased (default) or biased MMD² estimator.
        seed: Seed of the median subsample when N > 4000.

    Returns:
        One `Component` per (kernel, scale), kernels outer.

    Raises:
        ValueError: For a bad collection (`check_collection`) or a zero median distance.
    """
    check_collection(kernels, bandwidth_scales, 1.0)
    s = masks.to(z.device)
    n = z.shape[0]
    nx = s.double().sum(0).cpu()
    spread = math.sqrt(2.0) * (1 / nx + 1 / (n - nx))  # row-level null std of MMD² in units of N_kc
    out = []
    for name in kernels:
        kind = kernel_class(name)
        zc, raw, full, rows = _prepare(kind, z)
        median = _resolve_sigma(zc, raw, full, kind, "median", 1.0, seed)
        assert median is not None  # every AGG_KERNELS kernel has a bandwidth rule
        kerns = [kind(median * float(c)) for c in bandwidth_scales]
        sums = [KernelSums.zeros(n, s.shape[1], z.device) for _ in kerns]
        for start in range(0, n, rows):
            p = full if full is not None else _pairwise_rows(kind, zc, start, min(n, start + rows))
            for i, (kern, acc) in enumerate(zip(kerns, sums, strict=True)):
                blk = p if i == len(kerns) - 1 else p.clone()  # the last bandwidth may overwrite the distances
                acc.add_block(kern.transform_(blk), s, start, squares=True)
        for c, kern, acc in zip(bandwidth_scales, kerns, sums, strict=True):
            stats = acc.mmd2(s, unbiased)
            scale_k = math.sqrt(max(_centred_offdiag_square(acc, n), 0.0) / (n * (n - 1)))
            fused_input = stats / (scale_k * spread) if scale_k > 0 else torch.zeros_like(stats)
            out.append(Component(name, float(c), kern.sigma, f"{name}@{float(c):g}", stats, fused_input))
    return out


def fuse(components: Sequence[Component], temperature: float) -> torch.Tensor:
    """FUSE of every split `[1 + B]` float64: (1/τ) log mean_kc exp(τ u_kc), a soft maximum of the u's."""
    u = torch.stack([c.fused_input for c in components])  # [L, 1 + B]
    return (torch.logsumexp(temperature * u, dim=0) - math.log(u.shape[0])) / temperature


def mmd_agg_columns(
    z: torch.Tensor,
    masks: torch.Tensor,
    *,
    kernels: Sequence[str] = ("rbf", "laplacian"),
    bandwidth_scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    temperature: float = 1.0,
    unbiased: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """FUSE of every split (the column function of `engine.permutation_test`, metric `mmd_agg`).

    Args:
        z: Pooled sample `[N, d]`, float32, x rows first.
        masks: Splits `S [N, 1 + B]`, 0/1 float32 (column 0 observed).
        kernels: Kernel short names with a bandwidth (`AGG_KERNELS`).
        bandwidth_scales: Factors on each kernel's median bandwidth.
        temperature: τ of the soft maximum.
        unbiased: Unbiased (default) or biased MMD² estimator.
        seed: Seed of the median subsample when N > 4000.

    Returns:
        `[1 + B]` float64 on CPU.

    Raises:
        ValueError: For a bad collection or temperature (`check_collection`).
    """
    check_collection(kernels, bandwidth_scales, temperature)
    return fuse(mmd_agg_components(z, masks, kernels, bandwidth_scales, unbiased, seed), temperature)


def mmd_agg_test(
    x: Array,
    y: Array,
    *,
    n_permutations: int,
    seed: int,
    groups_x: Any = None,
    groups_y: Any = None,
    kernels: Sequence[str] = ("rbf", "laplacian"),
    bandwidth_scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    temperature: float = 1.0,
    unbiased: bool = True,
    device: Device = None,
) -> MMDAggResult:
    """Aggregated MMD permutation test with its per-component breakdown, all from one set of masks.

    Same statistic, masks and p-value as `permutation_test(x, y, "mmd_agg", ...)` with these options.

    Args:
        x: First sample `[n_x, d]`.
        y: Second sample `[n_y, d]`.
        n_permutations: Number B of permuted splits (0: statistics only, p-values nan).
        seed: Seed of the permutations (and of the median subsample when n_x + n_y > 4000).
        groups_x: Block ids of x's rows `[n_x]`, or None for row-level permutation.
        groups_y: Block ids of y's rows `[n_y]`.
        kernels: Kernel short names with a bandwidth (`AGG_KERNELS`).
        bandwidth_scales: Factors on each kernel's median bandwidth.
        temperature: τ of the soft maximum.
        unbiased: Unbiased (default) or biased MMD² estimator.
        device: Compute device; None keeps the inputs' device.

    Returns:
        An `MMDAggResult`: the fused test, and per component its MMD², p-value and null (metric `mmd2`).

    Raises:
        ValueError: For bad inputs naming the input, or a bad collection or temperature.
    """
    check_collection(kernels, bandwidth_scales, temperature)
    splits = pooled_splits(x, y, n_permutations, seed, groups_x, groups_y, device)
    comps = mmd_agg_components(splits.z, splits.masks, kernels, bandwidth_scales, unbiased, seed)
    common: dict[str, Any] = {"n_x": splits.n_x, "n_y": splits.n_y, "n_permutations": n_permutations,
                              "permutation": splits.permutation}
    estimator = "unbiased" if unbiased else "biased"
    breakdown = tuple(
        ComponentResult(**_summary(c.mmd2), **common, metric="mmd2", estimator=estimator, kernel=c.kernel,
                        scale=c.scale, sigma=c.sigma, label=c.label) for c in comps)
    return MMDAggResult(
        **_summary(fuse(comps, temperature)), **common, metric="mmd_agg",
        estimator=f"bandwidth_scales={list(bandwidth_scales)}, kernels={list(kernels)}, "
                  f"temperature={temperature}, unbiased={unbiased}",
        components=breakdown)


def _summary(stats: torch.Tensor) -> dict[str, Any]:
    """`permutations.null_summary`, typed for keyword expansion into a result with non-float fields."""
    return dict(null_summary(stats))


def _centred_offdiag_square(sums: KernelSums, n: int) -> float:
    """Σ_{i≠j} (HKH)_ij² from Σ K², K·1 and diag K (H = I - 11ᵀ/N), in float64."""
    r, g = sums.rsum, sums.diag
    total = float(sums.rsum.sum())
    full = float(sums.square) - 2.0 / n * float(r.square().sum()) + total**2 / n**2
    centred_diag = g - 2.0 * r / n + total / n**2
    return full - float(centred_diag.square().sum())
