"""Random-weight models of a declared architecture, with an offline processor (`model.weights=random`).

Used for the embedded tiny models (saved once under `model.path`, atomically and under a file lock,
then loaded with `from_pretrained` exactly like a downloaded checkpoint) and for full-size smoke runs
and GPU benchmarks (built in memory on the device: same classes and FLOPs as the real checkpoints,
no download). The architecture's special-token ids are tied to the offline tokenizer. Same seed, same
weights.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from experiments.config import ModelConfig
from experiments.models.adapter import ModelAdapter

log = logging.getLogger(__name__)


def architecture_config(adapter: ModelAdapter, architecture: dict[str, Any], processor: Any | None = None) -> Any:
    """The transformers config of `architecture`; with `processor`, special-token ids tied to its tokenizer."""
    import transformers

    fields = copy.deepcopy(architecture)
    if processor is not None:
        for key, value in adapter.token_ids(processor).items():
            if isinstance(value, dict):
                fields.setdefault(key, {}).update(value)
            else:
                fields[key] = value
        text = fields.setdefault("text_config", {})
        text["vocab_size"] = max(int(text.get("vocab_size", 0)), len(processor.tokenizer))
    return getattr(transformers, adapter.config_class)(**fields)


def build_random(adapter: ModelAdapter, cfg: ModelConfig, device: str, dtype: Any) -> tuple[Any, Any]:
    """(model, processor): `cfg.architecture` with weights drawn from `cfg.seed`, built on `device`."""
    import torch
    import transformers

    processor = adapter.offline_processor(**cfg.processor)
    config = architecture_config(adapter, cfg.architecture, processor)
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = getattr(transformers, adapter.model_class)._from_config(
            config, dtype=dtype, attn_implementation=cfg.attn_implementation)
    return model.eval(), processor


def ensure_random_checkpoint(adapter: ModelAdapter, cfg: ModelConfig) -> Path:
    """Build the random-weight checkpoint into `cfg.path` (fp32, CPU) unless it is already there."""
    import torch
    from filelock import FileLock

    path = Path(str(cfg.path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / "config.json").exists():
            return path
        log.info("building %s with random weights (seed %d) into %s", cfg.name, cfg.seed, path)
        staging = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        try:
            model, processor = build_random(adapter, cfg, "cpu", torch.float32)
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
            os.replace(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return path
