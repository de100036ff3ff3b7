"""Images are decoded per batch at extraction, never by the loaders (DESIGN "Memory: select, then read").

Loading a benchmark and bucketing its samples decodes no pixel (counted at PIL's `Image.load`, which every
decode and every drawing goes through); `_prepare`, the DataLoader collate function, decodes one batch and
skips a sample whose image fails to decode, with the reason.
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiments.benchmarks import load_samples
from experiments.benchmarks.sample import BenchmarkData, LazyImage
from experiments.config import BenchmarkConfig
from experiments.keys.extract import _buckets, _prepare

from ..fixtures import mmbench_files as mb

MMMU_ROOT = mb.SAMPLES.parent / "mmmu" / "MMMU"
MMMU = BenchmarkConfig(name="mmmu", path=str(MMMU_ROOT), split="validation", subjects=["Accounting"], limit=None)
ACCOUNTING = MMMU_ROOT / "Accounting" / "validation-00000-of-00001.parquet"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Sizes of the PIL images whose pixels were loaded (decoded or drawn) since the fixture started."""
    Image.init()  # import every PIL plugin now: one (Palm) draws a prototype image on import
    calls: list[tuple[int, int]] = []
    load = Image.Image.load

    def counted(image: Image.Image):
        calls.append(image.size)
        return load(image)

    monkeypatch.setattr(Image.Image, "load", counted)
    return calls


def _loaded(name: str, tmp_path) -> BenchmarkData:
    if name == "synthetic":
        return load_samples(BenchmarkConfig(name="synthetic", limit=64, style="mixed", seed=3))
    if name == "mmmu":
        return load_samples(MMMU)
    return load_samples(BenchmarkConfig(name="mmbench_cn", path=str(mb.write_tsv(tmp_path / "dev.tsv")), limit=None))


@pytest.mark.parametrize("name", ["synthetic", "mmmu", "mmbench_cn"])
def test_loading_and_bucketing_decode_nothing(name, tmp_path, decodes):
    data = _loaded(name, tmp_path)
    batches = _buckets(list(enumerate(data.samples)), batch_size=4)
    assert decodes == []
    assert sum(map(len, batches)) == len(data.samples) > 1
    assert all(isinstance(i, LazyImage) for s in data.samples for i in s.images)
    sample = data.samples[0]
    decoded = pickle.loads(pickle.dumps(sample)).decoded()  # as a spawned DataLoader worker gets it
    assert [i.size for i in decoded.images] == [i.size for i in sample.images] and decodes  # the counter works
    for lazy, image in zip(sample.images, decoded.images, strict=True):
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(lazy.load()))


class _Adapter:
    """Stands in for a `ModelAdapter`: records the samples the processor is run on."""

    def __init__(self) -> None:
        self.seen: list = []

    def model_inputs(self, processor, samples, offsets=False):
        self.seen.append(samples)
        return {"rows": len(samples), "offset_mapping": None}

    def content_mask(self, processor, samples, inputs):
        return [True] * len(samples)


def test_image_failing_full_decode_is_skipped_at_extraction_with_reason(tmp_path):
    table = pd.read_parquet(ACCOUNTING)
    cell = table.at[0, "image_1"]
    table.at[0, "image_1"] = {**cell, "bytes": cell["bytes"][:len(cell["bytes"]) // 2]}  # header intact
    (tmp_path / "Accounting").mkdir()
    table.to_parquet(tmp_path / "Accounting" / ACCOUNTING.name)
    samples = load_samples(replace(MMMU, path=str(tmp_path))).samples
    assert samples[0].id == "validation_Accounting_1"  # the header check lets it through
    batch = list(enumerate(samples[:3]))
    adapter = _Adapter()
    kept, inputs, skipped = _prepare(adapter, None, batch)
    assert kept == batch[1:] and inputs == {"rows": len(batch) - 1, "is_content": [True] * (len(batch) - 1)}
    assert [s.id for s in adapter.seen[0]] == [s.id for _, s in batch[1:]]
    assert all(isinstance(i, Image.Image) for s in adapter.seen[0] for i in s.images)
    assert [entry["sample_id"] for entry in skipped] == ["validation_Accounting_1"]
    assert "image 1 of 1: corrupt image bytes (OSError: image file is truncated" in skipped[0]["reason"]
    assert _prepare(adapter, None, batch[:1]) == ([], None, skipped)
    assert len(adapter.seen) == 1, "the processor never runs on an empty batch"


@pytest.mark.parametrize("size", [16, 17], ids=["too-small", "smallest"])
def test_synthetic_image_size_is_checked_where_the_digit_fits(size):
    """16 px passed the old check and then crashed while drawing; now it is refused, and 17 px draws."""
    from experiments.benchmarks.synthetic import synthetic_samples
    from experiments.config import JobConfig
    from experiments.validation import ConfigError, check

    cfg = BenchmarkConfig(name="synthetic", limit=8, image_size=size)
    if size == 16:
        with pytest.raises(ConfigError, match="benchmark.image_size=16: use an integer >= 17"):
            check(cfg, "benchmark.", JobConfig(benchmark=cfg))
    else:
        assert all(s.decoded().images[0].size == (17, 17) for s in synthetic_samples(cfg).samples)
