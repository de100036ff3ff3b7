"""Real-benchmark loaders on files in the real formats: MMMU shards unchanged, MMBench-CN and -EN TSV and parquet.

The MMMU shards, the official MMMU validation answers and the official MMBench samples are copied byte for
byte under `tests/fixtures/real_samples/` (origins in its SOURCES.md). Expected prompts are written out here
from the cited conventions (see `shared/notes/benchmarks.md` §1.5 and §2.4), not computed by the loaders.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiments.benchmarks import load_samples
from experiments.benchmarks.sample import BenchmarkData, LazyImage, Sample
from experiments.config import BenchmarkConfig, JobConfig
from experiments.hub import HubError
from experiments.validation import ConfigError, check

from ..fixtures import mmbench_files as mb
from ..fixtures.mmbench_files import CIRCULAR, CORRUPT, DANGLING, REFERENCE, TEST

REAL = mb.SAMPLES.parent
MMMU_ROOT = REAL / "mmmu" / "MMMU"
MMMU = BenchmarkConfig(name="mmmu", path=str(MMMU_ROOT), split="validation", limit=None)
MMB = BenchmarkConfig(name="mmbench_cn", limit=None)
MMB_EN = BenchmarkConfig(name="mmbench_en", limit=None)


def _shard_rows() -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted(MMMU_ROOT.glob("*/*.parquet"))], ignore_index=True)


def _pixels(image: Image.Image | LazyImage) -> np.ndarray:
    return np.asarray(image.load() if isinstance(image, LazyImage) else image)


def _layout(sample: Sample) -> list[str | int]:
    """The parts with each image replaced by its rank among the sample's images (1, 2, ...)."""
    ranks = iter(range(1, len(sample.parts) + 1))
    return [p if isinstance(p, str) else next(ranks) for p in sample.parts]


def _by_id(data: BenchmarkData) -> dict[str, Sample]:
    return {s.id: s for s in data.samples}


@pytest.fixture(scope="module")
def mmmu_val() -> BenchmarkData:
    return load_samples(MMMU)


# ---------------------------------------------------------------- MMMU


def test_mmmu_reads_the_105_real_rows_with_official_answers(mmmu_val):
    dev = load_samples(replace(MMMU, split="dev"))
    assert (len(dev.samples), len(mmmu_val.samples), dev.skipped, mmmu_val.skipped) == (15, 90, [], [])
    shard = _shard_rows().set_index("id")
    assert sorted(s.id for s in dev.samples + mmmu_val.samples) == sorted(shard.index)
    official = json.loads((REAL / "mmmu" / "answer_dict_val.json").read_text())
    for s in mmmu_val.samples:
        assert s.answer == official[s.id]["ground_truth"], s.id
        assert {"open": "short-answer"}.get(s.meta["question_type"], s.meta["question_type"]) == \
            official[s.id]["question_type"]
    for s in dev.samples + mmmu_val.samples:  # every stored image decoded, RGB, none lost or added
        stored = [shard.loc[s.id, f"image_{k}"] for k in range(1, 8) if shard.loc[s.id, f"image_{k}"] is not None]
        assert len(s.images) == s.meta["n_images"] == len(stored), s.id
        for lazy, image, cell in zip(s.images, s.decoded().images, stored, strict=True):
            original = Image.open(io.BytesIO(cell["bytes"]))
            assert isinstance(image, Image.Image) and image.mode == "RGB"
            assert lazy.size == image.size == original.size
            assert np.array_equal(_pixels(image), _pixels(original.convert("RGB")))
    assert sum(Image.open(io.BytesIO(c["bytes"])).mode == "RGBA" for c in shard["image_1"]) > 0  # RGBA exercised


QUESTION = ("Baxter Company has a relevant range of production between 15,000 and 30,000 units. The following cost "
            "data represents average variable costs per unit for 25,000 units of production. If 30,000 units are "
            "produced, what are the per unit manufacturing overhead costs incurred?")
BOND = "Calculate the value of bond B shown in the following table, all of which pay interest semiannually. "


