"""The whole job on the tiny models: files, schema, cache reuse, identical reruns, W&B offline files."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.config import register_configs
from experiments.models import load_model
from experiments.pipeline import run
from experiments.report.schema import RESULT_COLUMNS
from experiments.report.tables import read_metadata

from .. import wandb_offline
from ..conftest import REPO

SMALL = ["benchmark.limit=8", "analysis.n_splits=2", "metric.n_permutations=50", "report.tsne_points=80",
         "keys.shard_size=4", "keys.batch_size=4"]


def _cfg(cache_dir, overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"paths.cache_dir={cache_dir}", *SMALL, *overrides])


@pytest.mark.parametrize("model", ["tiny_llava", "tiny_qwen"])
def test_job_writes_results_and_rerun_reuses_cache(tmp_path, cache_dir, model, caplog, monkeypatch):
    cfg = _cfg(cache_dir, [f"model={model}", "logger=none"])
    first = tmp_path / "first"
    with caplog.at_level(logging.INFO):
        run(cfg, first)
    assert "extracting 2 of 2 shards" in caplog.text
    results = pd.read_parquet(first / "results.parquet")
    assert list(results.columns) == list(RESULT_COLUMNS)
    assert len(results) == 3 * 3 * 2 * 2  # layers x comparisons x metrics x splits
    assert set(results["comparison"]) == {"image_vs_text", "image_vs_image", "text_vs_text"}
    assert results["value"].notna().all()
    mmd = results[results["metric"] == "mmd2"]
    assert mmd["p_value"].between(1 / 51, 1).all() and (mmd["kernel"] == "rbf").all()
    # every metric has a permutation test; the controls sit inside their null, the gap far outside
    assert results["p_value"].between(1 / 51, 1).all() and results["null_std"].gt(0).all()
    controls = results[results["comparison"] != "image_vs_text"]
    assert controls.groupby(["metric", "layer"])["value_z"].mean().abs().max() < 2
    assert results[results["comparison"] == "image_vs_text"]["value_z"].min() > 3
    embedding = pd.read_parquet(first / "embedding.parquet")
    assert {"x", "y", "modality", "sample_id", "layer"} <= set(embedding.columns)
    assert set(embedding["modality"]) == {"image", "text"}
    for figure in ("boxplot.png", "tsne.png"):
        assert (first / "figures" / figure).stat().st_size > 10_000
    assert json.loads((first / "status.json").read_text())["status"] == "completed"

    # The rerun must not run the model at all, and must give identical numbers.
    import experiments.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *_: pytest.fail("rerun loaded the model"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(cfg, tmp_path / "second")
    assert "key cache hit" in caplog.text
    pd.testing.assert_frame_equal(results, pd.read_parquet(tmp_path / "second" / "results.parquet"))


def test_one_job_loads_its_model_once_for_every_stage(tmp_path, monkeypatch):
    """Extraction, the attention stage and the intervention stage share one loaded model (minutes for a 7B)."""
    import experiments.models as models
    import experiments.pipeline as pipeline

    loads = []
    for module in (pipeline, models):  # every way a stage could reach it
        monkeypatch.setattr(module, "load_model", lambda cfg: loads.append(cfg) or load_model(cfg))
    run(_cfg(tmp_path / "cache", ["logger=none", "analysis.attention=true", "analysis.attention_samples=2",
                                  "intervention=mean_shift", "intervention.max_samples=4"]), tmp_path / "job")
    assert len(loads) == 1
    results = pd.read_parquet(tmp_path / "job" / "results.parquet")
    assert {"attn_image_share", "key_mmd2"} <= set(results["metric"])


def test_killed_extraction_resumes_from_finished_shards(tmp_path, cache_dir, monkeypatch, caplog):
    """A job that dies after its first shard leaves that shard; the rerun extracts only the rest."""
    import experiments.pipeline as pipeline

    cfg = _cfg(tmp_path / "cache", ["logger=none", "benchmark.seed=11"])
    real_extract = pipeline.extract_keys
    calls = []

    def dying_extract(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(pipeline, "extract_keys", dying_extract)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "status.json").read_text())["status"] == "failed"
    monkeypatch.setattr(pipeline, "extract_keys", real_extract)
    with caplog.at_level(logging.INFO):
        run(cfg, tmp_path / "resumed")
    assert "extracting 1 of 2 shards" in caplog.text
    embedding = pd.read_parquet(tmp_path / "resumed" / "embedding.parquet")
    assert embedding.groupby("layer")["sample_id"].nunique().eq(8).all()


def test_layer_out_of_range_fails_naming_the_field(tmp_path, cache_dir):
    with pytest.raises(ValueError, match=r"layer.positions contains 9, but the model has 4 decoder layers"):
        run(_cfg(cache_dir, ["layer.positions=[9]", "logger=none"]), tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "layer.positions" in status["error"]


def test_wandb_offline_run_holds_the_summary(tmp_path, cache_dir, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run(_cfg(cache_dir, ["layer=late", "metric=mmd"]), tmp_path)
    run_files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    summary = wandb_offline.summary(run_files[0])
    results = pd.read_parquet(tmp_path / "results.parquet")
    expected = results[results["comparison"] == "image_vs_text"]["value"].mean()
    assert summary["mmd2/image_vs_text/late"] == pytest.approx(expected)


@pytest.mark.parametrize("benchmark_name", ["mmmu", "mmbench_cn"])
def test_real_benchmark_files_run_end_to_end(benchmark_name, tmp_path, cache_dir):
    """`launch.py model=tiny_llava benchmark=<real> benchmark.path=<real files>` writes results, offline."""
    from ..fixtures import mmbench_files

    if benchmark_name == "mmmu":
        path = REPO / "tests" / "fixtures" / "real_samples" / "mmmu" / "MMMU"
    else:
        path = mmbench_files.write_tsv(tmp_path / "MMBench_DEV_CN.tsv")
    cfg = _cfg(cache_dir, [f"benchmark={benchmark_name}", f"benchmark.path={path}", "benchmark.limit=8", "logger=none"])
    run(cfg, tmp_path / "job")
    results = pd.read_parquet(tmp_path / "job" / "results.parquet")
    assert set(results["benchmark"]) == {benchmark_name} and (results["prompt_style"] == "vlmevalkit").all()
    assert results["value"].notna().all()
    metadata = read_metadata(tmp_path / "job" / "results.parquet")
    assert metadata["n_samples_used"] == 8
    assert metadata["image_tokens_per_sample"]["min"] >= 16  # tiny LLaVA: 16 per image, MMMU rows may have more
    if benchmark_name == "mmbench_cn":  # the fixture's corrupt row is reported, not fatal, if the selection tried it
        assert all("sample_id" in s and s["reason"] for s in metadata["skipped_samples"])


def test_wandb_failure_loses_no_result(tmp_path, cache_dir, monkeypatch, caplog):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    run(_cfg(cache_dir, ["layer=late", "metric=jsd"]), tmp_path)
    assert "W&B logging failed" in caplog.text
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 3 * 2


def test_rerun_in_the_same_dir_reuses_tables_with_the_same_stamp(tmp_path, cache_dir, caplog, monkeypatch):
    """A requeued job (same output dir, same config) skips the statistics; a changed analysis recomputes."""
    import experiments.pipeline as pipeline

    cfg = _cfg(cache_dir, ["layer=late", "metric=jsd", "logger=none"])
    run(cfg, tmp_path)
    first = pd.read_parquet(tmp_path / "results.parquet")
    monkeypatch.setattr(pipeline, "compare_modalities", lambda *a, **k: pytest.fail("statistics recomputed"))
    with caplog.at_level(logging.INFO):
        run(cfg, tmp_path)
    assert "results.parquet already written by an earlier attempt: reused" in caplog.text
    monkeypatch.undo()
    run(_cfg(cache_dir, ["layer=late", "metric=jsd", "logger=none", "analysis.n_splits=3"]), tmp_path)
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == len(first) * 3 // 2


def test_layer_sweep_reuses_one_entry_and_extracts_only_missing_layers(tmp_path, monkeypatch, caplog):
    """`layer=late` extracts layer 3; `layer=all` then adds only 0 and 2; `early`/`late` afterwards extract nothing."""
    import experiments.pipeline as pipeline

    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO):
        run(_cfg(cache, ["layer=late", "logger=none", "metric=mmd"]), tmp_path / "late")
        assert "extracting 2 of 2 shards" in caplog.text and "(layers [3])" in caplog.text
        caplog.clear()
        run(_cfg(cache, ["layer=all", "logger=none", "metric=mmd"]), tmp_path / "all")
        assert "extracting 2 of 2 shards" in caplog.text and "(layers [0, 2])" in caplog.text
    assert len(list((cache / "keys").iterdir())) == 1
    monkeypatch.setattr(pipeline, "load_model", lambda *_: pytest.fail("a layer subset ran the model"))
    for layer in ("early", "late"):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            run(_cfg(cache, [f"layer={layer}", "logger=none", "metric=mmd"]), tmp_path / layer)
        assert "key cache hit" in caplog.text
    everything = pd.read_parquet(tmp_path / "all" / "results.parquet")
    late = pd.read_parquet(tmp_path / "late" / "results.parquet")
    pd.testing.assert_frame_equal(late.reset_index(drop=True),
                                  everything[everything["layer"] == "late"].reset_index(drop=True))


def test_analysis_reads_only_the_rows_it_uses(tmp_path, cache_dir, monkeypatch):
    """Select, then read: each layer's read asks for the capped groups and the t-SNE points, not every token."""
    from experiments.store import KeyStore

    reads = []
    real_read = KeyStore.read

    def counting_read(self, layer, rows, index):
        reads.append((layer, len(rows), len(index.sample)))
        return real_read(self, layer, rows, index)

    monkeypatch.setattr(KeyStore, "read", counting_read)
    cfg = _cfg(cache_dir, ["logger=none", "metric=mmd", "benchmark.limit=24", "analysis.max_tokens_per_group=40",
                           "analysis.n_splits=2", "report.tsne_points=30", "analysis.paired_samples=0"])
    run(cfg, tmp_path)
    assert [layer for layer, _, _ in reads] == [0, 2, 3]  # one read per layer
    for _, n_rows, n_tokens in reads:
        assert n_rows <= 2 * 4 * 40 + 30 < n_tokens


