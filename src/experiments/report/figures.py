"""The job's two figures: Figure-2-style box plots of the results and a t-SNE panel per layer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.atomic import atomic_write

COMPARISON_ORDER = ["image_vs_text", "image_vs_image", "text_vs_text"]
PALETTE = {"image": "#d95f02", "text": "#1b9e77"}


def boxplot_figure(results: pd.DataFrame, path: Path, title: str) -> None:
    """Comparison on x, value on y, one panel per metric; one point per (layer, split)."""
    plt = pyplot()
    import seaborn as sns

    metrics = list(dict.fromkeys(results["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = results[results["metric"] == metric]
        sns.boxplot(data=data, x="comparison", y="value", order=COMPARISON_ORDER, ax=ax, color="#cccccc",
                    showfliers=False)
        sns.stripplot(data=data, x="comparison", y="value", order=COMPARISON_ORDER, hue="layer", ax=ax,
                      size=4, alpha=0.8, dodge=False)
        kernel = data["kernel"].iloc[0]
        ax.set_title(metric if kernel == "none" else f"{metric} ({kernel} kernel)")
        ax.set_xlabel("")
        ax.set_ylabel("value")
        ax.tick_params(axis="x", labelrotation=15)
        ax.legend(title="layer", fontsize=8, title_fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def tsne_figure(embedding: pd.DataFrame, path: Path, title: str) -> None:
    """One panel per layer, points coloured by modality."""
    plt = pyplot()

    layers = list(dict.fromkeys(embedding["layer"]))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.8 * len(layers), 3.8), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        data = embedding[embedding["layer"] == layer]
        for modality, colour in PALETTE.items():
            part = data[data["modality"] == modality]
            ax.scatter(part["x"], part["y"], s=6, alpha=0.7, color=colour, label=f"{modality} ({len(part)})")
        ax.set_title(f"layer {layer}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, markerscale=2)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (jobs run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write `fig` atomically in the format of `path`'s suffix, then free it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format=path.suffix.lstrip(".")))
    pyplot().close(fig)
