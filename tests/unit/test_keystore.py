"""The key cache: content-addressed, one file per (shard, layer), atomic, resumable, read by rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from experiments.keys.extract import SampleKeys
from experiments.store import KeyStore

DESCRIPTOR = {"model": {"name": "m"}, "benchmark": {"name": "b"}, "shard_size": 2, "site": "x"}


def _record(number: int, tokens: int, layers=(0, 2), dtype=torch.float32) -> SampleKeys:
    g = torch.Generator().manual_seed(number)
    return SampleKeys(number=number, sample_id=f"s{number}",
                      keys={i: (torch.randn(tokens, 8, generator=g) + i).to(dtype) for i in layers},
                      is_image=torch.arange(tokens) < 3, is_content=torch.arange(tokens) >= 4,
                      position=torch.arange(tokens),
                      n_image_tokens=3, n_text_tokens=tokens - 3 + number)


def test_round_trip_and_resume(tmp_path):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=3)
    assert store.n_shards == 2 and store.missing([0, 2]) == {0: [0, 2], 1: [0, 2]}
    records = [_record(n, 5 + n) for n in range(3)]
    store.write(0, [0, 2], records[:2], skipped=[])
    assert store.missing([0, 2]) == {1: [0, 2]}
    assert list(store.shard_samples(1)) == [2]
    store.write(1, [0, 2], records[2:], skipped=[{"sample_id": "s9", "reason": "r"}])
    assert store.missing([0, 2]) == {} and not list(store.dir.glob("*.tmp"))
    reopened = KeyStore(tmp_path, DESCRIPTOR, n_samples=3)
    index = reopened.index()
    every_row = np.arange(18)
    for layer in (0, 2):
        assert torch.equal(reopened.read(layer, every_row, index), torch.cat([r.keys[layer] for r in records]))
    assert index.sample.tolist() == [0] * 5 + [1] * 6 + [2] * 7
    assert index.sample_ids == {0: "s0", 1: "s1", 2: "s2"} and index.skipped[0]["sample_id"] == "s9"
    assert index.token_counts == {0: (3, 2), 1: (3, 4), 2: (3, 6)}
    assert reopened.layer_coverage() == {0: 2, 2: 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_read_rows_equals_safetensors_own_loader(tmp_path, dtype):
    """The memory-mapped row read returns exactly what safetensors loads, for every stored dtype."""
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=4)
    records = [_record(n, 6 + n, dtype=dtype) for n in range(4)]
    store.write(0, [0, 2], records[:2], skipped=[])
    store.write(1, [0, 2], records[2:], skipped=[])
    index = store.index()
    full = torch.cat([load_file(str(store.layer_path(k, 2)))["keys"] for k in range(2)])
    rows = np.array([0, 3, 12, 13, 20, 26])  # rows in both shards, shard edges included
    got = store.read(2, rows, index)
    assert got.dtype == dtype and torch.equal(got, full[torch.from_numpy(rows)])
    with pytest.raises(ValueError, match="sorted, unique"):
        store.read(2, np.array([3, 0]), index)


def test_more_layers_are_added_to_the_entry_and_a_subset_reuses_it(tmp_path):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=2)
    store.write(0, [0], [_record(0, 4, layers=(0,)), _record(1, 5, layers=(0,))], skipped=[])
    assert store.missing([0]) == {} and store.missing([0, 2]) == {0: [2]}
    store.write(0, [2], [_record(0, 4, layers=(2,)), _record(1, 5, layers=(2,))], skipped=[])
    assert store.missing([0, 2]) == {} and store.missing([2]) == {}


def test_adding_a_layer_with_other_tokens_is_refused(tmp_path):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=2)
    store.write(0, [0], [_record(0, 4, layers=(0,)), _record(1, 5, layers=(0,))], skipped=[])
    with pytest.raises(RuntimeError, match="differ from the stored ones.*experiments.cache remove"):
        store.write(0, [2], [_record(0, 4, layers=(2,)), _record(1, 6, layers=(2,))], skipped=[])


def test_a_damaged_layer_file_is_detected_not_loaded(tmp_path):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=2)
    store.write(0, [0], [_record(0, 4, layers=(0,)), _record(1, 5, layers=(0,))], skipped=[])
    index = store.index()
    save_file({"keys": torch.zeros(3, 8)}, str(store.layer_path(0, 0)))  # rows do not match the tokens file
    with pytest.raises(RuntimeError, match="damaged"):
        store.read(0, np.arange(2), index)


def test_descriptor_changes_the_entry(tmp_path):
    a = KeyStore(tmp_path, DESCRIPTOR, 3)
    b = KeyStore(tmp_path, {**DESCRIPTOR, "site": "y"}, 3)
    assert a.dir != b.dir and a.dir == KeyStore(tmp_path, dict(DESCRIPTOR), 3).dir


def test_index_with_missing_shard_names_it(tmp_path):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=3)
    store.write(0, [0], [_record(0, 4, layers=(0,))], skipped=[])
    with pytest.raises(FileNotFoundError, match=r"lacks shards \[1\]"):
        store.index()


def _job(*overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import register_configs

    from ..conftest import REPO

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=["paths.cache_dir=/c", *overrides]))


def test_dtype_auto_is_hashed_as_resolved_so_cpu_and_gpu_keys_never_share_an_entry(monkeypatch):
    from experiments.store import cache_descriptor, entry_name

    job = _job("model=llava", "model.weights=random")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = cache_descriptor(job, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = cache_descriptor(job, None)
    assert (cpu["model"]["dtype"], cpu["store_dtype"]) == ("float32", "float32")
    assert (gpu["model"]["dtype"], gpu["store_dtype"]) == ("bfloat16", "bfloat16")
    assert entry_name(cpu) != entry_name(gpu)


def test_layers_and_speed_settings_do_not_change_the_entry():
    from experiments.store import cache_descriptor, entry_name

    base = entry_name(cache_descriptor(_job(), None))
    for same in (["layer=late"], ["layer.positions=[1]"], ["keys.batch_size=3"], ["keys.num_workers=2"]):
        assert entry_name(cache_descriptor(_job(*same), None)) == base, same
    for other in (["keys.site=pre_rope"], ["keys.store_dtype=bfloat16"], ["benchmark.limit=5"]):
        assert entry_name(cache_descriptor(_job(*other), None)) != base, other


def test_layer_files_hold_the_key_norms(tmp_path):
    store = KeyStore(tmp_path, DESCRIPTOR, n_samples=3)
    records = [_record(n, 5 + n) for n in range(3)]
    store.write(0, [0, 2], records[:2], skipped=[])
    store.write(1, [0, 2], records[2:], skipped=[])
    index = store.index()
    for layer in (0, 2):
        keys = torch.cat([load_file(str(store.layer_path(k, layer)))["keys"] for k in range(2)]).double()
        np.testing.assert_allclose(store.read_norms(layer, index), torch.linalg.vector_norm(keys, dim=1).numpy(),
                                   rtol=1e-6)
    assert index.position.tolist() == [p for r in records for p in r.position.tolist()]
    save_file({"keys": torch.zeros(11, 8)}, str(store.layer_path(0, 0)))  # a file from before norms were stored
    with pytest.raises(RuntimeError, match="no key norms.*experiments.cache remove"):
        store.read_norms(0, index)
