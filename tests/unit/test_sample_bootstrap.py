"""Sample bootstrap (`metrics.bootstrap`): weighted column functions against materialised replicates,
against the 0/1 permutation path, coverage of the BCa interval on a closed-form case, seeding, NaN cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.aggregate import summarize
from experiments.metrics import energy_distance, jsd, sliced_wasserstein
from experiments.metrics.bootstrap import WEIGHTED_FUNCTIONS, sample_bootstrap_ci
from experiments.metrics.energy import energy_columns
from experiments.metrics.inputs import block_index
from experiments.metrics.jsd import jsd_columns
from experiments.metrics.mmd import mmd2_columns
from experiments.metrics.mmd_weighted import WeightedMMD2
from experiments.metrics.permutations import split_masks
from experiments.metrics.sliced import sliced_wasserstein_columns
from experiments.report.summary import summary_text

SIZE = 5  # tokens per sample


def _blocks(seed: int, g: int = 6, d: int = 3, shift: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """x, y `[g * SIZE, d]` float32: tokens of g samples each, y shifted along the first axis."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(g * SIZE, d)).astype(np.float32)
    y = rng.normal(size=(g * SIZE, d)).astype(np.float32)
    y[:, 0] += shift
    return x, y


def _replicate(x: np.ndarray, y: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray):
    """The weights of one replicate (sample multiplicities per token) and the replicate materialised."""
    wx_rows, wy_rows = np.repeat(counts_x, SIZE), np.repeat(counts_y, SIZE)
    n = len(x) + len(y)
    wx, wy = torch.zeros(n, 1), torch.zeros(n, 1)
    wx[: len(x), 0] = torch.from_numpy(wx_rows).float()
    wy[len(x):, 0] = torch.from_numpy(wy_rows).float()
    z = torch.from_numpy(np.concatenate([x, y]))
    return z, wx, wy, np.repeat(x, wx_rows, axis=0), np.repeat(y, wy_rows, axis=0)


COUNTS = (np.array([2, 0, 1, 1, 0, 2]), np.array([0, 3, 1, 1, 1, 0]))


def _rbf(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    d2 = ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma**2))


def _materialised(counts: np.ndarray, by_block: bool) -> tuple[np.ndarray, np.ndarray]:
    """Materialised rows of one side: (source row, copy label) of each; the copy label says which draw a row
    belongs to: per block (`by_block`, a sample drawn twice gives two labels) or per row."""
    source = np.concatenate([np.arange(b * SIZE, (b + 1) * SIZE) for b, c in enumerate(counts) for _ in range(c)])
    draw = np.concatenate([np.full(SIZE, k) for c in counts for k in range(c)])
    unit = source // SIZE if by_block else source
    return source, unit * 100 + draw


def _within_mean(a: np.ndarray, counts: np.ndarray, kernel, keep_self: bool, by_block: bool) -> float:
    """Mean of kernel over the materialised pairs of one side, except pairs of two distinct copies of one
    block (`by_block`) or row, and, unless `keep_self`, a materialised row's pair with itself."""
    source, label = _materialised(counts, by_block)
    unit = label // 100
    k = kernel(a[source], a[source])
    other_copy = (unit[:, None] == unit[None, :]) & (label[:, None] != label[None, :])
    keep = ~other_copy
    if not keep_self:
        keep &= ~np.eye(len(source), dtype=bool)
    return float(k[keep].mean())


def _materialised_reference(x, y, kernel, keep_self: bool, by_block: bool) -> float:
    src_x, _ = _materialised(COUNTS[0], by_block)
    src_y, _ = _materialised(COUNTS[1], by_block)
    return (_within_mean(x, COUNTS[0], kernel, keep_self, by_block)
            + _within_mean(y, COUNTS[1], kernel, keep_self, by_block)
            - 2 * float(kernel(x[src_x], y[src_y]).mean()))


BLOCKS = torch.arange(12).repeat_interleave(SIZE)  # x samples 0-5, y samples 6-11


