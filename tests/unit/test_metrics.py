"""MMD², kernels, JSD and the permutation test against independent oracles.

Oracles: a float64 numpy/scipy reference written here for every kernel and both estimators, scipy's
`jensenshannon` for 1-D JSD, the energy-distance identity via `scipy.spatial.distance.cdist`, and
rejection rates of the permutation test on null data (calibration) and with a planted shift (power).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, jensenshannon, pdist
from scipy.stats import energy_distance as scipy_energy

from experiments.metrics import KERNELS, jsd, make_kernel, mmd2, mmd_test
from experiments.metrics import mmd as mmd_module
from experiments.metrics.bandwidth import median_of_pairs
from experiments.metrics.kernels import sq_euclidean

KERNEL_NAMES = sorted(KERNELS)
BANDWIDTH_KERNELS = ["imq", "laplacian", "rbf"]
ESTIMATORS = {"unbiased": True, "biased": False}


def _sample(n_x: int = 70, n_y: int = 55, d: int = 6, shift: float = 0.6, seed: int = 0):
    """Float32 samples (the oracle sees exactly the same values, cast to float64)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_x, d)) + 1.0
    y = rng.normal(size=(n_y, d)) * 1.2 + 1.0 + shift
    return x.astype(np.float32), y.astype(np.float32)


def _ref_sigma(z: np.ndarray, kernel: str) -> float:
    return float(np.median(pdist(z, "cityblock" if kernel == "laplacian" else "euclidean")))


def _ref_kernel(kernel: str, a: np.ndarray, b: np.ndarray, sigma: float | None) -> np.ndarray:
    """Float64 kernel matrices straight from the definitions in issue 3."""
    d2 = cdist(a, b, "sqeuclidean")
    return {
        "rbf": lambda: np.exp(-d2 / (2 * sigma**2)),
        "laplacian": lambda: np.exp(-cdist(a, b, "cityblock") / sigma),
        "imq": lambda: (1 + d2 / sigma**2) ** -0.5,
        "linear": lambda: a @ b.T,
        "polynomial": lambda: (a @ b.T / a.shape[1] + 1) ** 3,
        "energy": lambda: -np.sqrt(d2),
    }[kernel]()


def _ref_mmd2(x: np.ndarray, y: np.ndarray, kernel: str, sigma: float | None, unbiased: bool) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    kxx, kyy, kxy = (_ref_kernel(kernel, a, b, sigma) for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    if unbiased:
        return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) \
            - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


@pytest.mark.parametrize("estimator", list(ESTIMATORS), ids=list(ESTIMATORS))
@pytest.mark.parametrize("kernel", KERNEL_NAMES, ids=KERNEL_NAMES)
def test_mmd2_matches_float64_reference_with_float_bandwidth(kernel: str, estimator: str) -> None:
    x, y = _sample()
    got = mmd2(x, y, kernel=kernel, bandwidth=2.5, unbiased=ESTIMATORS[estimator])
    want = _ref_mmd2(x, y, kernel, 2.5, ESTIMATORS[estimator])
    assert abs(got - want) / abs(want) < 1e-6


@pytest.mark.parametrize("estimator", list(ESTIMATORS), ids=list(ESTIMATORS))
@pytest.mark.parametrize("kernel", BANDWIDTH_KERNELS, ids=BANDWIDTH_KERNELS)
def test_mmd2_matches_float64_reference_with_median_bandwidth(kernel: str, estimator: str) -> None:
    x, y = _sample()
    sigma = _ref_sigma(np.vstack([x, y]).astype(np.float64), kernel)
    got = mmd2(x, y, kernel=kernel, unbiased=ESTIMATORS[estimator])
    assert abs(got - _ref_mmd2(x, y, kernel, sigma, ESTIMATORS[estimator])) / abs(got) < 1e-6


@pytest.mark.parametrize("kernel", BANDWIDTH_KERNELS, ids=BANDWIDTH_KERNELS)
@pytest.mark.parametrize("n_y", [55, 56], ids=["odd_pairs", "even_pairs"])
def test_median_bandwidth_is_numpy_median_of_distinct_pairs_times_scale(kernel: str, n_y: int) -> None:
    x, y = _sample(n_x=70, n_y=n_y)
    sigma = _ref_sigma(np.vstack([x, y]).astype(np.float64), kernel)
    result = mmd_test(x, y, kernel=kernel, n_permutations=10, bandwidth_scale=0.5)
    assert result.bandwidth == pytest.approx(0.5 * sigma, rel=1e-9)
    assert result.bandwidth_rule == f"{KERNELS[kernel].bandwidth_rule}(exact) x0.5"


