"""Random-weight models of a declared architecture, with an offline processor (`model.weights=random`).

Used for the embedded tiny models (saved once, atomically and under a file lock, then loaded with
`from_pretrained` exactly like a downloaded checkpoint) and for full-size smoke runs and GPU
benchmarks (`model.build_dir=null`, the full-size configs' default: built in memory on the device,
same classes and FLOPs as the real checkpoints, no download, nothing written). The architecture's
special-token ids are tied to the offline tokenizer, and weights that transformers initialises to a constant
a trained checkpoint overwrites are drawn by the adapter's `random_init` functions. Same seed, same weights.

A saved build lives in `<model.build_dir>/<hash>/`, the hash taken over everything that determines it
(family, seed, architecture, processor settings), so an override such as
`model.architecture.text_config.num_key_value_heads=4` gets its own folder instead of the default's.
An existing folder is loaded only if its saved config is the one the request builds; otherwise the
job fails naming the fields that differ.
"""

from __future__ import annotations

import copy
import hashlib
import json
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
    for initialise in adapter.random_init:
        initialise(model)
    return model.eval(), processor


def checkpoint_dir(cfg: ModelConfig) -> Path:
    """`<cfg.build_dir>/<hash of family, seed, architecture, processor settings>`: the folder of that build."""
    spec = {"family": cfg.family, "seed": cfg.seed, "architecture": cfg.architecture, "processor": cfg.processor}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return Path(str(cfg.build_dir)) / digest


def ensure_random_checkpoint(adapter: ModelAdapter, cfg: ModelConfig) -> Path:
    """The folder of the random-weight checkpoint `cfg` asks for, built there (fp32, CPU) unless it exists.

    Args:
        adapter: the family's adapter.
        cfg: a `weights=random` model config with a `build_dir`.

    Returns:
        `checkpoint_dir(cfg)`, holding `config.json`, the weights and the processor.

    Raises:
        ValueError: the folder holds a checkpoint whose saved config is not the one `cfg` builds.
    """
    import torch
    from filelock import FileLock

    path = checkpoint_dir(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / "config.json").exists():
            _check_saved_config(adapter, cfg, path)
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


def _check_saved_config(adapter: ModelAdapter, cfg: ModelConfig, path: Path) -> None:
    """Raise unless `path/config.json` is the config `cfg` builds (saving adds only `_SAVED_ONLY` fields)."""
    import transformers

    saved = getattr(transformers, adapter.config_class).from_pretrained(path).to_dict()
    wanted = architecture_config(adapter, cfg.architecture, adapter.offline_processor(**cfg.processor)).to_dict()
    differences = _differences(wanted, saved)
    if differences:
        raise ValueError(f"model {cfg.name}: the checkpoint in {path} was not built from this model config "
                         f"(requested vs saved: {'; '.join(differences[:5])}); delete the folder to rebuild it")


_SAVED_ONLY = {"architectures", "dtype", "transformers_version"}


def _differences(wanted: dict[str, Any], saved: dict[str, Any], prefix: str = "") -> list[str]:
    """`field: requested != saved` for every (nested) config field that differs, `_SAVED_ONLY` aside."""
    found = []
    for key in sorted((set(wanted) | set(saved)) - _SAVED_ONLY):
        a, b = wanted.get(key), saved.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} != {b!r}")
    return found
