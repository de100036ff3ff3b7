"""Attention recomputed from captured queries and keys in chunks of query rows, reduced per head on the fly.

Contract. For one sample (one forward, no padding) and one layer: queries q [S, heads, head_dim] and keys
k [S, kv_heads, head_dim] after RoPE (`keys.capture.KeyCapture(queries=True)`), the layer's `scaling`, and
a causal mask. Query head h reads KV head h // (heads / kv_heads), as transformers' `repeat_kv` expands
them (GQA). Scores are `(q · k) * scaling`, probabilities their softmax over the visible keys j <= i, as
the model's eager attention computes them (no softcapping, no sliding window in these families).

Memory: `attention_chunks` yields query rows [start, stop) at a time, scores and probabilities
[heads, stop - start, stop] only (keys after `stop` are masked for the whole chunk, so never computed).
The chunk height comes from a byte budget (`chunk_rows`), so a chunk holds at most about `budget` bytes
of scores whatever the context length; the full [heads, S, S] tensor never exists.

`sample_statistics` reduces the chunks of one sample to per-head numbers (`SampleAttention`), each in two
variants: index 0 with every key, index 1 without the sink keys (the attention renormalised over the
other keys, i.e. the softmax restricted to them):

- image mass of a query: sum of its attention on image keys; image context share: image keys / all
  keys it can see. Text queries count when they see at least one image key (text before the image block
  cannot attend to it). `text_share` and `text_context` are means over those queries; `last_share` and
  `last_context` are the last prompt token's (the one that produces the answer).
- logit gap at matched relative distance: for text queries, per distance d = i - j, the mean score on
  image keys and on text keys; the gap is the mean over distances where both exist of (image - text),
  weighted by the image-key count at d, so both sides are compared at the same RoPE distances.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

FLOAT_BYTES = 4  # scores and probabilities are float32


def chunk_rows(heads: int, seq_len: int, budget_bytes: int) -> int:
    """Query rows per chunk so that one chunk's scores [heads, rows, seq_len] fit `budget_bytes` (at least 1)."""
    return max(1, min(seq_len, budget_bytes // (heads * seq_len * FLOAT_BYTES)))


def attention_chunks(q: torch.Tensor, k: torch.Tensor, scaling: float, budget_bytes: int
                     ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Causal attention of one sample, a block of query rows at a time.

    Args:
        q: [S, heads, head_dim] post-RoPE queries.
        k: [S, kv_heads, head_dim] post-RoPE keys; heads must be a multiple of kv_heads.
        scaling: the layer's score scale (`self_attn.scaling`).
        budget_bytes: bytes of float32 scores per chunk (`chunk_rows`).

    Yields:
        (start, stop, scores, probs): scores [heads, stop - start, stop] before the softmax (entries above
        the causal diagonal are garbage, not masked) and probs [heads, stop - start, stop] after it.
    """
    seq_len, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"q has {heads} heads, k {kv_heads}: not a multiple (GQA maps head h to h // group)")
    group = heads // kv_heads
    q, keys = q.float(), k.float().permute(1, 2, 0)  # keys [kv_heads, head_dim, S]
    rows = chunk_rows(heads, seq_len, budget_bytes)
    positions = torch.arange(seq_len, device=q.device)
    for start in range(0, seq_len, rows):
        stop = min(seq_len, start + rows)
        block = q[start:stop].permute(1, 0, 2).reshape(kv_heads, group, stop - start, head_dim)
        scores = torch.matmul(block, keys[:, None, :, :stop]).reshape(heads, stop - start, stop) * scaling
        hidden = positions[None, :stop] > positions[start:stop, None]  # [rows, stop] keys after the query
        probs = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)
        yield start, stop, scores, probs


def allocation(probs: torch.Tensor, is_image: torch.Tensor, is_sink: torch.Tensor) -> torch.Tensor:
    """Where each query's attention goes: [3, heads, rows] mass on image keys, other text keys, sink keys.

    Args:
        probs: [heads, rows, keys] attention probabilities (rows of one chunk).
        is_image: [keys] True at image keys; is_sink: [keys] True at sink keys (an image key may be a sink).
    """
    image = (is_image & ~is_sink).to(probs.dtype)
    text = (~is_image & ~is_sink).to(probs.dtype)
    return torch.stack([probs @ image, probs @ text, probs @ is_sink.to(probs.dtype)])


@dataclass
class SampleAttention:
    """One sample's per-head attention numbers at one layer; leading axis 2 = (all keys, sinks left out).

    Attributes:
        text_share: [2, heads] mean image mass of the text queries that see an image key.
        text_context: [2] mean image share of those queries' visible keys.
        last_share: [2, heads] the last prompt token's image mass; last_context: [2] its context share.
        logit_gap: [2, heads] matched-distance gap, mean score on image keys minus on text keys (NaN when no
            distance has both).
        n_text_queries: [2] text queries that see an image key; n_image_keys, n_text_keys: [2] keys used.
    """

    text_share: np.ndarray
    text_context: np.ndarray
    last_share: np.ndarray
    last_context: np.ndarray
    logit_gap: np.ndarray
    n_text_queries: np.ndarray
    n_image_keys: np.ndarray
    n_text_keys: np.ndarray


def sample_statistics(q: torch.Tensor, k: torch.Tensor, is_image: torch.Tensor, is_sink: torch.Tensor,
                      scaling: float, budget_bytes: int) -> SampleAttention:
    """Reduce one sample's attention at one layer to `SampleAttention` (module docstring for definitions).

    Args:
        q: [S, heads, head_dim] post-RoPE queries; k: [S, kv_heads, head_dim] post-RoPE keys.
        is_image: [S] True at image tokens (text: every other token; one sample, no padding).
        is_sink: [S] True at sink keys (left out in variant 1).
        scaling: the layer's score scale.
        budget_bytes: score bytes per chunk (`chunk_rows`).
    """
    seq_len, heads, _ = q.shape
    device = q.device
    is_image, is_sink = is_image.to(device), is_sink.to(device)
    is_text, keep = ~is_image, ~is_sink
    # per query: image keys and keys it can see, with and without sinks -> [2, S]
    seen_image = torch.stack([is_image.cumsum(0), (is_image & keep).cumsum(0)]).double()
    seen = torch.stack([torch.arange(1, seq_len + 1, device=device), keep.cumsum(0)]).double()
    eligible = is_text[None] & (seen_image > 0) & (seen > 0)  # [2, S] text queries that see an image key
    context = torch.where(seen > 0, seen_image / seen.clamp(min=1), 0.0)  # [2, S]
    share_sum = torch.zeros(2, heads, dtype=torch.float64, device=device)
    last_share = torch.full((2, heads), float("nan"), dtype=torch.float64, device=device)
    sums = torch.zeros(2, 2, heads, seq_len, dtype=torch.float64, device=device)  # (all, sinks) x (image, text)
    counts = torch.zeros(2, 2, seq_len, dtype=torch.float64, device=device)
    sinks = is_sink.nonzero().squeeze(1)
    for start, stop, scores, probs in attention_chunks(q, k, scaling, budget_bytes):
        rows = torch.arange(start, stop, device=device)
        mass = allocation(probs, is_image[:stop], is_sink[:stop]).double()  # [3, heads, rows]
        image_mass = torch.stack([(probs @ is_image[:stop].float()).double(),  # [2, heads, rows]
                                  mass[0] / (mass[0] + mass[1]).clamp(min=1e-30)])
        share_sum += (image_mass * eligible[:, None, start:stop]).sum(-1)
        if stop == seq_len:
            last_share = image_mass[:, :, -1]
        # logit gap: scores of text queries by distance, on image and on text keys; sink keys subtracted after
        text_rows = is_text[start:stop]
        distance = rows[:, None] - torch.arange(stop, device=device)[None]  # [rows, stop]
        visible = (distance >= 0) & text_rows[:, None]
        index = distance.clamp(min=0)
        for side, modality in enumerate((is_image[:stop], is_text[:stop])):
            _add_by_distance(sums[0, side], counts[0, side], scores, visible & modality[None], index)
            sink_keys = sinks[sinks < stop]
            sink_keys = sink_keys[modality[sink_keys]]
            if len(sink_keys):
                _add_by_distance(sums[1, side], counts[1, side], scores[:, :, sink_keys],
                                 visible[:, sink_keys], index[:, sink_keys])
    sums[1], counts[1] = sums[0] - sums[1], counts[0] - counts[1]  # variant 1: every key but the sinks
    n_queries = eligible.sum(1).double()
    last = seq_len - 1
    last_context = context[:, last] if bool(is_text[last]) else torch.full((2,), float("nan"), device=device)
    return SampleAttention(
        text_share=_numpy(share_sum / n_queries[:, None]),
        text_context=_numpy((context * eligible).sum(1) / n_queries),
        last_share=_numpy(last_share if bool(is_text[last]) else torch.full_like(last_share, float("nan"))),
        last_context=_numpy(last_context),
        logit_gap=_numpy(_matched_gap(sums, counts)),
        n_text_queries=_numpy(n_queries).astype(np.int64),
        n_image_keys=np.array([int(is_image.sum()), int((is_image & keep).sum())]),
        n_text_keys=np.array([int(is_text.sum()), int((is_text & keep).sum())]))


def _add_by_distance(sums: torch.Tensor, counts: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                     index: torch.Tensor) -> None:
    """sums[h, d] += scores at `mask` with distance d; counts[d] += how many (head-independent)."""
    flat = index[mask]  # [n]
    sums.index_add_(1, flat, scores[:, mask].double())
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))


def _matched_gap(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[2, heads]: Σ_d n_image(d) (mean_image(d) - mean_text(d)) / Σ_d n_image(d) over d with both sides."""
    image_n, text_n = counts[:, 0], counts[:, 1]  # [2, S]
    both = (image_n > 0) & (text_n > 0)
    difference = sums[:, 0] / image_n.clamp(min=1)[:, None] - sums[:, 1] / text_n.clamp(min=1)[:, None]
    weight = torch.where(both, image_n, 0.0)  # [2, S]
    total = weight.sum(1)
    gap = (difference * weight[:, None]).sum(-1) / total.clamp(min=1)[:, None]
    return torch.where(total[:, None] > 0, gap, float("nan"))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
