"""Energy distance, sliced Wasserstein and the classifier two-sample AUC against scipy and known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import energy_distance as scipy_energy
from scipy.stats import wasserstein_distance

from experiments.metrics import c2st_auc, energy_distance, sliced_wasserstein

PAIRS_1D = {
    "normal_shift": lambda rng: (rng.normal(size=200), rng.normal(size=150) + 0.4),
    "exp_vs_normal": lambda rng: (rng.exponential(size=90), rng.normal(size=130)),
    "ties": lambda rng: (rng.integers(0, 5, size=60) * 1.0, rng.integers(0, 7, size=45) * 1.0),
}


def _pair(case: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = PAIRS_1D[case](np.random.default_rng(0))
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("case", list(PAIRS_1D), ids=list(PAIRS_1D))
def test_energy_distance_matches_scipy_in_1d(case: str) -> None:
    a, b = _pair(case)
    want = scipy_energy(a.astype(float), b.astype(float)) ** 2
    assert energy_distance(a, b) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("case", list(PAIRS_1D), ids=list(PAIRS_1D))
def test_sliced_wasserstein_matches_scipy_in_1d(case: str) -> None:
    a, b = _pair(case)
    want = wasserstein_distance(a.astype(float), b.astype(float))
    assert sliced_wasserstein(a, b, n_projections=4) == pytest.approx(want, rel=1e-6)


def test_sliced_wasserstein_is_seeded_and_grows_with_shift() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(250, 8))
    assert sliced_wasserstein(x, y, seed=3) == sliced_wasserstein(x, y, seed=3)
    assert sliced_wasserstein(x, y) < sliced_wasserstein(x, y + 0.5) < sliced_wasserstein(x, y + 2.0)


def test_sliced_wasserstein_of_a_translation_is_the_mean_projected_shift() -> None:
    # W1 between u and u + c is |c|; for a shift s along every direction θ: mean |θ·s| over θ.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    shift = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    gen_dirs = sliced_wasserstein(x, x + shift, n_projections=64, seed=5)
    w = torch.randn(3, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = (w / w.norm(dim=0)).numpy()
    assert gen_dirs == pytest.approx(np.abs(shift.astype(float) @ w).mean(), rel=1e-5)


def test_c2st_auc_near_half_on_null_and_near_one_when_separated() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 5)), rng.normal(size=(200, 5))
    assert abs(c2st_auc(x, y) - 0.5) < 0.1
    assert c2st_auc(x, y + 3.0) > 0.99


def test_c2st_auc_with_blocks_holds_out_whole_blocks() -> None:
    # Block offsets make tokens of one block alike: row-level folds leak the block identity into the
    # test folds, so a null comparison looks separable; block folds do not.
    rng = np.random.default_rng(4)
    ids = np.repeat(np.arange(40), 10)
    z = 3.0 * rng.normal(size=(40, 20))[ids] + rng.normal(size=(400, 20))
    x, y, gx, gy = z[ids < 20], z[ids >= 20], ids[ids < 20], ids[ids >= 20]
    by_block = c2st_auc(x, y, groups_x=gx, groups_y=gy)
    by_row = c2st_auc(x, y)
    assert abs(by_block - 0.5) < 0.15 and by_row > by_block + 0.2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(folds=1), "folds must be an int >= 2"),
        (dict(groups_x=np.arange(10)), "given together"),
        (dict(groups_x=np.arange(10) % 3, groups_y=np.arange(12) % 2 + 3), "needs at least 5 rows"),
    ],
    ids=["one_fold", "groups_x_alone", "too_few_blocks"],
)
def test_c2st_bad_arguments(kwargs: dict, message: str) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=message):
        c2st_auc(rng.normal(size=(10, 3)), rng.normal(size=(12, 3)), **kwargs)
