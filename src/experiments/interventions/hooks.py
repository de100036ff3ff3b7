"""Interventions inside the forward pass, through transformers' `AttentionInterface`.

Where they act, and why. Every intervention acts on the keys *after* RoPE (for Qwen2.5-VL after the 3-D
M-RoPE rotation), inside the attention function of the chosen decoder layers: that is what enters q.k, and
what the key-gap measurements (default `keys.site=post_rope`) see. A shift before RoPE would be rotated by
a position-dependent angle, so a constant pre-RoPE shift is not a constant shift of what attention uses,
and the fitted post-RoPE means would not be matched. The KV cache keeps the unmodified keys (the cache
update runs before the attention function): option likelihood needs one forward over the prompt, no
decoding, so nothing reads them back.

Mechanism. `Intervene` registers one attention function per original implementation (`keyspace_sdpa`,
`keyspace_eager`, with the original's mask function under the same name) and points the text config's
`_attn_implementation` at it for the duration of the context, so the vision tower is untouched. At layers
without an intervention the function calls the original implementation unchanged. At intervened layers:

- key maps (`mean_shift`, `coral`, `random_shift`): image keys of the chosen KV heads are mapped
  (`transforms.apply_map`), then the original implementation runs on them;
- `attention_boost` (PAI-style, Liu et al. 2024): eager attention written out as transformers' own
  `eager_attention_forward` (Gemma 2's logit soft-capping included), with score s -> s + strength |s| where a
  text query meets an image key (query heads reading the chosen KV heads). At strength 0 it is eager attention,
  bit for bit.

With `record=True`, the queries and the (intervened) keys of the intervened layers are kept per forward
(`recorded[layer] = (q [S, heads, head_dim], k [S, kv_heads, head_dim])`, batch row 0), with the keys each query
could see (`visible[layer]` [S, S], from the mask the layer received: causal, sliding window, bidirectional), for
the key statistics and the attention share. One `Intervene` may be active at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, cast

import torch

from experiments.interventions.transforms import KeyMap, apply_map

_ACTIVE: list[Intervene] = []
_REGISTERED: set[str] = set()


class Intervene:
    """`with Intervene(model, adapter, layers, ...) as hook: hook.forward(inputs)`.

    Args:
        model: the VLM; adapter: its family's `ModelAdapter` (decoder layers, attention modules, image token).
        layers: decoder-layer indices that get the intervention (and are recorded).
        maps: layer -> `KeyMap` for the key maps; None for `attention_boost` or no change.
        boost: strength of `attention_boost` (None: no boost).
        strength: interpolation of the key maps.
        heads: KV heads that change (None = all).
        record: keep the intervened layers' queries and keys of each forward.
    """

    def __init__(self, model: Any, adapter: Any, layers: list[int], maps: dict[int, KeyMap] | None = None,
                 strength: float = 0.0, boost: float | None = None, heads: list[int] | None = None,
                 record: bool = False):
        decoder = adapter.layers(model)
        self.model, self.attention = model, {i: adapter.attention_module(decoder[i]) for i in layers}
        self.layers = {id(module): i for i, module in self.attention.items()}
        self.image_token_id, self.maps, self.strength = adapter.image_token_id(model), maps, strength
        self.boost, self.heads, self.record = boost, heads, record
        self.recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.visible: dict[int, torch.Tensor] = {}
        self.is_image: torch.Tensor | None = None
        self._config = model.config.get_text_config()
        self._original: str = self._config._attn_implementation
        self._base: Callable[..., Any] | None = None

    def __enter__(self) -> Intervene:
        if _ACTIVE:
            raise RuntimeError("another Intervene context is active; they do not nest")
        for i, module in self.attention.items():
            if module.config is not self._config:
                raise NotImplementedError(f"layer {i}'s attention does not read the text config's attention "
                                          "implementation, so it cannot be intervened on")
        name = _register(self._original)
        _ACTIVE.append(self)
        self._config._attn_implementation = name
        return self

    def __exit__(self, *exc: object) -> None:
        self._config._attn_implementation = self._original
        _ACTIVE.remove(self)

    def forward(self, inputs: Any, **kwargs: Any) -> Any:
        """One forward over `inputs` (processor outputs) under the intervention; returns the model output."""
        self.is_image = inputs["input_ids"] == self.image_token_id  # [B, S]
        self.recorded, self.visible = {}, {}
        with torch.inference_mode():
            return self.model(**inputs, **kwargs)

    def attend(self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        """The attention function of every text decoder layer while the context is active."""
        base = _base_function(module, self._original)
        layer = self.layers.get(id(module))
        if layer is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        assert self.is_image is not None and self.is_image.shape[1] == key.shape[2], \
            "Intervene.forward sets the image mask of a forward over the whole prompt (no cached prefix)"
        if self.maps is not None and layer in self.maps:
            key = apply_map(key, self.is_image, self.maps[layer], self.strength, self.heads)
        if self.record:
            self.recorded[layer] = (query[0].transpose(0, 1).detach(), key[0].transpose(0, 1).detach())
            self.visible[layer] = _visible(attention_mask, query, key)
        if self.boost is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        return self._boosted(module, query, key, value, attention_mask, **kwargs)

    def _boosted(self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                 softcap: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' `eager_attention_forward`, op for op, with s + boost |s| on text-query x image-key scores."""
        assert self.is_image is not None and self.boost is not None
        groups = query.shape[1] // key.shape[1]
        key_states = key.repeat_interleave(groups, dim=1)  # = repeat_kv
        value_states = value.repeat_interleave(groups, dim=1)
        attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if softcap is not None:  # Gemma 2's logit soft-capping, op for op as its eager attention
            attn_weights = attn_weights / softcap
            attn_weights = torch.tanh(attn_weights)
            attn_weights = attn_weights * softcap
        boosted = boost_mask(self.is_image.to(query.device), query.shape[1], groups, self.heads)  # [B, H, S, S]
        attn_weights = torch.where(boosted, attn_weights + self.boost * attn_weights.abs(), attn_weights)
        attn_weights = attn_weights + _additive_mask(attention_mask, attn_weights)
        attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
        attn_weights = torch.nn.functional.dropout(attn_weights, p=dropout, training=module.training)
        attn_output = torch.matmul(attn_weights, value_states)
        return attn_output.transpose(1, 2).contiguous(), attn_weights


