"""`analysis.attention=true` through the whole job on tiny Qwen2.5-VL (M-RoPE, 4 query heads on 2 KV heads):
the rows, their head column and ranges, the figures, and that the key-distance rows are untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir

from experiments.config import register_configs
from experiments.pipeline import run
from experiments.report.schema import ATTENTION_METRICS, RESULT_COLUMNS

from ..conftest import REPO

SMALL = ["benchmark.limit=6", "analysis.n_splits=2", "metric.n_permutations=20", "metric.n_bootstrap=50",
         "report.tsne_points=60", "keys.shard_size=6", "keys.batch_size=6", "logger=none", "model=tiny_qwen",
         "analysis.paired_samples=0"]


def _cfg(cache_dir, overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"paths.cache_dir={cache_dir}", *SMALL, *overrides])


def test_attention_rows_and_figures(tmp_path, cache_dir):
    run(_cfg(cache_dir, ["analysis.attention=true", "analysis.attention_samples=3"]), tmp_path)
    results = pd.read_parquet(tmp_path / "results.parquet")
    assert list(results.columns) == list(RESULT_COLUMNS)
    keys = results[~results["metric"].isin(ATTENTION_METRICS)]
    assert len(keys) == 3 * 3 * 2 * 2 and set(keys["head"]) == {"all"}  # as without the attention stage
    attention = results[results["metric"].isin(ATTENTION_METRICS)]
    assert set(attention["metric"]) == set(ATTENTION_METRICS)
    assert set(attention["layer_index"]) == set(keys["layer_index"])
    per_layer = attention[attention["layer_index"] == 2]
    share = per_layer[per_layer["metric"] == "attn_image_share"]
    assert set(share["comparison"]) == {"text_queries", "last_token", "text_queries_no_sinks", "last_token_no_sinks"}
    assert sorted(share.loc[share["comparison"] == "text_queries", "head"]) == ["0", "1", "2", "3"]
    assert sorted(per_layer.loc[per_layer["metric"] == "mmd2_head", "head"]) == ["0", "1"]  # KV heads
    assert attention.loc[attention["metric"].isin(["attn_image_share", "image_context_share"]), "value"].between(
        0, 1).all()
    context = per_layer[per_layer["metric"] == "image_context_share"]
    assert (context["head"] == "all").all() and context["value"].gt(0).all()
    utilization = per_layer[per_layer["metric"] == "attn_utilization"]
    assert np.isfinite(utilization["value"]).all() and utilization["value"].gt(0).all()
    assert np.isfinite(per_layer.loc[per_layer["metric"] == "logit_gap", "value"]).all()
    rho = attention[attention["metric"] == "spearman_mmd2_share"]
    assert len(rho) == 3 and rho["value"].isna().all()  # 2 KV heads: too few for a rank correlation
    with_ci = share[share["comparison"] == "text_queries"]
    assert (with_ci["ci_low"] <= with_ci["ci_high"]).all()
    for name in ("attention_heatmaps.png", "attention_mmd_vs_share.png", "boxplot.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
