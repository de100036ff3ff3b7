"""Model registry and loading: `load_model(cfg)` gives the model, its processor and its adapter.

Families resolve by the short name in `model.family` through `ADAPTERS`, which `register_adapter` fills:
the built-in families below, every `ModelAdapter` that an installed package advertises under the entry-point
group `keyspace.adapters` (so `python launch.py model.family=<theirs>` works with no change here), and any
family that other code (a notebook, a test) registers before the job runs. An unknown name lists the valid ones.
`model.weights=pretrained` loads a hub id (at `model.revision`) or a local folder; a checkpoint that cannot
be fetched (gated, private, missing repository, revision or file, offline and not cached) raises
`ModelUnavailableError`, one line saying what to do: log in, fix the id or revision, point `model.path` at a
local copy or use random weights. `model.weights=random` builds `model.architecture` (see `random_init`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import ModelConfig
from experiments.hub import HubError, hub_problem
from experiments.models.adapter import ModelAdapter
from experiments.models.gemma3 import GEMMA3
from experiments.models.idefics3 import IDEFICS3
from experiments.models.internvl import INTERNVL
from experiments.models.llava import LLAVA
from experiments.models.llava_next import LLAVA_NEXT
from experiments.models.llava_onevision import LLAVA_ONEVISION
from experiments.models.mistral3 import MISTRAL3
from experiments.models.paligemma import PALIGEMMA
from experiments.models.qwen2_5_vl import QWEN2_5_VL
from experiments.models.qwen2_vl import QWEN2_VL
from experiments.models.qwen3_vl import QWEN3_VL

log = logging.getLogger(__name__)

ADAPTERS: dict[str, ModelAdapter] = {}  # model.family -> adapter; filled by register_adapter only
DTYPES = ("float32", "bfloat16", "float16")
WEIGHTS = ("pretrained", "random")  # model.weights: load model.path | build model.architecture


class ModelUnavailableError(HubError):
    """A pretrained checkpoint could not be loaded from `model.path` (offline, missing, no access)."""


@dataclass
class LoadedModel:
    model: Any  # the *ForConditionalGeneration module, eval mode, on its device
    processor: Any
    adapter: ModelAdapter


def register_adapter(adapter: ModelAdapter, replace: bool = False) -> ModelAdapter:
    """Make `adapter.family` a valid `model.family`; returns the adapter.

    Args:
        adapter: the family's declarative description (`models.adapter.ModelAdapter`).
        replace: allow overriding an already registered family of the same name.

    Raises:
        ValueError: the family name is taken and `replace` is False.
    """
    if adapter.family in ADAPTERS and not replace:
        raise ValueError(f"model family {adapter.family!r} is already registered; pass replace=True to override it")
    ADAPTERS[adapter.family] = adapter
    return adapter


def _register_installed() -> None:
    """The built-in families, then those advertised by installed packages (entry-point group `ENTRY_POINTS`)."""
    from importlib.metadata import entry_points

    for adapter in (LLAVA, LLAVA_NEXT, QWEN2_5_VL, QWEN2_VL, IDEFICS3, INTERNVL, MISTRAL3, QWEN3_VL, LLAVA_ONEVISION,
                    GEMMA3, PALIGEMMA):
        register_adapter(adapter)
    for entry in entry_points(group=ENTRY_POINTS):
        adapter = entry.load()
        if not isinstance(adapter, ModelAdapter):
            raise TypeError(f"entry point {entry.name} = {entry.value} ({ENTRY_POINTS}) is a "
                            f"{type(adapter).__name__}, not an experiments.models.ModelAdapter")
        register_adapter(adapter)


ENTRY_POINTS = "keyspace.adapters"  # entry-point group under which installed packages advertise adapters
_register_installed()


def get_adapter(family: str) -> ModelAdapter:
    if family not in ADAPTERS:
        raise ValueError(f"model.family={family!r} is not a known model family; valid: {sorted(ADAPTERS)}")
    return ADAPTERS[family]


def attention_problem(attention: bool, job: Any) -> str | None:
    """Why `analysis.attention` cannot run on the job's model family (its decoder is not causal), or None."""
    adapter = ADAPTERS.get(job.model.family)
    if not attention or adapter is None or adapter.mask == "causal":
        return None
    return (f"model.family={adapter.family} attends with a {adapter.mask} mask, which the recomputed causal "
            "attention does not model; use analysis.attention=false")


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
    adapter = get_adapter(cfg.family)
    if cfg.weights == "random":
        from experiments.models.random_init import architecture_config

        config = architecture_config(adapter, cfg.architecture)
    else:
        from transformers import AutoConfig

        config = _from_hub(cfg, AutoConfig.from_pretrained, cfg.path, revision=cfg.revision)
    return int(config.get_text_config().num_hidden_layers)


def checkpoint_commit(cfg: ModelConfig) -> str | None:
    """The hub commit `model.path` resolves to now (`model.revision`, or the default branch's head).

    Cache keys hash it instead of the requested revision, so keys of an older commit of a moving branch are
    never reused for new weights. None for random weights and local folders. Reads config.json, which the
    job needs anyway (cached after the first call; offline, the hub cache's ref).
    """
    if cfg.weights != "pretrained" or Path(str(cfg.path)).is_dir():
        return None
    from huggingface_hub import hf_hub_download

    config = _from_hub(cfg, hf_hub_download, str(cfg.path), "config.json", revision=cfg.revision)
    return Path(config).parent.name  # the hub cache's documented layout: snapshots/<commit>/config.json


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load or build the model and its processor; eval mode, on `cfg.device`, in `cfg.dtype`."""
    import transformers

    from experiments.models.random_init import build_random, ensure_random_checkpoint

    adapter = get_adapter(cfg.family)
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
            f"model {cfg.name}: {hub_problem(error, 'model.path', str(cfg.path), 'model', cfg.revision)}; or run "
            f"with model.weights=random for a random-weight model of the same architecture") from None
