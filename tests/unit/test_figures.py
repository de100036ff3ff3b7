"""The job's figures on synthetic results: the depth profile draws the mean per layer, many layers stay readable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiments.report import figures

COMPARISONS = ["image_vs_text", "image_vs_image", "text_vs_text"]


def _results(depth: int, n_splits: int = 3) -> pd.DataFrame:
    """One job's result rows for layers 0..depth-1 (labels as `layer=every` writes them), MMD² and JSD."""
    rng = np.random.default_rng(0)
    return pd.DataFrame([
        {"model": "tiny_llava", "benchmark": "synthetic", "layer": str(index), "layer_index": index,
         "comparison": comparison, "metric": metric, "kernel": kernel, "split": split,
         "value": rng.normal(0.4 if comparison == "image_vs_text" else 0.01, 0.02)}
        for index in range(depth) for comparison in COMPARISONS
        for metric, kernel in (("mmd2", "rbf"), ("jsd", "none")) for split in range(n_splits)])


@pytest.fixture
def drawn(monkeypatch):
    """The figures the job functions would save, by file name (nothing is written)."""
    kept = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: kept.setdefault(path.name, fig))
    return kept


def test_depth_profile_figure_draws_the_mean_per_layer(tmp_path, drawn):
    results = _results(depth=8)
    figures.depth_profile_figure(results, tmp_path / "depth.png", "tiny_llava on synthetic")
    fig = drawn["depth.png"]
    assert [ax.get_title() for ax in fig.axes] == ["mmd2 (rbf kernel)", "jsd"]  # as in the box plot
    assert all(ax.get_xlabel() == "decoder layer index" for ax in fig.axes)
    expected = results.groupby(["metric", "comparison", "layer_index"])["value"].mean()
    plotted = {(ax.get_title().split()[0], line.get_label(), x): y for ax in fig.axes for line in ax.get_lines()
               if line.get_label() in COMPARISONS for x, y in line.get_xydata()}
    assert sorted(plotted) == sorted(expected.index)
    np.testing.assert_allclose([plotted[key] for key in expected.index], expected.to_numpy(), rtol=1e-12)


def test_depth_profile_figure_is_written(tmp_path):
    figures.depth_profile_figure(_results(depth=4), tmp_path / "figures" / "depth.png", "tiny_llava on synthetic")
    with Image.open(tmp_path / "figures" / "depth.png") as image:
        assert image.format == "PNG" and min(image.size) > 300


def test_depth_profile_needs_three_layers(tmp_path):
    with pytest.raises(ValueError, match=r"3 or more layers; these have layer_index \[0, 1\]"):
        figures.depth_profile_figure(_results(depth=2), tmp_path / "depth.png", "title")


def test_tsne_of_32_layers_wraps_into_rows(drawn):
    embedding = pd.DataFrame([{"x": float(i), "y": float(i), "modality": modality, "layer": str(layer)}
                              for layer in range(32) for modality in ("image", "text") for i in range(10)])
    figures.tsne_figure(embedding, figures.Path("tsne.png"), "tiny_llava on synthetic")
    fig = drawn["tsne.png"]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == [f"layer {layer}" for layer in range(32)]
    assert visible[0].get_subplotspec().get_gridspec().get_geometry() == (4, figures.MAX_TSNE_COLUMNS)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["image (10 tokens per layer)",
                                                                   "text (10 tokens per layer)"]


def test_boxplot_of_many_layers_uses_a_colour_bar(drawn):
    figures.boxplot_figure(_results(depth=32), figures.Path("boxplot.png"), "tiny_llava on synthetic")
    labels = [ax.get_ylabel() for ax in drawn["boxplot.png"].axes]
    assert labels == ["value", "value", "layer index", "layer index"]  # the panels, then a colour bar each
    assert not any(ax.get_legend() for ax in drawn["boxplot.png"].axes)
