"""One permutation test for every metric: the metric registry and `permutation_test`.

Contract. `permutation_test(x, y, metric, n_permutations=B, seed=s, groups_x, groups_y, **options)`
validates the inputs and draws the splits once (`permutations.pooled_splits`: whole blocks move when
block ids are given), asks the metric's column function for the statistic of every split, and returns
a `TestResult` with p = (1 + #{permuted ≥ observed}) / (1 + B) and the permutation null's mean and
standard deviation (`permutations.null_summary`). Larger values must mean "more different" (all five
metrics: MMD², JSD, energy distance, SW₁, AUC, the fused aggregated MMD).

A column function `f(z [N, d], masks [N, 1 + B], **options) -> [1 + B]` returns the metric for the
observed split (column 0) and every permuted split (`permutations.split_masks`; with blocks the rows
per side vary, so each column uses its own n_x = Σ masks[:, b]). It computes whatever does not depend
on the split once (kernel matrix, projections and bins, sorted projections, Gram matrix and folds).
Its signature is the metric's option schema: the keyword options it declares, defaults included, are
recorded in the result's `estimator`; the engine passes the test's `seed` to a function that declares
`seed` (directions, median subsample, folds) and the unit of every row (`units [N]`, block or row
index) to one that declares `units` (C2ST keeps blocks within one fold).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from experiments.metrics.c2st import c2st_columns
from experiments.metrics.energy import energy_columns
from experiments.metrics.inputs import Array, Device
from experiments.metrics.jsd import jsd_columns
from experiments.metrics.mmd import mmd2_columns
from experiments.metrics.mmd_agg import mmd_agg_columns
from experiments.metrics.permutations import TestResult, null_summary, pooled_splits
from experiments.metrics.sliced import sliced_wasserstein_columns

ColumnFunction = Callable[..., torch.Tensor]

COLUMN_FUNCTIONS: dict[str, ColumnFunction] = {
    "mmd2": mmd2_columns,
    "mmd_agg": mmd_agg_columns,
    "jsd": jsd_columns,
    "energy": energy_columns,
    "sliced_wasserstein": sliced_wasserstein_columns,
    "c2st_auc": c2st_columns,
}
_PASSED_BY_ENGINE = ("seed", "units")


def permutation_test(
    x: Array,
    y: Array,
    metric: str,
    *,
    n_permutations: int,
    seed: int,
    groups_x: Any = None,
    groups_y: Any = None,
    device: Device = None,
    **options: Any,
) -> TestResult:
    """Permutation test of H0: x and y come from one distribution, with `metric` as statistic.

    Args:
        x: First sample `[n_x, d]` (torch or numpy; `[n]` is read as `[n, 1]`).
        y: Second sample `[n_y, d]`.
        metric: Metric short name, one of `COLUMN_FUNCTIONS`.
        n_permutations: Number B of permuted splits; 0 computes the statistic only (p_value nan).
        seed: Seed of the permutations, also passed to the metric (directions, subsample, folds).
        groups_x: Block ids of x's rows `[n_x]` (e.g. sample ids), or None for row-level permutation.
        groups_y: Block ids of y's rows `[n_y]`; given together with `groups_x`, ids disjoint from it.
        device: Compute device; None keeps the inputs' device (CPU for numpy).
        **options: The metric's options (its column function's keywords), e.g. `kernel="rbf"` for
            mmd2, `n_projections=128` for sliced_wasserstein, `folds=5` for c2st_auc.

    Returns:
        A `TestResult`; its `estimator` lists every option of the metric, defaults included.

    Raises:
        ValueError: For an unknown metric (listing the valid ones), an unknown or missing option (listing
            the metric's options), bad inputs naming the input, or a bad option value.
    """
    columns = _column_function(metric)
    params = inspect.signature(columns).parameters
    schema = {name: p.default for name, p in params.items()
              if p.kind is p.KEYWORD_ONLY and name not in _PASSED_BY_ENGINE}
    unknown = sorted(set(options) - set(schema))
    missing = sorted(name for name, default in schema.items() if default is inspect.Parameter.empty
                     and name not in options)
    if unknown or missing:
        problems = [f"{what} options {names}" for what, names in (("unknown", unknown), ("missing", missing)) if names]
        raise ValueError(f"{metric}: {', '.join(problems)}; its options: {', '.join(sorted(schema))}")
    splits = pooled_splits(x, y, n_permutations, seed, groups_x, groups_y, device)
    passed = {"seed": seed, "units": splits.units}
    engine_kwargs = {name: value for name, value in passed.items() if name in params}
    stats = columns(splits.z, splits.masks, **engine_kwargs, **options)
    resolved = schema | options
    return TestResult(
        **null_summary(stats),
        n_x=splits.n_x,
        n_y=splits.n_y,
        n_permutations=n_permutations,
        metric=metric,
        estimator=", ".join(f"{name}={resolved[name]}" for name in sorted(resolved)),
        permutation=splits.permutation,
    )


def _column_function(metric: str) -> ColumnFunction:
    """The column function of `metric`; a ValueError lists the valid names for an unknown one."""
    try:
        return COLUMN_FUNCTIONS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(sorted(COLUMN_FUNCTIONS))}") from None
