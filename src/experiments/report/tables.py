"""Parquet tables written atomically, with keyspace's own metadata in the file's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.atomic import atomic_write

METADATA_KEY = b"keyspace"


def write_parquet(frame: pd.DataFrame, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write `frame` to `path` atomically; `metadata` is stored as JSON under the schema key `keyspace`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               METADATA_KEY: json.dumps(metadata).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_metadata(path: Path) -> dict[str, Any]:
    """The `keyspace` metadata of a table written by `write_parquet` ({} when there is none)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
