"""The job's figures: Figure-2-style box plots, a t-SNE panel per layer and the depth profile.

Each panel is drawn by a function that takes a matplotlib `Axes` and returns its `Figure`
(`boxplot_panel`, `tsne_panel`, `depth_profile_panel`), so a notebook can place them in its own layout;
the job's figures are grids of the same panels. Figures are `matplotlib.figure.Figure` objects made by
`new_figure`, never through pyplot: drawing and saving need no backend, so figure code never selects or
changes the process's backend (a notebook keeps its inline one) and pyplot holds no reference to them.
`depth_profile` and `depth_profile_grid` are shared with the sweep's Figure 3 (`sweep_figures.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experiments.atomic import atomic_write
from experiments.report.schema import headline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COMPARISON_ORDER = ["image_vs_text", "image_vs_image", "text_vs_text"]
PALETTE = {"image": "#d95f02", "text": "#1b9e77"}
COMPARISON_COLOURS = {"image_vs_text": "#7570b3", "image_vs_image": PALETTE["image"], "text_vs_text": PALETTE["text"]}
MAX_LEGEND_LAYERS = 8  # the box plot's points: a legend entry per layer up to this many, then a colour bar
MAX_TSNE_COLUMNS = 8  # the t-SNE figure wraps, e.g. 32 layers in 4 rows of 8
MIN_PROFILE_LAYERS = 3  # a depth profile needs at least this many distinct layer indices


def boxplot_figure(results: pd.DataFrame, path: Path, title: str) -> None:
    """One box-plot panel per metric (`boxplot_panel`), written to `path`."""
    save_figure(boxplot_grid(results, title), path)


def boxplot_grid(results: pd.DataFrame, title: str) -> Figure:
    """One `boxplot_panel` per metric, side by side, under `title`; returns the Figure."""
    metrics = list(dict.fromkeys(headline(results)["metric"]))
    fig, axes = new_figure(1, len(metrics), figsize=(4.2 * len(metrics), 3.8))
    for ax, metric in zip(axes[0], metrics, strict=True):
        boxplot_panel(results, ax, metric)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def boxplot_panel(results: pd.DataFrame, ax: Axes, metric: str | None = None) -> Figure:
    """Draw one metric into `ax`: comparison on x, value on y, one point per (layer, split); returns its Figure.

    Points are coloured by layer with a legend; beyond `MAX_LEGEND_LAYERS` layers (e.g. `layer=every`) by
    layer index on a sequential scale with a colour bar. The permutation null is shaded behind (`null_band`).

    Args:
        results: Result rows (columns layer, layer_index, comparison, metric, kernel, value; null_mean and
            null_std for the band).
        ax: Where to draw.
        metric: The metric to draw; None = the first one in `results`.
    """
    import seaborn as sns
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    results = headline(results)  # mmd_agg: the fused test only
    metric = results["metric"].iloc[0] if metric is None else metric
    many = results["layer"].nunique() > MAX_LEGEND_LAYERS
    data = results[results["metric"] == metric]
    if data.empty:
        raise ValueError(f"no rows of metric {metric!r}; these results have {sorted(results['metric'].unique())}")
    sns.boxplot(data=data, x="comparison", y="value", order=COMPARISON_ORDER, ax=ax, color="#cccccc",
                showfliers=False)
    sns.stripplot(data=data, x="comparison", y="value", order=COMPARISON_ORDER, ax=ax, size=4 - many,
                  alpha=0.8, dodge=False, **({"hue": "layer_index", "palette": "viridis", "legend": False}
                                             if many else {"hue": "layer"}))
    kernel = data["kernel"].iloc[0]
    ax.set_title(metric if kernel == "none" else f"{metric} ({kernel} kernel)")
    null_band(ax, data, "comparison", COMPARISON_ORDER)
    ax.set_xlabel("")
    ax.set_ylabel("value")
    ax.tick_params(axis="x", labelrotation=15)
    fig = _figure_of(ax)
    if many:
        norm = Normalize(results["layer_index"].min(), results["layer_index"].max())
        fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="layer index")
    else:
        ax.legend(title="layer", fontsize=8, title_fontsize=8)
    return fig


def tsne_figure(embedding: pd.DataFrame, path: Path, title: str) -> None:
    """One `tsne_panel` per layer, up to `MAX_TSNE_COLUMNS` per row, written to `path`.

    Args:
        embedding: Rows x, y, modality, layer (one job's points).
        path: Output file; its suffix names the format.
        title: Figure title.
    """
    from matplotlib.lines import Line2D

    layers = list(dict.fromkeys(embedding["layer"]))
    n_cols = min(len(layers), MAX_TSNE_COLUMNS)
    n_rows = -(-len(layers) // n_cols)
    size = 3.8 if n_rows == 1 else 2.6
    fig, axes = new_figure(n_rows, n_cols, figsize=(size * n_cols, size * n_rows + 0.8))
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, layers, strict=False):
        tsne_panel(embedding, ax, layer, point_size=6 if n_rows == 1 else 3)
    handles = []
    for modality, colour in PALETTE.items():
        per_layer = embedding[embedding["modality"] == modality].groupby("layer").size().reindex(layers, fill_value=0)
        handles.append(Line2D([], [], marker="o", linestyle="", color=colour,
                              label=f"{modality} ({_count_range(per_layer)} tokens per layer)"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    save_figure(fig, path)


def tsne_panel(embedding: pd.DataFrame, ax: Axes, layer: str | None = None, point_size: float = 6) -> Figure:
    """Draw one layer's t-SNE points into `ax`, coloured by modality (`PALETTE`); returns its Figure.

    Args:
        embedding: Rows x, y, modality, layer.
        ax: Where to draw.
        layer: The layer label to draw; None = the first one in `embedding`.
        point_size: Marker area in points².
    """
    layer = embedding["layer"].iloc[0] if layer is None else layer
    data = embedding[embedding["layer"] == layer]
    for modality, colour in PALETTE.items():
        part = data[data["modality"] == modality]
        ax.scatter(part["x"], part["y"], s=point_size, alpha=0.7, color=colour, linewidths=0, label=modality)
    ax.set_title(f"layer {layer}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _figure_of(ax)


def depth_profile(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and std (ddof 1) of `value` per layer index: the data a depth profile draws.

    Args:
        results: Result rows (columns layer_index, comparison, metric, kernel, value and those in `by`).
        by: Columns that tell profiles apart (one figure row each), e.g. ["model", "benchmark"]; rows of
            equal `by`, metric, kernel, comparison and layer_index are pooled (splits, and jobs in a sweep).

    Returns:
        Columns *by, metric, kernel, comparison, layer_index, mean, std, n, sorted by `by` and layer_index
        (metrics and comparisons in the order of `results`); only the `by` groups with at least
        `MIN_PROFILE_LAYERS` distinct layer indices (empty when there are none). `mmd_agg` shows its fused
        test only (`schema.headline`).
    """
    results = headline(results)
    keys = [*by, "metric", "kernel", "comparison", "layer_index"]
    stats = results.groupby(keys, sort=False)["value"].agg(mean="mean", std="std", n="count").reset_index()
    stats = stats.sort_values([*by, "layer_index"], kind="stable", ignore_index=True)
    depth = stats.groupby(by)["layer_index"].transform("nunique")
    return stats[depth >= MIN_PROFILE_LAYERS].reset_index(drop=True)


def depth_profile_grid(profile: pd.DataFrame, by: list[str], title: str) -> Figure:
    """Rows = `by` groups, columns = (metric, kernel); per panel each comparison's mean ± std against layer index.

    Args:
        profile: Output of `depth_profile(results, by)`, not empty.
        by: The `by` columns of `profile`; model and benchmark are shown by value, others as `column=value`.
        title: Figure title.

    Returns:
        The matplotlib Figure (the caller saves it).
    """
    from matplotlib.lines import Line2D

    rows = list(dict.fromkeys(profile[by].itertuples(index=False, name=None)))
    panels = list(dict.fromkeys(zip(profile["metric"], profile["kernel"], strict=True)))
    fig, axes = new_figure(len(rows), len(panels), figsize=(4.2 * len(panels), 2.9 * len(rows) + 1.0))
    for r, row in enumerate(rows):
        in_row = (profile[by] == pd.Series(row, index=by)).all(axis=1)
        for c, (metric, kernel) in enumerate(panels):
            ax = axes[r, c]
            _profile_lines(ax, profile[in_row & (profile["metric"] == metric) & (profile["kernel"] == kernel)])
            if r == 0:
                ax.set_title(metric if kernel == "none" else f"{metric} ({kernel} kernel)", fontsize=10)
            if r == len(rows) - 1:
                ax.set_xlabel("decoder layer index")
            if c == 0:
                label = " · ".join(str(v) if k in ("model", "benchmark") else f"{k}={v}"
                                   for k, v in zip(by, row, strict=True))
                ax.set_ylabel(f"{label}\nvalue", fontsize=9)
    handles = [Line2D([], [], color=COMPARISON_COLOURS[c], marker="o", markersize=3, label=c)
               for c in COMPARISON_ORDER]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False,
               title="mean over splits, band ± 1 std", title_fontsize=8)
    fig.suptitle(f"Key distance by decoder depth\n{title}", fontsize=10)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    return fig


