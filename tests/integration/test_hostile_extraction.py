"""Hostile inputs at extraction, on the tiny models: prompts longer than the context, keys with NaN or Inf,
a damaged cache shard in a real job, and valid extreme config values that run end to end."""

from __future__ import annotations

import logging

import pandas as pd
import torch

from experiments.benchmarks import load_samples
from experiments.benchmarks.sample import Sample
from experiments.config import BenchmarkConfig
from experiments.keys.extract import extract_keys
from experiments.pipeline import run

from .test_pipeline import _cfg


def _samples(n: int) -> list[Sample]:
    return load_samples(BenchmarkConfig(name="synthetic", limit=n, style="mixed", seed=3)).samples


def test_a_prompt_longer_than_the_context_is_skipped_not_cut(tiny, caplog):
    """No image token is silently lost: the long sample is skipped with its length, the others keep every token."""
    samples = _samples(3)
    context = tiny.model.config.get_text_config().max_position_embeddings
    long = Sample(id="long", parts=(samples[0].parts[0], "Question: " + "A. B. C. D. " * context))
    kept, skipped = extract_keys(tiny, [(0, samples[0]), (1, long), (2, samples[1])], [0], "post_rope",
                                 batch_size=3, max_tokens_per_sample=None, seed=0, store_dtype=torch.float32)
    assert [r.sample_id for r in kept] == [samples[0].id, samples[1].id]
    assert [s["sample_id"] for s in skipped] == ["long"]
    assert f"more than the model's context of {context}; not cut, skipped" in skipped[0]["reason"]
    alone, _ = extract_keys(tiny, [(0, samples[0])], [0], "post_rope", batch_size=1, max_tokens_per_sample=None,
                            seed=0, store_dtype=torch.float32)
    assert torch.equal(alone[0].keys[0], kept[0].keys[0])


def test_keys_that_overflow_float16_are_skipped_not_stored(tiny, caplog):
    """Pre-RoPE keys (k_proj, or the k_norm after it) scaled past float16's range in one batch: that batch's
    samples are skipped with the reason."""
    samples = _samples(4)
    layer = tiny.adapter.key_module(tiny.adapter.layers(tiny.model)[0])
    calls = []

    def overflow(module, inputs, output):
        calls.append(1)
        return output * 1e6 if len(calls) == 1 else output

    handle = layer.register_forward_hook(overflow)
    try:
        kept, skipped = extract_keys(tiny, list(enumerate(samples)), [0], "pre_rope", batch_size=2,
                                     max_tokens_per_sample=None, seed=0, store_dtype=torch.float16)
    finally:
        handle.remove()
    assert len(kept) == 2 and len(skipped) == 2
    assert all("hold NaN or Inf (a float16 overflow?" in s["reason"] for s in skipped)
    assert all(bool(torch.isfinite(r.keys[0]).all()) for r in kept)


def test_a_damaged_shard_is_extracted_again_in_a_job(tmp_path, cache_dir, caplog):
    """A job after a truncated layer file re-extracts that file and gives the same results as the first job."""
    cfg = _cfg(cache_dir / "hostile", ["logger=none", "layer=late", "analysis.paired_samples=0"])
    run(cfg, tmp_path / "first")
    store = next(p for p in (cache_dir / "hostile" / "keys").iterdir())
    damaged = sorted(store.glob("shard-00001.layer-*.safetensors"))[0]
    damaged.write_bytes(damaged.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING):
        run(cfg, tmp_path / "second")
    assert f"key cache file {damaged} is damaged" in caplog.text
    first, second = (pd.read_parquet(tmp_path / d / "results.parquet") for d in ("first", "second"))
    pd.testing.assert_frame_equal(first, second)


def test_valid_extreme_values_run_end_to_end(tmp_path, cache_dir):
    """The smallest values the schema accepts give a complete job, not a late failure."""
    overrides = ["logger=none", "layer=late", "analysis.n_splits=1", "analysis.max_tokens_per_group=2",
                 "keys.max_tokens_per_sample=1", "keys.batch_size=1", "keys.shard_size=1", "metric.n_permutations=0",
                 "metric.n_bootstrap=0", "metric.bootstrap_batch=1", "metric.jsd_bins=1", "metric.jsd_n_projections=1",
                 "analysis.paired_samples=2", "report.tsne_points=4", "report.tsne_pca_dim=2",
                 "report.perplexity=1e-3", "report.tsne_max_layers=1", "benchmark.image_size=17",
                 "kernel.bandwidth=1e-3", "metric.ci_level=0.999999"]
    run(_cfg(cache_dir / "extremes", overrides), tmp_path)
    results = pd.read_parquet(tmp_path / "results.parquet")
    assert set(results["comparison"]) == {"image_vs_text", "image_vs_image", "text_vs_text"}
    assert (results["n_x"] == 2).all()  # every group capped at 2 tokens
