"""`permutation_test` for every metric against independent oracles.

Oracles: each metric's own function (observed split, and the rows of a permuted split), sklearn's
`RidgeClassifier` for C2ST, `scipy.stats.permutation_test`'s exact p-value on small unblocked samples,
the rejection rate of block permutations on null data with within-sample correlation (type-I error)
and on a planted shift (power).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import permutation_test as scipy_permutation_test

from experiments.metrics import (
    COLUMN_FUNCTIONS,
    c2st_auc,
    energy_distance,
    jsd,
    mmd2,
    mmd_test,
    permutation_test,
    sliced_wasserstein,
)
from experiments.metrics.c2st import _deal_folds, c2st_columns
from experiments.metrics.inputs import block_index
from experiments.metrics.permutations import split_masks

OPTIONS: dict[str, dict] = {  # small settings, so that hundreds of tests run in seconds
    "mmd2": {"kernel": "rbf"},
    "jsd": {"projection": "pca", "n_projections": 1, "bins": "auto", "estimator": "miller_madow"},
    "energy": {},
    "sliced_wasserstein": {"n_projections": 16},
    "c2st_auc": {"folds": 3},
}
METRICS = list(OPTIONS)


def own_value(metric: str, x, y, seed: int, groups_x=None, groups_y=None) -> float:
    """The metric's own function, with the options the engine gets."""
    options = OPTIONS[metric]
    return {
        "mmd2": lambda: mmd2(x, y, seed=seed, **options),
        "jsd": lambda: jsd(x, y, seed=seed, **options),
        "energy": lambda: energy_distance(x, y),
        "sliced_wasserstein": lambda: sliced_wasserstein(x, y, seed=seed, **options),
        "c2st_auc": lambda: c2st_auc(x, y, groups_x=groups_x, groups_y=groups_y, seed=seed, **options),
    }[metric]()


def blocked(rng: np.random.Generator, shift: float = 0.0, blocks_per_side: int = 10, d: int = 3):
    """Tokens share their sample's random offset (like the keys of one image); unequal sample sizes."""
    sizes = rng.integers(3, 9, size=2 * blocks_per_side)
    offsets = rng.normal(size=(2 * blocks_per_side, d))
    ids = np.repeat(np.arange(2 * blocks_per_side), sizes)
    z = offsets[ids] + 0.5 * rng.normal(size=(ids.size, d))
    in_x = ids < blocks_per_side
    return z[in_x], z[~in_x] + shift, ids[in_x], ids[~in_x]


def rejection_rate(metric: str, trials: int, shift: float = 0.0, seed: int = 1000) -> float:
    rejected = 0
    for t in range(trials):
        x, y, gx, gy = blocked(np.random.default_rng(seed + t), shift)
        result = permutation_test(x, y, metric, n_permutations=99, seed=t, groups_x=gx, groups_y=gy,
                                  **OPTIONS[metric])
        rejected += result.p_value <= 0.05
    return rejected / trials


def test_registry_holds_every_metric() -> None:
    assert sorted(COLUMN_FUNCTIONS) == ["c2st_auc", "energy", "jsd", "mmd2", "mmd_agg", "sliced_wasserstein"]


@pytest.mark.parametrize("metric", METRICS, ids=METRICS)
def test_observed_statistic_is_the_metrics_own_value(metric: str) -> None:
    x, y, gx, gy = blocked(np.random.default_rng(0), shift=0.3)
    result = permutation_test(x, y, metric, n_permutations=50, seed=4, groups_x=gx, groups_y=gy,
                              **OPTIONS[metric])
    assert result.statistic == pytest.approx(own_value(metric, x, y, 4, gx, gy), rel=1e-12, abs=1e-15)
    assert (result.metric, result.permutation, result.n_x, result.n_y) == (metric, "block", len(x), len(y))


# Permuted MMD² columns come from a float32 GEMM, the metric's own value from float64 row sums:
# they agree to about 1e-7 of the kernel's scale (1 for rbf, the distances (~3) for energy).
ABS_ROUND_OFF = {"mmd2": 1e-6, "energy": 1e-5}


@pytest.mark.parametrize("metric", ["mmd2", "jsd", "energy", "sliced_wasserstein"],
                         ids=["mmd2", "jsd", "energy", "sliced_wasserstein"])