@pytest.mark.parametrize("kernel", ["energy", "linear", "polynomial"], ids=["energy", "linear", "polynomial"])
def test_kernels_without_bandwidth_report_nan(kernel: str) -> None:
    result = mmd_test(*_sample(), kernel=kernel, n_permutations=10)
    assert math.isnan(result.bandwidth) and result.bandwidth_rule == "none"


@pytest.mark.parametrize("kernel", KERNEL_NAMES, ids=KERNEL_NAMES)
def test_kernel_class_matches_reference_matrix(kernel: str) -> None:
    x, y = _sample(n_x=9, n_y=7)
    got = make_kernel(kernel, 2.5)(torch.from_numpy(x), torch.from_numpy(y)).double().numpy()
    want = _ref_kernel(kernel, x.astype(np.float64), y.astype(np.float64), 2.5)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_unknown_kernel_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid kernels: energy, imq, laplacian, linear, polynomial, rbf"):
        mmd2(*_sample(), kernel="gauss")


@pytest.mark.parametrize("estimator", list(ESTIMATORS), ids=list(ESTIMATORS))
def test_energy_kernel_mmd2_is_energy_distance(estimator: str) -> None:
    x, y = _sample(d=4)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    dxx, dyy, dxy = cdist(x64, x64), cdist(y64, y64), cdist(x64, y64)
    n, m = len(x), len(y)
    if ESTIMATORS[estimator]:  # U-statistic: within-sample means over distinct pairs
        want = 2 * dxy.mean() - dxx.sum() / (n * (n - 1)) - dyy.sum() / (m * (m - 1))
    else:
        want = 2 * dxy.mean() - dxx.mean() - dyy.mean()
    assert mmd2(x, y, kernel="energy", unbiased=ESTIMATORS[estimator]) == pytest.approx(want, rel=1e-6)


def test_biased_energy_mmd2_matches_scipy_energy_distance_in_1d() -> None:
    x, y = _sample(d=1)
    want = scipy_energy(x[:, 0].astype(np.float64), y[:, 0].astype(np.float64)) ** 2
    assert mmd2(x[:, 0], y[:, 0], kernel="energy", unbiased=False) == pytest.approx(want, rel=1e-6)


def test_row_blocks_give_the_single_block_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _sample()
    whole = mmd_test(x, y, n_permutations=200, seed=3)
    monkeypatch.setattr(mmd_module, "BLOCK_BYTES", 4 * 125 * 17)  # 17 rows per block of a 125-row pool
    blocked = mmd_test(x, y, n_permutations=200, seed=3)
    assert blocked.statistic == pytest.approx(whole.statistic, rel=1e-9)
    assert blocked.bandwidth == pytest.approx(whole.bandwidth, rel=1e-12)
    assert blocked.p_value == whole.p_value


def test_median_over_seeded_subsample_above_4000_rows() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(2600, 3)).astype(np.float32), rng.normal(size=(2500, 3)).astype(np.float32)
    result = mmd_test(x, y, n_permutations=1, seed=7)
    assert result.bandwidth_rule == "median_l2(sub4000,seed=7) x1"
    full_median = float(np.median(pdist(np.vstack([x, y]).astype(np.float64))))
    assert result.bandwidth == pytest.approx(full_median, rel=0.02)


@pytest.mark.parametrize("case", ["shifted", "skewed"], ids=["shifted", "skewed"])
def test_jsd_1d_matches_scipy(case: str) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=300) if case == "shifted" else rng.exponential(size=120)
    b = rng.normal(size=250) + 0.5 if case == "shifted" else rng.normal(size=90)
    a, b = a.astype(np.float32), b.astype(np.float32)
    pooled = np.concatenate([a, b]).astype(np.float64)
    p, _ = np.histogram(a, 64, range=(pooled.min(), pooled.max()))
    q, _ = np.histogram(b, 64, range=(pooled.min(), pooled.max()))
    want = jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2
    assert jsd(a, b, projection="none", bins=64, estimator="plugin") == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("projection", ["pca", "random"], ids=["pca", "random"])
