"""The one-screen summary printed at the end of a job."""

from __future__ import annotations

import pandas as pd

from experiments.report.schema import headline


def summary_text(results: pd.DataFrame, header: str) -> str:
    """Mean ± std over splits per layer × metric × comparison, the cross/intra ratio, median p and the
    null-calibrated effect (mean `value_z`: distance from the permutation null in null standard deviations;
    the controls should sit within about ±2), and the cross-modal value's sample-bootstrap interval (`sample CI`:
    the mean over splits of `ci_low` and of `ci_high`; left out when any split has none, e.g. c2st_auc).
    `mmd_agg` shows its fused test only (`schema.headline`)."""
    lines = [header, ""]
    results = headline(results)
    grouped = results.groupby(["layer_index", "layer", "metric", "comparison"], sort=True)["value"]
    stats = grouped.agg(["mean", "std"]).reset_index()
    for (index, layer, metric), part in stats.groupby(["layer_index", "layer", "metric"], sort=True):
        values = part.set_index("comparison")
        cells = [f"{c} {values.loc[c, 'mean']:.4f}±{values.loc[c, 'std']:.4f}"
                 for c in ("image_vs_text", "image_vs_image", "text_vs_text") if c in values.index]
        intra = max(values.loc[["image_vs_image", "text_vs_text"], "mean"].abs().max(), 1e-12)
        line = f"layer {layer:>6} (#{index}) {metric:<5} " + "  ".join(cells)
        line += f"  cross/intra {values.loc['image_vs_text', 'mean'] / intra:,.1f}x"
        if "text_before_vs_text_after" in values.index:  # the position-matched control, when asked for
            line += f"  text before/after image {values.loc['text_before_vs_text_after', 'mean']:.4f}"
        p = results[(results["layer_index"] == index) & (results["metric"] == metric)
                    & (results["comparison"] == "image_vs_text")]["p_value"].dropna()
        if len(p):
            line += f"  median p(image_vs_text) {p.median():.3g}"
        cross = results[(results["layer_index"] == index) & (results["metric"] == metric)
                        & (results["comparison"] == "image_vs_text")]
        if "ci_low" in cross and cross[["ci_low", "ci_high"]].notna().all(axis=None) and len(cross):
            line += f"  sample CI(image_vs_text) [{cross['ci_low'].mean():.4f}, {cross['ci_high'].mean():.4f}]"
        z = results[(results["layer_index"] == index) & (results["metric"] == metric)].groupby("comparison")[
            "value_z"].mean().dropna()
        if {"image_vs_text", "image_vs_image", "text_vs_text"} <= set(z.index):
            line += (f"  z vs null: cross {z['image_vs_text']:+.1f}, controls {z['image_vs_image']:+.1f} / "
                     f"{z['text_vs_text']:+.1f}")
        lines.append(line)
    return "\n".join(lines)