def test_permuted_columns_are_the_metric_on_the_permuted_rows(metric: str) -> None:
    # Block permutations change the rows per side: each column must use its own n_x.
    x, y, gx, gy = blocked(np.random.default_rng(1), shift=0.3)
    z = torch.from_numpy(np.concatenate([x, y]).astype(np.float32))
    masks = split_masks(len(x), len(y), 4, seed=2, blocks=block_index(gx, gy))
    seed = {} if metric == "energy" else {"seed": 5}  # the energy kernel has no bandwidth to seed
    columns = COLUMN_FUNCTIONS[metric](z, masks, **seed, **OPTIONS[metric])
    assert set(masks[:, 1:].sum(0).tolist()) - {len(x)}  # some column has another number of x rows
    for b in range(1, 5):
        side = masks[:, b] > 0
        want = own_value(metric, z[side], z[~side], 5)
        assert float(columns[b]) == pytest.approx(want, rel=1e-5, abs=ABS_ROUND_OFF.get(metric, 1e-9))


@pytest.mark.parametrize("column", [0, 3], ids=["observed", "permuted"])
@pytest.mark.parametrize("d", [12, 150], ids=["primal", "dual"])  # d below / above the training rows
def test_c2st_columns_match_sklearn_ridge_classifier_on_the_same_folds(d: int, column: int) -> None:
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import roc_auc_score

    x, y, gx, gy = blocked(np.random.default_rng(2), shift=0.4, d=d)
    z = np.concatenate([x, y]).astype(np.float32)
    index, _, _ = block_index(gx, gy)
    masks = split_masks(len(x), len(y), 3, seed=0, blocks=block_index(gx, gy))
    got = c2st_columns(torch.from_numpy(z), masks, units=index, folds=4, alpha=3.0, seed=7)[column]
    folds = _deal_folds(index, masks[:, 0] > 0, 4, 7).numpy()
    zs = (z - z.mean(0)) / z.std(0)  # the pooled, label-free standardisation c2st documents
    labels = 1 - masks[:, column].numpy()
    wins = pairs = 0.0
    for f in range(4):
        test, train = folds == f, folds != f
        scores = RidgeClassifier(alpha=3.0).fit(zs[train], labels[train]).decision_function(zs[test])
        n_y = labels[test].sum()
        n_pairs = n_y * (test.sum() - n_y)
        if n_pairs:
            wins += roc_auc_score(labels[test], scores) * n_pairs
            pairs += n_pairs
    assert float(got) == pytest.approx(wins / pairs, abs=1e-12)


def test_mmd2_engine_is_mmd_test() -> None:
    x, y, gx, gy = blocked(np.random.default_rng(3), shift=0.2)
    engine = permutation_test(x, y, "mmd2", n_permutations=200, seed=9, groups_x=gx, groups_y=gy, kernel="imq")
    direct = mmd_test(x, y, kernel="imq", n_permutations=200, seed=9, groups_x=gx, groups_y=gy)
    fields = ("statistic", "p_value", "null_mean", "null_std", "n_permutations", "permutation")
    assert [getattr(engine, f) for f in fields] == [getattr(direct, f) for f in fields]
    assert engine.estimator == "bandwidth=median, bandwidth_scale=1.0, kernel=imq, unbiased=True"


def test_p_value_and_null_moments_come_from_the_permuted_columns() -> None:
    x, y, gx, gy = blocked(np.random.default_rng(4), shift=0.2)
    result = permutation_test(x, y, "sliced_wasserstein", n_permutations=300, seed=2, groups_x=gx, groups_y=gy,
                              n_projections=16)
    z = torch.from_numpy(np.concatenate([x, y]).astype(np.float32))
    masks = split_masks(len(x), len(y), 300, seed=2, blocks=block_index(gx, gy))
    columns = COLUMN_FUNCTIONS["sliced_wasserstein"](z, masks, n_projections=16, seed=2).double().numpy()
    null = columns[1:]
    assert result.p_value == (1 + np.sum(null >= columns[0])) / 301
    assert result.null_mean == pytest.approx(null.mean(), rel=1e-12)
    assert result.null_std == pytest.approx(null.std(ddof=1), rel=1e-12)


