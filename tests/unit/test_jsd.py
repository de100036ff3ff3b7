"""JSD estimators against independent oracles, and `jsd_columns` against `jsd` split by split.

Oracles: the JSD of two known 1-D densities integrated by `scipy.integrate.quad` in float64; scipy's
`jensenshannon` on histograms built here with numpy (equal-width and equal-mass); the Miller-Madow
formula written out in numpy; JSD = 1 for disjoint supports; and same-distribution draws, whose
corrected JSD must centre on 0 at 300 tokens per group.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import integrate, stats
from scipy.spatial.distance import jensenshannon

from experiments.config import JobConfig, register_configs
from experiments.metrics.jsd import auto_bins, jsd, jsd_columns, parse_bins

from ..conftest import REPO

PAIRS = {  # name -> the two densities, as frozen scipy distributions
    "shift_0.5": (stats.norm(0, 1), stats.norm(0.5, 1)),
    "shift_1": (stats.norm(0, 1), stats.norm(1, 1)),
    "shift_2": (stats.norm(0, 1), stats.norm(2, 1)),
    "scale_2": (stats.norm(0, 1), stats.norm(0, 2)),
}
NULLS = {  # name -> (draw, n_x, n_y, d)
    "normal_1d": (lambda r, n, d: r.normal(size=(n, d)), 300, 300, 1),
    "t3_1d_unequal": (lambda r, n, d: r.standard_t(3, size=(n, d)), 300, 150, 1),
    "normal_d64_pca": (lambda r, n, d: r.normal(size=(n, d)), 300, 300, 64),
    "t3_d64_pca": (lambda r, n, d: r.standard_t(3, size=(n, d)), 300, 300, 64),
}


def _quad_jsd(p: stats.rv_continuous, q: stats.rv_continuous) -> float:
    """JSD in bits of two densities by numerical integration (float64)."""

    def integrand(t: float) -> float:
        a, b = p.pdf(t), q.pdf(t)
        m = (a + b) / 2
        return (a * math.log2(a / m) if a > 0 else 0.0) / 2 + (b * math.log2(b / m) if b > 0 else 0.0) / 2

    return integrate.quad(integrand, -math.inf, math.inf, epsabs=1e-12, limit=200)[0]


def _equal_mass_counts(a: np.ndarray, b: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of a and b in bins with edges at the pooled float64 quantiles j / bins (value on an edge: above)."""
    edges = np.quantile(np.concatenate([a, b]).astype(np.float64), np.arange(1, bins) / bins)
    count = [np.bincount(np.searchsorted(edges, v, side="right"), minlength=bins) for v in (a, b)]
    return count[0], count[1]


def _ref_miller_madow(cx: np.ndarray, cy: np.ndarray) -> float:
    """JSD_MM = H(m) + b_m - (H(p) + b_p + H(q) + b_q) / 2 in bits, as in the module docstring."""
    nx, ny = cx.sum(), cy.sum()
    p, q = cx / nx, cy / ny
    m = (p + q) / 2

    def entropy(v: np.ndarray) -> float:
        return float(-np.sum(v[v > 0] * np.log2(v[v > 0])))

    b_p, b_q = (np.count_nonzero(cx) - 1) / (2 * nx * math.log(2)), (np.count_nonzero(cy) - 1) / (2 * ny * math.log(2))
    on = m > 0
    b_m = np.sum((p * (1 - p) / nx + q * (1 - q) / ny)[on] / m[on]) / (8 * math.log(2))
    return entropy(m) + b_m - (entropy(p) + b_p + entropy(q) + b_q) / 2


@pytest.mark.parametrize("pair", list(PAIRS), ids=list(PAIRS))
def test_corrected_jsd_matches_integrated_jsd_at_5000_per_group(pair: str) -> None:
    p, q = PAIRS[pair]
    rng = np.random.default_rng(3)
    x, y = p.rvs(size=5000, random_state=rng), q.rvs(size=5000, random_state=rng)
    value = jsd(x, y, projection="none", bins="auto", estimator="miller_madow")
    assert value == pytest.approx(_quad_jsd(p, q), abs=0.02)