@pytest.mark.parametrize(("style", "order", "row", "expected"), [
    ("vlmevalkit", "interleaved", "validation_Accounting_1",
     ["Question: ", 1, f" {QUESTION}\nOptions:\nA. $6\nB. $7\nC. $8\nD. $9\n"
                       "Please select the correct answer from the options above. \n"]),
    ("mmmu", "images_first", "validation_Accounting_1",
     [1, f"<image 1> {QUESTION}\n(A) $6\n(B) $7\n(C) $8\n(D) $9\n\n"
         "Answer with the option's letter from the given choices directly."]),
    ("vlmevalkit", "interleaved", "validation_Finance_17", [f"Question: {BOND}", 1, "\n"]),
    ("mmmu", "images_first", "validation_Finance_17",
     [1, f"{BOND}<image 1>\nAnswer the question using a single word or phrase."]),
    ("mmmu", "interleaved", "validation_Finance_17", [BOND, 1, "\nAnswer the question using a single word or phrase."]),
], ids=["vlmevalkit-mc-interleaved", "mmmu-mc-images-first", "vlmevalkit-open-interleaved",
        "mmmu-open-images-first", "mmmu-open-interleaved"])
def test_mmmu_prompt_styles_match_the_cited_conventions(style, order, row, expected):
    cfg = replace(MMMU, subjects=[row.split("_")[1]], prompt_style=style, image_order=order)
    assert _layout(_by_id(load_samples(cfg))[row]) == expected


def test_mmmu_two_image_question_interleaves_at_placeholders():
    cfg = replace(MMMU, subjects=["Economics"])
    shard = pd.read_parquet(MMMU_ROOT / "Economics" / "validation-00000-of-00001.parquet").set_index("id")
    stored = [Image.open(io.BytesIO(shard.loc["validation_Economics_14", f"image_{k}"]["bytes"])) for k in (1, 2)]
    inter = _by_id(load_samples(cfg))["validation_Economics_14"]
    first = _by_id(load_samples(replace(cfg, image_order="images_first")))["validation_Economics_14"]
    assert [type(p).__name__ for p in inter.parts] == ["str", "LazyImage", "str", "LazyImage", "str"]
    assert inter.parts[0].endswith("demand and supply schedules are as follows: ") and "<image" not in inter.text
    assert [type(p).__name__ for p in first.parts] == ["LazyImage", "LazyImage", "str"]
    assert "follows: <image 1> Your college" in first.text and "<image 2>" in first.text
    for sample in (inter, first):
        assert [_pixels(i).tolist() for i in sample.images] == [_pixels(s.convert("RGB")).tolist() for s in stored]


def test_mmmu_bad_rows_are_skipped_with_reasons(tmp_path):
    table = pd.read_parquet(MMMU_ROOT / "Accounting" / "validation-00000-of-00001.parquet")
    table.at[0, "image_1"] = {"bytes": b"\x89PNG broken", "path": "x.png"}
    table.at[1, "options"] = "['$6', '$7'"
    table.at[2, "image_1"] = None
    table.at[3, "question"] = table.at[3, "question"] + " <image 3>"
    (tmp_path / "Accounting").mkdir()
    table.to_parquet(tmp_path / "Accounting" / "validation-00000-of-00001.parquet")
    data = load_samples(replace(MMMU, path=str(tmp_path), subjects=["Accounting"]))
    reasons = {s["sample_id"]: s["reason"] for s in data.skipped}
    assert len(data.samples) == 26 and list(reasons) == [f"validation_Accounting_{i}" for i in (1, 2, 3, 4)]
    assert "corrupt image" in reasons["validation_Accounting_1"]
    assert "unparsable options" in reasons["validation_Accounting_2"]
    assert "missing image" in reasons["validation_Accounting_3"]
    assert "<image 3>" in reasons["validation_Accounting_4"]


def test_limit_is_a_seeded_selection_in_benchmark_order(mmmu_val):
    order = [s.id for s in mmmu_val.samples]
    picks = [[s.id for s in load_samples(replace(MMMU, limit=7, seed=seed)).samples] for seed in (0, 0, 1)]
    assert picks[0] == picks[1] != picks[2] and len(picks[0]) == 7
    assert picks[0] == sorted(picks[0], key=order.index)
    with pytest.raises(ConfigError, match="benchmark.limit=0: use an integer >= 1"):
        _check(replace(MMMU, limit=0))


@pytest.mark.parametrize(("cfg", "match"), [
    (replace(MMMU, prompt_style="lmms"), r"benchmark.prompt_style='lmms': use one of vlmevalkit, mmmu"),
    (replace(MMMU, image_order="last"), "benchmark.image_order='last': use one of interleaved, images_first"),
    (replace(MMMU, subjects=["Acounting"]), "benchmark.subjects=.*'Acounting' is not valid.*Accounting"),
    (replace(MMB, path=str(REAL), prompt_style="qwen"), r"benchmark.prompt_style='qwen'.*vlmevalkit, llava"),
    (replace(MMB_EN, path=str(REAL), prompt_style="qwen"), r"benchmark.prompt_style='qwen'.*vlmevalkit, llava"),
], ids=["mmmu-style", "mmmu-image-order", "mmmu-subject", "mmbench-style", "mmbench_en-style"])
def test_unknown_choices_list_the_valid_ones(cfg, match):
    with pytest.raises(ConfigError, match=match):
        _check(cfg)


