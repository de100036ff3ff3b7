"""Model registry and loading: `load_model(cfg)` gives the model, its processor and its adapter.

Families resolve by the short name in `model.family`; an unknown name lists the valid ones. A
checkpoint is a hub id or a local folder; `model.builder=tiny` first builds the embedded tiny
checkpoint into `model.path` (offline), so it then loads like any downloaded checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from experiments.config import ModelConfig
from experiments.models.adapter import ModelAdapter
from experiments.models.llava import LLAVA
from experiments.models.qwen2_5_vl import QWEN2_5_VL

log = logging.getLogger(__name__)

ADAPTERS: dict[str, ModelAdapter] = {a.family: a for a in (LLAVA, QWEN2_5_VL)}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    model: Any  # the *ForConditionalGeneration module, eval mode, on its device
    processor: Any
    adapter: ModelAdapter


def get_adapter(family: str) -> ModelAdapter:
    if family not in ADAPTERS:
        raise ValueError(f"model.family={family!r} is not a known model family; valid: {sorted(ADAPTERS)}")
    return ADAPTERS[family]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(cfg: ModelConfig, device: str) -> Any:
    """bf16 on GPU and fp32 on CPU for `auto`; otherwise the named dtype."""
    import torch

    name = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    if name not in DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r} is not one of {['auto', *DTYPES]}")
    return getattr(torch, name)


def checkpoint_path(cfg: ModelConfig) -> str:
    """Where to load from: builds the tiny checkpoint first when `model.builder=tiny`."""
    get_adapter(cfg.family)
    if cfg.builder is None:
        return cfg.path
    if cfg.builder != "tiny":
        raise ValueError(f"model.builder={cfg.builder!r} is not known; use tiny or null")
    from experiments.models.tiny import ensure_tiny_checkpoint

    return str(ensure_tiny_checkpoint(cfg.family, cfg.path, cfg.builder_seed))


def decoder_depth(cfg: ModelConfig) -> int:
    """Number of text decoder layers, read from the checkpoint's config.json (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint_path(cfg), revision=cfg.revision)
    return int(config.get_text_config().num_hidden_layers)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load processor and weights; eval mode, on `cfg.device`, in `cfg.dtype`."""
    import transformers

    adapter = get_adapter(cfg.family)
    path = checkpoint_path(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg, device)
    log.info("loading %s from %s (%s, %s)", cfg.name, path, device, dtype)
    processor = adapter.load_processor(path, cfg.revision)
    model_class = getattr(transformers, adapter.model_class)
    model = model_class.from_pretrained(path, revision=cfg.revision, dtype=dtype,
                                        attn_implementation=cfg.attn_implementation)
    return LoadedModel(model=model.to(device).eval(), processor=processor, adapter=adapter)
