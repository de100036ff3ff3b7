"""Aggregated MMD (`mmd_agg`): level, power, components against `mmd2`, the fusion against a float64 oracle."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.config import MetricConfig, register_configs
from experiments.metrics import mmd2, mmd_agg_test, permutation_test
from experiments.metrics.splits import compare_modalities, plan_splits, rows_needed
from experiments.report.summary import summary_text
from experiments.validation import ConfigError, check

from ..conftest import REPO

SCALES = [0.25, 0.5, 1.0, 2.0, 4.0]


def _blocks(gen: torch.Generator, n_blocks: int, rows: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_blocks` samples of `rows` correlated tokens each (shared per-sample offset): `[n_blocks*rows, d]`, ids."""
    centre = torch.randn(n_blocks, 1, d, generator=gen) * 0.7
    x = (centre + torch.randn(n_blocks, rows, d, generator=gen)).reshape(n_blocks * rows, d)
    return x, torch.arange(n_blocks).repeat_interleave(rows)


def _perturbed_uniform(gen: torch.Generator, n: int, freq: float, amp: float = 0.9) -> torch.Tensor:
    """`[n, 1]` draws from the density 1 + amp sin(2π freq u) on [0, 1] (rejection sampling): a fine-scale change."""
    out: list[torch.Tensor] = []
    while sum(len(o) for o in out) < n:
        u, a = torch.rand(4 * n, generator=gen), torch.rand(4 * n, generator=gen)
        out.append(u[a < (1 + amp * torch.sin(2 * math.pi * freq * u)) / (1 + amp)])
    return torch.cat(out)[:n, None]


def test_type_one_error_with_block_structure_is_at_level():
    gen, trials, rejections = torch.Generator().manual_seed(0), 600, 0
    for trial in range(trials):
        (x, gx), (y, gy) = _blocks(gen, 10, 5, 3), _blocks(gen, 10, 5, 3)
        test = permutation_test(x, y, "mmd_agg", n_permutations=99, seed=trial, groups_x=gx, groups_y=gy + 100)
        rejections += test.p_value <= 0.05
    assert 0.02 <= rejections / trials <= 0.08


def test_finds_a_fine_scale_change_the_median_bandwidth_misses():
    gen, trials = torch.Generator().manual_seed(1), 100
    agg = single = 0
    for trial in range(trials):
        x, y = torch.rand(150, 1, generator=gen), _perturbed_uniform(gen, 150, freq=3)
        agg += permutation_test(x, y, "mmd_agg", n_permutations=99, seed=trial).p_value <= 0.05
        single += permutation_test(x, y, "mmd2", n_permutations=99, seed=trial).p_value <= 0.05
    assert agg / trials >= 0.6 and agg >= single  # measured 0.84 vs 0.19


def test_components_equal_independent_mmd2_and_their_own_tests():
    gen = torch.Generator().manual_seed(2)
    (x, gx), (y, gy) = _blocks(gen, 8, 6, 5), _blocks(gen, 8, 6, 5)
    y = y + 0.3
    agg = mmd_agg_test(x, y, n_permutations=200, seed=3, groups_x=gx, groups_y=gy + 100,
                       kernels=["rbf", "laplacian", "imq"], bandwidth_scales=SCALES)
    assert [c.label for c in agg.components] == [f"{k}@{c:g}" for k in ("rbf", "laplacian", "imq") for c in SCALES]
    for comp in agg.components:
        expected = mmd2(x, y, kernel=comp.kernel, bandwidth=comp.sigma)
        assert comp.statistic == pytest.approx(expected, rel=1e-9, abs=1e-15), comp.label
        own = permutation_test(x, y, "mmd2", n_permutations=200, seed=3, groups_x=gx, groups_y=gy + 100,
                               kernel=comp.kernel, bandwidth=comp.sigma)
        assert comp.p_value == own.p_value and comp.null_std == pytest.approx(own.null_std, rel=1e-9)
    # the median component's σ is the median heuristic mmd2 uses
    median = permutation_test(x, y, "mmd2", n_permutations=0, seed=3)
    assert agg.components[2].statistic == pytest.approx(median.statistic, rel=1e-9)
    # the engine's mmd_agg and mmd_agg_test agree
    engine = permutation_test(x, y, "mmd_agg", n_permutations=200, seed=3, groups_x=gx, groups_y=gy + 100,
                              kernels=["rbf", "laplacian", "imq"], bandwidth_scales=SCALES)
    assert (engine.statistic, engine.p_value) == (agg.statistic, agg.p_value)


