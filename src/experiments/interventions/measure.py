"""Per-sample measurements under an intervention: image attention share of text queries, pooled keys.

`image_share` recomputes one layer's attention from the queries and keys the forward used (recorded by
`hooks.Intervene`), in chunks (`attention.scores.attention_chunks`, the attention stage's recomputation), with
the `attention_boost` score change applied when there is one, so the share is the one the intervened model
computed. Definitions follow `attention.scores`: a text query counts when it sees an image key; its image
share is its attention mass on image keys.
"""

from __future__ import annotations

import numpy as np
import torch

from experiments.attention.scores import attention_chunks


def image_share(q: torch.Tensor, k: torch.Tensor, is_image: torch.Tensor, scaling: float, budget_bytes: int,
                boost: float | None = None, kv_heads: list[int] | None = None) -> np.ndarray:
    """[heads] mean image attention mass of the text queries that see an image key (NaN if there are none).

    Args:
        q: [S, heads, head_dim], k: [S, kv_heads, head_dim] as the attention used them (after RoPE and the
            key intervention); is_image: [S]; scaling: the layer's score scale; budget_bytes: per chunk.
        boost: `attention_boost` strength (s -> s + boost |s| on text-query x image-key scores), or None.
        kv_heads: the KV heads the boost applies to (query heads h // group in them); None = all.
    """
    seq_len, heads, _ = q.shape
    group = heads // k.shape[1]
    is_image = is_image.to(q.device)
    eligible = ~is_image & (is_image.cumsum(0) > 0)
    chosen = torch.ones(heads, dtype=torch.bool, device=q.device)
    if kv_heads is not None:
        chosen[:] = False
        for h in kv_heads:
            chosen[h * group:(h + 1) * group] = True
    positions = torch.arange(seq_len, device=q.device)
    total = torch.zeros(heads, dtype=torch.float64, device=q.device)
    for start, stop, scores, probs in attention_chunks(q, k, scaling, budget_bytes):
        if boost is not None:
            cell = (~is_image[start:stop])[:, None] & is_image[None, :stop]  # [rows, stop]
            boosted = cell[None] & chosen[:, None, None]
            scores = torch.where(boosted, scores + boost * scores.abs(), scores)
            hidden = positions[None, :stop] > positions[start:stop, None]
            probs = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)
        mass = probs @ is_image[:stop].to(probs.dtype)  # [heads, rows]
        total += (mass.double() * eligible[start:stop]).sum(-1)
    n = int(eligible.sum())
    return (total / n).cpu().numpy() if n else np.full(heads, np.nan)


def pick_rows(is_image: torch.Tensor, cap: int, seed: list[int]) -> dict[bool, np.ndarray]:
    """At most `cap` token rows per modality of one sample (seeded), sorted; {True: image rows, False: text}."""
    rng = np.random.default_rng(seed)
    flags = is_image.cpu().numpy()
    return {modality: np.sort(rng.permutation(np.flatnonzero(flags == modality))[:cap]) for modality in (True, False)}
