"""Sample-level splits, stratified caps, and every metric wired into the comparison rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.config import KernelConfig, MetricConfig
from experiments.metrics.splits import OPTIONS, _stratified_cap, compare_modalities, plan_splits, rows_needed


def _planted(n_samples: int = 16, tokens: int = 48, d: int = 8, shift: float = 1.5):
    """Image tokens drawn around +shift, text tokens around 0: a known cross-modal gap, no intra-modal one."""
    g = torch.Generator().manual_seed(0)
    sample = torch.arange(n_samples).repeat_interleave(tokens)
    is_image = torch.arange(tokens).repeat(n_samples) < tokens // 3
    keys = torch.randn(len(sample), d, generator=g) + shift * is_image[:, None].float()
    return keys, is_image, sample


def test_every_metric_separates_the_planted_gap_from_the_controls():
    keys, is_image, sample = _planted()
    metric = MetricConfig(names=list(OPTIONS), n_permutations=50, jsd_n_projections=4, sw_n_projections=16,
                          c2st_folds=3)
    splits = plan_splits(is_image.numpy(), sample.numpy(), n_splits=2, max_tokens_per_group=200, seed=0)
    needed = rows_needed(splits)
    rows = pd.DataFrame(compare_modalities(keys[torch.from_numpy(needed)], needed, sample.numpy(), splits, seed=0,
                                           metric=metric, kernel=KernelConfig(), device="cpu"))
    n_agg = len(metric.agg_kernels) * len(metric.agg_bandwidth_scales)  # mmd_agg: fused row + one per component
    assert len(rows) == 2 * 3 * (len(OPTIONS) + n_agg)
    means = rows.groupby(["metric", "comparison"])["value"].mean().unstack()
    for name in set(OPTIONS) - {"c2st_auc"}:
        assert means.loc[name, "image_vs_text"] > 3 * max(means.loc[name, "image_vs_image"],
                                                          means.loc[name, "text_vs_text"], 0.05), name
    assert means.loc["c2st_auc", "image_vs_text"] > 0.95  # AUC: 0.5 under the null
    assert means.loc["c2st_auc", ["image_vs_image", "text_vs_text"]].max() < 0.65
    # every metric has a p-value and a null: the gap is beyond every permutation, the controls sit in the null
    cross, controls = rows[rows["comparison"] == "image_vs_text"], rows[rows["comparison"] != "image_vs_text"]
    assert (cross["p_value"] == 1 / 51).all() and (cross["value_z"] > 2.5).all()
    assert controls.groupby("metric")["value_z"].mean().abs().max() < 2
    assert ((rows["value_centered"] - (rows["value"] - rows["null_mean"])).abs() < 1e-12).all()
    assert (rows["kernel"][~rows["metric"].isin(["mmd2", "mmd_agg"])] == "none").all()
    # text groups (32 tokens x 8 samples) capped at 200 tokens; image groups (16 x 8 = 128) left whole
    assert (rows[rows["comparison"] == "text_vs_text"]["n_x"] == 200).all()
    assert (rows[rows["comparison"] != "text_vs_text"]["n_x"] == 128).all()


def test_stratified_cap_spreads_tokens_over_samples():
    rng = np.random.default_rng(0)
    sample = np.repeat(np.arange(10), [50, 5, 5, 5, 5, 5, 5, 5, 5, 5])
    picked = _stratified_cap(np.arange(len(sample)), sample, 30, rng)
    counts = np.bincount(sample[picked], minlength=10)
    assert len(picked) == 30 and counts.max() - counts.min() <= 1


def test_fewer_than_two_samples_is_refused():
    keys, is_image, sample = _planted(n_samples=1)
    with pytest.raises(ValueError, match="benchmark.limit"):
        plan_splits(is_image.numpy(), sample.numpy(), n_splits=1, max_tokens_per_group=10, seed=0)


def test_unknown_metric_lists_the_valid_ones():
    keys, is_image, sample = _planted()
    splits = plan_splits(is_image.numpy(), sample.numpy(), n_splits=1, max_tokens_per_group=10, seed=0)
    with pytest.raises(ValueError, match="metric.names=.*use one of mmd2"):
        compare_modalities(keys, np.arange(len(keys)), sample.numpy(), splits, seed=0,
                           metric=MetricConfig(names=["mmd"]), kernel=KernelConfig(), device="cpu")


def test_comparisons_on_the_selected_rows_equal_those_on_all_keys():
    """Reading only `rows_needed` gives the same values as holding every key (select, then read)."""
    keys, is_image, sample = _planted(n_samples=12, tokens=40)
    splits = plan_splits(is_image.numpy(), sample.numpy(), n_splits=3, max_tokens_per_group=50, seed=1)
    needed = rows_needed(splits)
    assert len(needed) < len(keys)  # the caps leave tokens out
    options = dict(seed=1, metric=MetricConfig(names=["mmd2", "energy"], n_permutations=20), kernel=KernelConfig(),
                   device="cpu")
    selected = compare_modalities(keys[torch.from_numpy(needed)], needed, sample.numpy(), splits, **options)
    full = compare_modalities(keys, np.arange(len(keys)), sample.numpy(), splits, **options)
    assert selected == full


def test_sink_tokens_are_the_first_position_and_extreme_norms():
    from experiments.metrics.splits import sink_tokens

    position = np.tile(np.arange(10), 3)
    norms = np.ones(30)
    norms[13] = 4.5  # > 4 x the median norm (1.0)
    norms[24] = 3.9
    flagged = sink_tokens(position, norms, norm_factor=4.0)
    assert np.flatnonzero(flagged).tolist() == [0, 10, 13, 20]


def test_no_group_takes_an_ineligible_token():
    keys, is_image, sample = _planted(n_samples=8, tokens=12)
    eligible = np.arange(len(sample)) % 12 != 0  # e.g. every sample's first token is a sink
    splits = plan_splits(is_image.numpy(), sample.numpy(), n_splits=3, max_tokens_per_group=1000, seed=0,
                         eligible=eligible)
    used = rows_needed(splits)
    assert not (~eligible[used]).any()
    everything = rows_needed(plan_splits(is_image.numpy(), sample.numpy(), n_splits=3, max_tokens_per_group=1000,
                                         seed=0))
    assert set(everything) - set(used) == set(np.flatnonzero(~eligible))  # only the sinks are left out


def test_text_sides_split_text_at_the_image_block():
    from experiments.metrics.splits import text_sides

    is_image = np.array([0, 0, 1, 1, 0, 0, 1, 0], dtype=bool)  # sample 0: 6 tokens, sample 1: 2 tokens
    sample = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    position = np.array([0, 1, 2, 3, 4, 5, 0, 1])
    assert text_sides(is_image, sample, position).tolist() == [-1, -1, 0, 0, 1, 1, 0, 1]


def test_position_control_adds_its_groups_and_leaves_the_others_alone():
    from experiments.metrics.splits import text_sides

    keys, is_image, sample = _planted(n_samples=10, tokens=24)
    position = np.tile(np.arange(24), 10)
    is_image_np = is_image.numpy() & False
    is_image_np[(position >= 8) & (position < 16)] = True  # image block in the middle of every sample
    side = text_sides(is_image_np, sample.numpy(), position)
    options = dict(n_splits=2, max_tokens_per_group=50, seed=3)
    plain = plan_splits(is_image_np, sample.numpy(), **options)
    control = plan_splits(is_image_np, sample.numpy(), text_side=side, **options)
    for a, b in zip(plain, control, strict=True):
        assert all(np.array_equal(a.groups[k], b.groups[k]) for k in a.groups)
        assert (position[b.groups["A", "before"]] < 8).all() and (position[b.groups["B", "after"]] >= 16).all()
    needed = rows_needed(control)
    rows = compare_modalities(keys[torch.from_numpy(needed)], needed, sample.numpy(), control, seed=0,
                              metric=MetricConfig(names=["mmd2"], n_permutations=0, n_bootstrap=0),
                              kernel=KernelConfig(), device="cpu")
    assert {r["comparison"] for r in rows} == {"image_vs_text", "image_vs_image", "text_vs_text",
                                               "text_before_vs_text_after"}
