"""Capture attention keys of chosen decoder layers during one forward pass, then stop.

`KeyCapture` is a context manager over a model's text decoder layers. It hooks only the requested
layers and records, per layer i:

- `layers.{i}.k_pre`: output of `self_attn.k_proj` (before RoPE), [B, S, kv_heads*head_dim];
- `layers.{i}.k_post`: what enters q.k (after RoPE, M-RoPE for Qwen2.5-VL), [B, S, kv_heads*head_dim],
  read from the model's own KV cache (a `DynamicCache` passed as `cache=`), so it is by construction
  what the attention used.

Device memory holds only the requested layers' keys: a hook after every decoder layer up to the
deepest requested one takes that layer's keys (if requested) and drops its K and V from the cache
(`CacheLayerMixin.reset()`), so no layer's values and no unrequested layer's keys outlive the layer.
A hook on the deepest requested decoder layer raises a private `_StopForward` once that layer has
run: later layers, the final norm and the lm_head never run. Every hook is removed in `__exit__`.
"""

from __future__ import annotations

from typing import Any

import torch

SITES = ("pre_rope", "post_rope")


class _StopForward(Exception):
    """Raised from the hook of the deepest requested layer to end the forward early."""


class KeyCapture:
    """Hooks for one forward: `with KeyCapture(...) as cap: cap.run(**inputs)`; then `cap.keys`.

    Keys stay on the model's device in `dtype`; the caller selects the tokens it keeps before copying.
    """

    def __init__(self, model: Any, decoder_layers: Any, layers: list[int], site: str, dtype: torch.dtype):
        if site not in SITES:
            raise ValueError(f"keys.site={site!r} is not one of {list(SITES)}")
        self.model, self.decoder_layers = model, decoder_layers
        self.layers, self.site = sorted(layers), site
        self.dtype = dtype
        self.keys: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._cache: Any = None

    def __enter__(self) -> KeyCapture:
        if self.site == "pre_rope":
            for i in self.layers:
                self._handles.append(self.decoder_layers[i].self_attn.k_proj.register_forward_hook(
                    lambda _m, _inp, out, i=i: self._store(f"layers.{i}.k_pre", out)))
        else:
            for i in range(self.layers[-1] + 1):
                self._handles.append(self.decoder_layers[i].register_forward_hook(
                    lambda *_, i=i: self._take_from_cache(i)))
        self._handles.append(self.decoder_layers[self.layers[-1]].register_forward_hook(self._stop))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, **inputs: Any) -> dict[str, torch.Tensor]:
        """Forward `inputs` up to the deepest requested layer; returns {name: [B, S, kv_heads*head_dim]}."""
        from transformers import DynamicCache

        self.keys = {}
        post_rope = self.site == "post_rope"
        self._cache = DynamicCache(config=self.model.config.get_text_config()) if post_rope else None
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
            self._store(f"layers.{i}.k_post", layer.keys.transpose(1, 2).flatten(2))  # [B, S, kv_heads*head_dim]
        layer.reset()

    def _store(self, name: str, keys: torch.Tensor) -> None:
        self.keys[name] = keys.detach().to(dtype=self.dtype)  # stays on the model's device

    def _stop(self, *_: object) -> None:
        raise _StopForward


def key_name(layer: int, site: str) -> str:
    return f"layers.{layer}.{'k_pre' if site == 'pre_rope' else 'k_post'}"