def depth_profile_figure(results: pd.DataFrame, path: Path, title: str) -> None:
    """One panel per metric (and kernel): each comparison's mean ± std over splits against layer index.

    Args:
        results: One job's result rows.
        path: Output file; its suffix names the format.
        title: Figure title.

    Raises:
        ValueError: `results` span fewer than `MIN_PROFILE_LAYERS` layer indices.
    """
    by = ["model", "benchmark"]
    profile = depth_profile(results, by)
    if profile.empty:
        raise ValueError(f"a depth profile needs results at {MIN_PROFILE_LAYERS} or more layers; these have "
                         f"layer_index {sorted(results['layer_index'].unique().tolist())}")
    save_figure(depth_profile_grid(profile, by, title), path)


def depth_profile_panel(results: pd.DataFrame, ax: Axes, metric: str | None = None) -> Figure:
    """Draw one metric's depth profile into `ax`: each comparison's mean ± std over splits against layer index.

    Args:
        results: Result rows of one model and benchmark at `MIN_PROFILE_LAYERS` or more layers.
        ax: Where to draw.
        metric: The metric to draw; None = the first one in `results`.

    Raises:
        ValueError: `results` span fewer than `MIN_PROFILE_LAYERS` layer indices, or lack `metric`.
    """
    profile = depth_profile(results, ["model", "benchmark"])
    metric = profile["metric"].iloc[0] if metric is None and not profile.empty else metric
    data = profile[profile["metric"] == metric]
    if data.empty:
        raise ValueError(f"no depth profile of metric {metric!r}: it needs results of that metric at "
                         f"{MIN_PROFILE_LAYERS} or more layers")
    _profile_lines(ax, data)
    kernel = data["kernel"].iloc[0]
    ax.set_title(str(metric) if kernel == "none" else f"{metric} ({kernel} kernel)", fontsize=10)
    ax.set_xlabel("decoder layer index")
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    return _figure_of(ax)