@pytest.mark.parametrize("by_block", [True, False], ids=["blocks", "rows"])
@pytest.mark.parametrize("unbiased", [True, False], ids=["unbiased", "biased"])
def test_weighted_mmd2_equals_materialised_pairs_of_distinct_draws(unbiased, by_block):
    x, y = _blocks(0)
    z, wx, wy, _, _ = _replicate(x, y, *COUNTS)
    expected = _materialised_reference(x, y, lambda a, b: _rbf(a, b, 1.3), not unbiased, by_block)
    got = float(WEIGHTED_FUNCTIONS["mmd2"](z, wx, wy, bandwidth=1.3, unbiased=unbiased,
                                           blocks=BLOCKS if by_block else None)[0])
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_weighted_energy_equals_materialised_pairs_of_distinct_draws():
    x, y = _blocks(2)
    z, wx, wy, _, _ = _replicate(x, y, *COUNTS)

    def neg_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # energy = MMD² with k = -‖a - b‖
        return -np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1))

    expected = _materialised_reference(x, y, neg_distance, keep_self=True, by_block=True)
    assert float(WEIGHTED_FUNCTIONS["energy"](z, wx, wy, blocks=BLOCKS)[0]) == pytest.approx(expected, rel=1e-5)


def test_weights_must_be_constant_within_a_block():
    x, y = _blocks(2)
    z, wx, wy, _, _ = _replicate(x, y, *COUNTS)
    wx[0, 0] += 1
    with pytest.raises(ValueError, match="constant within each block"):
        WEIGHTED_FUNCTIONS["mmd2"](z, wx, wy, blocks=BLOCKS)


def test_weighted_energy_without_duplicates_equals_energy_distance():
    x, y = _blocks(3)
    z, wx, wy, xm, ym = _replicate(x, y, np.array([1, 0, 1, 1, 0, 1]), np.array([0, 1, 1, 1, 1, 0]))
    assert float(WEIGHTED_FUNCTIONS["energy"](z, wx, wy)[0]) == pytest.approx(energy_distance(xm, ym), rel=1e-4)


def test_weighted_sliced_wasserstein_equals_materialised():
    x, y = _blocks(3)
    z, wx, wy, xm, ym = _replicate(x, y, *COUNTS)
    got = float(WEIGHTED_FUNCTIONS["sliced_wasserstein"](z, wx, wy, n_projections=32, seed=4)[0])
    assert got == pytest.approx(sliced_wasserstein(xm, ym, n_projections=32, seed=4), rel=1e-5)


