"""The sweep's figures, in the paper's layout, each written as PNG and PDF.

Figure 1 (`tsne_grid`): one row per model, one column per benchmark x layer (the paper's 2 x 6 grid for
2 models, 2 benchmarks, 3 layers), tokens coloured by modality, from the jobs' `embedding.parquet`.
Figure 2 (`comparison_boxplots`): one panel per metric (and kernel); per model, the image_vs_text values
beside the image_vs_image and text_vs_text controls, pooled over layers, benchmarks and splits, over a
grey band: the permutation null (mean ± 2 sd).
Figure 3 (`depth_profiles`): per model x benchmark (one row each) and metric (one column each), the three
comparisons' mean ± std over splits against decoder-layer index, for sweeps with jobs of 3 or more layers.
Figures 4 and 5 (`attention_figures`, jobs with `analysis.attention=true`): per model, layer x head heatmaps
of the image attention share and of per-head MMD², and per-head MMD² against image attention share with
Spearman's rho per layer (`report.attention_figures`; rows of equal model, layer and head averaged).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from experiments.atomic import atomic_write
from experiments.report.figures import (
    COMPARISON_COLOURS,
    COMPARISON_ORDER,
    PALETTE,
    depth_profile,
    depth_profile_grid,
    new_figure,
    null_band,
)
from experiments.report.schema import headline

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LAYER_ORDER = ["early", "middle", "late"]
MAX_PANELS_PER_ROW = 3  # Figure 2 wraps, e.g. the six kernels of a kernel ablation in 2 rows


def tsne_grid(embedding: pd.DataFrame, stem: Path, title: str,
              layer_indices: Mapping[tuple[str, str], int] | None = None) -> list[Path]:
    """Figure 1 (`tsne_figure`) written as PNG and PDF; returns their paths."""
    return _save_both(tsne_figure(embedding, title, layer_indices), stem)


def tsne_figure(embedding: pd.DataFrame, title: str,
                layer_indices: Mapping[tuple[str, str], int] | None = None) -> Figure:
    """Figure 1: a [models, benchmarks x layers] grid of Axes, tokens coloured by modality.

    Rows are models (sorted; the row's y label is the model), columns benchmark x layer (benchmarks sorted, layers
    early < middle < late < indices; the top row's titles read `<benchmark> · <layer>`): 2 x 6 for the paper's
    2 models, 2 benchmarks and 3 layers. A panel without points says "no job".

    Args:
        embedding: Rows x, y, modality, model, benchmark, layer (one job's points per model/benchmark/layer).
        title: Figure title.
        layer_indices: (model, layer) -> decoder-layer index, written in the panel's corner, since a named
            layer sits at a different index in models of different depth (LLaVA-1.5-7B middle = 16, Qwen2.5-VL-7B
            middle = 14).
    """
    from matplotlib.lines import Line2D

    models = sorted(embedding["model"].unique())
    columns = sorted(set(zip(embedding["benchmark"], embedding["layer"], strict=True)),
                     key=lambda c: (c[0], _layer_key(c[1])))
    fig, axes = new_figure(len(models), len(columns),
                           figsize=(max(2.6 * len(columns), 4.5), 2.6 * len(models) + 1.2))
    for row, model in enumerate(models):
        for col, (benchmark, layer) in enumerate(columns):
            ax = axes[row, col]
            data = embedding[(embedding["model"] == model) & (embedding["benchmark"] == benchmark)
                             & (embedding["layer"] == layer)]
            for modality, colour in PALETTE.items():
                part = data[data["modality"] == modality]
                ax.scatter(part["x"], part["y"], s=4, alpha=0.7, color=colour, linewidths=0, label=modality)
            if data.empty:
                ax.text(0.5, 0.5, "no job", ha="center", va="center", transform=ax.transAxes, color="grey")
            elif layer_indices and (model, layer) in layer_indices and layer != str(layer_indices[model, layer]):
                ax.text(0.03, 0.97, f"layer {layer_indices[model, layer]}", ha="left", va="top", fontsize=7,
                        color="dimgrey", transform=ax.transAxes, zorder=3,
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{benchmark} · {layer}", fontsize=10)
            if col == 0:
                ax.set_ylabel(model, fontsize=10)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=m) for m, c in PALETTE.items()]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(f"t-SNE of attention keys\n{title}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def comparison_boxplots(results: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """One panel per (metric, kernel), 3 per row: model on x, the three comparisons side by side; PNG and PDF paths.

    Args:
        results: Result rows of the completed jobs (columns model, comparison, metric, kernel, value).
        stem: Output path without suffix.
        title: Figure title.
    """
    import seaborn as sns

    results = headline(results)  # mmd_agg: the fused test only; its breakdown is in summary.csv
    panels = list(dict.fromkeys(zip(results["metric"], results["kernel"], strict=True)))
    models = sorted(results["model"].unique())
    n_cols = min(len(panels), MAX_PANELS_PER_ROW)
    n_rows = -(-len(panels) // n_cols)
    fig, axes = new_figure(n_rows, n_cols, figsize=(max(4.0, 1.6 * len(models) + 2.0) * n_cols, 4.0 * n_rows + 0.6))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for number, (ax, (metric, kernel)) in enumerate(zip(axes.flat, panels, strict=False)):
        data = results[(results["metric"] == metric) & (results["kernel"] == kernel)]
        options = dict(data=data, x="model", y="value", hue="comparison", order=models, hue_order=COMPARISON_ORDER,
                       palette=COMPARISON_COLOURS, ax=ax)
        sns.boxplot(**options, showfliers=False, boxprops={"alpha": 0.45})
        sns.stripplot(**options, dodge=True, size=3, alpha=0.8, legend=False)
        ax.axhline(0.0, color="grey", linewidth=0.6, zorder=0)
        null_band(ax, data, "model", models)
        ax.set_title(metric if kernel == "none" else f"{metric} ({kernel} kernel)")
        ax.set_xlabel("")
        ax.set_ylabel("value (pooled over layers, benchmarks, splits)", fontsize=8)
        if number == 0:
            ax.legend(title="", fontsize=8)
        else:
            ax.get_legend().remove()
    fig.suptitle(f"Cross-modal vs intra-modal key distance\n{title}", fontsize=10)
    fig.tight_layout()
    return _save_both(fig, stem)


def depth_profiles(results: pd.DataFrame, stem: Path, title: str, by: list[str]) -> list[Path]:
    """Figure 3: a row per `by` group with 3 or more layer indices, a column per (metric, kernel); PNG and PDF paths.

    Args:
        results: Result rows of the completed jobs.
        stem: Output path without suffix.
        title: Figure title.
        by: Columns that tell profiles apart, e.g. ["model", "benchmark"] plus the overrides that vary.

    Returns:
        The paths written; [] (nothing written) when no group spans 3 or more layer indices.
    """
    profile = depth_profile(results, by)
    return [] if profile.empty else _save_both(depth_profile_grid(profile, by, title), stem)


def attention_figures(results: pd.DataFrame, sweep: Path, title: str) -> list[Path]:
    """Figures 4 (`figure4_attention_heatmaps`) and 5 (`figure5_attention_mmd_vs_share`) in `sweep`; PNG and PDF
    paths. `results` must hold attention rows (`attention_figures.has_attention`)."""
    from experiments.report.attention_figures import heatmap_grid, scatter_grid

    return [*_save_both(heatmap_grid(results, title), sweep / "figure4_attention_heatmaps"),
            *_save_both(scatter_grid(results, title), sweep / "figure5_attention_mmd_vs_share")]


def _layer_key(layer: str) -> tuple[int, int | str]:
    """early < middle < late < explicit indices in numeric order."""
    if layer in LAYER_ORDER:
        return 0, LAYER_ORDER.index(layer)
    return (1, int(layer)) if layer.lstrip("-").isdigit() else (2, layer)


def _save_both(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        save = partial(_savefig, fig, fmt=path.suffix[1:])
        atomic_write(path, save)
    return paths


def _savefig(fig, tmp: str, fmt: str) -> None:
    fig.savefig(tmp, dpi=150, format=fmt)