@pytest.mark.parametrize("binning", ["equal_width", "equal_mass"], ids=["equal_width", "equal_mass"])
def test_plugin_equals_scipy_on_the_same_histograms(binning: str) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.exponential(size=400).astype(np.float32), (rng.normal(size=170) + 1).astype(np.float32)
    if binning == "equal_width":
        pooled = np.concatenate([a, b]).astype(np.float64)
        cx, cy = (np.histogram(v, 40, range=(pooled.min(), pooled.max()))[0] for v in (a, b))
        bins: int | str = 40
    else:
        cx, cy = _equal_mass_counts(a, b, auto_bins(170))
        bins = "auto"
    want = jensenshannon(cx / cx.sum(), cy / cy.sum(), base=2) ** 2
    assert jsd(a, b, projection="none", bins=bins, estimator="plugin") == pytest.approx(want, rel=1e-12)
    mm = jsd(a, b, projection="none", bins=bins, estimator="miller_madow")
    assert mm == pytest.approx(_ref_miller_madow(cx, cy), rel=1e-12)


def test_disjoint_supports_give_exactly_one_with_unequal_sizes() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 1, size=300), rng.uniform(2, 3, size=120)  # the gap is wider than a bin
    for estimator in ("plugin", "miller_madow"):
        assert jsd(x, y, projection="none", bins=30, estimator=estimator) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("case", list(NULLS), ids=list(NULLS))
def test_same_distribution_draws_centre_on_zero_after_correction(case: str) -> None:
    draw, n_x, n_y, d = NULLS[case]
    projection = "none" if d == 1 else "pca"
    corrected, plugin = [], []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        x, y = draw(rng, n_x, d), draw(rng, n_y, d)
        corrected.append(jsd(x, y, projection=projection, bins="auto", estimator="miller_madow"))
        plugin.append(jsd(x, y, projection=projection, bins=64, estimator="plugin"))
    values = np.array(corrected)
    assert abs(values.mean()) <= 0.01 and np.mean(np.abs(values) <= 0.01) >= (0.75 if d == 1 else 0.95)
    assert np.mean(plugin) > 0.04  # the historical estimator is biased on the same draws


@pytest.mark.parametrize("estimator", ["plugin", "miller_madow"], ids=["plugin", "miller_madow"])
@pytest.mark.parametrize("projection", ["pca", "random"], ids=["pca", "random"])
def test_jsd_is_column_zero_of_jsd_columns(projection: str, estimator: str) -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(90, 12)), rng.normal(size=(60, 12)) + 0.3
    z = torch.cat([torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)])
    masks = torch.zeros(150, 3)
    masks[:90, 0] = 1
    masks[torch.randperm(150, generator=torch.Generator().manual_seed(0))[:90], 1:] = 1
    options = dict(projection=projection, n_projections=5, bins="auto", estimator=estimator, seed=7)
    assert jsd(x, y, **options) == float(jsd_columns(z, masks, **options)[0])


