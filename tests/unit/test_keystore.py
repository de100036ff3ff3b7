"""The key cache: content-addressed, atomic shards, resumable, and a faithful round trip."""

from __future__ import annotations

import pytest
import torch

from experiments.keys.extract import SampleKeys
from experiments.store import KeyStore

DESCRIPTOR = {"model": {"name": "m"}, "benchmark": {"name": "b"}, "layers": [0, 2], "shard_size": 2, "site": "x"}


def _record(number: int, tokens: int) -> SampleKeys:
    g = torch.Generator().manual_seed(number)
    return SampleKeys(number=number, sample_id=f"s{number}",
                      keys={i: torch.randn(tokens, 8, generator=g) for i in (0, 2)},
                      is_image=torch.arange(tokens) < 3, position=torch.arange(tokens),
                      n_image_tokens=3, n_text_tokens=tokens - 3 + number)


def test_round_trip_and_resume(tmp_path):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=3)
    assert store.n_shards == 2 and store.missing() == [0, 1]
    records = [_record(n, 5 + n) for n in range(3)]
    store.write(0, records[:2], skipped=[])
    assert store.missing() == [1]
    assert list(store.shard_samples(1)) == [2]
    store.write(1, records[2:], skipped=[{"sample_id": "s9", "reason": "r"}])
    assert store.missing() == [] and not list(store.dir.glob("*.tmp"))
    keys = KeyStore(tmp_path, DESCRIPTOR, n_samples=3).load()
    for layer in (0, 2):
        assert torch.equal(keys.keys[layer], torch.cat([r.keys[layer] for r in records]))
    assert keys.sample.tolist() == [0] * 5 + [1] * 6 + [2] * 7
    assert keys.sample_ids == {0: "s0", 1: "s1", 2: "s2"} and keys.skipped[0]["sample_id"] == "s9"
    assert keys.token_counts == {0: (3, 2), 1: (3, 4), 2: (3, 6)}


def test_descriptor_changes_the_entry(tmp_path):
    a = KeyStore(tmp_path, DESCRIPTOR, 3)
    b = KeyStore(tmp_path, {**DESCRIPTOR, "layers": [0]}, 3)
    assert a.dir != b.dir and a.dir == KeyStore(tmp_path, dict(DESCRIPTOR), 3).dir


def test_load_with_missing_shard_names_it(tmp_path):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=3)
    store.write(0, [_record(0, 4)], skipped=[])
    with pytest.raises(FileNotFoundError, match=r"lacks shards \[1\]"):
        store.load()