def _check(benchmark: BenchmarkConfig) -> None:
    """The schema check of the benchmark fields, as a job runs it before loading anything."""
    check(benchmark, "benchmark.", JobConfig(benchmark=benchmark))


def test_explicit_subject_without_shard_fails_clearly():
    with pytest.raises(FileNotFoundError, match=r"Math"):
        load_samples(replace(MMMU, subjects=["Math"]))


@pytest.mark.parametrize("cfg", [replace(MMMU, path="MMMU/MMMU"), replace(MMB, path="lmms-lab/MMBench_CN"),
                                 replace(MMB_EN, path="lmms-lab/MMBench_EN")], ids=["mmmu", "mmbench_cn", "mmbench_en"])
def test_offline_hub_id_gives_an_actionable_error(cfg, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubError, match=r"benchmark\.path=.*HF_HUB_OFFLINE is set") as info:
        load_samples(cfg)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# ---------------------------------------------------------------- MMBench-CN

Q_812, OPTIONS_812 = "这张图片最符合哪个场景类别？", "A. 岩石拱门\nB. 火车内部\nC. 店面\nD. 办公室隔间\n"
HINT_318 = "下面的图表是两种溶液的模型。每个绿色的球代表一颗溶质粒子。"
Q_318 = "哪个溶液中绿色颗粒的浓度更高？"
OPTIONS_318 = ["都不是；它们的浓度相同", "溶液 B", "溶液 A"]
PROMPTS = {
    ("vlmevalkit", "318"): f"Hint: {HINT_318}\nQuestion: {Q_318}\nOptions:\nA. {OPTIONS_318[0]}\nB. {OPTIONS_318[1]}\n"
                           f"C. {OPTIONS_318[2]}\nPlease select the correct answer from the options above. \n",
    ("vlmevalkit", "812"): f"Question: {Q_812}\nOptions:\n{OPTIONS_812}"
                           "Please select the correct answer from the options above. \n",
    ("llava", "318"): f"{HINT_318}\n{Q_318}\nA. {OPTIONS_318[0]}\nB. {OPTIONS_318[1]}\nC. {OPTIONS_318[2]}\n"
                      "请直接回答选项字母。",
    ("llava", "812"): f"{Q_812}\n{OPTIONS_812}请直接回答选项字母。",
}


@pytest.fixture(scope="module")
def mmbench_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mmbench")
    folder = mb.write_hf_parquet(root / "MMBench_CN")
    return {"tsv": str(mb.write_tsv(root / "MMBench_DEV_CN.tsv")), "hf-folder": str(folder),
            "parquet-file": str(next((folder / "data").glob("dev-*.parquet")))}


@pytest.fixture(scope="module")
def mmbench_tsv(mmbench_paths) -> BenchmarkData:
    return load_samples(replace(MMB, path=mmbench_paths["tsv"]))


def test_mmbench_tsv_resolves_references_drops_copies_and_skips_bad_rows(mmbench_tsv, mmbench_paths):
    samples = _by_id(mmbench_tsv)
    real = [r for r in mb.rows() if r["index"] < 4000]
    assert len(samples) == 21 and set(samples) == {str(r["index"]) for r in real} | {str(REFERENCE)}
    assert mmbench_tsv.skipped == [{"sample_id": str(CORRUPT), "reason": mmbench_tsv.skipped[0]["reason"]},
                                   {"sample_id": str(DANGLING), "reason": mmbench_tsv.skipped[1]["reason"]}]
    assert "corrupt image" in mmbench_tsv.skipped[0]["reason"] and "424242" in mmbench_tsv.skipped[1]["reason"]
    for row in real:  # real JPEG pixels, Chinese text, gold letter, metadata
        sample = samples[str(row["index"])]
        jpeg = Image.open(io.BytesIO(row["image"])).convert("RGB")
        assert isinstance(sample.parts[0], LazyImage) and np.array_equal(_pixels(sample.parts[0]), _pixels(jpeg))
        assert row["question"] in sample.text and sample.answer == row["answer"]
        assert (sample.meta["category"], sample.meta["l2_category"]) == (row["category"], row["l2-category"])
    assert np.array_equal(_pixels(samples[str(REFERENCE)].images[0]), _pixels(samples["318"].images[0]))
    assert [s.id for s in mmbench_tsv.samples] == [str(r["index"]) for r in mb.rows()
                                                   if r["index"] < 4000 or r["index"] == REFERENCE]
    kept = _by_id(load_samples(replace(MMB, path=mmbench_paths["tsv"], drop_circular=False)))
    assert kept[str(CIRCULAR)].meta["question_index"] == 318 and kept[str(CIRCULAR)].text.startswith("Hint: ")
    assert "A. 溶液 B\nB. 溶液 A\nC. 都不是" in kept[str(CIRCULAR)].text
    test = load_samples(replace(MMB, path=mmbench_paths["tsv"], split="test"))
    assert [(s.id, s.answer, s.meta["split"]) for s in test.samples] == [(str(TEST), None, "test")]


