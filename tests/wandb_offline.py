"""Read an offline W&B run file (`run-*.wandb`) without W&B's servers: the test's independent view.

The file is a LevelDB-style log (header `:W&B`, 32 KiB blocks, records split FULL/FIRST/MIDDLE/LAST)
of `wandb_internal_pb2.Record` protobufs; wandb >= 0.19 reads it only from its Go core.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, payloads, pending = HEADER, [], b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if left < HEADER or kind == 0:  # block trailer padding
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def finished_records(path: Path, timeout_s: float = 60.0) -> list:
    """The records once the run's `exit` record is on disk: `wandb.finish()` can return before W&B's
    core process has flushed the file."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = read_records(path)
        except Exception:  # a record still being written does not parse yet
            if time.monotonic() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def summary(path: Path) -> dict:
    """The run summary as logged: the last value of each key across summary records."""
    values = {}
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def group(path: Path) -> str:
    """The run's W&B group."""
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run.run_group
    raise AssertionError(f"{path} holds no run record")
