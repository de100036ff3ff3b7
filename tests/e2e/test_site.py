"""The site file: per-model and per-benchmark local paths in one git-ignored file, so the users' sweep
`python launch.py -m model=llava,qwen benchmark=mmbench_cn,mmmu` runs offline on local copies as written.

The local copies here are the tiny models' built checkpoint folders (loaded as `weights=pretrained` folders,
exactly like downloaded checkpoints) and the real-format benchmark fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.config import register_configs

from ..conftest import REPO, tiny_model_config

LEAN = ["benchmark.limit=4", "analysis.n_splits=2", "metric.n_permutations=20", "metric.n_bootstrap=0",
        "report.tsne_points=60", "analysis.paired_samples=0", "logger=none"]


def _site(directory: Path, models: dict[str, str], benchmarks: dict[str, str]) -> Path:
    """A config dir holding `local/default.yaml` laid out as `conf/local.example.yaml`; returns the dir."""
    example = yaml.safe_load((REPO / "conf" / "local.example.yaml").read_text())
    example["paths"] = {"models": models, "benchmarks": benchmarks}
    (directory / "local").mkdir(parents=True)
    (directory / "local" / "default.yaml").write_text("# @package _global_\n" + yaml.safe_dump(example))
    return directory


def _compose(site: Path, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config",
                                           overrides=[f"hydra.searchpath=[file://{site}]", *overrides]))


def test_the_site_file_is_git_ignored_and_its_example_is_not():
    ignored = subprocess.run(["git", "check-ignore", "conf/local/default.yaml", "conf/local.example.yaml"], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    assert ignored == ["conf/local/default.yaml"]


def test_listed_names_take_the_site_path_others_keep_the_hub_and_the_command_line_wins(tmp_path):
    site = _site(tmp_path, {"llava": str(tmp_path / "llava"), "qwen": str(tmp_path / "qwen")},
                 {"mmmu": str(tmp_path / "MMMU"), "mmbench_en": str(tmp_path / "MMBench_DEV_EN.tsv")})
    for model, benchmark, expected in (("llava", "mmmu", (tmp_path / "llava", tmp_path / "MMMU")),
                                       ("qwen", "mmbench_cn", (tmp_path / "qwen", "lmms-lab/MMBench_CN")),
                                       ("qwen", "mmbench_en", (tmp_path / "qwen", tmp_path / "MMBench_DEV_EN.tsv")),
                                       ("llava_next", "mmmu", ("llava-hf/llava-v1.6-vicuna-7b-hf", tmp_path / "MMMU"))):
        job = _compose(site, [f"model={model}", f"benchmark={benchmark}"])
        assert (job.model.path, job.benchmark.path) == tuple(map(str, expected))
    job = _compose(site, ["model=llava", "model.path=/elsewhere", "benchmark=mmmu", "benchmark.path=/other"])
    assert (job.model.path, job.benchmark.path) == ("/elsewhere", "/other")


@pytest.mark.slow
def test_users_sweep_runs_on_local_copies_as_written(tmp_path, cache_dir):
    from experiments.models import get_adapter
    from experiments.models.random_init import ensure_random_checkpoint

    from ..fixtures import mmbench_files

    folders = {}
    for name, tiny in (("llava", "tiny_llava"), ("qwen", "tiny_qwen")):
        cfg = tiny_model_config(tiny, cache_dir)
        folders[name] = str(ensure_random_checkpoint(get_adapter(cfg.family), cfg))
    site = _site(tmp_path / "site", folders, {
        "mmbench_cn": str(mmbench_files.write_tsv(tmp_path / "MMBench_DEV_CN.tsv")),
        "mmmu": str(REPO / "tests" / "fixtures" / "real_samples" / "mmmu" / "MMMU")})
    sweep = tmp_path / "sweep"
    env = {**os.environ, "KEYSPACE_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # as the users write it; --config-dir stands in for conf/local/default.yaml (the test may not write into conf/)
    command = [sys.executable, "launch.py", "--config-dir", str(site), "-m", "model=llava,qwen",
               "benchmark=mmbench_cn,mmmu", *LEAN, f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.concat([pd.read_parquet(sweep / str(n) / "results.parquet") for n in range(4)])
    assert set(zip(results["model"], results["benchmark"], strict=True)) == {
        (m, b) for m in ("llava", "qwen") for b in ("mmbench_cn", "mmmu")}
    for n in range(4):  # each job loaded its model's local copy
        model = pd.read_parquet(sweep / str(n) / "results.parquet")["model"].iloc[0]
        assert f"loading {model} from {folders[model]} " in (sweep / str(n) / "launch.log").read_text()
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary.groupby("model")[["benchmark", "layer"]].apply(lambda g: len(g.drop_duplicates())).tolist() == [6, 6]
    _check_figure1(sweep, results)


def _check_figure1(sweep: Path, results: pd.DataFrame) -> None:
    """Figure 1 is the paper's 2 x 6 grid: rows llava, qwen; columns (mmbench_cn, mmmu) x (early, middle, late).

    The saved PNG's panels are found from its pixels (each holds image and text points); the Figure drawn again
    from the jobs' embeddings has the same size and labels each row, column and decoder-layer index.
    """
    from PIL import Image

    from experiments.report import sweep_figures
    from experiments.report.figures import PALETTE

    from ..fixtures.figures import axes_grid, colour_pixels, grid_shape, panel_boxes

    png = sweep / "figure1_tsne.png"
    boxes = panel_boxes(png)
    assert grid_shape(boxes) == (2, 6)
    assert all(colour_pixels(png, box, PALETTE[m], 0.7) > 0 for box in boxes for m in ("image", "text"))
    embedding = pd.concat([pd.read_parquet(sweep / str(n) / "embedding.parquet") for n in range(4)])
    indices = results.drop_duplicates(["model", "layer"]).set_index(["model", "layer"])["layer_index"].to_dict()
    fig = sweep_figures.tsne_figure(embedding, f"sweep {sweep.name}: 4 completed jobs", indices)
    with Image.open(png) as image:
        assert image.size == tuple(round(150 * side) for side in fig.get_size_inches())  # saved at 150 dpi
    grid = axes_grid(fig)
    columns = [(b, layer) for b in ("mmbench_cn", "mmmu") for layer in ("early", "middle", "late")]
    assert sorted(grid) == [(r, c) for r in range(2) for c in range(6)]
    assert [grid[0, c].get_title() for c in range(6)] == [f"{b} · {layer}" for b, layer in columns]
    assert [grid[r, 0].get_ylabel() for r in range(2)] == ["llava", "qwen"]
    tiny = {"early": 0, "middle": 2, "late": 3}  # the tiny models' 4 decoder layers (README, Layers)
    assert all([t.get_text() for t in grid[r, c].texts] == [f"layer {tiny[columns[c][1]]}"] for r, c in grid)
