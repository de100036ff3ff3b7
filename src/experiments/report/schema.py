"""The results table's columns, declared once: the pipeline writes them in this order; the aggregate,
the summary and the tests read the names from here. New columns are added here, never re-spelled.
`headline` drops the per-component rows of `mmd_agg` for the job summary and the figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

RESULT_COLUMNS: dict[str, str] = {
    "model": "short model name (model.name)",
    "benchmark": "short benchmark name (benchmark.name)",
    "layer": "layer label: position name (early, middle, late) or the index as text",
    "layer_index": "decoder-layer index, 0-based",
    "head": "attention head: the query-head index for attn_* and logit_gap rows, the KV-head index for mmd2_head "
            "(query head h reads KV head h // (heads / kv_heads)); all for rows over every head",
    "key_site": "post_rope | pre_rope",
    "comparison": "image_vs_text | image_vs_image | text_vs_text | text_before_vs_text_after (position control); "
                  "attention rows: the queries, text_queries (text tokens that see an image key) | last_token (the "
                  "last prompt token), with _no_sinks when sink keys are left out and the attention renormalised",
    "metric": "mmd2 | mmd_agg | jsd | energy | sliced_wasserstein | c2st_auc; attention (ATTENTION_METRICS): "
              "attn_image_share | attn_utilization | image_context_share | logit_gap | mmd2_head | spearman_mmd2_share",
    "kernel": "the MMD kernel; for mmd_agg agg (the fused test) or kernel@scale (one component's MMD^2 and "
              "its own test, e.g. rbf@0.5); none for other metrics",
    "split": "repeat index of the random split of samples into halves",
    "value": "the statistic",
    "p_value": "block-permutation p-value, (1 + #null >= value) / (1 + B); NaN without a test",
    "null_mean": "mean of the permutation null (what the value reads when nothing differs)",
    "null_std": "standard deviation of the permutation null",
    "value_centered": "value - null_mean: the null-calibrated effect (controls centre on 0 for every metric)",
    "value_z": "value_centered / null_std: the effect in null standard deviations",
    "ci_low": "lower end of the value's sample-bootstrap confidence interval (whole samples resampled per side, "
              "BCa, metric.ci_level; percentile where BCa is undefined); NaN when metric.n_bootstrap=0 and for "
              "c2st_auc and mmd_agg",
    "ci_high": "upper end of that interval",
    "n_x": "tokens on the first side",
    "n_y": "tokens on the second side",
    "seed": "analysis.seed",
    "prompt_style": "benchmark.prompt_style",
    "condition": "intervention on image keys (intervention.name) the row was measured under; none for rows of the "
                 "unmodified model",
    "strength": "intervention.strength of that intervention (0 for rows of the unmodified model)",
}

# What a row of a column added after the first results were written reads when the analysis that fills it is off.
COLUMN_DEFAULTS: dict[str, str | float] = {"head": "all", "condition": "none", "strength": 0.0}

# The attention analysis (`experiments.attention`, `analysis.attention=true`): metric name -> meaning.
ATTENTION_METRICS: dict[str, str] = {
    "attn_image_share": "attention mass the queries put on image keys (mean over queries, then over samples)",
    "attn_utilization": "attn_image_share / image_context_share per sample: below 1 means image keys get less "
                        "attention than their share of the visible context",
    "image_context_share": "image keys / all keys the queries can see (head all: the same for every head)",
    "logit_gap": "mean pre-softmax score of text queries on image keys minus on text keys at matched relative "
                 "distance (weighted by the image keys at each distance)",
    "mmd2_head": "MMD^2 between image and text keys of one KV head (pooled over the attention samples)",
    "spearman_mmd2_share": "Spearman rho across KV heads of mmd2_head against attn_image_share (text queries, "
                           "mean over the query heads of each KV head); p_value its test",
}


# The intervention stage (`experiments.interventions`, `intervention.name != none`): metric name -> meaning. Values
# are under the intervention on held-out samples; `_change` = intervened - unmodified on the same samples.
INTERVENTION_METRICS: dict[str, str] = {
    "accuracy": "option-likelihood accuracy (argmax of the option letters' next-token logits) on the held-out "
                "multiple-choice samples (layer all)",
    "accuracy_change": "accuracy - the unmodified model's accuracy on the same samples (paired bootstrap interval)",
    "answer_change_rate": "fraction of scored samples whose chosen letter differs from the unmodified model's",
    "image_share": "attention mass text queries put on image keys at the layer, mean over query heads and samples",
    "image_share_change": "image_share - the unmodified model's (paired bootstrap interval)",
    "key_mmd2": "MMD^2 between the held-out image and text keys at the layer after the intervention (pooled, capped)",
    "key_mmd2_change": "key_mmd2 - the unmodified model's on the same tokens",
}


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as the results table: the columns of `RESULT_COLUMNS` in order, `COLUMN_DEFAULTS` where a row has none."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    for column, default in COLUMN_DEFAULTS.items():
        frame[column] = (frame[column].astype(float).fillna(default) if isinstance(default, float)
                         else frame[column].astype(object).fillna(default))
    return frame


def headline(results: pd.DataFrame) -> pd.DataFrame:
    """The rows a job's summary and key-distance figures show: all but the per-component breakdown rows of
    `mmd_agg`, the attention rows (`ATTENTION_METRICS`, drawn by `report.attention_figures`) and the
    intervention rows (`INTERVENTION_METRICS`, drawn by the aggregate's remedy figure)."""
    components = (results["metric"] == "mmd_agg") & (results["kernel"] != "agg")
    return results[~components & ~results["metric"].isin(ATTENTION_METRICS)
                   & ~results["metric"].isin(INTERVENTION_METRICS)]
