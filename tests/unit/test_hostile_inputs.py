"""Hostile inputs on the real-format fixtures: each a clear skip with its reason or an error naming the file.

Decompression bombs, truncated or corrupt parquet and TSV files, text that is not UTF-8, an image without
its `<image k>` placeholder, duplicate sample ids, and key-cache files damaged on disk (deleted and
extracted again, never loaded). Placeholders without an image: `test_benchmarks_real.py`.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import replace

import pandas as pd
import pytest
from PIL import Image

from experiments.benchmarks import load_samples
from experiments.config import BenchmarkConfig
from experiments.store import KeyStore

from ..fixtures import mmbench_files as mb
from .test_benchmarks_real import MMMU_ROOT
from .test_keystore import DESCRIPTOR, _record

SHARD = "Accounting/validation-00000-of-00001.parquet"


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def mmmu_copy(tmp_path):
    """A writable copy of the real Accounting shard: (folder for benchmark.path, its table)."""
    (tmp_path / "Accounting").mkdir()
    shutil.copy(MMMU_ROOT / SHARD, tmp_path / SHARD)
    return tmp_path, pd.read_parquet(tmp_path / SHARD)


def _mmmu(root, **changes) -> BenchmarkConfig:
    return BenchmarkConfig(name="mmmu", path=str(root), split="validation", subjects=["Accounting"], limit=None,
                           **changes)


@pytest.mark.parametrize("side", [10_000, 14_000], ids=["over-limit", "over-twice-the-limit"])
def test_a_decompression_bomb_is_skipped_without_decoding(mmmu_copy, side):
    """A few-kB PNG of side x side px against PIL's 89.5 Mpx limit: over it (PIL only warns) and over twice it
    (PIL raises); either way the row is skipped before any pixel is decoded."""
    root, table = mmmu_copy
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    table.at[0, "image_1"] = {"bytes": buffer.getvalue(), "path": "bomb.png"}
    table.to_parquet(root / SHARD)
    data = load_samples(_mmmu(root))
    reasons = {s["sample_id"]: s["reason"] for s in data.skipped}
    assert "decompression bomb" in reasons[table.at[0, "id"]]
    assert len(data.samples) == len(table) - len(reasons)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_parquet_shard_fails_naming_the_file(mmmu_copy, damage):
    root, _ = mmmu_copy
    path = root / SHARD
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a parquet file" * 100)
    with pytest.raises(ValueError, match=rf"benchmark file {path} cannot be read .*truncated or corrupt"):
        load_samples(_mmmu(root))


def test_a_ragged_tsv_fails_naming_the_file(tmp_path):
    path = mb.write_tsv(tmp_path / "MMBench_DEV_CN.tsv")
    with open(path, "a") as f:
        f.write("\t".join(["1"] * 40) + "\n")  # a row with more fields than the header
    with pytest.raises(ValueError, match=rf"benchmark file {path} cannot be read .*truncated or corrupt"):
        load_samples(BenchmarkConfig(name="mmbench_cn", path=str(path), limit=None))


def test_a_tsv_cut_mid_row_fails_naming_the_file(tmp_path):
    """A download that stopped inside a row's base64 image: an error, not a last row silently short of columns."""
    path = mb.write_tsv(tmp_path / "MMBench_DEV_CN.tsv")
    text = path.read_text()
    path.write_text(text[: text.rindex("\t", 0, len(text) - 2000) + 999])
    with pytest.raises(ValueError, match=rf"benchmark file {path} cannot be read .*ends inside a row"):
        load_samples(BenchmarkConfig(name="mmbench_cn", path=str(path), limit=None))


def test_text_that_is_not_utf8_skips_its_row(tmp_path):
    path = mb.write_tsv(tmp_path / "MMBench_DEV_CN.tsv")
    lines = path.read_bytes().split(b"\n")
    header = lines[0].split(b"\t")
    row = lines[1].split(b"\t")
    row[header.index(b"question")] = b"\xff\xfe broken \xc3"
    path.write_bytes(b"\n".join([lines[0], b"\t".join(row), *lines[2:]]))
    data = load_samples(BenchmarkConfig(name="mmbench_cn", path=str(path), limit=None))
    bad = row[header.index(b"index")].decode()
    assert {"sample_id": bad, "reason": "question is not valid UTF-8 text"} in data.skipped
    assert bad not in {s.id for s in data.samples} and data.samples


def test_an_image_without_its_placeholder_is_skipped_when_interleaving(mmmu_copy):
    """Interleaved, image_2 of a row whose text names only <image 1> has no place: the row is skipped."""
    root, table = mmmu_copy
    row = next(i for i in table.index if table.at[i, "question"].count("<image 1>") and table.at[i, "image_2"] is None)
    table.at[row, "image_2"] = {"bytes": _png((32, 32)), "path": "extra.png"}
    table.to_parquet(root / SHARD)
    interleaved = load_samples(_mmmu(root))
    reasons = {s["sample_id"]: s["reason"] for s in interleaved.skipped}
    assert reasons[table.at[row, "id"]].startswith("image_2 has no <image 2> placeholder in the text")
    first = load_samples(_mmmu(root, image_order="images_first"))
    assert len(next(s for s in first.samples if s.id == table.at[row, "id"]).images) == 2


def test_duplicate_sample_ids_keep_the_first_row(mmmu_copy):
    root, table = mmmu_copy
    doubled = pd.concat([table, table.iloc[[5]]], ignore_index=True)
    doubled.to_parquet(root / SHARD)
    data = load_samples(_mmmu(root))
    assert [s.id for s in data.samples].count(table.at[5, "id"]) == 1
    assert {"sample_id": table.at[5, "id"],
            "reason": f"duplicate sample id: row {len(table)} repeats the id of row 5"} in data.skipped
    under_limit = load_samples(replace(_mmmu(root), limit=len(table)))
    assert len({s.id for s in under_limit.samples}) == len(under_limit.samples) == len(table)


@pytest.mark.parametrize("damage", ["truncated-keys", "garbage-header", "truncated-tokens"])
def test_a_damaged_cache_file_is_extracted_again_never_loaded(tmp_path, damage, caplog):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=4)
    records = [_record(n, 5 + n) for n in range(4)]
    store.write(0, [0, 2], records[:2], skipped=[])
    store.write(1, [0, 2], records[2:], skipped=[])
    path = store.tokens_path(1) if damage == "truncated-tokens" else store.layer_path(1, 2)
    data = path.read_bytes()
    path.write_bytes(data[:-7] if damage.startswith("truncated") else b"\xff" * 8 + data[8:])
    assert store.missing([0, 2]) == {1: [0, 2] if damage == "truncated-tokens" else [2]}
    assert not path.exists() and f"key cache file {path} is damaged" in caplog.text
    store.write(1, [0, 2], records[2:], skipped=[])  # what the next extraction does
    assert store.missing([0, 2]) == {}
    assert store.read(2, [0, 11, 12], store.index()).shape == (3, 8)