@pytest.mark.parametrize("form", ["hf-folder", "parquet-file"])
def test_mmbench_parquet_loads_to_the_same_samples(form, mmbench_paths, mmbench_tsv):
    data = load_samples(replace(MMB, path=mmbench_paths[form]))
    assert [s["sample_id"] for s in data.skipped] == [str(CORRUPT)]
    assert [(s.id, s.parts[1], s.answer, s.meta) for s in data.samples] == \
        [(s.id, s.parts[1], s.answer, s.meta) for s in mmbench_tsv.samples]
    for ours, theirs in zip(data.samples, mmbench_tsv.samples, strict=True):
        assert np.array_equal(_pixels(ours.images[0]), _pixels(theirs.images[0]))


@pytest.mark.parametrize(("style", "index"), list(PROMPTS), ids=[f"{s}-{i}" for s, i in PROMPTS])
def test_mmbench_prompt_styles_match_the_cited_conventions(style, index, mmbench_paths):
    sample = _by_id(load_samples(replace(MMB, path=mmbench_paths["hf-folder"], prompt_style=style)))[index]
    assert isinstance(sample.parts[0], LazyImage) and sample.parts[1:] == (PROMPTS[style, index],)


# ---------------------------------------------------------------- MMBench (English)

Q_812_EN, OPTIONS_812_EN = ("Which scene category matches this image the best?",
                            "A. rock_arch\nB. train_interior\nC. shopfront\nD. office_cubicles\n")
HINT_318_EN = "The diagram below is a model of two solutions. Each green ball represents one particle of solute."
Q_318_EN = "Which solution has a higher concentration of green particles?"
OPTIONS_318_EN = ["neither; their concentrations are the same", "Solution B", "Solution A"]
ENGLISH_INSTRUCTION = "Answer with the option's letter from the given choices directly."  # LLaVA --lang en
PROMPTS_EN = {
    ("vlmevalkit", "318"): f"Hint: {HINT_318_EN}\nQuestion: {Q_318_EN}\nOptions:\nA. {OPTIONS_318_EN[0]}\n"
                           f"B. {OPTIONS_318_EN[1]}\nC. {OPTIONS_318_EN[2]}\n"
                           "Please select the correct answer from the options above. \n",
    ("vlmevalkit", "812"): f"Question: {Q_812_EN}\nOptions:\n{OPTIONS_812_EN}"
                           "Please select the correct answer from the options above. \n",
    ("llava", "318"): f"{HINT_318_EN}\n{Q_318_EN}\nA. {OPTIONS_318_EN[0]}\nB. {OPTIONS_318_EN[1]}\n"
                      f"C. {OPTIONS_318_EN[2]}\n{ENGLISH_INSTRUCTION}",
    ("llava", "812"): f"{Q_812_EN}\n{OPTIONS_812_EN}{ENGLISH_INSTRUCTION}",
}


@pytest.fixture(scope="module")
def mmbench_en_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """MMBench_DEV_EN.tsv, the lmms-lab/MMBench_EN folder and one of its files, and an lmms-lab/MMBench snapshot
    holding both languages (cn/ and en/)."""
    root = tmp_path_factory.mktemp("mmbench_en")
    folder = mb.write_hf_parquet(root / "MMBench_EN", "lmms-lab/MMBench_EN")
    both = mb.write_hf_parquet(mb.write_hf_parquet(root / "MMBench", "lmms-lab/MMBench:cn"), "lmms-lab/MMBench:en")
    return {"tsv": str(mb.write_tsv(root / "MMBench_DEV_EN.tsv", "en")), "hf-folder": str(folder),
            "parquet-file": str(next((folder / "data").glob("dev-*.parquet"))), "multi-language-folder": str(both)}


