"""Sharded key cache keyed by a hash of everything that determines the keys.

Layout: `<cache_dir>/keys/<model>-<benchmark>-<hash>/` holds `manifest.json` (the descriptor that was
hashed, sample count, shard size) and `shard-00000.safetensors`, ... Shard k holds samples
[k * shard_size, (k+1) * shard_size) in benchmark order. Every file is written to a temporary name
and renamed into place, so a shard either exists whole or not at all: a killed job leaves only
finished shards, and a rerun extracts only the missing ones. `lock()` serialises extraction between
jobs that share the entry.

Hashed: model (name, family, weights, path, revision, dtype, processor settings; for random weights also
the seed and the architecture), the benchmark config, the resolved
layer indices, key site, per-sample token cap, key seed, store dtype and shard size. Excluded on
purpose: batch size, device and attention implementation (they change speed, not keys, beyond float
rounding) and everything downstream of the keys (metrics, splits, report, logger).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.atomic import atomic_write
from experiments.config import JobConfig
from experiments.keys.extract import SampleKeys


def cache_descriptor(cfg: JobConfig, layers: list[int]) -> dict[str, Any]:
    """The config subset that determines the keys (see the module docstring for what is excluded)."""
    m = cfg.model
    return {
        "model": {"name": m.name, "family": m.family, "weights": m.weights, "path": m.path, "revision": m.revision,
                  "dtype": m.dtype, "processor": m.processor,
                  **({"seed": m.seed, "architecture": m.architecture} if m.weights == "random" else {})},
        "benchmark": asdict(cfg.benchmark),
        "layers": sorted(layers),
        "site": cfg.keys.site,
        "max_tokens_per_sample": cfg.keys.max_tokens_per_sample,
        "seed": cfg.keys.seed,
        "store_dtype": cfg.keys.store_dtype,
        "shard_size": cfg.keys.shard_size,
    }


@dataclass
class KeySet:
    """All cached tokens of one entry, concatenated over samples.

    Attributes:
        keys: layer index -> [tokens, kv_heads*head_dim].
        is_image: [tokens] True for image tokens.
        sample: [tokens] number (benchmark order) of the sample each token belongs to.
        sample_ids: number -> the benchmark's sample id.
        token_counts: number -> (image tokens, text tokens) of the sample before the per-sample cap.
        skipped: samples dropped at extraction, as {"sample_id", "reason"}.
    """

    keys: dict[int, torch.Tensor]
    is_image: torch.Tensor
    sample: torch.Tensor
    sample_ids: dict[int, str]
    token_counts: dict[int, tuple[int, int]]
    skipped: list[dict[str, str]]


class KeyStore:
    """One cache entry. `missing()` lists shards still to extract; `write()` and `load()` do the I/O."""

    def __init__(self, cache_dir: str | Path, descriptor: dict[str, Any], n_samples: int):
        digest = hashlib.sha256(json.dumps(descriptor, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{descriptor['model']['name']}-{descriptor['benchmark']['name']}-{digest}"
        self.dir = Path(cache_dir) / "keys" / name
        self.descriptor, self.n_samples = descriptor, n_samples
        self.shard_size = int(descriptor["shard_size"])
        self.n_shards = -(-n_samples // self.shard_size)

    def lock(self) -> Any:
        """A file lock held while extracting, so jobs sharing the entry never run the model twice."""
        from filelock import FileLock

        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / ".lock"))

    def remove_partial_files(self) -> None:
        """Delete temporary files a killed writer left behind; call only while holding `lock()`."""
        for leftover in self.dir.glob("*.tmp"):
            leftover.unlink(missing_ok=True)

    def shard_samples(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_samples))

    def missing(self) -> list[int]:
        return [k for k in range(self.n_shards) if not self._shard_path(k).exists()]

    def write(self, shard: int, records: list[SampleKeys], skipped: list[dict[str, str]]) -> None:
        """Write shard `shard` atomically (and the manifest, if it is not there yet)."""
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            body = {"descriptor": self.descriptor, "n_samples": self.n_samples, "n_shards": self.n_shards}
            atomic_write(manifest, lambda p: Path(p).write_text(json.dumps(body, indent=2)))
        layers = self.descriptor["layers"]
        tensors = {
            "is_image": _cat([r.is_image for r in records], torch.bool),
            "sample": _cat([torch.full((len(r.is_image),), r.number) for r in records], torch.int64),
            "position": _cat([r.position for r in records], torch.int64),
            **{f"layers.{i}.keys": _cat([r.keys[i] for r in records], None) for i in layers},
        }
        metadata = {"sample_ids": json.dumps({r.number: r.sample_id for r in records}),
                    "token_counts": json.dumps({r.number: [r.n_image_tokens, r.n_text_tokens] for r in records}),
                    "skipped": json.dumps(skipped)}
        atomic_write(self._shard_path(shard), lambda p: save_file(tensors, p, metadata=metadata))

    def load(self) -> KeySet:
        """Concatenate every shard; raises FileNotFoundError naming the missing shards."""
        from safetensors import safe_open

        if missing := self.missing():
            raise FileNotFoundError(f"key cache {self.dir} lacks shards {missing}; rerun the job to extract them")
        parts: dict[str, list[torch.Tensor]] = {}
        sample_ids: dict[int, str] = {}
        token_counts: dict[int, tuple[int, int]] = {}
        skipped: list[dict[str, str]] = []
        for k in range(self.n_shards):
            with safe_open(str(self._shard_path(k)), framework="pt") as f:
                meta = f.metadata()
                sample_ids.update({int(n): s for n, s in json.loads(meta["sample_ids"]).items()})
                token_counts.update({int(n): (c[0], c[1]) for n, c in json.loads(meta["token_counts"]).items()})
                skipped += json.loads(meta["skipped"])
                for name in f.keys():
                    parts.setdefault(name, []).append(f.get_tensor(name))
        if not sample_ids:
            raise ValueError(f"every sample was skipped at extraction ({len(skipped)}): first reason: "
                             f"{skipped[0]['reason'] if skipped else 'none'}")
        cat = {name: torch.cat(ts) for name, ts in parts.items()}
        return KeySet(keys={i: cat[f"layers.{i}.keys"] for i in self.descriptor["layers"]},
                      is_image=cat["is_image"], sample=cat["sample"], sample_ids=sample_ids,
                      token_counts=token_counts, skipped=skipped)

    def _shard_path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:05d}.safetensors"


def _cat(tensors: list[torch.Tensor], dtype: torch.dtype | None) -> torch.Tensor:
    if not tensors:  # a shard whose samples were all skipped
        return torch.zeros(0, dtype=dtype or torch.float32)
    out = torch.cat(tensors)
    return out if dtype is None else out.to(dtype)

