"""Key cache: one entry per (model, benchmark, key settings), sharded by sample, one file per layer.

Layout of an entry, `<cache_dir>/keys/<model>-<benchmark>-<hash>/`:

    manifest.json                       the descriptor that was hashed, sample count, shard size
    shard-00000.tokens.safetensors      per-token metadata of samples [0, shard_size): is_image [T] bool,
                                        is_content [T] bool (the sample's own text), sample [T] int64,
                                        position [T] int64; sample ids, token counts and skipped samples
                                        in the file's metadata
    shard-00000.layer-003.safetensors   keys [T, kv_heads*head_dim] of decoder layer 3, same rows, and their
                                        L2 norms [T] (sink detection without reading the keys)
    ...

Layers are not part of the hash: a job that needs a subset of the stored layers reuses the entry, and
one that needs more extracts only the missing (shard, layer) files. Every file is written to a
temporary name and renamed into place, so it exists whole or not at all: a killed job leaves only
finished files and a rerun extracts only what is missing. A file damaged later on disk (truncated, or a
header that does not parse or does not match the file's length) counts as missing: `missing()` deletes it
and it is extracted again, never loaded. `lock()` serialises extraction between jobs that share the entry.

Select, then read: `index()` loads only the per-token metadata; `read(layer, rows)` then reads just the
chosen rows of one layer through a memory map of each shard's file (safetensors' documented layout: an
8-byte header length, a JSON header, raw row-major data), so memory follows the rows asked for, not
the benchmark.

Hashed: model (name, family, weights, path, the hub commit the revision resolves to, dtype resolved for the
device; for random weights also the seed, the architecture and the processor settings), the benchmark config
(with the hub commit its rows were read from in place of the requested revision), key site, per-sample token
cap, key seed, store dtype (resolved) and shard size.
Excluded on purpose: layers (stored per file), batch size, workers and attention implementation (they
change speed, not keys, beyond float rounding) and everything downstream of the keys (metrics, splits,
report, logger).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.atomic import atomic_write
from experiments.config import JobConfig
from experiments.keys.extract import SampleKeys
from experiments.models import checkpoint_commit, resolve_device, resolve_dtype
from experiments.store.lock import cache_lock

log = logging.getLogger(__name__)

# safetensors dtype tag -> (numpy dtype of the raw bytes, torch dtype they hold)
_DTYPES = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
           "BF16": (np.uint16, torch.bfloat16)}


def store_dtype(cfg: JobConfig) -> str:
    """`keys.store_dtype`, with `auto` resolved to the model's compute dtype on this job's device."""
    if cfg.keys.store_dtype != "auto":
        return cfg.keys.store_dtype
    return str(resolve_dtype(cfg.model, resolve_device(cfg.model.device))).removeprefix("torch.")


def cache_descriptor(cfg: JobConfig, benchmark_commit: str | None) -> dict[str, Any]:
    """The resolved config subset that determines the keys (see the module docstring for what is excluded).

    `benchmark_commit`: the hub commit the benchmark's rows were read from (`BenchmarkData.commit`), hashed in
    place of the requested `benchmark.revision`, as the model's commit is in place of `model.revision`.
    """
    m = cfg.model
    return {
        "model": {"name": m.name, "family": m.family, "weights": m.weights, "path": m.path,
                  "revision": checkpoint_commit(m),  # the commit, not the branch name
                  "dtype": str(resolve_dtype(m, resolve_device(m.device))).removeprefix("torch."),
                  "processor": m.processor,
                  **({"seed": m.seed, "architecture": m.architecture} if m.weights == "random" else {})},
        "benchmark": asdict(cfg.benchmark) | {"revision": benchmark_commit},
        "site": cfg.keys.site,
        "max_tokens_per_sample": cfg.keys.max_tokens_per_sample,
        "seed": cfg.keys.seed,
        "store_dtype": store_dtype(cfg),
        "shard_size": cfg.keys.shard_size,
    }


@dataclass
class TokenIndex:
    """Per-token metadata of a whole entry, concatenated over shards; the keys stay on disk.

    Attributes:
        is_image: [tokens] True for image tokens.
        is_content: [tokens] True for text tokens of the sample's own text (not template, system or special).
        sample: [tokens] number (benchmark order) of the sample each token belongs to.
        position: [tokens] position of each token in its sample's own sequence (0: BOS / first token).
        shard_offsets: [n_shards + 1] first token row of each shard (and the total).
        sample_ids: number -> the benchmark's sample id.
        token_counts: number -> (image tokens, text tokens) of the sample before the per-sample cap.
        skipped: samples dropped at extraction, as {"sample_id", "reason"}.
    """

    is_image: torch.Tensor
    is_content: torch.Tensor
    sample: torch.Tensor
    position: torch.Tensor
    shard_offsets: np.ndarray
    sample_ids: dict[int, str]
    token_counts: dict[int, tuple[int, int]]
    skipped: list[dict[str, str]]


class KeyStore:
    """One cache entry: `missing()` lists what is still to extract; `write`, `index` and `read` do the I/O."""

    def __init__(self, cache_dir: str | Path, descriptor: dict[str, Any], n_samples: int):
        self.dir = Path(cache_dir) / "keys" / entry_name(descriptor)
        self.descriptor, self.n_samples = descriptor, n_samples
        self.shard_size = int(descriptor["shard_size"])
        self.n_shards = -(-n_samples // self.shard_size)

    def lock(self, kind: str = "fcntl", stale_after: float = 120.0) -> Any:
        """A lock held while extracting, so jobs sharing the entry never run the model twice (`store.lock`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return cache_lock(self.dir / (".lock" if kind == "fcntl" else ".lockfile"), kind, stale_after)

    def remove_partial_files(self) -> None:
        """Delete temporary files a killed writer left behind; call only while holding `lock()`."""
        for leftover in self.dir.glob("*.tmp"):
            leftover.unlink(missing_ok=True)

    def shard_samples(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_samples))

    def missing(self, layers: list[int]) -> dict[int, list[int]]:
        """Shard -> the layers of `layers` it still lacks, for every shard that lacks any.

        A damaged file (see `intact`) is deleted with a warning and counted as missing; call only while
        holding `lock()`.
        """
        for path in [p for k in range(self.n_shards) for p in (self.tokens_path(k), *(self.layer_path(k, i)
                                                                                       for i in layers))]:
            if path.exists() and not intact(path):
                log.warning("key cache file %s is damaged (truncated or bad header): deleted, extracting it again",
                            path)
                path.unlink()
        gaps = {k: [i for i in sorted(layers) if not (self.tokens_path(k).exists() and self.layer_path(k, i).exists())]
                for k in range(self.n_shards)}
        return {k: lacking for k, lacking in gaps.items() if lacking}

    def write(self, shard: int, layers: list[int], records: list[SampleKeys], skipped: list[dict[str, str]]) -> None:
        """Write the tokens file of `shard` (or check the stored one), then one keys file per layer of `layers`.

        Raises:
            RuntimeError: the shard's tokens file exists but lists other tokens than `records`.
        """
        from safetensors.torch import save_file

        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            body = {"descriptor": self.descriptor, "n_samples": self.n_samples, "n_shards": self.n_shards}
            atomic_write(manifest, lambda p: Path(p).write_text(json.dumps(body, indent=2)))
        tokens = {
            "is_image": _cat([r.is_image for r in records], torch.bool),
            "is_content": _cat([r.is_content for r in records], torch.bool),
            "sample": _cat([torch.full((len(r.is_image),), r.number) for r in records], torch.int64),
            "position": _cat([r.position for r in records], torch.int64),
        }
        if self.tokens_path(shard).exists():
            self._check_same_tokens(shard, tokens)
        else:
            metadata = {"sample_ids": json.dumps({r.number: r.sample_id for r in records}),
                        "token_counts": json.dumps({r.number: [r.n_image_tokens, r.n_text_tokens] for r in records}),
                        "skipped": json.dumps(skipped)}
            atomic_write(self.tokens_path(shard), lambda p: save_file(tokens, p, metadata=metadata))
        for layer in layers:
            keys = torch.cat([r.keys[layer] for r in records]) if records else torch.zeros(0, 0)
            atomic_write(self.layer_path(shard, layer), partial(_save_keys, keys))

    def index(self) -> TokenIndex:
        """Per-token metadata of every shard (no keys); raises if a shard's tokens file is missing."""
        from safetensors import safe_open

        if absent := [k for k in range(self.n_shards) if not self.tokens_path(k).exists()]:
            raise FileNotFoundError(f"key cache {self.dir} lacks shards {absent}; rerun the job to extract them")
        is_image, is_content, sample, position, offsets = [], [], [], [], [0]
        sample_ids: dict[int, str] = {}
        token_counts: dict[int, tuple[int, int]] = {}
        skipped: list[dict[str, str]] = []
        for k in range(self.n_shards):
            with safe_open(str(self.tokens_path(k)), framework="pt") as f:
                meta = f.metadata()
                self._require(f, "is_content", "content flags", self.tokens_path(k))
                is_image.append(f.get_tensor("is_image"))
                is_content.append(f.get_tensor("is_content"))
                sample.append(f.get_tensor("sample"))
                position.append(f.get_tensor("position"))
            sample_ids.update({int(n): s for n, s in json.loads(meta["sample_ids"]).items()})
            token_counts.update({int(n): (c[0], c[1]) for n, c in json.loads(meta["token_counts"]).items()})
            skipped += json.loads(meta["skipped"])
            offsets.append(offsets[-1] + len(is_image[-1]))
        if not sample_ids:
            raise ValueError(f"every sample was skipped at extraction ({len(skipped)}): first reason: "
                             f"{skipped[0]['reason'] if skipped else 'none'}")
        return TokenIndex(is_image=torch.cat(is_image), is_content=torch.cat(is_content), sample=torch.cat(sample),
                          position=torch.cat(position),
                          shard_offsets=np.array(offsets),
                          sample_ids=sample_ids, token_counts=token_counts, skipped=skipped)

    def read(self, layer: int, rows: np.ndarray, index: TokenIndex) -> torch.Tensor:
        """Keys `[len(rows), dim]` of `layer` at the global token `rows` (sorted, unique), in the stored dtype.

        Only the requested rows are copied; each shard's file is memory-mapped and unmapped in turn.

        Raises:
            ValueError: `rows` is not sorted and unique, or lies outside the entry.
            FileNotFoundError / RuntimeError: a needed layer file is missing or does not match its tokens file.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= index.shard_offsets[-1]):
            raise ValueError("rows must be sorted, unique token indices inside the entry")
        bounds = np.searchsorted(rows, index.shard_offsets)
        parts = []
        for k in range(self.n_shards):
            local = rows[bounds[k]:bounds[k + 1]] - index.shard_offsets[k]
            if len(local):
                expected = int(index.shard_offsets[k + 1] - index.shard_offsets[k])
                parts.append(_read_rows(self.layer_path(k, layer), local, expected))
        return torch.cat(parts) if parts else torch.zeros(0, 0)

    def read_norms(self, layer: int, index: TokenIndex) -> np.ndarray:
        """Key norms `[tokens]` of `layer` for every token of the entry (float32; small, like the metadata).

        Raises:
            RuntimeError: a layer file was written before norms were stored (remove the entry and rerun).
        """
        from safetensors import safe_open

        parts = []
        for k in range(self.n_shards):
            with safe_open(str(self.layer_path(k, layer)), framework="pt") as f:
                self._require(f, "norms", "key norms", self.layer_path(k, layer))
                parts.append(f.get_tensor("norms"))
        norms = torch.cat(parts).numpy()
        if len(norms) != index.shard_offsets[-1]:
            raise RuntimeError(f"key cache {self.dir}: layer {layer} has {len(norms)} norms for "
                               f"{index.shard_offsets[-1]} tokens; the entry is damaged, remove it and rerun")
        return norms

    def layer_coverage(self) -> dict[int, int]:
        """Layer -> how many shards hold its keys (`n_shards`: complete; fewer: partly extracted)."""
        counts: dict[int, int] = {}
        for path in self.dir.glob("shard-*.layer-*.safetensors"):
            layer = int(path.name.split(".layer-")[1].split(".")[0])
            counts[layer] = counts.get(layer, 0) + 1
        return dict(sorted(counts.items()))

    def layer_bytes(self, layers: list[int]) -> int:
        """Bytes on disk of the key files of `layers` (all shards)."""
        return sum(self.layer_path(k, i).stat().st_size for k in range(self.n_shards) for i in layers
                   if self.layer_path(k, i).exists())

    def tokens_path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:05d}.tokens.safetensors"

    def layer_path(self, shard: int, layer: int) -> Path:
        return self.dir / f"shard-{shard:05d}.layer-{layer:03d}.safetensors"

    def _require(self, opened: Any, name: str, what: str, path: Path) -> None:
        """Raise if the open safetensors file lacks tensor `name` (`what` it holds): an older keyspace wrote it."""
        if name not in opened.keys():
            raise RuntimeError(f"key cache file {path} has no {what} (written by an older keyspace); remove the "
                               f"entry (python -m experiments.cache remove {self.dir.name}) and rerun")

    def _check_same_tokens(self, shard: int, tokens: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import load_file

        stored = load_file(str(self.tokens_path(shard)))
        if any(name not in stored or not torch.equal(stored[name], tokens[name]) for name in tokens):
            raise RuntimeError(
                f"key cache {self.dir}: the tokens extracted now for shard {shard} differ from the stored ones, so "
                f"new layers cannot be added to this entry; remove it (python -m experiments.cache remove "
                f"{self.dir.name}) and rerun")


def entry_name(descriptor: dict[str, Any]) -> str:
    """Folder name of the entry: model and benchmark names and a hash of the whole descriptor."""
    digest = hashlib.sha256(json.dumps(descriptor, sort_keys=True).encode()).hexdigest()[:16]
    return f"{descriptor['model']['name']}-{descriptor['benchmark']['name']}-{digest}"


def intact(path: Path) -> bool:
    """Whether `path` is a whole safetensors file: its header parses and its last tensor ends at the file's end."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                return False
            header = json.loads(f.read(header_len))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError, AttributeError):
        return False
    return 8 + header_len + end == size