@pytest.mark.parametrize("form", ["tsv", "hf-folder", "parquet-file", "multi-language-folder"])
def test_mmbench_en_reads_the_english_questions_of_the_same_rows(form, mmbench_en_paths, mmbench_tsv):
    data = load_samples(replace(MMB_EN, path=mmbench_en_paths[form]))
    assert [s["sample_id"] for s in data.skipped] == [str(CORRUPT)] + ([str(DANGLING)] if form == "tsv" else [])
    english = {str(r["index"]): r for r in mb.rows("en")}
    assert [s.id for s in data.samples] == [s.id for s in mmbench_tsv.samples]  # CN and EN share `index`
    for ours, chinese in zip(data.samples, mmbench_tsv.samples, strict=True):
        row = english[ours.id]
        assert ours.text.startswith("Question: " if row["hint"] is None else f"Hint: {row['hint']}\n")
        assert f"Question: {row['question']}\n" in ours.text and chinese.text != ours.text
        assert ours.meta == chinese.meta and ours.answer == chinese.answer  # category, l2_category, split, index
        assert np.array_equal(_pixels(ours.images[0]), _pixels(chinese.images[0]))


def test_mmbench_en_hub_layouts_keep_their_spelling_and_index_type(mmbench_en_paths):
    """lmms-lab/MMBench_EN spells `l2-category` in lower case; lmms-lab/MMBench `en` stores `index` as a string."""
    single = pd.read_parquet(mmbench_en_paths["parquet-file"])
    multi = pd.read_parquet(next((Path(mmbench_en_paths["multi-language-folder"]) / "en").glob("dev-*.parquet")))
    assert "l2-category" in single.columns and "L2-category" not in single.columns
    assert multi["index"].map(type).eq(str).all() and "L2-category" in multi.columns
    for form in ("parquet-file", "multi-language-folder"):
        samples = _by_id(load_samples(replace(MMB_EN, path=mmbench_en_paths[form])))
        assert samples["318"].meta["index"] == 318 and samples["318"].meta["question_index"] == 318
        assert samples["318"].meta["l2_category"] == "finegrained_perception (cross-instance)"


def test_multi_language_snapshot_gives_each_benchmark_its_language(mmbench_en_paths, mmbench_tsv):
    chinese = load_samples(replace(MMB, path=mmbench_en_paths["multi-language-folder"]))
    assert [(s.id, s.parts[1]) for s in chinese.samples] == [(s.id, s.parts[1]) for s in mmbench_tsv.samples]


@pytest.mark.parametrize(("style", "index"), list(PROMPTS_EN), ids=[f"{s}-{i}" for s, i in PROMPTS_EN])
def test_mmbench_en_prompt_styles_match_the_cited_conventions(style, index, mmbench_en_paths):
    sample = _by_id(load_samples(replace(MMB_EN, path=mmbench_en_paths["hf-folder"], prompt_style=style)))[index]
    assert isinstance(sample.parts[0], LazyImage) and sample.parts[1:] == (PROMPTS_EN[style, index],)
    assert "请" not in sample.parts[1]  # no Chinese scaffolding left in the English prompt


def test_yaml_defaults_are_the_paper_protocol():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import JobConfig, register_configs

    from ..conftest import REPO

    register_configs()
    jobs = {}
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for name in ("mmbench_cn", "mmbench_en", "mmmu"):
            cfg = compose(config_name="config", overrides=["paths.cache_dir=/tmp/x", f"benchmark={name}"])
            jobs[name] = OmegaConf.to_object(cfg)
    assert all(isinstance(j, JobConfig) for j in jobs.values())
    mmb, mmb_en, mmmu = jobs["mmbench_cn"].benchmark, jobs["mmbench_en"].benchmark, jobs["mmmu"].benchmark
    assert (mmb.path, mmb.split, mmb.limit, mmb.prompt_style, mmb.drop_circular) == \
        ("lmms-lab/MMBench_CN", "dev", None, "vlmevalkit", True)
    assert (mmb_en.name, mmb_en.path, mmb_en.split, mmb_en.limit, mmb_en.prompt_style, mmb_en.drop_circular) == \
        ("mmbench_en", "lmms-lab/MMBench_EN", "dev", None, "vlmevalkit", True)
    assert (mmmu.path, mmmu.split, mmmu.subjects, mmmu.limit, mmmu.prompt_style, mmmu.image_order) == \
        ("MMMU/MMMU", "validation", None, None, "vlmevalkit", "interleaved")
