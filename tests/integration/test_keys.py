"""Key capture against the model's own oracles: its KV cache, its hidden states, a full forward."""

from __future__ import annotations

import io
import re
import unicodedata

import pytest
import torch

from experiments.benchmarks import load_samples
from experiments.benchmarks.sample import LazyImage, Sample
from experiments.config import BenchmarkConfig
from experiments.keys.capture import KeyCapture, key_name
from experiments.keys.extract import extract_keys

from ..conftest import REPO

SITES = ["pre_rope", "post_rope"]


def _samples(n: int = 4) -> list[Sample]:
    # mixed Chinese / English prompts have different lengths, so batches carry padding
    return load_samples(BenchmarkConfig(name="synthetic", limit=n, style="mixed", seed=3)).samples


def _solo_oracle(loaded, sample: Sample, layer: int, site: str) -> torch.Tensor:
    """[S, kv_heads*head_dim] keys of `sample` run alone through a plain full forward, no keyspace hooks.

    post_rope: the model's own KV cache (use_cache=True; a config-free `DynamicCache`, so sliding-window layers
    keep every key). pre_rope: k_proj applied to the layer's normalised input, taken from
    output_hidden_states (plus DeepStack's visual features where Qwen3-VL adds them: `_layer_input`), then the
    per-head `k_norm` where the family has one (Gemma 3, Qwen3-VL).
    """
    from transformers import DynamicCache

    model, adapter = loaded.model, loaded.adapter
    inputs = adapter.model_inputs(loaded.processor, [sample.decoded()])
    with torch.inference_mode():
        out = model(**inputs, use_cache=True, cache=DynamicCache(), output_hidden_states=True)
    if site == "post_rope":
        return out.past_key_values.layers[layer].keys[0].transpose(0, 1).flatten(1)
    decoder_layer = adapter.layers(model)[layer]
    attention = decoder_layer.self_attn
    with torch.inference_mode():
        hidden = _layer_input(loaded, inputs, out.hidden_states, layer)[0]
        keys = attention.k_proj(decoder_layer.input_layernorm(hidden))
        if hasattr(attention, "k_norm"):
            keys = attention.k_norm(keys.unflatten(-1, (-1, attention.head_dim))).flatten(-2)
        return keys


def _layer_input(loaded, inputs, hidden_states, layer: int) -> torch.Tensor:
    """[B, S, hidden] the input of decoder layer `layer`. `output_hidden_states` records each layer's output;
    Qwen3-VL's DeepStack then adds the vision tower's k-th intermediate feature to the image tokens' hidden
    states after decoder layer k, for k < the number of those features (DeepStack, arXiv:2406.04334)."""
    vision = getattr(loaded.model.config, "vision_config", None)
    levels = len(getattr(vision, "deepstack_visual_indexes", None) or [])
    if not 0 < layer <= levels:
        return hidden_states[layer]
    with torch.inference_mode():
        deepstack = loaded.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    hidden = hidden_states[layer].clone()
    hidden[inputs["input_ids"] == loaded.model.config.image_token_id] += torch.cat(
        deepstack.deepstack_features[layer - 1])
    return hidden


@pytest.mark.parametrize("site", SITES)
def test_batched_keys_equal_solo_oracle(tiny, site):
    """Padded batch + early exit + modality split == each sample alone through the plain model."""
    samples = _samples()
    layers = [0, 2]
    kept, skipped = extract_keys(tiny, list(enumerate(samples)), layers, site, batch_size=4,
                                 max_tokens_per_sample=None, seed=0, store_dtype=torch.float32)
    assert not skipped
    lengths = [len(tiny.adapter.model_inputs(tiny.processor, [s.decoded()])["input_ids"][0]) for s in samples]
    assert len(set(lengths)) > 1, "the batch must contain padding for this test to mean anything"
    for record, sample, length in zip(kept, samples, lengths, strict=True):
        assert len(record.position) == length  # every real token, no padding
        for layer in layers:
            oracle = _solo_oracle(tiny, sample, layer, site)
            torch.testing.assert_close(record.keys[layer], oracle[record.position], rtol=1e-5, atol=1e-5)


def test_post_rope_differs_from_pre_rope(tiny):
    """RoPE really is applied: the two sites differ (else the cache oracle would prove nothing)."""
    sample = _samples(1)[0]
    pre = _solo_oracle(tiny, sample, 1, "pre_rope")
    post = _solo_oracle(tiny, sample, 1, "post_rope")
    assert (pre - post).abs().max() > 1e-2