def test_layer_every_gives_a_depth_profile(tmp_path, cache_dir):
    run(_cfg(cache_dir, ["layer=every", "logger=none", "metric=mmd", "report.tsne_max_layers=2"]), tmp_path / "0")
    results = pd.read_parquet(tmp_path / "0" / "results.parquet")
    assert sorted(results["layer_index"].unique()) == [0, 1, 2, 3] and set(results["layer"]) == {"0", "1", "2", "3"}
    assert (tmp_path / "0" / "figures" / "depth_profile.png").stat().st_size > 10_000
    assert set(pd.read_parquet(tmp_path / "0" / "embedding.parquet")["layer"]) == {"0", "3"}  # 2 evenly spaced


def test_exclude_sinks_leaves_out_every_first_token(tmp_path, cache_dir):
    """Each sample's position-0 token (BOS) is a sink; excluded, the text groups shrink by exactly those tokens."""
    base = ["logger=none", "metric=mmd", "analysis.n_splits=1", "layer=late"]
    run(_cfg(cache_dir, base), tmp_path / "all")
    run(_cfg(cache_dir, [*base, "analysis.exclude_sinks=true", "analysis.sink_norm_factor=1000"]), tmp_path / "cut")
    everything, cut = (pd.read_parquet(tmp_path / name / "results.parquet").set_index("comparison")
                       for name in ("all", "cut"))
    assert read_metadata(tmp_path / "cut" / "results.parquet")["sink_tokens_excluded"] == {"late": 8}
    half = 4  # 8 samples, 4 per half: one BOS each
    assert cut.loc["text_vs_text", "n_x"] == everything.loc["text_vs_text", "n_x"] - half
    assert cut.loc["image_vs_image", "n_x"] == everything.loc["image_vs_image", "n_x"]  # BOS is a text token