def boost_mask(is_image: torch.Tensor, heads: int, groups: int, kv_heads: list[int] | None) -> torch.Tensor:
    """[B, heads, S, S] True where a text query meets an image key, in query heads reading `kv_heads`.

    Args:
        is_image: [B, S]; heads: query heads; groups: query heads per KV head; kv_heads: None = all.
    """
    cell = (~is_image)[:, None, :, None] & is_image[:, None, None, :]  # [B, 1, S, S]
    if kv_heads is None:
        return cell.expand(-1, heads, -1, -1)
    chosen = torch.zeros(heads, dtype=torch.bool, device=is_image.device)
    for h in kv_heads:
        chosen[h * groups:(h + 1) * groups] = True
    return cell & chosen[None, :, None, None]


def _additive_mask(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """The layer's mask as eager attention adds it: float masks as they are; a boolean mask (sdpa_mask, True =
    attend) as 0 / dtype min; None (sdpa's causal shortcut) as the causal mask aligned to the last key."""
    if mask is not None and mask.dtype != torch.bool:
        return mask
    q_len, k_len = scores.shape[-2:]
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    return torch.where(mask, zero, torch.finfo(scores.dtype).min)


def _visible(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """[S_q, S_k] True where a query of batch row 0 may attend a key, by the mask the layer received."""
    scores = query.new_empty(query.shape[-2], key.shape[-2])
    return _additive_mask(mask, scores)[..., :key.shape[-2]].reshape(-1, *scores.shape)[0] == 0


def _base_function(module: Any, implementation: str) -> Callable[..., Any]:
    """The attention function the model would call: the registered one, or its module's eager function."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)


def _dispatch(module: Any, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    return _ACTIVE[0].attend(module, *args, **kwargs)


def _register(original: str) -> str:
    """Register `keyspace_<original>` (attention: `_dispatch`; mask: the original's mask function) once."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = f"keyspace_{original}"
    if name not in _REGISTERED:
        if original not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            raise NotImplementedError(f"attention implementation {original!r} has no mask function to reuse")
        AttentionInterface.register(name, _dispatch)
        mask_function = cast(Callable[..., Any], ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[original])
        AttentionMaskInterface.register(name, mask_function)
        _REGISTERED.add(name)
    return name
