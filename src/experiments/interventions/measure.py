"""Per-sample measurements under an intervention: image attention share of text queries, pooled keys.

`image_share` recomputes one layer's attention from the queries and keys the forward used (recorded by
`hooks.Intervene`), in chunks of query rows (`attention.scores.chunk_rows`), under the mask the layer received
(causal, sliding window, bidirectional blocks) and with the layer's logit soft-capping and the `attention_boost`
score change applied when there are, so the share is the one the intervened model computed. Definitions
follow `attention.scores`: a text query counts when it sees an image key; its image share is its attention
mass on image keys.
"""

from __future__ import annotations

import numpy as np
import torch

from experiments.attention.scores import chunk_rows


def image_share(q: torch.Tensor, k: torch.Tensor, is_image: torch.Tensor, scaling: float, budget_bytes: int,
                boost: float | None = None, kv_heads: list[int] | None = None, visible: torch.Tensor | None = None,
                softcap: float | None = None) -> np.ndarray:
    """[heads] mean image attention mass of the text queries that see an image key (NaN if there are none).

    Args:
        q: [S, heads, head_dim], k: [S, kv_heads, head_dim] as the attention used them (after RoPE and the
            key intervention); is_image: [S]; scaling: the layer's score scale; budget_bytes: per chunk.
        boost: `attention_boost` strength (s -> s + boost |s| on text-query x image-key scores), or None.
        kv_heads: the KV heads the boost applies to (query heads h // group in them); None = all.
        visible: [S, S] True where query i may attend key j (`Intervene.visible`: sliding windows,
            bidirectional image or prefix blocks); None = causal.
        softcap: the layer's attention-logit soft-capping (Gemma 2: s -> c tanh(s / c), before the boost), or None.
    """
    seq_len, heads, head_dim = q.shape
    group = heads // k.shape[1]
    is_image = is_image.to(q.device)
    if visible is None:
        visible = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
    visible = visible.to(q.device)
    eligible = ~is_image & (visible & is_image[None, :]).any(-1)
    chosen = torch.ones(heads, dtype=torch.bool, device=q.device)
    if kv_heads is not None:
        chosen[:] = False
        for h in kv_heads:
            chosen[h * group:(h + 1) * group] = True
    keys = k.float().permute(1, 2, 0)[:, None]  # [kv_heads, 1, head_dim, S]
    rows = chunk_rows(heads, seq_len, budget_bytes)
    total = torch.zeros(heads, dtype=torch.float64, device=q.device)
    for start in range(0, seq_len, rows):
        stop = min(seq_len, start + rows)
        block = q[start:stop].float().permute(1, 0, 2).reshape(-1, group, stop - start, head_dim)
        scores = torch.matmul(block, keys).reshape(heads, stop - start, seq_len) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if boost is not None:
            cell = (~is_image[start:stop])[:, None] & is_image[None, :]  # [rows, S]
            scores = torch.where(cell[None] & chosen[:, None, None], scores + boost * scores.abs(), scores)
        probs = scores.masked_fill(~visible[start:stop], float("-inf")).softmax(dim=-1)
        mass = probs @ is_image.to(probs.dtype)  # [heads, rows]
        total += (mass.double() * eligible[start:stop]).sum(-1)
    n = int(eligible.sum())
    return (total / n).cpu().numpy() if n else np.full(heads, np.nan)


def pick_rows(is_image: torch.Tensor, cap: int, seed: list[int]) -> dict[bool, np.ndarray]:
    """At most `cap` token rows per modality of one sample (seeded), sorted; {True: image rows, False: text}."""
    rng = np.random.default_rng(seed)
    flags = is_image.cpu().numpy()
    return {modality: np.sort(rng.permutation(np.flatnonzero(flags == modality))[:cap]) for modality in (True, False)}