def test_text_tokens_content_leaves_the_template_out(tmp_path, cache_dir):
    """analysis.text_tokens=content: text groups hold only the samples' own text; image groups are unchanged."""
    from experiments.config import JobConfig
    from experiments.store import KeyStore, cache_descriptor

    base = ["logger=none", "metric=mmd", "analysis.n_splits=1", "layer=late"]
    run(_cfg(cache_dir, base), tmp_path / "all")
    cfg = _cfg(cache_dir, [*base, "analysis.text_tokens=content"])
    run(cfg, tmp_path / "content")
    everything, content = (pd.read_parquet(tmp_path / name / "results.parquet").set_index("comparison")
                           for name in ("all", "content"))
    assert content.loc["image_vs_image", "n_x"] == everything.loc["image_vs_image", "n_x"]
    job: JobConfig = OmegaConf.to_object(cfg)
    index = KeyStore(job.paths.cache_dir, cache_descriptor(job, None), 8).index()
    text, own = ~index.is_image, index.is_content
    assert 0 < int(own.sum()) < int(text.sum()) and not (own & index.is_image).any()
    half_share = everything.loc["text_vs_text", "n_x"] * int(own.sum()) / int(text.sum())
    assert content.loc["text_vs_text", "n_x"] == pytest.approx(half_share, rel=0.25)  # about the content share