def _profile_lines(ax: Axes, data: pd.DataFrame) -> None:
    """Each comparison's mean line and ± std band from `depth_profile` rows of one panel."""
    from matplotlib.ticker import MaxNLocator

    for comparison in COMPARISON_ORDER:
        line = data[data["comparison"] == comparison]
        colour = COMPARISON_COLOURS[comparison]
        ax.plot(line["layer_index"], line["mean"], color=colour, marker="o", markersize=3, label=comparison)
        ax.fill_between(line["layer_index"], line["mean"] - line["std"], line["mean"] + line["std"],
                        color=colour, alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="grey", linewidth=0.6, zorder=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def null_band(ax, data: pd.DataFrame, x: str, order: list[str]) -> None:
    """Shade, behind each category of the x axis, the permutation null: mean null_mean ± 2 null_std.

    Pooled over the category's rows (splits, layers, comparisons): where the values of a control fall
    inside the band, the control is indistinguishable from no difference. Nothing is drawn for rows
    without a null (no permutation test).
    """
    if "null_mean" not in data or data["null_mean"].isna().all():
        return
    null = data.groupby(x)[["null_mean", "null_std"]].mean()
    for position, category in enumerate(order):
        if category in null.index and not null.loc[category].isna().any():
            centre, spread = null.loc[category, "null_mean"], 2 * null.loc[category, "null_std"]
            ax.fill_between([position - 0.45, position + 0.45], centre - spread, centre + spread, color="grey",
                            alpha=0.18, linewidth=0, zorder=0, label="permutation null ± 2 sd" if position == 0
                            else None)


def new_figure(n_rows: int, n_cols: int, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A `Figure` with an [n_rows, n_cols] array of Axes, made without pyplot (no backend, no figure manager).

    Args:
        n_rows, n_cols: The grid of panels.
        **kwargs: `figsize` for the Figure; the rest (e.g. `gridspec_kw`) for `Figure.subplots`.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(n_rows, n_cols, squeeze=False, **kwargs)


def save_figure(fig: Figure, path: Path) -> None:
    """Write `fig` atomically in the format of `path`'s suffix (the Figure's own canvas; no backend needed)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format=path.suffix.lstrip(".")))


def _figure_of(ax: Axes) -> Figure:
    """The top-level Figure holding `ax` (not a SubFigure)."""
    figure = ax.get_figure(root=True)
    assert figure is not None, "the Axes belongs to no Figure"
    return figure  # type: ignore[return-value]


def _count_range(counts: pd.Series) -> str:
    """`n` when every layer has the same count, else `min-max`."""
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"