def test_jsd_bounds_and_direction(projection: str) -> None:
    """The plug-in estimator lies in [0, 1] (the bias-corrected one may dip below 0: tests/unit/test_jsd.py)."""
    x, y = _sample(n_x=400, n_y=400, d=8)
    options = {"projection": projection, "bins": 64, "estimator": "plugin"}
    same = jsd(x, x[::-1].copy(), **options)
    near = jsd(x, _sample(n_x=400, n_y=400, d=8, seed=1)[0], **options)
    far = jsd(x, y + 3.0, **options)
    assert same == 0.0 and 0.0 < near < far <= 1.0


def test_jsd_pca_equals_1d_jsd_on_the_principal_axis() -> None:
    rng = np.random.default_rng(2)
    x = np.stack([rng.normal(size=500) * 5, rng.normal(size=500) * 0.1], 1).astype(np.float32)
    y = np.stack([rng.normal(size=400) * 5 + 2, rng.normal(size=400) * 0.1], 1).astype(np.float32)
    assert jsd(x, y, n_projections=1) == pytest.approx(jsd(x[:, 0], y[:, 0], projection="none"), abs=1e-3)


def test_same_seed_same_numbers() -> None:
    x, y = _sample(shift=0.1)
    assert mmd_test(x, y, n_permutations=300, seed=4) == mmd_test(x, y, n_permutations=300, seed=4)
    assert jsd(x, y, projection="random", seed=4) == jsd(x, y, projection="random", seed=4)
    groups = (np.repeat(np.arange(10), 7), np.repeat(np.arange(10, 21), 5)[:55])
    a = mmd_test(x, y, n_permutations=300, seed=4, groups_x=groups[0], groups_y=groups[1])
    assert a == mmd_test(x, y, n_permutations=300, seed=4, groups_x=groups[0], groups_y=groups[1])


def test_numpy_and_torch_inputs_agree() -> None:
    x, y = _sample()
    from_numpy = mmd_test(x, y, n_permutations=100)
    assert mmd_test(torch.from_numpy(x), torch.from_numpy(y).double(), n_permutations=100) == from_numpy


def test_p_value_is_plus_one_ratio_and_nan_without_permutations() -> None:
    x, y = _sample(shift=3.0)
    result = mmd_test(x, y, n_permutations=99)
    assert result.p_value == pytest.approx(1 / 100) and result.statistic == pytest.approx(mmd2(x, y))
    assert math.isnan(mmd_test(x, y, n_permutations=0).p_value)


def _with_nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[3, 1] = np.nan
    return a


def _with_inf(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0, 0] = np.inf
    return a


