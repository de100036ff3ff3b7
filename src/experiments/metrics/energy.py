"""Energy distance between two samples (Székely & Rizzo 2004).

Contract: `energy_distance(x, y) = 2E‖X-Y‖ - E‖X-X'‖ - E‖Y-Y'‖` with the expectations replaced by
sample means over all pairs, diagonal zeros included (V-statistic; `unbiased=True` averages the
within-sample terms over distinct pairs). This is the squared form: in 1-D it equals
`scipy.stats.energy_distance(x, y) ** 2` (scipy returns the square root). It is MMD² with the
`energy` kernel, computed by `mmd.mmd2`; `energy_columns` gives it for every split of a permutation
test from the same pooled distance matrix (the column function of `engine.permutation_test`), and
`energy_weighted_columns` of weighted rows (the sample bootstrap, `mmd_weighted.mmd2_weighted_columns`).
"""

from __future__ import annotations

import torch

from experiments.metrics.inputs import Array, Device
from experiments.metrics.mmd import mmd2, mmd2_columns
from experiments.metrics.mmd_weighted import WeightedMMD2, mmd2_weighted_columns


def energy_distance(x: Array, y: Array, unbiased: bool = False, device: Device = None) -> float:
    """Energy distance 2E‖X-Y‖ - E‖X-X'‖ - E‖Y-Y'‖ between the rows of x and y.

    Args:
        x: First sample `[n_x, d]` (torch or numpy; `[n]` is read as `[n, 1]`).
        y: Second sample `[n_y, d]`.
        unbiased: Within-sample means over distinct pairs instead of all pairs.
        device: Compute device; None keeps the inputs' device (CPU for numpy).

    Returns:
        The (squared-form) energy distance, a Python float.

    Raises:
        ValueError: For bad inputs, naming `x` or `y`.
    """
    return mmd2(x, y, kernel="energy", unbiased=unbiased, device=device)


def energy_columns(z: torch.Tensor, masks: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:
    """Energy distance of every split of the pooled sample, as `energy_distance` defines it.

    Args:
        z: Pooled sample `[N, d]`, float32, x rows first.
        masks: Splits `S [N, 1 + B]`, 0/1 float32 (`permutations.split_masks`; column 0 observed).
        unbiased: Within-sample means over distinct pairs instead of all pairs.

    Returns:
        `[1 + B]` float64 on CPU; column 0 equals `energy_distance(x, y, unbiased)`.
    """
    return mmd2_columns(z, masks, kernel="energy", unbiased=unbiased)


def energy_weighted_columns(
    z: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, *, unbiased: bool = False,
    blocks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Energy distance of weighted pooled rows, one per column (`mmd.mmd2_weighted_columns`, energy kernel).

    Args:
        z: Pooled sample `[N, d]`, float32.
        wx: x-side weights `[N, C]`, non-negative (e.g. bootstrap multiplicities).
        wy: y-side weights `[N, C]`.
        unbiased: Within-sample means over distinct rows instead of all pairs.
        blocks: Block of every pooled row `[N]` (weights constant within a block), or None.

    Returns:
        `[C]` float64 on CPU; without repeated blocks `energy_distance` of the materialised replicate
        (pairs between two copies of one block are dropped).
    """
    return mmd2_weighted_columns(z, wx, wy, kernel="energy", unbiased=unbiased, blocks=blocks)


def energy_weighted(z: torch.Tensor, *, unbiased: bool = False, blocks: torch.Tensor | None = None) -> WeightedMMD2:
    """`energy_weighted_columns` with z fixed (`mmd_weighted.WeightedMMD2`: the distance matrix computed once)."""
    return WeightedMMD2(z, kernel="energy", unbiased=unbiased, blocks=blocks)
