"""Sweep aggregation on hand-made job dirs: numbers against pandas/numpy, failed/incomplete/missing jobs
reported, figures written (the depth profile's lines against pandas), the callback and the command line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from experiments.aggregate import GROUP_COLUMNS, aggregate, bootstrap_ci, main, summarize
from experiments.callbacks import AggregateCallback
from experiments.report import sweep_figures
from experiments.report.figures import PALETTE, depth_profile

from ..fixtures.figures import axes_grid, colour_pixels, grid_shape, panel_boxes

LAYERS = {"early": 0, "middle": 2, "late": 3}
EVERY = {str(i): i for i in range(6)}  # a layer=every job of a 6-layer model
COMPARISONS = ["image_vs_text", "image_vs_image", "text_vs_text"]
SWEEP = ["model=tiny_a,tiny_b", "kernel=rbf,linear,energy", "benchmark.limit=8"]  # 6 jobs, product order
N_SPLITS = 4


def _write_multirun_yaml(sweep, task):
    OmegaConf.save(OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
        "overrides": {"task": task}}}), sweep / "multirun.yaml")


def _make_job(sweep, num, overrides, status, rng, layers=LAYERS):
    """A job dir as `launch.py -m` leaves it: .hydra/, status.json, results and embedding (when completed)."""
    job = sweep / str(num)
    values = dict(o.split("=", 1) for o in overrides)
    model, kernel = values["model"], values["kernel"]
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": {"name": model}, "benchmark": {"name": "synthetic"},
                                     "kernel": {"name": kernel}}), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), job / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if status == "failed":
        (job / "status.json").write_text(json.dumps({"status": "failed", "error": "ValueError: layer 99 out of range"}))
    if status != "completed":
        return
    rows = [{"model": model, "benchmark": "synthetic", "layer": layer, "layer_index": index, "key_site": "post_rope",
             "comparison": comparison, "metric": metric, "kernel": kernel if metric == "mmd2" else "none",
             "split": split, "value": rng.normal(0.4 if comparison == "image_vs_text" else 0.01, 0.02),
             "p_value": rng.uniform() if metric == "mmd2" else np.nan, "n_x": 50, "n_y": 60, "seed": 0,
             "prompt_style": "vlmevalkit"}
            for layer, index in layers.items() for comparison in COMPARISONS for metric in ("mmd2", "jsd")
            for split in range(N_SPLITS)]
    pd.DataFrame(rows).to_parquet(job / "results.parquet")
    points = [{"x": rng.normal(), "y": rng.normal(), "modality": modality, "sample_id": f"s{i % 5}", "model": model,
               "benchmark": "synthetic", "layer": layer}
              for layer in layers for modality in ("image", "text") for i in range(30)]
    pd.DataFrame(points).to_parquet(job / "embedding.parquet")
    (job / "status.json").write_text(json.dumps({"status": "completed"}))


@pytest.fixture
def sweep(tmp_path):
    """6 expected jobs: 0, 1, 3 completed; 2 failed; 4 incomplete (killed: no status.json); 5 missing."""
    rng = np.random.default_rng(0)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    _write_multirun_yaml(sweep, SWEEP)
    statuses = {0: "completed", 1: "completed", 2: "failed", 3: "completed", 4: "incomplete"}
    for num, status in statuses.items():
        model, kernel = ["tiny_a", "tiny_b"][num // 3], ["rbf", "linear", "energy"][num % 3]
        _make_job(sweep, num, [f"model={model}", f"kernel={kernel}", "benchmark.limit=8"], status, rng)
    return sweep


def test_summary_numbers_match_pandas(sweep):
    summary = pd.read_csv(aggregate(sweep), keep_default_na=False, na_values=[""])
    results = pd.concat([pd.read_parquet(sweep / str(n) / "results.parquet") for n in (0, 1, 3)])
    expected = results.groupby(GROUP_COLUMNS)["value"].agg(["count", "mean", "std"]).reset_index()
    merged = summary.merge(expected, on=GROUP_COLUMNS, how="outer", indicator=True, validate="one_to_one")
    assert (merged["_merge"] == "both").all()
    assert len(summary) == 3 * 9 + 2 * 9  # mmd2 per (model, kernel), jsd per model
    assert (merged["n"] == merged["count"]).all()
    np.testing.assert_allclose(merged["mean_x"], merged["mean_y"], rtol=1e-12)
    np.testing.assert_allclose(merged["std_x"], merged["std_y"], rtol=1e-12)
    assert ((summary["ci_low"] <= summary["mean"]) & (summary["mean"] <= summary["ci_high"])).all()
    jsd_a = summary[(summary["model"] == "tiny_a") & (summary["metric"] == "jsd")]
    assert set(jsd_a["n_jobs"]) == {2} and set(jsd_a["n"]) == {2 * N_SPLITS}  # jobs 0 and 1 pooled
    mmd = summary[summary["metric"] == "mmd2"].set_index(GROUP_COLUMNS)
    p = results[results["metric"] == "mmd2"].groupby(GROUP_COLUMNS)["p_value"].median()
    np.testing.assert_allclose(mmd["p_value_median"].sort_index(), p.sort_index())


def test_failed_incomplete_and_missing_jobs_are_reported(sweep, capsys):
    aggregate(sweep)
    report = (sweep / "aggregate_report.txt").read_text()
    assert report == capsys.readouterr().out
    assert report.startswith(f"keyspace aggregate of {sweep}: 5 job dirs of 6 expected: 3 completed, 1 failed, "
                             "1 incomplete, 1 missing")
    assert "FAILED job 2 (tiny_a on synthetic; overrides: model=tiny_a kernel=energy" in report
    assert "ValueError: layer 99 out of range" in report
    assert "INCOMPLETE job 4 (tiny_b on synthetic" in report and "MISSING job 5: no job dir" in report
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert list(jobs["status"]) == ["completed", "completed", "failed", "completed", "incomplete"]


def test_figures_are_written(sweep):
    aggregate(sweep)
    for stem in ("figure1_tsne", "figure2_boxplots", "figure3_depth_profile"):  # 3 layers: a short profile
        assert (sweep / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        with Image.open(sweep / f"{stem}.png") as image:
            assert image.format == "PNG" and min(image.size) > 300
    with Image.open(sweep / "figure1_tsne.png") as image:
        width, height = image.size
    assert width > 1.1 * height  # 2 model rows x 3 (benchmark, layer) columns


PAPER_LAYERS = {"llava": {"early": 3, "middle": 16, "late": 28}, "qwen": {"early": 3, "middle": 14, "late": 24}}


def test_figure1_is_the_papers_grid_of_models_by_benchmark_and_layer(tmp_path):
    """2 models x (2 benchmarks x 3 layers): the Figure's Axes and the saved PNG's panels are 2 x 6, in order."""
    rng = np.random.default_rng(3)
    keys = [(m, b, layer) for m in ("qwen", "llava") for b in ("mmmu", "mmbench_cn") for layer in ("late", "early",
                                                                                                     "middle")]
    counts = {key: (10 + n, 20 + n) for n, key in enumerate(keys)}  # (image, text) points, distinct per panel
    embedding = pd.DataFrame([{"x": rng.normal(), "y": rng.normal(), "modality": modality, "model": m, "benchmark": b,
                               "layer": layer} for (m, b, layer), pair in counts.items()
                              for modality, n in zip(("image", "text"), pair, strict=True) for _ in range(n)])
    indices = {(m, layer): i for m, layers in PAPER_LAYERS.items() for layer, i in layers.items()}
    fig = sweep_figures.tsne_figure(embedding, "sweep", indices)
    grid = axes_grid(fig)
    assert sorted(grid) == [(r, c) for r in range(2) for c in range(6)]
    columns = [(b, layer) for b in ("mmbench_cn", "mmmu") for layer in ("early", "middle", "late")]
    assert [grid[0, c].get_title() for c in range(6)] == [f"{b} · {layer}" for b, layer in columns]
    assert [grid[r, 0].get_ylabel() for r in range(2)] == ["llava", "qwen"]
    for (r, c), ax in grid.items():
        model, (benchmark, layer) = ["llava", "qwen"][r], columns[c]
        assert [len(points.get_offsets()) for points in ax.collections] == list(counts[model, benchmark, layer])
        assert [t.get_text() for t in ax.texts] == [f"layer {PAPER_LAYERS[model][layer]}"]
    png, _ = sweep_figures.tsne_grid(embedding, tmp_path / "figure1", "sweep", indices)
    boxes = panel_boxes(png)
    assert grid_shape(boxes) == (2, 6)
    assert all(colour_pixels(png, box, PALETTE[m], 0.7) > 0 for box in boxes for m in ("image", "text"))


def _panel(title):
    """(metric, kernel) of a depth-profile column title such as `mmd2 (rbf kernel)` or `jsd`."""
    metric, _, kernel = title.partition(" (")
    return metric, kernel.removesuffix(" kernel)") or "none"


def test_depth_profile_plots_the_mean_per_layer(tmp_path, monkeypatch):
    """Two layer=every jobs of tiny_a (rbf, linear) and a one-layer job of tiny_b: one row, lines = pandas means."""
    rng = np.random.default_rng(2)
    sweep = tmp_path / "sweep"
    _make_job(sweep, 0, ["model=tiny_a", "kernel=rbf"], "completed", rng, layers=EVERY)
    _make_job(sweep, 1, ["model=tiny_a", "kernel=linear"], "completed", rng, layers=EVERY)
    _make_job(sweep, 2, ["model=tiny_b", "kernel=rbf"], "completed", rng, layers={"late": 3})
    drawn, save = {}, sweep_figures._save_both

    def keep_and_save(fig, stem):
        drawn[stem.name] = fig
        return save(fig, stem)

    monkeypatch.setattr(sweep_figures, "_save_both", keep_and_save)
    aggregate(sweep)
    with Image.open(sweep / "figure3_depth_profile.png") as image:
        assert image.format == "PNG" and min(image.size) > 300
    assert (sweep / "figure3_depth_profile.pdf").read_bytes().startswith(b"%PDF")

    results = pd.concat([pd.read_parquet(sweep / str(n) / "results.parquet") for n in range(3)])
    tiny_a = results[results["model"] == "tiny_a"]
    expected = tiny_a.groupby(["metric", "kernel", "comparison", "layer_index"])["value"].mean()
    fig = drawn["figure3_depth_profile"]
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["tiny_a · synthetic\nvalue"]  # no tiny_b row
    plotted = {(*_panel(ax.get_title()), line.get_label(), x): y for ax in fig.axes for line in ax.get_lines()
               if line.get_label() in COMPARISONS for x, y in line.get_xydata()}
    assert sorted(plotted) == sorted(expected.index)  # jsd once (pooled over both jobs), mmd2 per kernel
    np.testing.assert_allclose([plotted[key] for key in expected.index], expected.to_numpy(), rtol=1e-12)

    keys = ["metric", "kernel", "comparison", "layer_index"]
    profile = depth_profile(results, ["model", "benchmark"]).set_index(keys).sort_index()
    np.testing.assert_allclose(profile["std"], tiny_a.groupby(keys)["value"].std(), rtol=1e-12)
    assert set(profile.loc["jsd", "n"]) == {2 * N_SPLITS} and set(profile.loc["mmd2", "n"]) == {N_SPLITS}


def test_depth_profile_skipped_below_three_layers(tmp_path, caplog):
    rng = np.random.default_rng(4)
    sweep = tmp_path / "sweep"
    _make_job(sweep, 0, ["model=tiny_a", "kernel=rbf"], "completed", rng, layers={"early": 0, "late": 3})
    with caplog.at_level(logging.INFO, logger="experiments.aggregate"):
        aggregate(sweep)
    assert not list(sweep.glob("figure3_depth_profile.*"))
    note = "figure3_depth_profile skipped: no model x benchmark has results at 3 or more layer indices"
    assert note in caplog.text and note in (sweep / "aggregate_report.txt").read_text()


def test_one_layer_per_job_pools_into_a_depth_profile(tmp_path):
    """A sweep over `layer.positions` is told apart by the layer columns, not by a `layer.positions` column."""
    rng = np.random.default_rng(5)
    sweep = tmp_path / "sweep"
    for num in range(3):
        _make_job(sweep, num, ["model=tiny_a", "kernel=rbf", f"layer.positions=[{num}]"], "completed", rng,
                  layers={str(num): num})
    assert "layer.positions" not in pd.read_csv(aggregate(sweep)).columns
    assert (sweep / "figure3_depth_profile.png").exists()


def test_summary_is_seeded(sweep):
    results = pd.concat([pd.read_parquet(sweep / str(n) / "results.parquet").assign(job=n) for n in (0, 1, 3)])
    first = summarize(results, seed=1)
    assert first.equals(summarize(results, seed=1))
    assert not first["ci_low"].equals(summarize(results, seed=2)["ci_low"])
    part = summarize(results[results["model"] == "tiny_a"].iloc[::-1], seed=1).set_index(GROUP_COLUMNS)
    # a group's interval depends neither on the other groups nor on the order of its rows
    assert part["ci_low"].equals(first.set_index(GROUP_COLUMNS).loc[part.index, "ci_low"])


def test_varying_override_becomes_a_group_column(tmp_path):
    """A sweep over a value no results column records (kernel.bandwidth_scale) keeps its jobs apart."""
    rng = np.random.default_rng(1)
    sweep = tmp_path / "sweep"
    _make_job(sweep, 0, ["model=tiny_a", "kernel=rbf", "kernel.bandwidth_scale=0.5"], "completed", rng)
    _make_job(sweep, 1, ["model=tiny_a", "kernel=rbf", "kernel.bandwidth_scale=2.0"], "completed", rng)
    summary = pd.read_csv(aggregate(sweep))
    assert sorted(set(summary["kernel.bandwidth_scale"])) == [0.5, 2.0]
    assert set(summary["n_jobs"]) == {1} and set(summary["n"]) == {N_SPLITS}
    assert "of 6 expected" not in (sweep / "aggregate_report.txt").read_text()  # no multirun.yaml: count unknown


def test_bootstrap_ci_matches_the_normal_interval():
    values = np.random.default_rng(3).normal(2.0, 1.0, size=400)
    low, high = bootstrap_ci(values, seed=0)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.15 * half)
    assert bootstrap_ci(np.full(5, 0.3)) == pytest.approx((0.3, 0.3))


def test_no_completed_job_is_an_error_after_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    _make_job(sweep, 0, ["model=tiny_a", "kernel=rbf"], "failed", np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="no completed job"):
        aggregate(sweep)
    assert "1 failed" in (sweep / "aggregate_report.txt").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep)])
    assert exit_info.value.code == 1


def test_command_line(sweep, capsys):
    main([str(sweep), "--seed", "3"])
    assert "3 completed, 1 failed" in capsys.readouterr().out and (sweep / "summary.csv").exists()


def test_callback_aggregates_and_turns_errors_into_warnings(sweep, tmp_path, caplog):
    callback = AggregateCallback()
    callback.on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "summary.csv").exists() and (sweep / "figure2_boxplots.png").exists()
    with caplog.at_level(logging.WARNING):
        callback.on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nothing")}}}))
    assert "aggregating" in caplog.text and "python -m experiments.aggregate" in caplog.text


def test_rows_repeated_across_an_ablation_count_once(sweep):
    """In a kernel sweep every job computes the same JSD rows: pooled as one measurement, not n_jobs copies."""
    first = pd.read_parquet(sweep / "0" / "results.parquet")
    second = pd.read_parquet(sweep / "1" / "results.parquet")
    jsd = first["metric"] == "jsd"
    pd.concat([second[second["metric"] != "jsd"], first[jsd]]).to_parquet(sweep / "1" / "results.parquet")
    summary = pd.read_csv(aggregate(sweep), keep_default_na=False, na_values=[""])
    jsd_a = summary[(summary["model"] == "tiny_a") & (summary["metric"] == "jsd")].set_index(["layer", "comparison"])
    assert set(jsd_a["n"]) == {N_SPLITS}
    expected = first[jsd].groupby(["layer", "comparison"])["value"].mean()
    np.testing.assert_allclose(jsd_a["mean"].sort_index(), expected.sort_index(), rtol=1e-12)
    mmd_a = summary[(summary["model"] == "tiny_a") & (summary["metric"] == "mmd2")]
    assert set(mmd_a["n"]) == {N_SPLITS} and set(mmd_a["kernel"]) == {"rbf", "linear"}  # different rows stay
