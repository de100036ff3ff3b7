"""Capture attention keys of chosen decoder layers during one forward pass, then stop.

`KeyCapture` is a context manager over a model's text decoder layers. It finds every module through
the family's `ModelAdapter` paths (decoder layers, attention module, key and query projections), hooks
only the requested layers and records, per layer i:

- `layers.{i}.k_pre`: output of the key projection (e.g. `self_attn.k_proj`, or the per-head `k_norm` after it
  where the family has one; before RoPE), [B, S, kv_heads*head_dim];
- `layers.{i}.k_post`: what enters q.k (after RoPE, M-RoPE for the Qwen-VL families), [B, S, kv_heads*head_dim],
  read from the model's own KV cache (a `DynamicCache` passed as `cache=`), so it is by construction
  what the attention used; the cache is built without the config, so a sliding-window layer keeps all its
  keys instead of the last window (its attention still slides: the mask comes from the config);
- with `queries=True` (post_rope only), `layers.{i}.q_post`: the queries that meet those keys,
  [B, S, heads*head_dim]: the query projection's output rotated with the (cos, sin) the layer received
  as `position_embeddings` (M-RoPE already composed by the model's rotary module) by the attention
  module's own `apply_rotary_pos_emb`, so the rotation is the model's, while its attention kernel
  (sdpa, flash) stays untouched. Query head h reads KV head h // (heads / kv_heads) (GQA).

Device memory holds only the requested layers' keys: a hook after every decoder layer up to the
deepest requested one takes that layer's keys (if requested) and drops its K and V from the cache
(`CacheLayerMixin.reset()`), so no layer's values and no unrequested layer's keys outlive the layer.
A hook on the deepest requested decoder layer raises a private `_StopForward` once that layer has
run: later layers, the final norm and the lm_head never run. Every hook is removed in `__exit__`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from experiments.models.adapter import ModelAdapter

SITES = ("pre_rope", "post_rope")


class _StopForward(Exception):
    """Raised from the hook of the deepest requested layer to end the forward early."""


class KeyCapture:
    """Hooks for one forward: `with KeyCapture(...) as cap: cap.run(**inputs)`; then `cap.keys`.

    Keys stay on the model's device in `dtype`; the caller selects the tokens it keeps before copying.
    """

    def __init__(self, model: Any, adapter: ModelAdapter, layers: list[int], site: str, dtype: torch.dtype,
                 queries: bool = False):
        if site not in SITES:
            raise ValueError(f"keys.site={site!r} is not one of {list(SITES)}")
        if queries and site != "post_rope":
            raise ValueError("queries are captured after RoPE only: use site='post_rope' with queries=True")
        if queries and adapter.positions == "other":
            raise NotImplementedError(f"family {adapter.family!r} declares positions='other': its queries cannot "
                                      "be rotated as the model rotates them")
        self.model, self.adapter, self.decoder_layers = model, adapter, adapter.layers(model)
        self.layers, self.site = sorted(layers), site
        self.dtype, self.queries = dtype, queries
        self.keys: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._cache: Any = None
        self._pending: dict[int, dict[str, Any]] = {}  # layer -> query projection output and (cos, sin), until rotated
        self._seq_len = 0

    def __enter__(self) -> KeyCapture:
        if self.site == "pre_rope":
            for i in self.layers:
                self._handles.append(self.adapter.key_module(self.decoder_layers[i]).register_forward_hook(
                    lambda _m, _inp, out, i=i: self._store(f"layers.{i}.k_pre", self._token_major(out))))
        else:
            for i in range(self.layers[-1] + 1):
                self._handles.append(self.decoder_layers[i].register_forward_hook(
                    lambda *_, i=i: self._take_from_cache(i)))
        if self.queries:
            for i in self.layers:
                layer = self.decoder_layers[i]
                self._handles.append(self.adapter.attention_module(layer).register_forward_pre_hook(
                    lambda _m, args, kwargs, i=i: self._stash(i, "rope", _position_embeddings(args, kwargs)),
                    with_kwargs=True))
                self._handles.append(self.adapter.query_module(layer).register_forward_hook(
                    lambda _m, _inp, out, i=i: self._stash(i, "q", self._token_major(out))))
        self._handles.append(self.decoder_layers[self.layers[-1]].register_forward_hook(self._stop))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, **inputs: Any) -> dict[str, torch.Tensor]:
        """Forward `inputs` up to the deepest requested layer; returns {name: [B, S, kv_heads*head_dim]}."""
        from transformers import DynamicCache

        self.keys, self._pending = {}, {}
        self._seq_len = int(inputs["input_ids"].shape[1])
        post_rope = self.site == "post_rope"
        self._cache = DynamicCache() if post_rope else None  # full layers only: see the module docstring
        try:
            with torch.inference_mode():
                self.model(**inputs, cache=self._cache, use_cache=post_rope)
        except _StopForward:
            pass
        finally:
            self._cache = None
        missing = [i for i in self.layers if key_name(i, self.site) not in self.keys]
        assert not missing, f"layers {missing} did not run: no keys captured"
        return self.keys

    def _take_from_cache(self, i: int) -> None:
        """After decoder layer i: keep its post-RoPE keys if requested, then free its cache entry."""
        assert self._cache is not None
        layer = self._cache.layers[i]
        if i in self.layers:
            assert layer.keys is not None, f"layer {i} ran but left no keys in the cache"
            cached = layer.keys.shape[2]
            assert cached == self._seq_len, f"layer {i} cached {cached} of {self._seq_len} keys"
            self._store(f"layers.{i}.k_post", layer.keys.transpose(1, 2).flatten(2))  # [B, S, kv_heads*head_dim]
            if self.queries:
                self._store(query_name(i), self._rotated_queries(i))
        layer.reset()

    def _stash(self, i: int, what: str, value: Any) -> None:
        self._pending.setdefault(i, {})[what] = value

    def _rotated_queries(self, i: int) -> torch.Tensor:
        """Layer i's query projection output, rotated as its attention rotates it; [B, S, heads*head_dim]."""
        import sys

        pending = self._pending.pop(i, {})
        assert "q" in pending and "rope" in pending, f"layer {i} ran without its query projection or positions"
        attention = self.adapter.attention_module(self.decoder_layers[i])
        rotate = getattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb", None)
        if rotate is None:
            raise NotImplementedError(f"{type(attention).__name__}: no apply_rotary_pos_emb in its module, so the "
                                      "captured queries cannot be rotated as the model rotates them")
        q = pending["q"]
        q = q.flatten(2).unflatten(-1, (-1, attention.head_dim)).transpose(1, 2)  # [B, heads, S, head_dim]
        cos, sin = pending["rope"]
        q_post, _ = rotate(q, q[:, :1], cos, sin)
        return q_post.transpose(1, 2).flatten(2)

    def _token_major(self, out: torch.Tensor) -> torch.Tensor:
        """A key / query module's output with tokens on dim 1: [B, S, ...] (`adapter.heads_first` transposed)."""
        return out.transpose(1, 2) if self.adapter.heads_first else out

    def _store(self, name: str, keys: torch.Tensor) -> None:
        """Keep [B, S, heads*head_dim] (a per-head norm's [B, S, heads, head_dim] flattened), on the model's device."""
        self.keys[name] = keys.detach().flatten(2).to(dtype=self.dtype)

    def _stop(self, *_: object) -> None:
        raise _StopForward


def key_name(layer: int, site: str) -> str:
    return f"layers.{layer}.{'k_pre' if site == 'pre_rope' else 'k_post'}"


def query_name(layer: int) -> str:
    return f"layers.{layer}.q_post"


def _position_embeddings(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cos, sin) [B|1, S, head_dim] a decoder layer passes its attention (keyword, as transformers calls it)."""
    rope = kwargs.get("position_embeddings")
    if rope is None:
        raise NotImplementedError("the attention module received no position_embeddings keyword: queries can be "
                                  "captured only from models whose decoder layers pass (cos, sin) to their attention")
    return rope
