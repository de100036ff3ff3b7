"""Helpers shared by the real-benchmark loaders (`mmbench.py`, `mmmu.py`).

- Image cells: stored bytes (a parquet `struct<bytes, path>` cell, raw bytes) -> a `LazyImage` that keeps the
  encoded bytes; only the header is read here. A missing image, or bytes PIL cannot identify, raises `SkipRow`,
  which the loaders turn into a `skipped` entry; pixels that fail to decode later are skipped at extraction.
- Path resolution: `benchmark.path` is a local file or folder, or a Hugging Face dataset id of which
  `huggingface_hub.snapshot_download` fetches only the files the job needs (into the hub cache, reused
  offline); a hub failure (gated, missing, offline and not cached) or a repository without those files
  becomes one `HubError` line that says what to do (`experiments.hub`), never a raw hub traceback.
- `collect`: builds the samples row by row, skipping bad rows (and rows repeating an earlier row's sample id),
  with the seeded `benchmark.limit` selection.
- `read_table`: a parquet or TSV file that cannot be read (truncated, corrupt) becomes one error naming the file;
  `utf8` skips a row whose text is not valid UTF-8 (a TSV's undecodable bytes are read as U+FFFD, so one bad row
  does not stop the others).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.benchmarks.sample import BenchmarkData, LazyImage, Sample, SkipRow
from experiments.hub import HubError, hub_problem
from experiments.validation import HUB_ID


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


def read_table(path: Path) -> pd.DataFrame:
    """The table in the .tsv (VLMEvalKit: tab-separated, every field as text) or .parquet file `path`.

    Raises:
        ValueError: the file cannot be parsed (truncated, corrupt, ragged rows), or a TSV ends inside a row (a
            cut download, whose last row would otherwise lose its trailing columns); the message names the file.
    """
    try:
        if path.suffix == ".tsv":
            with open(path, "rb") as f:
                if f.seek(0, 2) and (f.seek(-1, 2), f.read(1))[1] not in (b"\n", b"\r"):
                    raise ValueError("the file ends inside a row")
            return pd.read_csv(path, sep="\t", dtype=str, encoding_errors="replace")
        return pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"benchmark file {path} cannot be read ({type(err).__name__}: {reason}); it is truncated "
                         f"or corrupt: download it again") from None


def utf8(value: object, column: str) -> str:
    """`value` as text; a row whose text held bytes that are not UTF-8 (read as U+FFFD) is skipped."""
    text = str(value)
    if "\ufffd" in text:
        raise SkipRow(f"{column} is not valid UTF-8 text")
    return text


def resolve_path(path: str, allow_patterns: list[str], revision: str | None = None) -> Path:
    """The local file or folder `path`, or a snapshot of the hub dataset `path` at `revision` (None: the default
    branch) restricted to `allow_patterns`; `snapshot_commit` of it is the commit that was read.

    Args:
        path: `benchmark.path`: a local .tsv/.parquet file or folder, or a hub dataset id such as `MMMU/MMMU`.
        allow_patterns: the repository files needed (glob patterns), e.g. `["Accounting/validation-*.parquet"]`.

    Returns:
        The local path, or the snapshot folder (the hub's layout) with the matching files.

    Raises:
        FileNotFoundError: `path` is neither an existing local path nor a hub dataset id.
        HubError: the hub dataset could not be fetched (gated, unknown, offline and not cached) or has no file
            matching `allow_patterns`; the message says what to do.
    """
    local = Path(path).expanduser()
    if local.exists():
        return local
    if not HUB_ID.match(path):
        raise FileNotFoundError(f"benchmark.path={path!r} does not exist and is not a hub dataset id (owner/name)")
    from huggingface_hub import constants, snapshot_download

    include = allow_patterns
    tails = {pattern.partition("/")[2] for pattern in allow_patterns}
    if len(allow_patterns) > 3 and len(tails) == 1:  # many MMMU subjects: one */<split>-*.parquet in the command
        include = [f"*/{tails.pop()}"]
    download = (f"e.g. `hf download {path} --repo-type dataset {' '.join(f'--include {p!r}' for p in include)} "
                f"--local-dir /data/{path}`")
    try:
        folder = Path(snapshot_download(repo_id=path, repo_type="dataset", allow_patterns=allow_patterns,
                                        revision=revision))
    except Exception as err:  # offline, connection, gated, unknown repo, incomplete snapshot: one actionable error
        raise HubError(f"{hub_problem(err, 'benchmark.path', path, 'dataset', revision)}, {download}") from None
    if not any(any(folder.glob(pattern)) for pattern in allow_patterns):
        raise HubError(f"benchmark.path={path!r}: {constants.ENDPOINT}/datasets/{path} has no file matching "
                       f"{allow_patterns}: check benchmark.split (and benchmark.subjects), or set benchmark.path to "
                       f"a local copy")
    return folder


def snapshot_commit(source: Path) -> str | None:
    """The hub commit of a snapshot folder from `resolve_path` (the hub cache's documented layout,
    `snapshots/<commit>/`), or None for a local file or folder."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE).resolve()
    folder = source.resolve()
    return folder.name if folder.parent.name == "snapshots" and cache in folder.parents else None


def collect(ids: list[str], build: Callable[[int], Sample], limit: int | None, seed: int,
            commit: str | None = None) -> BenchmarkData:
    """Build the sample of every row, or of `limit` rows chosen at random, in benchmark order.

    Under `limit`, rows are tried in the order of `numpy.random.default_rng(seed).permutation(len(ids))`
    until `limit` are usable (a bad row is replaced by the next one), then the kept samples are put back in
    benchmark order. Only the rows tried are read, so a small `limit` is cheap on a large benchmark.

    Args:
        ids: the sample id of every candidate row, in benchmark order.
        build: row position -> sample; raises `SkipRow` for a row it cannot use.
        limit: the most samples to keep; None keeps every usable row.
        seed: seed of the selection under `limit`.
        commit: the hub commit the rows were read from (`snapshot_commit`), recorded in the result.

    Returns:
        The samples, and `{"sample_id", "reason"}` for every row tried and skipped, both in benchmark order.

    """
    order = range(len(ids)) if limit is None else np.random.default_rng(seed).permutation(len(ids)).tolist()
    first: dict[str, int] = {}
    for position, sample_id in enumerate(ids):
        first.setdefault(sample_id, position)
    kept: dict[int, Sample] = {}
    skipped: dict[int, dict[str, str]] = {}
    for position in order:
        if limit is not None and len(kept) == limit:
            break
        try:
            if first[ids[position]] != position:
                raise SkipRow(f"duplicate sample id: row {position} repeats the id of row {first[ids[position]]}")
            kept[position] = build(position)
        except SkipRow as err:
            skipped[position] = {"sample_id": ids[position], "reason": str(err)}
    return BenchmarkData([kept[p] for p in sorted(kept)], [skipped[p] for p in sorted(skipped)], commit)
