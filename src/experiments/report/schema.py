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
    "key_site": "post_rope | pre_rope",
    "comparison": "image_vs_text | image_vs_image | text_vs_text | text_before_vs_text_after (position control)",
    "metric": "mmd2 | mmd_agg | jsd | energy | sliced_wasserstein | c2st_auc",
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
}


def headline(results: pd.DataFrame) -> pd.DataFrame:
    """The rows a job's summary and figures show: all but the per-component breakdown rows of `mmd_agg`."""
    return results[(results["metric"] != "mmd_agg") | (results["kernel"] == "agg")]