X, Y = _sample(n_x=10, n_y=8)
BAD_INPUTS = {
    "nan_in_x": (dict(x=_with_nan(X)), "x contains NaN or inf"),
    "inf_in_y": (dict(y=_with_inf(Y)), "y contains NaN or inf"),
    "mismatched_d": (dict(y=Y[:, :3]), "x and y must have the same d"),
    "one_row_x": (dict(x=X[:1]), "x needs at least 2 rows"),
    "one_row_y": (dict(y=Y[:1]), "y needs at least 2 rows"),
    "rank_3_x": (dict(x=X[None]), "x must have shape"),
    "groups_x_length": (dict(groups_x=np.arange(9), groups_y=np.arange(8) + 20), "groups_x must be 1-D"),
    "groups_y_alone": (dict(groups_y=np.arange(8)), "groups_x and groups_y must be given together"),
    "groups_shared": (dict(groups_x=np.arange(10) % 2, groups_y=np.arange(8) % 2), "share block ids"),
    "one_block_y": (dict(groups_x=np.arange(10) % 2, groups_y=np.full(8, 5)), "groups_y has 1 distinct"),
    "bandwidth_word": (dict(bandwidth="silverman"), "bandwidth must be 'median'"),
    "bandwidth_negative": (dict(bandwidth=-1.0), "bandwidth must be 'median'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_error_naming_the_input(case: str) -> None:
    overrides, message = BAD_INPUTS[case]
    kwargs = dict(x=X, y=Y, n_permutations=10) | overrides
    with pytest.raises(ValueError, match=message):
        mmd_test(**kwargs)


@pytest.mark.parametrize("name", ["x", "y"], ids=["x", "y"])
def test_jsd_bad_input_names_the_input(name: str) -> None:
    x, y = (_with_nan(X), Y) if name == "x" else (X, _with_inf(Y))
    with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
        jsd(x, y)


def _rejection_rate(trials: int, sample, **test_kwargs) -> float:
    rejected = 0
    for t in range(trials):
        x, y, gx, gy = sample(np.random.default_rng(1000 + t))
        result = mmd_test(x, y, seed=t, groups_x=gx, groups_y=gy, **test_kwargs)
        rejected += result.p_value <= 0.05
    return rejected / trials


def _iid_null(rng: np.random.Generator):
    return rng.normal(size=(30, 5)), rng.normal(size=(30, 5)), None, None


def _blocked_null(rng: np.random.Generator, blocks_per_side: int = 10):
    """Tokens share their block's random offset (like tokens of one image); unequal block sizes."""
    sizes = rng.integers(3, 9, size=2 * blocks_per_side)
    offsets = rng.normal(size=(2 * blocks_per_side, 5))
    ids = np.repeat(np.arange(2 * blocks_per_side), sizes)
    z = offsets[ids] + 0.5 * rng.normal(size=(ids.size, 5))
    in_x = ids < blocks_per_side
    return z[in_x], z[~in_x], ids[in_x], ids[~in_x]


@pytest.mark.slow
def test_null_rejection_rate_is_calibrated() -> None:
    # 1000 trials: binomial sd 0.007, so [0.03, 0.07] is about +-2.9 sd around the nominal 0.05.
    assert 0.03 <= _rejection_rate(1000, _iid_null, n_permutations=200) <= 0.07


@pytest.mark.parametrize("kernel", KERNEL_NAMES, ids=KERNEL_NAMES)
def test_planted_mean_shift_is_rejected(kernel: str) -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 0.8
    assert mmd_test(x, y, kernel=kernel, n_permutations=200).p_value <= 0.01


@pytest.mark.slow
def test_block_permutation_stays_calibrated_where_row_permutation_does_not() -> None:
    def without_groups(rng: np.random.Generator):
        return (*_blocked_null(rng)[:2], None, None)

    row_level = _rejection_rate(200, without_groups, n_permutations=200)
    block_level = _rejection_rate(1000, _blocked_null, n_permutations=200)
    assert row_level > 0.3, f"row-level permutation should over-reject correlated tokens, got {row_level}"
    assert 0.03 <= block_level <= 0.07


def test_block_permutation_ties_count_with_few_blocks() -> None:
    # 3 + 3 blocks: only C(6, 3) = 20 splits, so the observed split (and its mirror) recur and must count.
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 4)) + 5.0
    groups_x, groups_y = np.repeat([0, 1, 2], 4), np.repeat([3, 4, 5], 4)
    result = mmd_test(x, y, n_permutations=400, groups_x=groups_x, groups_y=groups_y)
    assert result.permutation == "block"
    assert 1 / 20 <= result.p_value <= 0.15


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", KERNEL_NAMES, ids=KERNEL_NAMES)
def test_cpu_and_gpu_agree(kernel: str) -> None:
    x, y = _sample(n_x=300, n_y=250)
    cpu = mmd_test(x, y, kernel=kernel, n_permutations=200)
    gpu = mmd_test(x, y, kernel=kernel, n_permutations=200, device="cuda")
    assert gpu.statistic == pytest.approx(cpu.statistic, rel=1e-5)
    assert gpu.p_value == cpu.p_value
    assert jsd(x, y, device="cuda") == pytest.approx(jsd(x, y), rel=1e-5)


def test_median_survives_asymmetric_round_off_in_the_distance_matrix() -> None:
    # 9 points: 36 pairs (even), so σ averages the two middle pairs, read at ranks m + 2r of the full
    # matrix. Nudge the mirror entry of the lower middle pair by one float32 ulp, as GEMM round-off can:
    # σ must still be numpy's median (the larger mirror keeps rank m + 2r).
    z = torch.from_numpy(np.random.default_rng(6).normal(size=(9, 3)).astype(np.float32))
    p = sq_euclidean(z, z).fill_diagonal_(0.0)
    p = torch.minimum(p, p.T)
    upper = p[torch.ones(9, 9, dtype=torch.bool).triu(1)]
    lower_middle = upper.kthvalue(18).values
    i, j = (torch.triu(p == lower_middle, diagonal=1)).nonzero()[0].tolist()
    p[j, i] = torch.nextafter(p[j, i], torch.tensor(np.inf))
    want = float(np.median(pdist(z.double().numpy())))
    assert median_of_pairs(z, p, KERNELS["rbf"]) == pytest.approx(want, rel=1e-12)
