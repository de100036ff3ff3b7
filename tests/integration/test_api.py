"""The notebook API: the README example runs as written, and each call matches an independent oracle.

Keys in memory equal the model's own KV cache; keys through the cache equal keys in memory; `compare` gives
the table the job writes for the same config; figures draw into the caller's Axes, return its Figure and
never touch matplotlib's backend or pyplot's figure list.
"""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from experiments import api
from experiments.report.schema import RESULT_COLUMNS

from ..conftest import REPO
from .test_keys import _solo_oracle

SMALL = ("benchmark.limit=6", "analysis.n_splits=2", "metric.n_permutations=20", "metric.n_bootstrap=0",
         "report.tsne_points=60", "keys.shard_size=4")


def _readme_example() -> str:
    """The first python block of the README's notebook section."""
    section = REPO.joinpath("README.md").read_text().split("## In a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def job(cache_dir):
    return api.compose("model=tiny_qwen", f"paths.cache_dir={cache_dir}", *SMALL)


def test_readme_example_runs_in_at_most_ten_lines(tmp_path, cache_dir, monkeypatch):
    code = _readme_example()
    lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 10, lines
    monkeypatch.setenv("KEYSPACE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    import matplotlib.pyplot as plt

    scope: dict = {}
    try:
        exec(compile(code, "README.md", "exec"), scope)
        results, fig, left, right = scope["results"], scope["fig"], scope["left"], scope["right"]
        assert list(results.columns) == list(RESULT_COLUMNS) and len(results)
        assert left.get_title() == "mmd2 (rbf kernel)" and right.get_title() == "layer late"
        assert left.figure is fig and right.collections, "both panels drawn into the caller's figure"
    finally:
        plt.close("all")


def test_in_memory_keys_equal_the_kv_cache(job):
    loaded = api.load_model("tiny_qwen", f"paths.cache_dir={job.paths.cache_dir}")
    from experiments.benchmarks import load_samples

    samples = load_samples(job.benchmark).samples[:3]
    keys = api.extract(job, layers=["early", 3], samples=samples, cache=False, model=loaded)
    assert [(s.label, s.index) for s in keys.layers] == [("early", 0), ("3", 3)]
    for number, sample in enumerate(samples):
        mine = keys.sample == number
        for layer in (0, 3):
            oracle = _solo_oracle(loaded, sample, layer, "post_rope")[keys.position[mine]]
            torch.testing.assert_close(keys.keys[layer][mine], oracle, rtol=1e-5, atol=1e-5)
        inputs = loaded.adapter.model_inputs(loaded.processor, [sample.decoded()])
        assert int(keys.is_image[mine].sum()) == int(inputs["image_grid_thw"].prod()) // 4  # merged patches
    torch.testing.assert_close(keys.image("early"), keys.keys[0][keys.is_image])


def test_cached_keys_equal_in_memory_keys(job):
    cached = api.extract(job)
    memory = api.extract(job, cache=False)
    for field in ("is_image", "is_content", "sample", "position"):
        assert torch.equal(getattr(cached, field), getattr(memory, field)), field
    for spec in cached.layers:
        torch.testing.assert_close(cached.keys[spec.index], memory.keys[spec.index], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [(), ("analysis.text_tokens=content", "analysis.exclude_sinks=true",
                                          "analysis.position_control=true")], ids=["default", "filtered"])
def test_compare_gives_the_jobs_results_table(job, tmp_path, options):
    from hydra import compose, initialize_config_dir

    from experiments.config import register_configs
    from experiments.pipeline import run

    overrides = ["model=tiny_qwen", f"paths.cache_dir={job.paths.cache_dir}", "logger=none",
                 "analysis.paired_samples=0", *SMALL, *options]
    job = api.compose(*overrides)
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        run(compose(config_name="config", overrides=overrides), tmp_path)
    written = pd.read_parquet(tmp_path / "results.parquet")
    mine = api.compare(api.extract(job), job)
    pd.testing.assert_frame_equal(mine, written, check_dtype=False, check_exact=False, rtol=1e-6)
    embedding = api.embed(api.extract(job), job)
    written_embedding = pd.read_parquet(tmp_path / "embedding.parquet")
    pd.testing.assert_frame_equal(embedding[written_embedding.columns], written_embedding, check_dtype=False,
                                  check_exact=False, rtol=1e-4)


def test_figures_draw_into_the_given_axes_without_touching_the_backend(monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from ..unit.test_figures import _results

    for owner, name in ((matplotlib, "use"), (plt, "switch_backend")):
        monkeypatch.setattr(owner, name, lambda *a, **k: pytest.fail("figure code changed the backend"))
    open_figures = plt.get_fignums()
    fig = Figure()
    box, profile, points = fig.subplots(1, 3)
    results = _results(depth=4)
    embedding = pd.DataFrame({"x": np.arange(8.0), "y": np.arange(8.0), "modality": ["image", "text"] * 4,
                              "layer": "late"})
    assert api.boxplot(results, box, metric="jsd") is fig and box.get_title() == "jsd"
    assert api.depth_profile(results, profile) is fig and profile.get_xlabel() == "decoder layer index"
    assert api.tsne(embedding, points) is fig and len(points.collections) == 2
    assert plt.get_fignums() == open_figures  # pyplot neither made nor holds a figure