@pytest.mark.parametrize("bins", [16, "auto"], ids=["equal_width", "auto"])
@pytest.mark.parametrize("estimator", ["plugin", "miller_madow"], ids=["plugin", "miller_madow"])
def test_every_column_is_the_jsd_of_its_split(bins: int | str, estimator: str) -> None:
    rng = np.random.default_rng(5)
    z = torch.as_tensor(rng.normal(size=(130, 6)) + np.repeat(rng.normal(size=(13, 6)), 10, 0), dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    if bins == "auto":  # the bin count follows the observed split, so keep its sizes in every column
        masks = torch.stack([torch.arange(130) < 70] + [torch.randperm(130, generator=gen) < 70 for _ in range(6)], 1)
    else:  # block permutations of 13 blocks of 10 rows: n_x differs between columns
        blocks = [torch.arange(13) < 7] + [torch.randperm(13, generator=gen) < k for k in (4, 5, 6, 8, 9, 3)]
        masks = torch.stack([b.repeat_interleave(10) for b in blocks], 1)
    options = dict(projection="random", n_projections=4, bins=bins, estimator=estimator, seed=3)
    columns = jsd_columns(z, masks.double(), **options)
    assert columns.shape == (7,) and columns.dtype == torch.float64
    for c in range(7):
        side = masks[:, c]
        assert float(columns[c]) == pytest.approx(jsd(z[side], z[~side], **options), rel=1e-12, abs=1e-15)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bins", [16, "auto"], ids=["equal_width", "auto"])
def test_cpu_and_gpu_agree(bins: int | str) -> None:
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(400, 32, generator=gen)
    masks = torch.stack([torch.arange(400) < 250] + [torch.randperm(400, generator=gen) < 250 for _ in range(20)], 1)
    options = dict(projection="random", n_projections=8, bins=bins, estimator="miller_madow", seed=2)
    cpu = jsd_columns(z, masks, **options)
    assert torch.allclose(jsd_columns(z.cuda(), masks.cuda(), **options).cpu(), cpu, rtol=1e-6, atol=1e-9)


def test_auto_bins_is_the_rice_rule_of_a_balanced_pair_of_the_smaller_group() -> None:
    for n_min in (1, 2, 27, 50, 150, 300, 500, 1000, 4000, 10**6):
        b = auto_bins(n_min)
        assert b == math.ceil(2 * (2 * n_min) ** (1 / 3) - 1e-9) and b**3 >= 16 * n_min > (b - 1) ** 3
    assert auto_bins(300) == 17


@pytest.mark.parametrize("bins", ["auto", 64, "64", " 12 "], ids=["auto", "int", "text", "padded"])
def test_parse_bins_accepts_auto_and_positive_integers(bins: int | str) -> None:
    assert parse_bins(bins) == (bins if bins == "auto" else int(bins))


@pytest.mark.parametrize("bins", ["fd", "0", 0, -3, "2.5", True, 2.5], ids=str)
def test_parse_bins_error_names_the_config_field(bins: object) -> None:
    with pytest.raises(ValueError, match=r"metric\.jsd_bins must be 'auto' or a positive integer"):
        parse_bins(bins)  # type: ignore[arg-type]


BAD_CALLS = {  # name -> (masks, other options, message)
    "estimator": (None, {"estimator": "kde"}, "valid estimators: plugin, miller_madow"),
    "bins": (None, {"bins": "sturges"}, "metric.jsd_bins"),
    "mask_rows": (torch.ones(9, 2), {}, r"masks must have shape \[N=10, C\]"),
    "mask_values": (torch.full((10, 1), 0.5), {}, "only 0 and 1"),
    "empty_side": (torch.ones(10, 1), {}, "at least one row on each side"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_jsd_columns_rejects_bad_arguments(case: str) -> None:
    masks, overrides, message = BAD_CALLS[case]
    z = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    if masks is None:
        masks = (torch.arange(10) < 5).float()[:, None]
    options = dict(projection="pca", n_projections=2, bins="auto", estimator="miller_madow", seed=0) | overrides
    with pytest.raises(ValueError, match=message):
        jsd_columns(z, masks, **options)


@pytest.mark.parametrize(("overrides", "bins", "estimator"), [
    ([], "auto", "miller_madow"),
    (["metric=all"], "auto", "miller_madow"),
    (["metric=jsd", "metric.jsd_bins=64", "metric.jsd_estimator=plugin"], "64", "plugin"),
], ids=["default", "all", "historical"])
def test_config_defaults_to_the_corrected_estimator(overrides: list[str], bins: str, estimator: str) -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        job = OmegaConf.to_object(compose(config_name="config", overrides=["paths.cache_dir=/tmp/x", *overrides]))
    assert isinstance(job, JobConfig)
    assert (job.metric.jsd_bins, job.metric.jsd_estimator) == (bins, estimator)
    parse_bins(job.metric.jsd_bins)
