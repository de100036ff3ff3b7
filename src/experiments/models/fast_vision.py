"""Exact, faster window attention for the Qwen2.5-VL vision tower.

transformers runs the tower's attention one window at a time under sdpa/eager (hundreds of tiny calls
per image, 27.6 ms per 448 px image on an H100 against ~2 ms of FLOPs; `shared/notes/gpu_anchor.md`).
Here all windows of equal length go through one batched `scaled_dot_product_attention` call, so a
block makes one call per distinct window length (a handful: interior windows share one size). The
arithmetic per window is unchanged, so outputs match transformers' module to float rounding (a CPU
test pins it on the tiny model). Flash-attention backends already run varlen in one call and are
left alone.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


def grouped_window_attention(self: Any, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                             position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                             **_: Any) -> torch.Tensor:
    """Drop-in `Qwen2_5_VLVisionAttention.forward`: [patches, dim] -> [patches, dim]."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    n = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    assert position_embeddings is not None, "the vision tower always passes its rotary (cos, sin)"
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)  # [patches, heads, head_dim]
    out = torch.empty_like(q)
    starts, lengths = cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1]
    for length in lengths.unique().tolist():
        if length == 0:
            continue
        index = starts[lengths == length][:, None] + torch.arange(length, device=q.device)  # [windows, length]
        q_w, k_w, v_w = (t[index].transpose(1, 2) for t in (q, k, v))  # [windows, heads, length, head_dim]
        out[index] = F.scaled_dot_product_attention(q_w, k_w, v_w, scale=self.scaling).transpose(1, 2)
    return self.proj(out.reshape(n, -1))


def use_grouped_window_attention(model: Any) -> int:
    """Swap the forward of every vision attention module of a Qwen2.5-VL model; returns how many."""
    if "flash" in str(model.config.vision_config._attn_implementation or ""):
        return 0
    swapped = 0
    for block in model.model.visual.blocks:
        block.attn.forward = types.MethodType(grouped_window_attention, block.attn)
        swapped += 1
    return swapped
