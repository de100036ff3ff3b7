"""Helpers shared by the real-benchmark loaders (`mmbench.py`, `mmmu.py`).

- Image cells: stored bytes (a parquet `struct<bytes, path>` cell, raw bytes) -> a `LazyImage` that keeps the
  encoded bytes; only the header is read here. A missing image, or bytes PIL cannot identify, raises `SkipRow`,
  which the loaders turn into a `skipped` entry; pixels that fail to decode later are skipped at extraction.
- Path resolution: `benchmark.path` is a local file or folder, or a Hugging Face dataset id fetched with
  `huggingface_hub.snapshot_download`; a hub failure (offline, gated, missing) becomes one error that tells
  the user to download the files and set `benchmark.path`, never a raw hub traceback.
- `collect`: builds the samples row by row, skipping bad rows, with the seeded `benchmark.limit` selection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from experiments.benchmarks.sample import BenchmarkData, LazyImage, Sample, SkipRow

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def image_from_cell(value: object) -> LazyImage:
    """The image of a parquet cell (the Hugging Face `Image` struct `{bytes, path}` or raw bytes), not decoded.

    Raises:
        SkipRow: the cell is empty, holds no bytes, or the bytes have no image header PIL can identify.
    """
    if isinstance(value, Mapping):
        value = value.get("bytes")
    if not isinstance(value, bytes | bytearray) or not value:
        raise SkipRow("missing image")
    return LazyImage.from_bytes(bytes(value))


def resolve_path(path: str, allow_patterns: list[str]) -> Path:
    """The local file or folder `path`, or a snapshot of the hub dataset `path` restricted to `allow_patterns`.

    Args:
        path: `benchmark.path`: a local .tsv/.parquet file or folder, or a hub dataset id such as `MMMU/MMMU`.
        allow_patterns: the repository files needed (glob patterns), e.g. `["Accounting/validation-*.parquet"]`.

    Returns:
        The local path, or the snapshot folder (the hub's layout) with the matching files.

    Raises:
        FileNotFoundError: `path` is neither an existing local path nor a hub dataset that could be fetched
            (offline, gated, unknown); the message says to download the files and set `benchmark.path`.
    """
    local = Path(path).expanduser()
    if local.exists():
        return local
    if not HUB_ID.match(path):
        raise FileNotFoundError(f"benchmark.path={path!r} does not exist and is not a hub dataset id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=path, repo_type="dataset", allow_patterns=allow_patterns))
    except Exception as err:  # offline, connection, gated, unknown repo, incomplete snapshot: one actionable error
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else ""
        include = " ".join(f"--include '{p}'" for p in allow_patterns)
        raise FileNotFoundError(
            f"benchmark.path={path!r} is not a local path and the Hugging Face dataset could not be fetched "
            f"({type(err).__name__}: {reason}). Download it where the hub is reachable, e.g. "
            f"`hf download {path} --repo-type dataset {include} --local-dir /data/{path}`, "
            f"then set benchmark.path=/local/path (the folder, or a single file)."
        ) from None


def collect(ids: list[str], build: Callable[[int], Sample], limit: int | None, seed: int) -> BenchmarkData:
    """Build the sample of every row, or of `limit` rows chosen at random, in benchmark order.

    Under `limit`, rows are tried in the order of `numpy.random.default_rng(seed).permutation(len(ids))`
    until `limit` are usable (a bad row is replaced by the next one), then the kept samples are put back in
    benchmark order. Only the rows tried are read, so a small `limit` is cheap on a large benchmark.

    Args:
        ids: the sample id of every candidate row, in benchmark order.
        build: row position -> sample; raises `SkipRow` for a row it cannot use.
        limit: the most samples to keep; None keeps every usable row.
        seed: seed of the selection under `limit`.

    Returns:
        The samples, and `{"sample_id", "reason"}` for every row tried and skipped, both in benchmark order.

    Raises:
        ValueError: `limit` is not positive.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"benchmark.limit={limit}: use a positive number of samples, or null for all")
    order = range(len(ids)) if limit is None else np.random.default_rng(seed).permutation(len(ids)).tolist()
    kept: dict[int, Sample] = {}
    skipped: dict[int, dict[str, str]] = {}
    for position in order:
        if limit is not None and len(kept) == limit:
            break
        try:
            kept[position] = build(position)
        except SkipRow as err:
            skipped[position] = {"sample_id": ids[position], "reason": str(err)}
    return BenchmarkData([kept[p] for p in sorted(kept)], [skipped[p] for p in sorted(skipped)])
