"""Chunked attention and its per-head reductions against float64 references written out here (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from experiments.attention.scores import allocation, attention_chunks, chunk_rows, sample_statistics

SEQ, HEADS, KV_HEADS, DIM = 23, 6, 2, 8
BUDGETS = {"one_row": 1, "five_rows": HEADS * SEQ * 4 * 5, "all_rows": 2**30}


def _random(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SEQ, HEADS, DIM, generator=g) * 2, torch.randn(SEQ, KV_HEADS, DIM, generator=g) * 2


def _reference(q: torch.Tensor, k: torch.Tensor, scaling: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[heads, S, S] causal softmax in float64, head h on KV head h // (heads / kv_heads), over `keep` keys only."""
    group = q.shape[1] // k.shape[1]
    out = torch.zeros(q.shape[1], len(q), len(q), dtype=torch.float64)
    for h in range(q.shape[1]):
        scores = q[:, h].double() @ k[:, h // group].double().T * scaling
        allowed = torch.ones(len(q), len(q), dtype=torch.bool).tril()
        if keep is not None:
            allowed &= keep[None]
        out[h] = torch.where(allowed, scores, -math.inf).softmax(-1).nan_to_num()
    return out


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_chunks_equal_float64_reference_with_gqa(budget):
    q, k = _random()
    oracle = _reference(q, k, 0.3)
    seen = torch.zeros(SEQ, dtype=torch.bool)
    for start, stop, _, probs in attention_chunks(q, k, 0.3, budget):
        assert probs.shape == (HEADS, stop - start, stop)
        torch.testing.assert_close(probs.double(), oracle[:, start:stop, :stop], rtol=0, atol=1e-6)
        seen[start:stop] = True
    assert seen.all()


def test_chunk_rows_bound_memory():
    """32 heads x 4096 keys at 32 MiB: 64 rows per chunk (the full tensor would be 2 GiB); never below one row."""
    assert chunk_rows(32, 4096, 32 * 2**20) == 64
    assert chunk_rows(32, 4096, 1) == 1
    assert chunk_rows(4, 10, 2**30) == 10


def test_statistics_equal_reference_sums_with_and_without_sinks():
    q, k = _random(1)
    is_image = torch.zeros(SEQ, dtype=torch.bool)
    is_image[4:12] = True
    is_sink = torch.zeros(SEQ, dtype=torch.bool)
    is_sink[[0, 6]] = True  # a text and an image sink
    stats = sample_statistics(q, k, is_image, is_sink, 0.3, budget_bytes=HEADS * SEQ * 4 * 4)
    image, text = is_image.numpy(), ~is_image.numpy()
    for variant, keep in enumerate((None, ~is_sink)):
        probs = _reference(q, k, 0.3, keep).numpy()
        kept = np.ones(SEQ, bool) if keep is None else keep.numpy()
        seen_image = np.cumsum(image & kept)
        eligible = text & (seen_image > 0)
        np.testing.assert_allclose(stats.text_share[variant], probs[:, eligible][:, :, image].sum(-1).mean(1),
                                   atol=1e-6)
        context = (seen_image / np.maximum(np.cumsum(kept), 1))[eligible].mean()
        np.testing.assert_allclose(stats.text_context[variant], context, atol=1e-12)
        np.testing.assert_allclose(stats.last_share[variant], probs[:, -1, image].sum(-1), atol=1e-6)
        assert stats.n_text_queries[variant] == eligible.sum()
    for _, stop, _, probs in attention_chunks(q, k, 0.3, 2**20):
        mass = allocation(probs, is_image[:stop], is_sink[:stop])
        torch.testing.assert_close(mass.sum(0), torch.ones_like(mass[0]), rtol=0, atol=1e-6)


def test_logit_gap_matches_distance_and_finds_a_planted_offset():
    """Scores = f(distance) + offset(key modality): the matched gap is exactly the offset difference,
    while the plain difference of means is pulled off it by the distances each modality sits at.

    Dims 0-1 of q_i and k_j are one vector rotated by i and j (their product depends on i - j only, as RoPE);
    dims 2-3 add a = 0.7 to image keys' scores and b = -0.2 to text keys' (q there is [1, 0])."""
    angle, a, b = 0.4, 0.7, -0.2
    position = torch.arange(SEQ, dtype=torch.float64)
    rotation = torch.stack([torch.cos(angle * position), torch.sin(angle * position)], dim=1)  # [S, 2]
    is_image = torch.zeros(SEQ, dtype=torch.bool)
    is_image[3:15] = True
    q = torch.cat([rotation * 3, torch.tensor([[1.0, 0.0]]).expand(SEQ, 2)], dim=1)
    offset = torch.where(is_image, a, b).double()
    k = torch.cat([rotation, torch.stack([offset, torch.zeros(SEQ, dtype=torch.float64)], dim=1)], dim=1)
    q, k = q[:, None].expand(SEQ, 2, 4).float(), k[:, None].float()  # 2 query heads on 1 KV head
    stats = sample_statistics(q, k, is_image, torch.zeros(SEQ, dtype=torch.bool), 1.0, budget_bytes=64)
    np.testing.assert_allclose(stats.logit_gap, a - b, atol=1e-5)
    scores = (q[:, 0] @ k[:, 0].T).double()
    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril() & ~is_image[:, None]
    naive = scores[causal & is_image[None]].mean() - scores[causal & ~is_image[None]].mean()
    assert abs(float(naive) - (a - b)) > 0.1  # what matching by distance removes


def test_queries_that_cannot_see_the_image_are_left_out():
    """Text before the image block never enters the text-query share; the last token does."""
    q, k = _random(2)
    is_image = torch.zeros(SEQ, dtype=torch.bool)
    is_image[10:20] = True
    stats = sample_statistics(q, k, is_image, torch.zeros(SEQ, dtype=torch.bool), 0.3, 2**20)
    assert stats.n_text_queries[0] == SEQ - 20
    assert np.isfinite(stats.last_share).all() and np.isfinite(stats.logit_gap).all()
