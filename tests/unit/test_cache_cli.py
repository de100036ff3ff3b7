"""`python -m experiments.cache`: list entries with their layers, samples and bytes; remove the named ones."""

from __future__ import annotations

import subprocess
import sys

import torch
from filelock import FileLock

from experiments.cache import entries, main
from experiments.keys.extract import SampleKeys
from experiments.store import KeyStore

from ..conftest import REPO


def _entry(cache, model: str, shards_with_layer_2: int) -> KeyStore:
    descriptor = {"model": {"name": model}, "benchmark": {"name": "b"}, "shard_size": 1, "site": "post_rope",
                  "store_dtype": "bfloat16"}
    store = KeyStore(cache, descriptor, n_samples=2)
    for shard in range(2):
        layers = [0, 2] if shard < shards_with_layer_2 else [0]
        record = SampleKeys(number=shard, sample_id=f"s{shard}", keys={i: torch.ones(3, 4) for i in layers},
                            is_image=torch.tensor([True, False, False]),
                            is_content=torch.tensor([False, False, True]), position=torch.arange(3),
                            n_image_tokens=1, n_text_tokens=2)
        store.write(shard, layers, [record], skipped=[])
    return store


def test_list_shows_layers_samples_bytes_and_completeness(tmp_path, capsys):
    whole, partial = _entry(tmp_path, "m1", 2), _entry(tmp_path, "m2", 1)
    found = {e.name: e for e in entries(tmp_path)}
    assert found[whole.dir.name].layers == [0, 2] and found[whole.dir.name].complete
    assert found[partial.dir.name].layers == [0] and found[partial.dir.name].partial == [2]
    assert not found[partial.dir.name].complete
    assert found[whole.dir.name].bytes == sum(f.stat().st_size for f in whole.dir.iterdir() if f.is_file())
    assert main(["--cache-dir", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert f"{whole.dir.name}  m1 / b  post_rope bfloat16  2 samples  layers [0, 2]" in out and "complete" in out
    assert "(partly: [2])" in out


def test_remove_deletes_only_the_named_entry_and_refuses_unknown_or_locked(tmp_path, capsys):
    keep, drop = _entry(tmp_path, "m1", 2), _entry(tmp_path, "m2", 2)
    assert main(["--cache-dir", str(tmp_path), "remove", "nope"]) == 2
    assert "no cache entry named ['nope']" in capsys.readouterr().err
    with FileLock(str(drop.dir / ".lock")):
        assert main(["--cache-dir", str(tmp_path), "remove", drop.dir.name]) == 2
    assert drop.dir.exists()
    assert main(["--cache-dir", str(tmp_path), "remove", drop.dir.name]) == 0
    assert not drop.dir.exists() and keep.dir.exists()


def test_module_runs_as_a_command_with_the_configured_cache_dir(tmp_path, monkeypatch):
    _entry(tmp_path, "m1", 2)
    monkeypatch.setenv("KEYSPACE_CACHE_DIR", str(tmp_path))  # what conf/config.yaml's paths.cache_dir reads
    done = subprocess.run([sys.executable, "-m", "experiments.cache", "list"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "1 entries" in done.stdout, done.stderr
