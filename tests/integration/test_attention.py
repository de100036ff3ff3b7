"""Attention recomputed from captured queries and keys, against the model's own oracles, on the three tiny
families (LLaVA; Qwen2.5-VL with M-RoPE and GQA; LLaVA-NeXT):

- captured queries == q_proj(input_layernorm(hidden state)) rotated by a RoPE / M-RoPE written out here;
- chunked attention == the model's eager attention weights (`output_attentions=True`) within 1e-5;
- allocation shares add up to 1, and the per-sample statistics equal sums over the eager weights and a
  float64 brute-force logit gap from the model's own KV cache.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

from experiments.attention.scores import allocation, attention_chunks, sample_statistics
from experiments.benchmarks import load_samples
from experiments.config import BenchmarkConfig
from experiments.keys.capture import KeyCapture, key_name, query_name
from experiments.models import get_adapter

from ..conftest import TINY, tiny_model_config
from .test_keys import _layer_input

LAYERS = [0, 2, 3]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def eager_models(cache_dir):
    """The tiny families with eager attention (the oracle's weights need it); name -> LoadedModel."""
    from experiments.models import load_model

    models = {}
    for name in CAUSAL:
        cfg = tiny_model_config(name, cache_dir)
        cfg.attn_implementation = "eager"
        models[name] = load_model(cfg)
    return models


CAUSAL = [name for name in TINY if get_adapter(tiny_model_config(name, ".").family).mask == "causal"]


@pytest.fixture(params=CAUSAL, ids=CAUSAL)
def run(request, eager_models):
    """One sample through one family: captured q/k at LAYERS and the eager forward's oracles."""
    loaded = eager_models[request.param]
    model, adapter = loaded.model, loaded.adapter
    sample = load_samples(BenchmarkConfig(name="synthetic", limit=2, style="mixed", seed=5)).samples[1].decoded()
    inputs = adapter.model_inputs(loaded.processor, [sample])
    decoder = adapter.layers(model)
    with KeyCapture(model, adapter, LAYERS, "post_rope", torch.float32, queries=True) as capture:
        captured = dict(capture.run(**inputs))
    with torch.inference_mode():
        out = model(**inputs, output_attentions=True, output_hidden_states=True, use_cache=True)
    is_image = inputs["input_ids"][0] == adapter.image_token_id(model)
    return {"loaded": loaded, "inputs": inputs, "captured": captured, "out": out, "is_image": is_image,
            "decoder": decoder, "family": loaded.adapter.family,
            "positions": loaded.adapter.positions}


def _split(run, layer):
    """Captured q [S, heads, head_dim] and k [S, kv_heads, head_dim] of `layer`."""
    head_dim = run["decoder"][layer].self_attn.head_dim
    q = run["captured"][query_name(layer)][0].unflatten(-1, (-1, head_dim))
    k = run["captured"][key_name(layer, "post_rope")][0].unflatten(-1, (-1, head_dim))
    return q, k


def _positions(run) -> torch.Tensor:
    """[3, S] M-RoPE positions (t, h, w) written out for one image: text counts up; the image's merged grid
    takes t = start, h = start + row, w = start + column; text resumes at 1 + the largest position so far
    (Qwen2-VL, Qwen2.5-VL and Qwen3-VL alike for an image: Qwen3-VL's timestamps only mark video frames).
    [1, S] arange for the LLaVA families."""
    ids = run["inputs"]["input_ids"][0]
    if run["positions"] != "mrope":
        return torch.arange(len(ids))[None]
    config = run["loaded"].model.config
    merge = config.vision_config.spatial_merge_size
    _, height, width = (int(v) for v in run["inputs"]["image_grid_thw"][0])
    rows, cols = height // merge, width // merge
    positions = torch.zeros(3, len(ids), dtype=torch.long)
    image = (ids == config.image_token_id).nonzero().squeeze(1)
    start = int(image[0])
    positions[:, :start] = torch.arange(start)
    grid = torch.arange(rows * cols)
    positions[0, image] = start
    positions[1, image] = start + grid // cols
    positions[2, image] = start + grid % cols
    after = int(image[-1]) + 1
    resume = int(positions[:, image].max()) + 1
    positions[:, after:] = resume + torch.arange(len(ids) - after)
    return positions


def _rotary(run, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, head_dim] from the config's rope_theta (and mrope_section), as RoPE / M-RoPE define them."""
    text = run["loaded"].model.config.get_text_config()
    rope = text.rope_parameters
    assert rope["rope_type"] == "default"
    inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = _positions(run).double()[..., None] * inv_freq  # [axes, S, head_dim / 2]
    if run["positions"] == "mrope" and rope.get("mrope_interleaved"):
        # Qwen3-VL's interleaved M-RoPE: frequency j rotates by h if j % 3 == 1 and w if j % 3 == 2, within
        # 3 x that axis's section; every other frequency by t ([THW THW ... TT], sections (t, h, w))
        _, h, w = rope["mrope_section"]
        j = torch.arange(freqs.shape[-1])
        axis = torch.zeros_like(j)
        axis[(j % 3 == 1) & (j < 3 * h)] = 1
        axis[(j % 3 == 2) & (j < 3 * w)] = 2
        freqs = freqs.permute(0, 2, 1)[axis, j].T[None]
    elif run["positions"] == "mrope":  # section i of the frequencies rotates by axis i % 3 (t, h, w)
        sections = freqs.split(list(rope["mrope_section"]), dim=-1)
        freqs = torch.cat([part[i % 3] for i, part in enumerate(sections)], dim=-1)[None]
    angles = torch.cat([freqs[0], freqs[0]], dim=-1)
    return angles.cos(), angles.sin()


def test_captured_queries_equal_recomputation_from_hidden_states(run):
    """q_post == RoPE(q_proj(input_layernorm(h))), h = the layer's input hidden state from the forward."""
    for layer in LAYERS:
        block = run["decoder"][layer]
        attention = block.self_attn
        with torch.inference_mode():
            h = _layer_input(run["loaded"], run["inputs"], run["out"].hidden_states, layer)[0]
            q = attention.q_proj(block.input_layernorm(h)).unflatten(-1, (-1, attention.head_dim))  # [S, heads, d]
            if hasattr(attention, "q_norm"):  # Gemma 3, Qwen3-VL: a per-head norm before RoPE
                q = attention.q_norm(q)
        q = q.double()
        cos, sin = (t[:, None] for t in _rotary(run, attention.head_dim))
        half = attention.head_dim // 2
        expected = q * cos + torch.cat([-q[..., half:], q[..., :half]], dim=-1) * sin
        captured, k = _split(run, layer)
        assert captured.shape == expected.shape
        torch.testing.assert_close(captured.double(), expected, rtol=0, atol=TOLERANCE)
        assert (captured.double() - q).abs().max() > 1e-2  # RoPE really rotated them
    if run["positions"] == "mrope":
        assert k.shape[1] < captured.shape[1]  # GQA: fewer KV heads than query heads
        t, h, w = _positions(run)
        assert (t != h).any() and (h != w).any()  # the three axes differ on the image: M-RoPE matters


def test_chunked_attention_equals_eager_weights(run):
    """Every head's attention, assembled from chunks of 7 query rows, == the model's eager attention weights."""
    for layer in LAYERS:
        q, k = _split(run, layer)
        seq_len, heads, _ = q.shape
        probs = torch.zeros(heads, seq_len, seq_len)
        chunks = 0
        for start, stop, _, block in attention_chunks(q, k, run["decoder"][layer].self_attn.scaling,
                                                      budget_bytes=heads * seq_len * 4 * 7):
            probs[:, start:stop, :stop] = block
            chunks += 1
        assert chunks == -(-seq_len // 7)
        oracle = run["out"].attentions[layer][0]
        torch.testing.assert_close(probs, oracle.float(), rtol=0, atol=TOLERANCE)


def _sinks(run) -> torch.Tensor:
    """Position 0 and one image token: a sink of each modality."""
    sinks = torch.zeros_like(run["is_image"])
    sinks[0] = True
    sinks[run["is_image"].nonzero()[3]] = True
    return sinks


def test_allocation_adds_up_and_statistics_equal_eager_sums(run):
    """Image + text + sink mass == 1 per query and head; the sample's shares == sums over the eager weights."""
    is_image, is_sink = run["is_image"], _sinks(run)
    is_text, keep = ~is_image, ~is_sink
    for layer in LAYERS:
        q, k = _split(run, layer)
        scaling = run["decoder"][layer].self_attn.scaling
        for _, stop, _, probs in attention_chunks(q, k, scaling, budget_bytes=2**20):
            mass = allocation(probs, is_image[:stop], is_sink[:stop])
            torch.testing.assert_close(mass.sum(0), torch.ones_like(mass[0]), rtol=0, atol=1e-6)
        stats = sample_statistics(q, k, is_image, is_sink, scaling, budget_bytes=q.shape[1] * len(q) * 4 * 5)
        weights = run["out"].attentions[layer][0].double().numpy()  # [heads, S, S]
        image, text, kept = is_image.numpy(), is_text.numpy(), keep.numpy()
        position = np.arange(len(image))
        seen_image = np.cumsum(image)
        eligible = text & (seen_image > 0)
        share = weights[:, eligible][:, :, image].sum(-1).mean(1)
        np.testing.assert_allclose(stats.text_share[0], share, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(stats.text_context[0], (seen_image / (position + 1))[eligible].mean(), atol=1e-12)
        with np.errstate(invalid="ignore"):  # query 0 sees only the sink at position 0
            renormalised = weights[:, :, kept] / weights[:, :, kept].sum(-1, keepdims=True)
        eligible_kept = text & (np.cumsum(image & kept) > 0)
        share_kept = renormalised[:, eligible_kept][:, :, image[kept]].sum(-1).mean(1)
        np.testing.assert_allclose(stats.text_share[1], share_kept, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(stats.last_share[0], weights[:, -1, image].sum(-1), rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(stats.last_share[1], renormalised[:, -1, image[kept]].sum(-1), atol=TOLERANCE)
        assert stats.n_text_queries.tolist() == [eligible.sum(), eligible_kept.sum()]
        np.testing.assert_allclose(stats.logit_gap, _brute_force_gap(run, layer, is_image, is_sink), atol=1e-4)


def _brute_force_gap(run, layer, is_image, is_sink) -> np.ndarray:
    """[2, heads] matched-distance logit gap by explicit loops in float64: queries recomputed from the hidden
    states (rotated by this file's RoPE), keys from the model's own KV cache."""
    block = run["decoder"][layer]
    attention = block.self_attn
    with torch.inference_mode():
        h = _layer_input(run["loaded"], run["inputs"], run["out"].hidden_states, layer)[0]
        q = attention.q_proj(block.input_layernorm(h)).unflatten(-1, (-1, attention.head_dim))
        if hasattr(attention, "q_norm"):
            q = attention.q_norm(q)
    q = q.double()
    cos, sin = (t[:, None] for t in _rotary(run, attention.head_dim))
    half = attention.head_dim // 2
    q = (q * cos + torch.cat([-q[..., half:], q[..., :half]], dim=-1) * sin).numpy()
    k = run["out"].past_key_values.layers[layer].keys[0].double().numpy()  # [kv_heads, S, head_dim]
    heads, kv_heads = q.shape[1], k.shape[0]
    image, sink = is_image.numpy(), is_sink.numpy()
    gaps = np.zeros((2, heads))
    for variant in range(2):
        for h in range(heads):
            by_distance: dict[int, dict[bool, list[float]]] = defaultdict(lambda: {True: [], False: []})
            for i in np.flatnonzero(~image):
                for j in range(i + 1):
                    if variant == 1 and sink[j]:
                        continue
                    score = float(q[i, h] @ k[h // (heads // kv_heads), j]) * attention.scaling
                    by_distance[i - j][bool(image[j])].append(score)
            pairs = [(len(v[True]), np.mean(v[True]) - np.mean(v[False])) for v in by_distance.values()
                     if v[True] and v[False]]
            weights, differences = np.array(pairs).T
            gaps[variant, h] = (weights * differences).sum() / weights.sum()
    return gaps
