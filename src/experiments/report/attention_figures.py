"""Figures of the attention analysis (`analysis.attention=true`), for one job and for a sweep.

`heatmap_grid`: per model (one row each), a layer x query-head heatmap of the image attention share of
text queries (each layer's image share of the visible context beside its label: a head at that value
gives the image tokens exactly their share) and a layer x KV-head heatmap of per-head MMD² between image
and text keys. `scatter_grid`: per model (one panel each), per-KV-head MMD² against the image attention
share of its query heads (mean over the group), one colour per layer, Spearman's rho per layer in the
legend (n/a below 3 KV heads). A sweep pools rows of equal model, layer and head over jobs and benchmarks
(mean). Both return the matplotlib Figure; `attention_figures` writes the job's two PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from experiments.report.figures import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_ANNOTATED_CELLS = 16  # heads and layers up to which each heatmap cell shows its value
MIN_RHO_HEADS = 3  # Spearman's rho is drawn from at least this many KV heads


def has_attention(results: pd.DataFrame) -> bool:
    """Whether `results` hold attention rows (`analysis.attention=true`)."""
    return bool((results["metric"] == "attn_image_share").any())


def attention_figures(results: pd.DataFrame, directory: Path, title: str) -> list[Path]:
    """The job's `attention_heatmaps.png` and `attention_mmd_vs_share.png` under `directory`; their paths."""
    paths = [directory / "attention_heatmaps.png", directory / "attention_mmd_vs_share.png"]
    save_figure(heatmap_grid(results, title), paths[0])
    save_figure(scatter_grid(results, title), paths[1])
    return paths


def per_head(results: pd.DataFrame, metric: str, comparison: str) -> pd.DataFrame:
    """Mean value per model, layer and head of one metric: columns model, layer, layer_index, head (int), value."""
    rows = results[(results["metric"] == metric) & (results["comparison"] == comparison)]
    table = rows.groupby(["model", "layer_index", "layer", "head"], sort=False)["value"].mean().reset_index()
    table["head"] = table["head"].astype(int)
    return table.sort_values(["model", "layer_index", "head"], ignore_index=True)


def heads_vs_mmd(results: pd.DataFrame) -> pd.DataFrame:
    """Per model, layer and KV head: mmd2 (mmd2_head) and share (attn_image_share of text queries, mean over the
    query heads h with h // group = that KV head)."""
    mmd = per_head(results, "mmd2_head", "image_vs_text").rename(columns={"value": "mmd2"})
    share = per_head(results, "attn_image_share", "text_queries")
    frames = []
    for (model, index), part in mmd.groupby(["model", "layer_index"], sort=False):
        heads = share[(share["model"] == model) & (share["layer_index"] == index)]
        group = max(1, len(heads) // max(1, len(part)))
        mean = heads.assign(head=heads["head"] // group).groupby("head")["value"].mean()
        frames.append(part.assign(share=part["head"].map(mean)))
    return pd.concat(frames, ignore_index=True) if frames else mmd.assign(share=np.nan)


def heatmap_grid(results: pd.DataFrame, title: str) -> Figure:
    """Rows = models; columns = image attention share (layer x query head), MMD² (layer x KV head)."""
    share = per_head(results, "attn_image_share", "text_queries")
    mmd = per_head(results, "mmd2_head", "image_vs_text")
    context = per_head(results.assign(head="0"), "image_context_share", "text_queries")
    models = list(dict.fromkeys(share["model"]))
    n_layers = share.groupby("model")["layer_index"].nunique().max()
    n_heads = share["head"].max() + 1
    fig, axes = new_figure(len(models), 2, figsize=(
        min(22.0, 3.0 + 0.45 * (n_heads + mmd["head"].max() + 1)) + 2.5, 1.6 + len(models) * (0.9 + 0.4 * n_layers)),
        gridspec_kw={"width_ratios": [max(n_heads, 2), max(mmd["head"].max() + 1, 2)]})
    for row, model in enumerate(models):
        ctx = context[context["model"] == model].set_index("layer_index")["value"]
        for col, (table, label, cmap) in enumerate(((share, "image attention share of text queries", "viridis"),
                                                    (mmd, "MMD² image vs text keys, per KV head", "magma"))):
            ax = axes[row, col]
            grid = table[table["model"] == model].pivot(index=["layer_index", "layer"], columns="head",
                                                        values="value")
            image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap=cmap, interpolation="nearest")
            fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
            if grid.shape[0] <= MAX_ANNOTATED_CELLS and grid.shape[1] <= MAX_ANNOTATED_CELLS:
                _annotate(ax, grid.to_numpy(dtype=float), image)
            step = max(1, grid.shape[1] // 16)
            ax.set_xticks(range(0, grid.shape[1], step), [str(h) for h in grid.columns[::step]], fontsize=8)
            ax.set_yticks(range(grid.shape[0]), [
                f"{layer} (#{index})" + (f"\ncontext {ctx[index]:.2f}" if col == 0 and index in ctx else "")
                for index, layer in grid.index], fontsize=8)
            ax.set_xlabel("query head" if col == 0 else "KV head", fontsize=9)
            ax.set_title(f"{model}: {label}" if len(models) > 1 else label, fontsize=9)
    fig.suptitle(f"Attention on image tokens and key gap per head\n{title}", fontsize=10)
    fig.tight_layout()
    return fig


def scatter_grid(results: pd.DataFrame, title: str) -> Figure:
    """One panel per model: per-KV-head MMD² (x) against image attention share (y), a colour per layer."""
    from matplotlib import colormaps
    from scipy.stats import spearmanr

    data = heads_vs_mmd(results)
    models = list(dict.fromkeys(data["model"]))
    fig, axes = new_figure(1, len(models), figsize=(max(6.5, 5.0 * len(models)), 4.6))
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, max(1, data["layer_index"].nunique())))
    layer_colour = dict(zip(sorted(data["layer_index"].unique()), colours, strict=False))
    for ax, model in zip(axes[0], models, strict=True):
        for (index, layer), part in data[data["model"] == model].groupby(["layer_index", "layer"], sort=True):
            ok = part.dropna(subset=["mmd2", "share"])
            rho = spearmanr(ok["mmd2"], ok["share"])[0] if len(ok) >= MIN_RHO_HEADS else np.nan
            text = f"rho {rho:+.2f}" if np.isfinite(rho) else f"rho n/a ({len(ok)} KV heads)"
            ax.scatter(ok["mmd2"], ok["share"], s=28, color=layer_colour[index], label=f"{layer} (#{index}): {text}",
                       edgecolors="black", linewidths=0.3)
        ax.set_xlabel("MMD² image vs text keys (KV head)")
        ax.set_ylabel("image attention share of text queries\n(mean over the KV head's query heads)", fontsize=9)
        ax.set_title(model, fontsize=10)
        ax.legend(fontsize=7, title="layer: Spearman across KV heads", title_fontsize=7)
    fig.suptitle(f"Key gap per head against attention on the image\n{title}", fontsize=10)
    fig.tight_layout()
    return fig


def _annotate(ax, values: np.ndarray, image) -> None:
    """Write each cell's value in a colour readable on its background."""
    low, high = image.get_clim()
    middle = (low + high) / 2
    for (r, c), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(c, r, f"{value:.3f}" if abs(value) >= 0.001 else f"{value:.0e}", ha="center", va="center",
                    fontsize=7, color="black" if value > middle else "white")
