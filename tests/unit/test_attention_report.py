"""Attention rows in the report: schema defaults, the key-distance views leave them out, the GQA grouping of
the scatter against numpy/scipy, job figures written, and the sweep aggregate per head with Figures 4-5."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image
from scipy.stats import spearmanr

from experiments.aggregate import aggregate
from experiments.report.attention_figures import attention_figures, has_attention, heads_vs_mmd
from experiments.report.schema import ATTENTION_METRICS, RESULT_COLUMNS, headline, results_frame

LAYERS = {"early": 0, "middle": 2, "late": 3}
HEADS, KV_HEADS = 8, 4


def _attention_rows(model: str, rng: np.random.Generator) -> list[dict]:
    """Rows as the attention stage writes them: 8 query heads on 4 KV heads, 3 layers."""
    rows = []
    base = {"model": model, "benchmark": "synthetic", "key_site": "post_rope", "split": 0, "seed": 0,
            "prompt_style": "vlmevalkit", "p_value": np.nan, "n_x": 40, "n_y": 16}
    for layer, index in LAYERS.items():
        where = base | {"layer": layer, "layer_index": index}
        for comparison in ("text_queries", "last_token", "text_queries_no_sinks", "last_token_no_sinks"):
            for head in range(HEADS):
                for metric in ("attn_image_share", "attn_utilization"):
                    rows.append(where | {"comparison": comparison, "metric": metric, "kernel": "none",
                                         "head": str(head), "value": rng.uniform(0.1, 0.6)})
            rows.append(where | {"comparison": comparison, "metric": "image_context_share", "kernel": "none",
                                 "head": "all", "value": 0.3})
        rows += [where | {"comparison": "text_queries", "metric": "logit_gap", "kernel": "none", "head": str(h),
                          "value": rng.normal()} for h in range(HEADS)]
        rows += [where | {"comparison": "image_vs_text", "metric": "mmd2_head", "kernel": "rbf", "head": str(h),
                          "value": rng.uniform(0.05, 0.5)} for h in range(KV_HEADS)]
    return rows


def _key_rows(model: str, rng: np.random.Generator) -> list[dict]:
    return [{"model": model, "benchmark": "synthetic", "layer": layer, "layer_index": index, "key_site": "post_rope",
             "comparison": comparison, "metric": "mmd2", "kernel": "rbf", "split": split,
             "value": rng.normal(0.2, 0.01), "p_value": 0.01, "n_x": 50, "n_y": 60, "seed": 0,
             "prompt_style": "vlmevalkit"}
            for layer, index in LAYERS.items() for comparison in ("image_vs_text", "image_vs_image", "text_vs_text")
            for split in range(3)]


def test_results_frame_defaults_head_and_headline_drops_attention_rows():
    rng = np.random.default_rng(0)
    frame = results_frame(_key_rows("tiny", rng) + _attention_rows("tiny", rng))
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert set(frame.loc[frame["metric"] == "mmd2", "head"]) == {"all"}
    shown = headline(frame)
    assert set(shown["metric"]) == {"mmd2"} and not shown["metric"].isin(ATTENTION_METRICS).any()
    assert has_attention(frame) and not has_attention(shown)
    assert list(results_frame([]).columns) == list(RESULT_COLUMNS)


def test_scatter_groups_query_heads_by_kv_head():
    """Query heads 2j and 2j+1 read KV head j (8 on 4): the share plotted against KV head j is their mean."""
    rows = pd.DataFrame(_attention_rows("tiny", np.random.default_rng(1)))
    data = heads_vs_mmd(rows)
    for index in LAYERS.values():
        share = rows[(rows["metric"] == "attn_image_share") & (rows["comparison"] == "text_queries")
                     & (rows["layer_index"] == index)].sort_values("head", key=lambda h: h.astype(int))
        expected = share["value"].to_numpy().reshape(KV_HEADS, HEADS // KV_HEADS).mean(1)
        got = data[data["layer_index"] == index].sort_values("head")
        np.testing.assert_allclose(got["share"], expected)
        assert np.isfinite(spearmanr(got["mmd2"], got["share"])[0])


def test_job_figures_are_written(tmp_path):
    rows = pd.DataFrame(_attention_rows("tiny", np.random.default_rng(2)))
    paths = attention_figures(rows, tmp_path, "tiny on synthetic")
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > 600 and image.size[1] > 400


def _job(sweep, num, model, rng):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": {"name": model}, "benchmark": {"name": "synthetic"}}),
                   job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), job / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create([f"model={model}"]), job / ".hydra" / "overrides.yaml")
    rows = _key_rows(model, rng) + (_attention_rows(model, rng) if num < 2 else [])
    frame = pd.DataFrame(rows)
    if num == 2:  # a job written before the head column existed
        frame = frame.drop(columns="head", errors="ignore")
    frame.to_parquet(job / "results.parquet")
    (job / "status.json").write_text(json.dumps({"status": "completed"}))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sweep_aggregate_summarises_per_head_and_draws_figures_4_and_5(tmp_path):
    rng = np.random.default_rng(3)
    sweep = tmp_path / "sweep"
    for num, model in enumerate(["tiny_a", "tiny_b", "tiny_c"]):
        _job(sweep, num, model, rng)
    summary = pd.read_csv(aggregate(sweep), keep_default_na=False, na_values=[""])
    share = summary[(summary["metric"] == "attn_image_share") & (summary["comparison"] == "text_queries")]
    assert len(share) == 2 * len(LAYERS) * HEADS  # per model, layer and head
    assert set(summary.loc[summary["metric"] == "mmd2", "head"]) == {"all"}
    results = pd.read_parquet(sweep / "0" / "results.parquet")
    one = results[(results["metric"] == "logit_gap") & (results["head"] == "5") & (results["layer"] == "late")]
    got = summary[(summary["model"] == "tiny_a") & (summary["metric"] == "logit_gap")
                  & (summary["head"].astype(str) == "5") & (summary["layer"] == "late")]
    assert got["mean"].item() == pytest.approx(one["value"].item())
    for stem in ("figure4_attention_heatmaps", "figure5_attention_mmd_vs_share"):
        for suffix in (".png", ".pdf"):
            assert (sweep / f"{stem}{suffix}").stat().st_size > 10_000
