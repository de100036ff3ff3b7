"""The whole job at the published widths of LLaVA-1.5-7B, Qwen2.5-VL-7B and Idefics3-8B, cut to 2 decoder and 2 vision
layers.

Random weights built in memory (`model.weights=random`, fp32 on CPU), a vocabulary cut to
the offline tokenizer's, 4 synthetic samples. What must match the published models: the keys' width
(kv_heads*head_dim: 32*128 = 4096 for LLaVA, 4*128 = 512 for Qwen, 8*128 = 1024 for Idefics3) and the image tokens
per image (CLIP ViT-L/14 at 336 px: 576; Qwen at 448 x 448: 256; Idefics3 one 364 px view: 169, its full 1456 px
tiling being 17 views, checked in `test_models.py`). On one CPU thread: LLaVA about 50 s, Qwen about
35 s, each under 3 GB peak RSS (`model.dtype=bfloat16` takes about 40% off both on a CPU with AVX512-BF16);
Idefics3 about 40 s on a busy machine. Qwen3-VL-8B (8*128 = 1024, 448 x 448: 196 tokens, both DeepStack levels
kept, about 45 s) and LLaVA-OneVision-7B (4*128 = 512, one 384 px image: base view + 1x1 crop + newlines = 1485
tokens, about 160 s: the statistics on 3000 image keys per half) on a busy machine. Gemma-3-4B (4*256 = 1024, 896 px:
256 tokens, about 75 s) and PaliGemma-2-10B (8*256 = 2048, 448 px: 1024 tokens, eager attention, about 80 s) on a
busy machine, 4.3 GB peak RSS for the two.
"""

from __future__ import annotations

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import experiments.pipeline as pipeline
from experiments.config import register_configs
from experiments.report.tables import read_metadata

from ..conftest import REPO

N_SAMPLES = 4  # split into halves of 2 samples
# name -> (overrides, (kv_heads, head_dim), image tokens per sample)
PUBLISHED = {
    "llava-1.5-7b": (["model=llava", "benchmark.image_size=336",
                      "model.architecture.text_config.num_hidden_layers=2",
                      "model.architecture.vision_config.num_hidden_layers=2",
                      "model.architecture.text_config.vocab_size=0"], (32, 128), 576),
    "qwen2.5-vl-7b": (["model=qwen", "benchmark.image_size=448",
                       "model.architecture.text_config.num_hidden_layers=2",
                       "model.architecture.vision_config.depth=2",
                       "model.architecture.vision_config.fullatt_block_indexes=[1]",
                       "model.architecture.text_config.vocab_size=0"], (4, 128), 256),
    "idefics3-8b": (["model=idefics3", "benchmark.image_size=364",
                     "+model.processor.longest_edge=364",  # one 364 px view of 169 tokens, not 4 x 4 tiles + global
                     "model.architecture.text_config.num_hidden_layers=2",
                     "model.architecture.vision_config.num_hidden_layers=2",
                     "model.architecture.text_config.vocab_size=0"], (8, 128), 169),
    "qwen3-vl-8b": (["model=qwen3_vl", "benchmark.image_size=448",
                     "model.architecture.text_config.num_hidden_layers=2",
                     "model.architecture.vision_config.depth=2",
                     "model.architecture.vision_config.deepstack_visual_indexes=[0,1]",
                     "model.architecture.text_config.vocab_size=0"], (8, 128), 196),
    "llava-onevision-7b": (["model=llava_onevision", "benchmark.image_size=384",
                            "model.architecture.text_config.num_hidden_layers=2",
                            "model.architecture.vision_config.num_hidden_layers=2",
                            "model.architecture.text_config.vocab_size=0"], (4, 128), 729 + 27 * 27 + 27),
    "gemma-3-4b": (["model=gemma3", "benchmark.image_size=896",
                    "model.architecture.text_config.num_hidden_layers=2",
                    "model.architecture.vision_config.num_hidden_layers=2",
                    "model.architecture.text_config.vocab_size=0"], (4, 256), 256),
    "paligemma2-10b": (["model=paligemma", "benchmark.image_size=448",
                        "model.architecture.text_config.num_hidden_layers=2",
                        "model.architecture.vision_config.num_hidden_layers=2",
                        "model.architecture.text_config.vocab_size=0"], (8, 256), 1024),
}
JOB = ["model.weights=random", f"benchmark.limit={N_SAMPLES}",
       "layer.positions=[1]", "keys.max_tokens_per_sample=null", "keys.batch_size=2",
       "analysis.n_splits=2", "analysis.max_tokens_per_group=100000", "metric.n_permutations=20",
       "report.tsne_points=80", "logger=none"]  # vocab_size=0: raised to the offline tokenizer's size


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_job_at_published_widths(name, tmp_path, monkeypatch):
    overrides, (kv_heads, head_dim), image_tokens = PUBLISHED[name]
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"paths.cache_dir={tmp_path / 'cache'}", *JOB, *overrides])
    extracted, extracted_by = [], []

    def spy(loaded, *args, **kwargs):  # the job's own extraction, returned unchanged
        extracted_by.append(loaded)
        extracted.append(pipeline_extract(loaded, *args, **kwargs))
        return extracted[-1]

    pipeline_extract = pipeline.extract_keys
    monkeypatch.setattr(pipeline, "extract_keys", spy)
    pipeline.run(cfg, tmp_path / "job")

    loaded = extracted_by[0]
    assert loaded.model.config.get_text_config().num_key_value_heads == kv_heads
    assert loaded.adapter.layers(loaded.model)[1].self_attn.head_dim == head_dim
    records = [record for kept, _ in extracted for record in kept]
    assert len(records) == N_SAMPLES
    for record in records:
        assert record.n_image_tokens == int(record.is_image.sum()) == image_tokens
        assert record.keys[1].shape == (record.n_image_tokens + record.n_text_tokens, kv_heads * head_dim)
    metadata = read_metadata(tmp_path / "job" / "results.parquet")
    assert metadata["n_samples_used"] == N_SAMPLES
    assert metadata["image_tokens_per_sample"] == {"mean": image_tokens, "min": image_tokens, "max": image_tokens}
    results = pd.read_parquet(tmp_path / "job" / "results.parquet")
    half = N_SAMPLES // 2 * image_tokens  # image tokens of one half, uncapped
    assert (results.loc[results["comparison"] != "text_vs_text", "n_x"] == half).all()
    assert (results.loc[results["comparison"] == "image_vs_image", "n_y"] == half).all()
    assert results["value"].notna().all()
