"""Two-sample statistics between key distributions: MMD² (kernel family), JSD, permutation tests.

Public API (arrays are torch tensors or numpy arrays `[n, d]`; every function takes `device=None`,
keeping the inputs' device, CPU for numpy):

- `mmd2(x, y, kernel, bandwidth, unbiased, bandwidth_scale) -> float`
- `mmd_test(x, y, kernel, bandwidth, n_permutations, seed, groups_x, groups_y, ...) -> MMDTestResult`
- `jsd(x, y, projection, n_projections, bins, seed) -> float`
- `energy_distance(x, y) -> float`, `sliced_wasserstein(x, y, n_projections, seed) -> float`
- `c2st_auc(x, y, groups_x, groups_y, folds, alpha, seed) -> float`
- `permutation_test(x, y, metric, *, n_permutations, seed, groups_x, groups_y, device, **options)
  -> TestResult` for every metric in `COLUMN_FUNCTIONS` (mmd2, mmd_agg, jsd, energy, sliced_wasserstein,
  c2st_auc),
  with the permutation null's mean and std.
- `mmd_agg_test(x, y, n_permutations, seed, groups_x, groups_y, kernels, bandwidth_scales, temperature)
  -> MMDAggResult`: aggregated MMD (metric `mmd_agg`, MMD-FUSE style) with its per-(kernel, bandwidth) tests.
- `sample_bootstrap_ci(x, y, metric, *, groups_x, groups_y, n_resamples, confidence_level, seed, **options)
  -> BootstrapCI`: BCa interval from a bootstrap over samples (mmd2, jsd, energy, sliced_wasserstein; NaN
  for c2st_auc and mmd_agg).
- `KERNELS`, `make_kernel(name, sigma)`: kernels by short name.
"""

from __future__ import annotations

from experiments.metrics.bootstrap import BootstrapCI, sample_bootstrap_ci
from experiments.metrics.c2st import c2st_auc
from experiments.metrics.energy import energy_distance
from experiments.metrics.engine import COLUMN_FUNCTIONS, permutation_test
from experiments.metrics.jsd import jsd
from experiments.metrics.kernels import KERNELS, Kernel, make_kernel
from experiments.metrics.mmd import MMDTestResult, mmd2, mmd_test
from experiments.metrics.mmd_agg import MMDAggResult, mmd_agg_test
from experiments.metrics.permutations import TestResult
from experiments.metrics.sliced import sliced_wasserstein

__all__ = [
    "COLUMN_FUNCTIONS",
    "KERNELS",
    "BootstrapCI",
    "Kernel",
    "MMDAggResult",
    "MMDTestResult",
    "TestResult",
    "c2st_auc",
    "energy_distance",
    "jsd",
    "make_kernel",
    "mmd2",
    "mmd_agg_test",
    "mmd_test",
    "permutation_test",
    "sample_bootstrap_ci",
    "sliced_wasserstein",
]
