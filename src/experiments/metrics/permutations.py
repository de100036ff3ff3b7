"""Permutation machinery shared by every two-sample test: seeded split masks, the null summary.

Contract: `split_masks` returns a float32 0/1 matrix `S [N, 1 + B]` over the pooled rows z = x ∪ y
(x rows first). Column 0 is the observed split (1 = row in x); column b ≥ 1 is the b-th permuted
split. A permutation shuffles *units*: each row is a unit (token-level), or, with block ids, each
block is one unit and keeps all its rows. The first g_x shuffled units go to the x side, where g_x is
the number of units x has, so the number of blocks per side is fixed while the number of rows per side
varies with the block sizes (any statistic must then use each column's own n_x = Σ S[:, b]).
The draws come from a CPU `torch.Generator` seeded by `seed`: the same seed gives the same masks on
every device. Memory: N · (1 + B) · 4 bytes for the masks.

`pooled_splits` validates a test's inputs and builds z, S and the unit of every row; `null_summary`
turns the statistics of all columns `[1 + B]` into the observed statistic, the p-value
p = (1 + #{permuted ≥ observed}) / (1 + B) and the mean and standard deviation (ddof 1) of the B
permuted statistics, the fields every `TestResult` shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from experiments.metrics.inputs import Array, Device, as_groups, as_pair, block_index


@dataclass(frozen=True)
class TestResult:
    """Outcome of a two-sample permutation test.

    Attributes:
        statistic: Observed value of the metric.
        p_value: (1 + #{permuted ≥ observed}) / (1 + n_permutations); nan when n_permutations is 0.
        n_x: Rows of x.
        n_y: Rows of y.
        n_permutations: Number B of permuted splits.
        metric: Metric short name (`engine.COLUMN_FUNCTIONS`).
        estimator: How the statistic was computed (for `engine.permutation_test` every option of the
            metric, defaults included, e.g. `n_projections=128`).
        permutation: `row` (each row is a unit) or `block` (whole blocks move together).
        null_mean: Mean of the B permuted statistics (nan when B is 0).
        null_std: Their standard deviation, ddof 1 (nan when B < 2).
    """

    __test__ = False  # not a pytest test class

    statistic: float
    p_value: float
    n_x: int
    n_y: int
    n_permutations: int
    metric: str
    estimator: str
    permutation: str
    null_mean: float
    null_std: float


@dataclass(frozen=True)
class PooledSplits:
    """A test's validated inputs, pooled, with its observed and permuted splits.

    Attributes:
        z: Pooled sample `[N, d]`, float32, x rows first, on the compute device.
        masks: `S [N, 1 + B]` from `split_masks`, float32, on z's device.
        units: Unit of every pooled row `[N]` int64 on CPU: its block (x blocks first) or its row.
        n_x: Rows of x.
        n_y: Rows of y.
        permutation: `row` or `block`.
    """

    z: torch.Tensor
    masks: torch.Tensor
    units: torch.Tensor
    n_x: int
    n_y: int
    permutation: str


def pooled_splits(
    x: Array,
    y: Array,
    n_permutations: int,
    seed: int,
    groups_x: Any = None,
    groups_y: Any = None,
    device: Device = None,
) -> PooledSplits:
    """Validate a two-sample test's inputs and draw its permuted splits.

    Args:
        x: First sample `[n_x, d]` (torch or numpy; `[n]` is read as `[n, 1]`).
        y: Second sample `[n_y, d]`.
        n_permutations: Number B of permuted splits (0 for the observed split only).
        seed: Seed of the permutations.
        groups_x: Block ids of x's rows `[n_x]` (e.g. sample ids), or None for row-level permutation.
        groups_y: Block ids of y's rows `[n_y]`; given together with `groups_x`, ids disjoint from it.
        device: Compute device; None keeps the inputs' device (CPU for numpy).

    Returns:
        The pooled sample, its masks and units.

    Raises:
        ValueError: For bad inputs naming the input (`x`, `y`, `groups_x`, `groups_y`) or a negative
            `n_permutations`.
    """
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 0:
        raise ValueError(f"n_permutations must be an int >= 0, got {n_permutations!r}")
    tx, ty = as_pair(x, y, device)
    n_x, n_y = tx.shape[0], ty.shape[0]
    if (groups_x is None) != (groups_y is None):
        raise ValueError("groups_x and groups_y must be given together (or neither)")
    blocks = None
    if groups_x is not None:
        blocks = block_index(as_groups(groups_x, n_x, "groups_x"), as_groups(groups_y, n_y, "groups_y"))
    z = torch.cat([tx, ty])
    masks = split_masks(n_x, n_y, n_permutations, seed, blocks).to(z.device)
    units = torch.arange(n_x + n_y) if blocks is None else blocks[0]
    return PooledSplits(z, masks, units, n_x, n_y, "row" if blocks is None else "block")


def null_summary(stats: torch.Tensor) -> dict[str, float]:
    """Observed statistic, p-value and permutation null mean and std from the statistics of all splits.

    Args:
        stats: `[1 + B]`, column 0 the observed split. Values a metric cannot tell apart must be equal
            (see `mmd._mmd2_columns` for float32 round-off); nan never counts as ≥.

    Returns:
        `statistic`, `p_value` ((1 + #{null ≥ observed}) / (1 + B), nan for B = 0), `null_mean` (nan
        for B = 0) and `null_std` (ddof 1, nan for B < 2) as floats.
    """
    stats = stats.detach().double().cpu()
    observed, null = stats[0], stats[1:]
    n_perm = null.numel()
    return {
        "statistic": float(observed),
        "p_value": (1 + int((null >= observed).sum())) / (1 + n_perm) if n_perm else math.nan,
        "null_mean": float(null.mean()) if n_perm else math.nan,
        "null_std": float(null.std()) if n_perm > 1 else math.nan,
    }


def split_masks(
    n_x: int,
    n_y: int,
    n_permutations: int,
    seed: int,
    blocks: tuple[torch.Tensor, int, int] | None = None,
) -> torch.Tensor:
    """Observed and permuted splits of the pooled sample as a 0/1 matrix.

    Args:
        n_x: Rows of x.
        n_y: Rows of y.
        n_permutations: Number B of permuted splits.
        seed: Seed of the CPU generator.
        blocks: `(index [n_x + n_y], g_x, g_y)` from `inputs.block_index`, or None to permute rows.

    Returns:
        `S [n_x + n_y, 1 + B]`, float32 on CPU; `S[i, b] = 1` when pooled row i is on the x side of
        split b.
    """
    if blocks is None:
        index, g_x, g_y = torch.arange(n_x + n_y), n_x, n_y
    else:
        index, g_x, g_y = blocks
    gen = torch.Generator().manual_seed(seed)
    # argsort of iid uniforms is a uniform random permutation; reading it as the units' ranks puts a
    # uniform random g_x-subset of the units on the x side.
    ranks = torch.rand(n_permutations, g_x + g_y, generator=gen).argsort(dim=1)
    unit_in_x = torch.cat([(torch.arange(g_x + g_y) < g_x)[None, :], ranks < g_x], dim=0)  # [1 + B, G]
    return unit_in_x[:, index].T.to(torch.float32).contiguous()