def test_paired_table_equals_an_oracle_from_the_cache_files(tmp_path, cache_dir):
    """paired.parquet's own distance of a sample = ||mean image key - mean text key|| from the raw shard file."""
    from safetensors.torch import load_file

    from experiments.config import JobConfig
    from experiments.store import KeyStore, cache_descriptor

    cfg = _cfg(cache_dir, ["logger=none", "metric=mmd", "analysis.n_splits=1", "layer=late",
                           "analysis.paired_samples=5"])
    run(cfg, tmp_path)
    paired = pd.read_parquet(tmp_path / "paired.parquet")
    assert len(paired) == 5 and (paired["layer"] == "late").all()
    job: JobConfig = OmegaConf.to_object(cfg)
    store = KeyStore(job.paths.cache_dir, cache_descriptor(job, None), 8)
    row = paired.iloc[0]
    number = int(row["sample_id"].split("-")[1])
    shard = number // job.keys.shard_size
    tokens, keys = load_file(str(store.tokens_path(shard))), load_file(str(store.layer_path(shard, 3)))["keys"]
    mine = tokens["sample"] == number
    gap = keys[mine & tokens["is_image"]].double().mean(0) - keys[mine & ~tokens["is_image"]].double().mean(0)
    assert row["own_distance"] == pytest.approx(float(gap.norm()), rel=1e-9)
    assert set(read_metadata(tmp_path / "paired.parquet")["wilcoxon_p"]) == {"late"}


def test_position_control_adds_rows_without_changing_the_others(tmp_path, cache_dir):
    """tiny_qwen has text before its image (system prompt) and after it (question): both groups form."""
    base = ["model=tiny_qwen", "logger=none", "metric=mmd", "analysis.n_splits=1", "layer=late"]
    run(_cfg(cache_dir, base), tmp_path / "plain")
    run(_cfg(cache_dir, [*base, "analysis.position_control=true"]), tmp_path / "control")
    plain = pd.read_parquet(tmp_path / "plain" / "results.parquet")
    control = pd.read_parquet(tmp_path / "control" / "results.parquet")
    extra = control[control["comparison"] == "text_before_vs_text_after"]
    assert len(extra) == 1 and extra["value"].notna().all() and extra["n_x"].gt(0).all()
    pd.testing.assert_frame_equal(control[control["comparison"] != "text_before_vs_text_after"]
                                  .reset_index(drop=True), plain)
