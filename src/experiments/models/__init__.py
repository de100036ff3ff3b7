"""Model registry and loading: `load_model(cfg)` gives the model, its processor and its adapter.

Families resolve by the short name in `model.family`; an unknown name lists the valid ones.
`model.weights=pretrained` loads a hub id or a local folder; a checkpoint that cannot be reached
(offline, not downloaded) raises `ModelUnavailableError` saying how to point `model.path` at a local
copy or use random weights. `model.weights=random` builds `model.architecture` (see `random_init`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from experiments.config import ModelConfig
from experiments.models.adapter import ModelAdapter
from experiments.models.llava import LLAVA
from experiments.models.llava_next import LLAVA_NEXT
from experiments.models.qwen2_5_vl import QWEN2_5_VL

log = logging.getLogger(__name__)

ADAPTERS: dict[str, ModelAdapter] = {a.family: a for a in (LLAVA, LLAVA_NEXT, QWEN2_5_VL)}
DTYPES = ("float32", "bfloat16", "float16")
WEIGHTS = ("pretrained", "random")


class ModelUnavailableError(RuntimeError):
    """A pretrained checkpoint could not be loaded from `model.path` (offline, missing, no access)."""


@dataclass
class LoadedModel:
    model: Any  # the *ForConditionalGeneration module, eval mode, on its device
    processor: Any
    adapter: ModelAdapter


def get_adapter(family: str) -> ModelAdapter:
    if family not in ADAPTERS:
        raise ValueError(f"model.family={family!r} is not a known model family; valid: {sorted(ADAPTERS)}")
    return ADAPTERS[family]


def check_model_config(cfg: ModelConfig) -> ModelAdapter:
    """Validate names before anything is loaded; returns the family's adapter."""
    adapter = get_adapter(cfg.family)
    if cfg.weights not in WEIGHTS:
        raise ValueError(f"model.weights={cfg.weights!r}: use one of {list(WEIGHTS)}")
    if cfg.weights == "pretrained" and not cfg.path:
        raise ValueError("model.path is empty: give a hub id or a local checkpoint folder, or use model.weights=random")
    if cfg.weights == "random" and not cfg.architecture:
        raise ValueError(f"model.weights=random needs model.architecture (the published config fields) for {cfg.name}")
    if cfg.dtype != "auto" and cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r} is not one of {['auto', *DTYPES]}")
    return adapter


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(cfg: ModelConfig, device: str) -> Any:
    """bf16 on GPU and fp32 on CPU for `auto`; otherwise the named dtype."""
    import torch

    return getattr(torch, cfg.dtype if cfg.dtype != "auto" else
                   ("bfloat16" if device.startswith("cuda") else "float32"))


def decoder_depth(cfg: ModelConfig) -> int:
    """Number of text decoder layers, from the architecture or the checkpoint's config.json (no weights)."""
    adapter = check_model_config(cfg)
    if cfg.weights == "random":
        from experiments.models.random_init import architecture_config

        config = architecture_config(adapter, cfg.architecture)
    else:
        from transformers import AutoConfig

        config = _from_hub(cfg, AutoConfig.from_pretrained, cfg.path, revision=cfg.revision)
    return int(config.get_text_config().num_hidden_layers)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load or build the model and its processor; eval mode, on `cfg.device`, in `cfg.dtype`."""
    import transformers

    from experiments.models.random_init import build_random, ensure_random_checkpoint

    adapter = check_model_config(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg, device)
    if cfg.weights == "random" and not cfg.build_dir:
        log.info("building %s with random weights on %s (%s)", cfg.name, device, dtype)
        model, processor = build_random(adapter, cfg, device, dtype)
    else:
        path = str(ensure_random_checkpoint(adapter, cfg)) if cfg.weights == "random" else str(cfg.path)
        log.info("loading %s from %s (%s, %s)", cfg.name, path, device, dtype)
        processor = _from_hub(cfg, adapter.load_processor, path, cfg.revision, **cfg.processor)
        model_class = getattr(transformers, adapter.model_class)
        model = _from_hub(cfg, model_class.from_pretrained, path, revision=cfg.revision, dtype=dtype,
                          attn_implementation=cfg.attn_implementation).to(device).eval()
    if cfg.fast_paths:
        for install in adapter.fast_paths:
            install(model)
    return LoadedModel(model=model, processor=processor, adapter=adapter)


def _from_hub(cfg: ModelConfig, load: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a `from_pretrained`; an unreachable checkpoint becomes one clear `ModelUnavailableError`."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError) as error:
        if cfg.weights == "random":
            raise
        raise ModelUnavailableError(
            f"model {cfg.name}: could not load model.path={cfg.path!r} (revision {cfg.revision}): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}\n"
            f"  If this machine is offline or the checkpoint is not downloaded, copy it to shared storage and "
            f"set model.path=/local/folder/of/the/checkpoint, or run with model.weights=random for a "
            f"random-weight model of the same architecture.") from None