@pytest.mark.parametrize("metric", METRICS, ids=METRICS)
def test_type_one_error_with_within_sample_correlation(metric: str) -> None:
    # 500 null trials: binomial sd 0.0097 at 0.05, so [0.02, 0.08] is about ±3 sd. Measured (seeds
    # 1000-1499): mmd2 0.048, jsd 0.042, energy 0.048, sliced_wasserstein 0.048, c2st_auc 0.032 (C2ST
    # reuses the observed split's balanced folds for every permutation: slightly conservative).
    assert 0.02 <= rejection_rate(metric, trials=500) <= 0.08


@pytest.mark.parametrize("metric", METRICS, ids=METRICS)
def test_power_on_a_planted_shift(metric: str) -> None:
    # 10 samples per side and a shift of 1.5 (offsets have sd 1): measured power 0.96-0.98.
    assert rejection_rate(metric, trials=50, shift=1.5, seed=5000) >= 0.8


SCIPY_TOLERANCE = {metric: 0.06 for metric in METRICS} | {"c2st_auc": 0.2}


@pytest.mark.parametrize("metric", METRICS, ids=METRICS)
def test_agrees_with_scipy_exact_permutation_test(metric: str) -> None:
    # 6 + 6 rows: scipy enumerates all 924 splits (exact p); ours draws B = 999, so |Δp| has sd ≤ 0.016.
    # C2ST differs by design: scipy's statistic deals balanced folds for every split, the engine reuses
    # the observed split's folds (one ridge solve per fold for all splits), so its null is a bit wider.
    n = 6
    for case, shift in (("null_a", 0.0), ("null_b", 0.0), ("shift", 3.0)):
        rng = np.random.default_rng(len(case) + ord(case[-1]))
        z = np.concatenate([rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + shift]).astype(np.float32)
        exact = scipy_permutation_test((np.arange(n), np.arange(n, 2 * n)),
                                       lambda i, j, z=z: own_value(metric, z[i], z[j], 3),
                                       permutation_type="independent", alternative="greater",
                                       n_resamples=np.inf, vectorized=False)
        ours = permutation_test(z[:n], z[n:], metric, n_permutations=999, seed=3, **OPTIONS[metric])
        assert ours.statistic == pytest.approx(exact.statistic, rel=1e-12, abs=1e-15)
        assert abs(ours.p_value - exact.pvalue) <= SCIPY_TOLERANCE[metric], case
        if shift:
            assert ours.p_value <= 0.05 and exact.pvalue <= 0.05, case


@pytest.mark.parametrize("metric", METRICS, ids=METRICS)
def test_same_seed_same_result(metric: str) -> None:
    x, y, gx, gy = blocked(np.random.default_rng(5))

    def run(seed: int):
        return permutation_test(x, y, metric, n_permutations=99, seed=seed, groups_x=gx, groups_y=gy,
                                **OPTIONS[metric])

    first = run(1)
    assert run(1) == first
    assert run(2).null_mean != first.null_mean


def test_without_permutations_only_the_statistic() -> None:
    x, y, _, _ = blocked(np.random.default_rng(6))
    result = permutation_test(x, y, "energy", n_permutations=0, seed=0)
    assert result.statistic == pytest.approx(energy_distance(x, y), rel=1e-12)
    assert math.isnan(result.p_value) and math.isnan(result.null_mean) and math.isnan(result.null_std)
    assert result.permutation == "row"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(metric="wasserstein"), "valid metrics: c2st_auc, energy, jsd, mmd2, mmd_agg, sliced_wasserstein"),
        (dict(metric="sliced_wasserstein", n_projection=8), r"unknown options \['n_projection'\].*n_projections"),
        (dict(metric="c2st_auc", folds=1), "folds must be an int >= 2"),
        (dict(metric="energy", n_permutations=-1), "n_permutations must be an int >= 0"),
        (dict(metric="energy", groups_x=np.arange(10)), "given together"),
    ],
    ids=["unknown_metric", "unknown_option", "bad_option_value", "negative_permutations", "groups_x_alone"],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    rng = np.random.default_rng(0)
    call = dict(x=rng.normal(size=(10, 3)), y=rng.normal(size=(12, 3)), n_permutations=10, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        permutation_test(**call)