def _fuse_oracle(x: np.ndarray, y: np.ndarray, scales: list[float], temperature: float) -> float:
    """The observed FUSE in float64 numpy, from the module docstring's formula (rbf and laplacian)."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, n_x, n_y = len(z), len(x), len(y)
    l2 = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    l1 = np.abs(z[:, None] - z[None]).sum(-1)
    off = ~np.eye(n, dtype=bool)
    u = []
    for dist, kernel in ((l2, lambda d, s: np.exp(-d**2 / (2 * s**2))), (l1, lambda d, s: np.exp(-d / s))):
        median = np.median(dist[np.triu_indices(n, 1)])
        for c in scales:
            k = kernel(dist, median * c)
            kxx, kyy, kxy = k[:n_x, :n_x], k[n_x:, n_x:], k[:n_x, n_x:]
            value = ((kxx.sum() - np.trace(kxx)) / (n_x * (n_x - 1)) + (kyy.sum() - np.trace(kyy)) / (n_y * (n_y - 1))
                     - 2 * kxy.mean())
            h = np.eye(n) - 1.0 / n
            norm = np.sqrt((((h @ k @ h) ** 2)[off]).sum() / (n * (n - 1)))
            u.append(value / (norm * np.sqrt(2) * (1 / n_x + 1 / n_y)))
    u_arr = np.array(u)
    return float((np.log(np.mean(np.exp(temperature * u_arr)))) / temperature)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0], ids=["tau0.5", "tau1", "tau4"])
def test_fused_value_matches_a_float64_oracle(temperature: float):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(25, 3)) + 0.4
    got = permutation_test(x, y, "mmd_agg", n_permutations=0, seed=0, bandwidth_scales=[0.5, 1.0, 2.0],
                           temperature=temperature).statistic
    assert got == pytest.approx(_fuse_oracle(x, y, [0.5, 1.0, 2.0], temperature), rel=1e-5)


@pytest.mark.parametrize(("options", "match"), [
    ({"kernels": ["rbf", "gauss"]}, "valid kernels: imq, laplacian, rbf"),
    ({"kernels": ["linear"]}, "valid kernels"),
    ({"bandwidth_scales": [1.0, -2.0]}, "bandwidth_scales"),
    ({"temperature": 0.0}, "temperature"),
], ids=["unknown_kernel", "no_bandwidth", "negative_scale", "zero_temperature"])
def test_bad_collection_is_refused(options: dict, match: str):
    with pytest.raises(ValueError, match=match):
        permutation_test(np.zeros((4, 2)), np.ones((4, 2)), "mmd_agg", n_permutations=5, seed=0, **options)
    fields = {"kernels": "agg_kernels", "bandwidth_scales": "agg_bandwidth_scales", "temperature": "agg_temperature"}
    metric = MetricConfig(names=["mmd_agg"], **{fields[k]: v for k, v in options.items()})
    with pytest.raises(ConfigError, match=f"metric.{fields[next(iter(options))]}="):
        check(metric, "metric.")


def test_composed_config_runs_through_compare_modalities():
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["paths.cache_dir=/tmp/x", "metric=mmd_agg",
                                                       "metric.n_permutations=30"])
    job = OmegaConf.to_object(cfg)
    metric, kernel = job.metric, job.kernel
    assert metric.names == ["mmd_agg"] and metric.agg_kernels == ["rbf", "laplacian"]
    g = torch.Generator().manual_seed(5)
    sample = torch.arange(12).repeat_interleave(30)
    is_image = torch.arange(30).repeat(12) < 10
    keys = torch.randn(len(sample), 6, generator=g) + 1.5 * is_image[:, None].float()
    splits = plan_splits(is_image.numpy(), sample.numpy(), n_splits=2, max_tokens_per_group=100, seed=0)
    needed = rows_needed(splits)
    rows = pd.DataFrame(compare_modalities(keys[torch.from_numpy(needed)], needed, sample.numpy(), splits, seed=0,
                                           metric=metric, kernel=kernel, device="cpu"))
    labels = ["agg"] + [f"{k}@{c:g}" for k in ("rbf", "laplacian") for c in SCALES]
    assert len(rows) == 2 * 3 * len(labels) and (rows["metric"] == "mmd_agg").all()
    assert list(rows["kernel"][:len(labels)]) == labels
    fused = rows[rows["kernel"] == "agg"].set_index(["comparison", "split"])
    assert (fused.loc["image_vs_text", "p_value"] == 1 / 31).all()
    assert (fused.loc[["image_vs_image", "text_vs_text"], "p_value"] > 0.05).all()
    assert ((rows["value_centered"] - (rows["value"] - rows["null_mean"])).abs() < 1e-12).all()
    # the summary shows the fused test only
    rows[["layer_index", "layer"]] = [0, "0"]
    text = summary_text(rows, "header")
    assert text.count("mmd_agg") == 1 and "cross/intra" in text