@pytest.mark.parametrize("site", SITES)
def test_early_exit_equals_full_forward(tiny, site):
    """Stopping after layer 1 gives bit-identical keys to capturing all layers; lm_head never runs."""
    inputs = tiny.adapter.model_inputs(tiny.processor, [s.decoded() for s in _samples(2)])
    decoder = tiny.adapter.layers(tiny.model)
    depth = len(decoder)
    hooks_before = [len(d._forward_hooks) + len(tiny.adapter.key_module(d)._forward_hooks) for d in decoder]
    lm_head_calls = []
    handle = tiny.model.lm_head.register_forward_hook(lambda *a: lm_head_calls.append(1))
    try:
        with KeyCapture(tiny.model, tiny.adapter, [0, 1], site, torch.float32) as cap:
            early = dict(cap.run(**inputs))
        with KeyCapture(tiny.model, tiny.adapter, list(range(depth)), site, torch.float32) as cap:
            full = dict(cap.run(**inputs))
    finally:
        handle.remove()
    assert lm_head_calls == []
    for layer in (0, 1):
        assert torch.equal(early[key_name(layer, site)], full[key_name(layer, site)])
    hooks_after = [len(d._forward_hooks) + len(tiny.adapter.key_module(d)._forward_hooks) for d in decoder]
    assert hooks_after == hooks_before, "every hook must be removed on exit"