def test_weighted_jsd_plugin_equals_materialised():
    """1-D, equal-width bins, and a replicate that keeps the samples holding the pooled min and max, so the
    materialised replicate has the same bin edges as the pooled sample."""
    x, y = _blocks(4, d=1)
    pooled = np.concatenate([x, y])[:, 0]
    counts_x, counts_y = COUNTS[0].copy(), COUNTS[1].copy()
    for row in (int(pooled.argmin()), int(pooled.argmax())):
        counts = counts_x if row < len(x) else counts_y
        counts[(row % len(x)) // SIZE] = max(1, counts[(row % len(x)) // SIZE])
    z, wx, wy, xm, ym = _replicate(x, y, counts_x, counts_y)
    options = {"projection": "none", "n_projections": 1, "bins": 12, "estimator": "plugin", "seed": 0}
    got = float(WEIGHTED_FUNCTIONS["jsd"](z, wx, wy, n_x=len(x), **options)[0])
    assert got == pytest.approx(jsd(xm, ym, **options), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("metric", ["mmd2_unbiased", "mmd2_biased", "energy", "jsd", "sliced_wasserstein"])
def test_zero_one_weights_equal_the_permutation_columns(metric):
    """wx = s, wy = 1 - s gives the permutation path's value of every split (block permutations)."""
    x, y = _blocks(5, d=4)
    z = torch.from_numpy(np.concatenate([x, y]))
    g = np.repeat(np.arange(12), SIZE)
    s = split_masks(len(x), len(y), 20, 7, block_index(g[: len(x)], g[len(x):]))
    options: dict = {
        "mmd2_unbiased": {"unbiased": True}, "mmd2_biased": {"unbiased": False}, "energy": {},
        "jsd": {"projection": "pca", "n_projections": 3, "bins": "auto", "estimator": "miller_madow", "seed": 1},
        "sliced_wasserstein": {"n_projections": 16, "seed": 1},
    }[metric]
    plain = {"mmd2_unbiased": mmd2_columns, "mmd2_biased": mmd2_columns, "energy": energy_columns,
             "jsd": jsd_columns, "sliced_wasserstein": sliced_wasserstein_columns}[metric]
    name = metric.removesuffix("_unbiased").removesuffix("_biased")
    extra = {"n_x": len(x)} if name == "jsd" else {}
    weighted = WEIGHTED_FUNCTIONS[name](z, s, 1 - s, **extra, **options).double().cpu()
    assert torch.allclose(weighted, plain(z, s, **options).double().cpu(), rtol=1e-4, atol=1e-6)


def _gaussian_blocks(rng: np.random.Generator, g: int, m: int, shift: float, d: int, tau: float):
    """g samples of m tokens: token = sample mean N(0, tau² I) + N(0, I), first axis shifted."""
    means = rng.normal(size=(g, d)) * tau
    x = (np.repeat(means, m, axis=0) + rng.normal(size=(g * m, d))).astype(np.float32)
    x[:, 0] += shift
    return x, np.repeat(np.arange(g), m)


@pytest.mark.slow
def test_bca_interval_covers_the_population_mmd2():
    """Mean shift of Gaussians with within-sample correlation: the 95% BCa interval of the unbiased MMD²
    (RBF, fixed σ) covers the closed-form population MMD² of the token marginals N(0, s² I) vs
    N(δ e₁, s² I), s² = 1 + τ², in 85-99 of 100 seeded trials (measured: 97 with g = 12 samples per side)."""
    d, tau, shift, sigma, g, m = 2, 0.5, 0.7, 1.5, 12, 6
    v = sigma**2 + 2 * (1 + tau**2)  # E k(X, Y) = (σ² / v)^(d/2) exp(-δ² / (2 v))
    population = 2 * (sigma**2 / v) ** (d / 2) * (1 - math.exp(-shift**2 / (2 * v)))
    hits = 0
    for trial in range(100):
        rng = np.random.default_rng(trial)
        x, gx = _gaussian_blocks(rng, g, m, 0.0, d, tau)
        y, gy = _gaussian_blocks(rng, g, m, shift, d, tau)
        ci = sample_bootstrap_ci(x, y, "mmd2", groups_x=gx, groups_y=gy + g, n_resamples=100, seed=trial,
                                 bandwidth=sigma)
        hits += ci.low <= population <= ci.high
    assert 85 <= hits <= 99


def test_same_seed_same_interval():
    x, y = _blocks(6)
    g = np.repeat(np.arange(12), SIZE)
    kwargs = {"groups_x": g[: len(x)], "groups_y": g[len(x):], "n_resamples": 50}
    first = sample_bootstrap_ci(x, y, "energy", seed=3, **kwargs)
    assert first == sample_bootstrap_ci(x, y, "energy", seed=3, **kwargs)
    assert first.method == "BCa" and first.low < first.high
    assert first != sample_bootstrap_ci(x, y, "energy", seed=4, **kwargs)


@pytest.mark.parametrize("metric", ["c2st_auc", "mmd_agg"])
def test_metrics_without_weighted_form_give_nan(metric):
    x, y = _blocks(7)
    g = np.repeat(np.arange(12), SIZE)
    ci = sample_bootstrap_ci(x, y, metric, groups_x=g[: len(x)], groups_y=g[len(x):], n_resamples=50)
    assert math.isnan(ci.low) and math.isnan(ci.high) and ci.method == "none"


def test_zero_resamples_is_off():
    x, y = _blocks(8)
    ci = sample_bootstrap_ci(x, y, "mmd2", groups_x=None, groups_y=None, n_resamples=0)
    assert math.isnan(ci.low) and ci.method == "none"


def test_bad_level_is_rejected():
    x, y = _blocks(9)
    with pytest.raises(ValueError, match="confidence_level"):
        sample_bootstrap_ci(x, y, "mmd2", groups_x=None, groups_y=None, n_resamples=10, confidence_level=1.5)


def _result_rows() -> pd.DataFrame:
    rows = []
    for split in range(3):
        for comparison in ("image_vs_text", "image_vs_image", "text_vs_text"):
            value = 1.0 if comparison == "image_vs_text" else 0.0
            rows.append({"model": "m", "benchmark": "b", "layer": "late", "layer_index": 3, "key_site": "post_rope",
                         "comparison": comparison, "metric": "mmd2", "kernel": "rbf", "split": split,
                         "value": value + 0.01 * split, "p_value": 0.01, "null_mean": 0.0, "null_std": 0.1,
                         "value_centered": value, "value_z": value / 0.1, "ci_low": value - 0.1 - split / 10,
                         "ci_high": value + 0.1 + split / 10, "n_x": 10, "n_y": 10, "seed": 0, "job": 0,
                         "prompt_style": "vlmevalkit"})
    return pd.DataFrame(rows)


def test_summary_csv_has_the_median_sample_interval():
    summary = summarize(_result_rows()).set_index("comparison")
    assert summary.loc["image_vs_text", "sample_ci_low"] == pytest.approx(0.8)  # median of 0.9, 0.8, 0.7
    assert summary.loc["image_vs_text", "sample_ci_high"] == pytest.approx(1.2)


def test_job_summary_shows_the_mean_sample_interval():
    text = summary_text(_result_rows().drop(columns="job"), "header")
    assert "sample CI(image_vs_text) [0.8000, 1.2000]" in text


def test_batch_bounds_the_replicates_per_call(monkeypatch):
    """BCa's jackknife makes one replicate per sample: `batch` keeps every call to `batch` columns."""
    from experiments.metrics import bootstrap

    widths: list[int] = []
    prepare = bootstrap.PREPARED["energy"]  # wrapped below, so the jackknife runs as weight columns too

    def spy(z, **options):
        fn = prepare(z, **options)

        def columns(wx, wy):
            widths.append(wx.shape[1])
            return fn(wx, wy)
        return columns

    monkeypatch.setitem(bootstrap.PREPARED, "energy", spy)
    x, y = _blocks(10, g=20)
    g = np.repeat(np.arange(40), SIZE)
    kwargs = {"groups_x": g[: len(x)], "groups_y": g[len(x):], "n_resamples": 30}
    whole = sample_bootstrap_ci(x, y, "energy", **kwargs)
    assert max(widths) >= 30  # unbatched: all replicates (and a side's 20 jackknife ones) in one call
    widths.clear()
    batched = sample_bootstrap_ci(x, y, "energy", batch=4, **kwargs)
    assert max(widths) <= 4 and sum(widths) >= 30 + 40  # every bootstrap and jackknife replicate, 4 at a time
    assert batched.method == whole.method == "BCa" and batched.low < batched.high
    with pytest.raises(ValueError, match="batch"):
        sample_bootstrap_ci(x, y, "energy", batch=0, **kwargs)


@pytest.mark.parametrize(("metric", "options"), [("mmd2", {"bandwidth": 1.3, "unbiased": True}),
                                                 ("mmd2", {"bandwidth": 0.7, "unbiased": False}),
                                                 ("energy", {})])
def test_leave_one_block_out_equals_the_metric_without_that_sample(metric, options):
    """Closed-form jackknife values against the plain metric (`mmd2`, scipy-checked) on the data minus a sample."""
    from experiments.metrics import mmd2

    x, y = _blocks(11, g=5, d=4)
    z = torch.from_numpy(np.concatenate([x, y]))
    blocks = torch.arange(10).repeat_interleave(SIZE)
    kernel = {"kernel": "energy", "unbiased": False} if metric == "energy" else {"kernel": "rbf", **options}
    got = WeightedMMD2(z, blocks=blocks, **kernel).leave_one_block_out(len(x))
    for b in range(10):
        keep = (blocks != b).numpy()
        expected = mmd2(x[keep[: len(x)]], y[keep[len(x):]], **kernel)
        assert got[b] == pytest.approx(expected, rel=1e-5, abs=1e-7), b


@pytest.mark.parametrize("metric", ["mmd2", "energy"])
def test_closed_form_jackknife_gives_scipys_interval(metric, monkeypatch):
    """The interval with the closed-form jackknife equals scipy's own (every left-out set as weight columns)."""
    from experiments.metrics import bootstrap

    x, y = _blocks(12, g=9)
    g = np.repeat(np.arange(18), SIZE)
    kwargs = {"groups_x": g[: len(x)], "groups_y": g[len(x):], "n_resamples": 60, "seed": 5}
    fast = sample_bootstrap_ci(x, y, metric, **kwargs)
    monkeypatch.setattr(bootstrap, "_left_out_block", lambda ids, n_blocks: None)
    slow = sample_bootstrap_ci(x, y, metric, **kwargs)
    assert fast.method == slow.method == "BCa"
    assert (fast.low, fast.high) == pytest.approx((slow.low, slow.high), rel=1e-6)
