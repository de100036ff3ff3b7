"""The remedy figure of a sweep over interventions and strengths (`experiment=remedy`).

`remedy_figure(results, stem, title)` draws, per model x benchmark (rows), the change against the unmodified
model (intervened - unmodified on the same held-out samples) of option-likelihood accuracy, and at each
intervened layer of the image attention share of text queries and of the key-space MMD² (columns), against
`strength`, one line per intervention (`condition`, dodged sideways a little so equal values stay visible),
with the jobs' paired bootstrap intervals over samples as error bars (MMD² has none). Each row's
label gives the unmodified accuracy. A change of 0 at strength 0 is the identity check made visible.
Only rows of `INTERVENTION_METRICS` are read; nothing is drawn when there are none.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.report.schema import INTERVENTION_METRICS

COLOURS = {"mean_shift": "tab:blue", "coral": "tab:green", "random_shift": "tab:grey",
           "attention_boost": "tab:red"}


def has_interventions(results: pd.DataFrame) -> bool:
    return bool(results["metric"].isin(INTERVENTION_METRICS).any())


def remedy_figure(results: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf` (module docstring); returns the paths ([] without intervention rows)."""
    from experiments.report.figures import new_figure, save_figure

    rows = results[results["metric"].isin(["accuracy_change", "image_share_change", "key_mmd2_change", "accuracy"])]
    if rows.empty:
        return []
    rows = rows.groupby(["model", "benchmark", "condition", "strength", "metric", "layer", "layer_index"],
                        as_index=False)[["value", "ci_low", "ci_high"]].mean()  # repeated jobs: their mean
    panels = [("accuracy_change", "all", "Δ accuracy (option likelihood)")]
    share_layers = rows[rows["metric"] == "image_share_change"][["layer_index", "layer"]].drop_duplicates()
    for index, layer in sorted(share_layers.itertuples(index=False, name=None)):
        panels += [("image_share_change", str(layer), f"Δ image attention share, layer {layer} (#{index})"),
                   ("key_mmd2_change", str(layer), f"Δ key MMD² image vs text, layer {layer} (#{index})")]
    conditions = sorted(rows["condition"].unique())
    span = max(float(rows["strength"].max() - rows["strength"].min()), 1.0)
    groups = list(rows.groupby(["model", "benchmark"], sort=True))
    fig, axes = new_figure(len(groups), len(panels), figsize=(4.2 * len(panels), 3.2 * len(groups) + 0.6))
    for r, ((model, benchmark), part) in enumerate(groups):
        unmodified = part[(part["metric"] == "accuracy") & (part["strength"] == 0)]["value"]
        base = f", unmodified accuracy {unmodified.mean():.3f}" if len(unmodified) else ""
        for c, (metric, layer, label) in enumerate(panels):
            ax = axes[r, c]
            data = part[(part["metric"] == metric) & (part["layer"] == layer)]
            for condition, line in data.groupby("condition", sort=True):
                line = line.sort_values("strength")
                errors = [(line["value"] - line["ci_low"]).clip(lower=0),
                          (line["ci_high"] - line["value"]).clip(lower=0)]
                dodge = (conditions.index(condition) - (len(conditions) - 1) / 2) * 0.012 * span  # overlaps
                ax.errorbar(line["strength"] + dodge, line["value"], yerr=errors, marker="o", capsize=3,
                            label=condition, color=COLOURS.get(str(condition)))
            ax.axhline(0, color="black", linewidth=0.8, linestyle=":")
            ax.set_title(f"{model} / {benchmark}{base}" if c == 0 else f"{model} / {benchmark}", fontsize=9)
            ax.set_xlabel("intervention strength")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=8, title="intervention", title_fontsize=8)
    fig.suptitle(f"{title}\nchange vs the unmodified model on the same held-out samples; bars: paired bootstrap "
                 "interval over samples", fontsize=10)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        save_figure(fig, path)
    return paths