def _expected_image_tokens(loaded, inputs) -> int:
    """Independent count: Qwen grid/4 (2x2 merge); LLaVA (side/14)^2; LLaVA-NeXT and LLaVA-OneVision the vision
    tower's own packed feature count (base view + unpadded tiles + row newlines), which the model requires to match;
    Idefics3 the connector's rows for every real view (tiles + global view, all-zero padding views dropped);
    InternVL the projector's rows for every tile (thumbnail included), after the pixel shuffle; Mistral 3 (which
    passes `image_sizes` like LLaVA-NeXT) the patch merger's rows, one per 2x2 patches."""
    if "image_grid_thw" in inputs:
        return int(inputs["image_grid_thw"].prod()) // 4
    if loaded.adapter.family in ("gemma3", "paligemma"):  # the projector's rows (Gemma 3: pooled, mm_tokens_per_image)
        with torch.inference_mode():
            features = loaded.model.model.get_image_features(inputs["pixel_values"])
        return sum(len(f) for f in features.pooler_output)
    if "pixel_attention_mask" in inputs:
        with torch.inference_mode():
            features = loaded.model.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"])
        return sum(len(f) for f in features.pooler_output)
    if "image_sizes" in inputs:
        with torch.inference_mode():
            features = loaded.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        return sum(len(f) for f in features.pooler_output)
    if loaded.adapter.family == "internvl":
        with torch.inference_mode():
            features = loaded.model.model.get_image_features(inputs["pixel_values"]).pooler_output
        return features.shape[0] * features.shape[1]  # [tiles, tokens per tile, hidden]
    return (inputs["pixel_values"].shape[-1] // 14) ** 2


def test_image_mask_counts_processor_tokens(tiny):
    """Image tokens found == image features the vision side produces for that image."""
    samples = _samples(3)
    kept, _ = extract_keys(tiny, list(enumerate(samples)), [0], "post_rope", batch_size=3,
                           max_tokens_per_sample=None, seed=0, store_dtype=torch.float32)
    for record, sample in zip(kept, samples, strict=True):
        inputs = tiny.adapter.model_inputs(tiny.processor, [sample.decoded()])
        expected = _expected_image_tokens(tiny, inputs)
        assert int(record.is_image.sum()) == expected == record.n_image_tokens
        assert int((~record.is_image).sum()) == len(record.position) - expected == record.n_text_tokens


def test_token_cap_is_per_modality_and_seeded(tiny):
    samples = _samples(2)
    run = [extract_keys(tiny, list(enumerate(samples)), [0], "post_rope", batch_size=2, max_tokens_per_sample=5,
                        seed=7, store_dtype=torch.float32)[0] for _ in range(2)]
    for first, second in zip(*run, strict=True):
        assert int(first.is_image.sum()) == 5 and int((~first.is_image).sum()) == 5
        assert torch.equal(first.position, second.position)


def test_sample_without_image_is_skipped_with_reason(tiny, caplog):
    samples = _samples(2)
    text_only = Sample(id="no-image", parts=("Which colour is the sky?",))
    kept, skipped = extract_keys(tiny, [(0, samples[0]), (1, text_only), (2, samples[1])], [0], "post_rope",
                                 batch_size=3, max_tokens_per_sample=None, seed=0, store_dtype=torch.float32)
    assert [r.sample_id for r in kept] == [samples[0].id, samples[1].id]
    assert skipped[0]["sample_id"] == "no-image" and "no image tokens" in skipped[0]["reason"]
    assert "skipping sample no-image" in caplog.text


def test_batch_whose_first_sample_has_no_image(tiny):
    """Idefics3's, InternVL's and PaliGemma's processors convert their outputs twice and failed on this batch
    (`adapter.converted_once`); every family skips the text-only sample and keeps the other."""
    sample = _samples(1)[0]
    text_only = Sample(id="no-image", parts=("Which colour is the sky?",))
    kept, skipped = extract_keys(tiny, [(0, text_only), (1, sample)], [0], "post_rope", batch_size=2,
                                 max_tokens_per_sample=None, seed=0, store_dtype=torch.float32)
    assert [r.sample_id for r in kept] == [sample.id] and [s["sample_id"] for s in skipped] == ["no-image"]


def test_sample_whose_image_fails_to_decode_is_skipped_with_reason(tiny):
    """Decoding happens per batch at extraction: a truncated image skips its sample, the others are kept."""
    samples = _samples(2)
    png = io.BytesIO()
    samples[0].images[0].load().save(png, format="PNG")
    truncated = Sample(id="truncated", parts=(LazyImage.from_bytes(png.getvalue()[:200]), "Describe."))
    kept, skipped = extract_keys(tiny, [(0, samples[0]), (1, truncated), (2, samples[1])], [0], "post_rope",
                                 batch_size=1, max_tokens_per_sample=None, seed=0, store_dtype=torch.float32)
    assert [r.number for r in kept] == [0, 2]
    assert [s["sample_id"] for s in skipped] == ["truncated"] and "corrupt image" in skipped[0]["reason"]


def test_worker_processes_and_batch_size_do_not_change_keys(tiny):
    samples = list(enumerate(_samples(6)))
    inline, _ = extract_keys(tiny, samples, [1], "post_rope", 6, None, 0, torch.float32)
    workers, _ = extract_keys(tiny, samples, [1], "post_rope", 2, None, 0, torch.float32, num_workers=2)
    assert [r.number for r in workers] == [r.number for r in inline] == list(range(6))
    for a, b in zip(inline, workers, strict=True):
        assert torch.equal(a.position, b.position)
        torch.testing.assert_close(b.keys[1], a.keys[1], rtol=1e-5, atol=1e-5)


def test_device_holds_only_the_requested_layers_keys(tiny, monkeypatch):
    """During capture, the KV cache never holds more than the running layer (no values or keys of other layers)."""
    import transformers

    most = []

    class WatchedCache(transformers.DynamicCache):
        def update(self, *args, **kwargs):
            out = super().update(*args, **kwargs)
            most.append(sum(layer.keys is not None or layer.values is not None for layer in self.layers))
            return out

    monkeypatch.setattr(transformers, "DynamicCache", WatchedCache)
    samples = _samples(2)
    layers = [1, 3]
    with KeyCapture(tiny.model, tiny.adapter, layers, "post_rope", torch.float32) as capture:
        keys = capture.run(**tiny.adapter.model_inputs(tiny.processor, [s.decoded() for s in samples]))
    assert len(most) == 4 and max(most) == 1  # layers 0..3 ran, each alone in the cache
    assert sorted(keys) == [key_name(i, "post_rope") for i in layers]


@pytest.mark.parametrize("site", SITES)
def test_capture_uses_no_deprecated_transformers_argument(tiny, site):
    """`past_key_values=` is deprecated (removed in transformers 5.40): capture passes the cache as `cache=`."""
    import warnings

    sample = _samples(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with KeyCapture(tiny.model, tiny.adapter, [1], site, torch.float32) as capture:
            capture.run(**tiny.adapter.model_inputs(tiny.processor, [sample.decoded()]))


CONTENT_SOURCES = {
    "synthetic-mmbench_cn": BenchmarkConfig(name="synthetic", limit=3, style="mmbench_cn"),
    "synthetic-mmmu": BenchmarkConfig(name="synthetic", limit=3, style="mmmu"),
    "real-mmmu": BenchmarkConfig(name="mmmu", path=str(REPO / "tests/fixtures/real_samples/mmmu/MMMU"),
                                 split="validation", subjects=["Accounting", "Economics", "Finance"], limit=6),
}


GENERATION_PROMPT = {"llava": "ASSISTANT:", "llava_next": "ASSISTANT:", "idefics3": "Assistant:",  # else "assistant"
                     "gemma3": "<start_of_turn>model\n", "paligemma": "<bos>",  # PaliGemma: no template, its <bos>
                     "mistral3": "[/INST]"}


@pytest.mark.parametrize("source", list(CONTENT_SOURCES))
def test_content_mask_marks_exactly_the_samples_own_text(tiny, source):
    """Decoding the content tokens gives back the sample's text; the rest decodes to template and special tokens."""
    samples = [s.decoded() for s in load_samples(CONTENT_SOURCES[source]).samples]
    tokenizer = tiny.processor.tokenizer
    inputs = tiny.adapter.model_inputs(tiny.processor, samples, offsets=True)
    content = tiny.adapter.content_mask(tiny.processor, samples, inputs)
    image_id = tokenizer.convert_tokens_to_ids(tiny.processor.image_token)
    for row, sample in enumerate(samples):
        ids = inputs["input_ids"][row]
        real = inputs["attention_mask"][row].bool()
        assert not (content[row] & ((ids == image_id) | ~real)).any()
        def squeeze(text: str) -> str:  # tokenizers differ in whitespace marks; the Llama one applies NFKC
            return "".join(unicodedata.normalize("NFKC", text).split())

        # the tiny offline tokenizers decode characters outside their small vocabulary as <unk>
        decoded = squeeze(tokenizer.decode(ids[content[row]].tolist())).split(squeeze(tokenizer.unk_token or "\0"))
        assert re.fullmatch(".+?".join(map(re.escape, decoded)), squeeze(sample.text))
        rest = tokenizer.decode(ids[real & ~content[row] & (ids != image_id)].tolist())
        assert GENERATION_PROMPT.get(tiny.adapter.family, "assistant") in rest
        assert squeeze(sample.text)[:12] not in squeeze(rest)