def _save_keys(keys: torch.Tensor, path: str) -> None:
    """The keys and their L2 norms (float32, [T]): the norms let sinks be found without reading the keys."""
    from safetensors.torch import save_file

    save_file({"keys": keys, "norms": keys.float().norm(dim=1)}, path)


def _read_rows(path: Path, rows: np.ndarray, expected_rows: int) -> torch.Tensor:
    """Rows of the single tensor `keys` of a safetensors file, through a memory map."""
    if not path.exists():
        raise FileNotFoundError(f"key cache file {path} is missing; rerun the job to extract it")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))["keys"]
    shape, (begin, _) = header["shape"], header["data_offsets"]
    if header["dtype"] not in _DTYPES or len(shape) != 2 or shape[0] != expected_rows:
        raise RuntimeError(f"key cache file {path} holds {header['dtype']} {shape}, expected {expected_rows} rows "
                           "of a 2-D float tensor: the file is damaged; delete it and rerun the job")
    raw_dtype, dtype = _DTYPES[header["dtype"]]
    mapped = np.memmap(path, dtype=raw_dtype, mode="r", offset=8 + header_len + begin, shape=tuple(shape))
    taken = torch.from_numpy(np.ascontiguousarray(mapped[rows]))
    del mapped  # unmap now: the file's pages leave this process
    return taken.view(dtype)


def _cat(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(tensors).to(dtype) if tensors else torch.zeros(0, dtype=dtype)  # empty: every sample skipped
