"""MMBench loader (`benchmark=mmbench_cn`, `mmbench_en`): one image-first sample per question, in a cited prompt
convention.

Both languages of MMBench v1.0 share one schema and one loader; what differs is data (`LANGUAGES`): the hub copy,
the language's folder in the multi-language hub copy, and LLaVA's answer instruction. CN and EN share `index`
values and images. Reads either distribution (facts and citations in `shared/notes/benchmarks.md` §1):

- VLMEvalKit TSV (`MMBench_DEV_CN.tsv`, `MMBench_DEV_EN.tsv`, read as `pd.read_csv(path, sep="\\t")`): columns
  index, question, hint, A-D, answer, category, image, source, l2-category, comment, split. `image` is a base64
  JPEG, or, when it has at most 64 characters, the `index` of another row whose image it reuses
  (VLMEvalKit@e8e78f0:`vlmeval/dataset/image_base.py:162-170`).
- Hugging Face parquet: `lmms-lab/MMBench_CN` / `lmms-lab/MMBench_EN` (`data/<split>-*.parquet`) or
  `lmms-lab/MMBench` (`cn/<split>-*.parquet`, `en/...`): the same fields, the image as a `struct<bytes, path>`,
  the level-2 category spelt `L2-category` (`l2-category` in MMBench_EN), `index` an integer (a string in
  `lmms-lab/MMBench` `en`), missing values possibly the string "nan".

`benchmark.path` is a .tsv file, a .parquet file, a folder in one of the hub layouts, or a hub id (only the split's
files of the language are fetched). Rows of another split (the `split` column) are left out; CircularEval copies
(index >= 1e6, rotated options of question `index % 1e6`) are dropped when `benchmark.drop_circular`. None, NaN,
"nan" and "none" are missing values (LLaVA `is_none`,
haotian-liu/LLaVA@c121f04:`llava/eval/model_vqa_mmbench.py:33-44`). A row with a missing image, image bytes PIL
cannot identify, or a dangling index reference is skipped and reported. Images stay encoded (`LazyImage`) until
extraction decodes them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from experiments.benchmarks.images import (
    SkipRow,
    collect,
    image_from_cell,
    read_table,
    resolve_path,
    snapshot_commit,
    utf8,
)
from experiments.benchmarks.sample import BenchmarkData, LazyImage, Sample
from experiments.config import BenchmarkConfig

OPTION_LETTERS = "ABCDE"  # MMBench has 2-4 options; toolkits also probe E
CIRCULAR_OFFSET = 1_000_000  # CircularEval copies have index >= 1e6 (VLMEvalKit `multiple_choice.py:521`)
REFERENCE_MAX_CHARS = 64  # an image string this short is another row's index (`image_base.py:162-170`)


@dataclass(frozen=True)
class Language:
    """What tells MMBench-CN and MMBench-EN apart; everything else (schema, prompts' layout) is shared."""

    hub_id: str  # the Hugging Face copy read when benchmark.path is unset
    folder: str  # the language's folder in the multi-language copy `lmms-lab/MMBench` (`<folder>/<split>-*.parquet`)
    instruction: str  # LLaVA's answer instruction (`model_vqa_mmbench.py` `--lang`, VLMEvalKit `LLaVA.build_prompt`)


LANGUAGES: dict[str, Language] = {  # benchmark name -> its language
    "mmbench_cn": Language("lmms-lab/MMBench_CN", "cn", "请直接回答选项字母。"),
    "mmbench_en": Language("lmms-lab/MMBench_EN", "en",
                           "Answer with the option's letter from the given choices directly."),
}


def vlmevalkit_prompt(question: str, hint: str | None, options: dict[str, str], language: Language) -> str:
    """VLMEvalKit's default MCQ prompt, the same English scaffolding in every language; the image goes first.

    Source: open-compass/VLMEvalKit@e8e78f0:`vlmeval/dataset/image_mcq.py:212-248`
    (`ImageMCQDataset.build_prompt`), the prompt VLMEvalKit's Qwen2.5-VL-7B config gets
    (`vlmeval/config.py:2004-2010`, `use_custom_prompt=False`).
    """
    prompt = f"Hint: {hint}\n" if hint is not None else ""
    prompt += f"Question: {question}\n"
    if options:
        prompt += "Options:\n" + "".join(f"{letter}. {text}\n" for letter, text in options.items())
        prompt += "Please select the correct answer from the options above. \n"
    return prompt


def llava_prompt(question: str, hint: str | None, options: dict[str, str], language: Language) -> str:
    """LLaVA-1.5's MMBench prompt: hint, question, options, the language's answer instruction; the image goes first.

    The model's template adds the `<image>\\n` slot before this text. Sources:
    haotian-liu/LLaVA@c121f04:`llava/eval/model_vqa_mmbench.py:71-101` with `--single-pred-prompt` and `--lang cn`
    (`scripts/v1_5/eval/mmbench_cn.sh`) or the default `--lang en` (`mmbench.sh`), and the same strings in
    VLMEvalKit@e8e78f0:`vlmeval/vlm/llava/llava.py:86-126` (`LLaVA.build_prompt`: the Chinese instruction when the
    text is Chinese, else the English one).
    """
    text = question if hint is None else f"{hint}\n{question}"
    text += "".join(f"\n{letter}. {option}" for letter, option in options.items())
    return f"{text}\n{language.instruction}"


Style = Callable[[str, str | None, dict[str, str], Language], str]
PROMPT_STYLES: dict[str, Style] = {
    "vlmevalkit": vlmevalkit_prompt,
    "llava": llava_prompt,
}


def mmbench_samples(cfg: BenchmarkConfig) -> BenchmarkData:
    """The MMBench samples of `cfg.split` in the language of `cfg.name` (module docstring), at most `cfg.limit`.

    Each sample is `Sample(id=str(index), parts=(image, prompt), answer=letter or None, meta)`, meta holding
    index, question_index (`index % 1e6`), category, l2_category, source, split.

    Raises:
        ValueError: no row of `cfg.split`.
        FileNotFoundError: `cfg.path` does not exist locally and cannot be fetched from the hub.
    """
    language = LANGUAGES[cfg.name]
    style = PROMPT_STYLES[cfg.prompt_style]
    table, images, commit = _read(cfg.path or language.hub_id, cfg.revision, cfg.split, language)
    if cfg.drop_circular:
        table = table[table["index"] < CIRCULAR_OFFSET]
    rows = table.to_dict("records")
    return collect([str(row["index"]) for row in rows], lambda i: _sample(rows[i], images, style, language),
                   cfg.limit, cfg.seed, commit)


def is_missing(value: object) -> bool:
    """LLaVA's `is_none`: None, NaN, "nan" and "none" (any case) are missing; so are pandas' NA and ""."""
    if isinstance(value, str):
        return value.strip().lower() in ("", "nan", "none")
    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def _read(path: str, revision: str | None, split: str, language: Language
          ) -> tuple[pd.DataFrame, dict[int, object], str | None]:
    """The rows of `split` with integer `index` and `l2-category`, the image of every row by index, and the hub
    commit read (None for a local copy)."""
    patterns = [f"data/{split}-*.parquet", f"{language.folder}/{split}-*.parquet"]  # single / multi-language copy
    source = resolve_path(path, patterns, revision)
    if source.is_dir():
        files = next((found for pattern in patterns if (found := sorted(source.glob(pattern)))), [])
        if not files:
            raise FileNotFoundError(f"{source} has no {' or '.join(patterns)} (the {language.hub_id} or "
                                    f"lmms-lab/MMBench layout); point benchmark.path at such a folder, a .parquet "
                                    "file or a VLMEvalKit .tsv")
        table = pd.concat([read_table(f) for f in files], ignore_index=True)
    else:
        table = read_table(source)  # a TSV is read as text: options such as "1" stay text
    table = table.rename(columns={"L2-category": "l2-category"})
    table["index"] = table["index"].astype(int)  # a string in lmms-lab/MMBench `en`
    images = dict(zip(table["index"], table["image"], strict=True))  # before the split filter: references
    if "split" in table.columns:
        present = sorted(table["split"].dropna().unique().tolist())
        table = table[table["split"] == split]
        if table.empty:
            raise ValueError(f"{source}: no row with split={split!r}; splits present: {present}")
    return table, images, snapshot_commit(source)


def _sample(row: Mapping[str, object], images: Mapping[int, object], style: Style, language: Language) -> Sample:
    index = int(str(row["index"]))
    image = _image(row["image"], images)
    if is_missing(row.get("question")):
        raise SkipRow("missing question")
    hint = None if is_missing(row.get("hint")) else utf8(row["hint"], "hint")
    options = {letter: utf8(row[letter], f"option {letter}") for letter in OPTION_LETTERS
               if not is_missing(row.get(letter))}
    answer = row.get("answer")
    meta: dict[str, int | str | None] = {"index": index, "question_index": index % CIRCULAR_OFFSET}
    meta |= {key: None if is_missing(row.get(column)) else str(row[column])
             for key, column in (("category", "category"), ("l2_category", "l2-category"),
                                 ("source", "source"), ("split", "split"))}
    return Sample(id=str(index), parts=(image, style(utf8(row["question"], "question"), hint, options, language)),
                  answer=None if is_missing(answer) else str(answer).strip(), meta=meta)


def _image(value: object, images: Mapping[int, object]) -> LazyImage:
    """The image of a TSV base64 string (following one short index reference) or of a parquet image cell."""
    if not isinstance(value, str):
        return image_from_cell(value)
    if len(value) <= REFERENCE_MAX_CHARS:
        target = images.get(int(value)) if value.strip().isdigit() else None
        if not isinstance(target, str) or len(target) <= REFERENCE_MAX_CHARS:
            raise SkipRow(f"image refers to index {value!r}, which holds no image")
        value = target
    try:
        data = base64.b64decode(value)  # as VLMEvalKit `decode_base64_to_image`
    except (binascii.Error, ValueError):
        raise SkipRow("corrupt image (invalid base64)") from None
    return LazyImage.from_bytes(data)
