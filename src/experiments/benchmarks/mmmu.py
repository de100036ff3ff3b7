"""MMMU loader (`benchmark=mmmu`): one sample per question, images placed as configured, a cited prompt convention.

Reads the Hugging Face `MMMU/MMMU` per-subject shards `<Subject>/<split>-*.parquet` (schema and citations in
`shared/notes/benchmarks.md` §2) from `benchmark.path`, a local folder with one subfolder per subject or the
hub id. Subjects are `benchmark.subjects` or all 30; with all 30 and a local folder, absent subjects are
logged and left out. Columns: id, question (with `<image k>` placeholders), options (a Python list literal,
parsed with `ast.literal_eval`; "[]" for open questions), image_1..image_7 (`struct<bytes, path>` PNG, often
RGBA -> RGB), answer ("?" in test), question_type ("multiple-choice" | "open"), subfield, ...

`benchmark.image_order` places the images:
- `interleaved`: the text is cut at each `<image k>` of question and options and image k stands there, the
  placeholder removed; a row with an image no placeholder names is skipped (it has no place), and text without
  placeholders gets all images first. This is VLMEvalKit's `MMMUDataset.split_MMMU`
  (VLMEvalKit@e8e78f0:`vlmeval/dataset/image_mcq.py:515-540`), which drops such images silently.
- `images_first`: every image of the row, in k order, then the text with the literal `<image k>` kept, as the
  official MMMU script (which passes `image_1` only), lmms-eval's simple models, VLMEvalKit's LLaVA and Qwen's
  own MMMU eval do.
Rows with unparsable options, a missing image or one PIL cannot identify, a placeholder without its image, text
that is not valid UTF-8, or a repeated id are skipped; a shard that cannot be read fails with its file name.
Images stay encoded (`LazyImage`) until extraction decodes them.
"""

from __future__ import annotations

import ast
import logging
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path

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

log = logging.getLogger(__name__)

HUB_ID = "MMMU/MMMU"
SUBJECTS = (  # the 30 configs of MMMU/MMMU (MMMU-Benchmark/MMMU@bb0b95a:`mmmu/utils/data_utils.py:9-16`)
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
    "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance",
    "Geography", "History", "Literature", "Manage", "Marketing", "Materials", "Math", "Mechanical_Engineering",
    "Music", "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology",
)
MAX_IMAGES = 7  # image_1 .. image_7
PLACEHOLDER = re.compile(r"<image (\d+)>")
IMAGE_ORDERS = ("interleaved", "images_first")


def vlmevalkit_prompt(question: str, options: list[str], open_question: bool) -> str:
    """VLMEvalKit's default MCQ prompt for MMMU (no option list when there are no options).

    Source: open-compass/VLMEvalKit@e8e78f0:`vlmeval/dataset/image_mcq.py:212-248` (`ImageMCQDataset.build_prompt`,
    used by `MMMUDataset.build_prompt`, `:515-540`); what VLMEvalKit's Qwen2.5-VL-7B config gets.
    """
    prompt = f"Question: {question}\n"
    if options:
        prompt += "Options:\n" + "".join(f"{letter}. {text}\n" for letter, text in zip(string.ascii_uppercase,
                                                                                      options, strict=False))
        prompt += "Please select the correct answer from the options above. \n"
    return prompt


def mmmu_prompt(question: str, options: list[str], open_question: bool) -> str:
    """The official MMMU prompt (`(A) opt` lines, then the direct-answer instruction).

    Source: MMMU-Benchmark/MMMU@bb0b95a:`mmmu/utils/data_utils.py:136-176` (`construct_prompt`) with
    `mmmu/configs/llava1.5.yaml`, whose folded formats are "{}\\n{}\\nAnswer with the option's letter from the
    given choices directly." (multiple choice, each option line ending in "\\n") and
    "{}\\nAnswer the question using a single word or phrase." (open).
    """
    if open_question:
        return f"{question}\nAnswer the question using a single word or phrase."
    lines = "".join(f"({letter}) {text}\n" for letter, text in zip(string.ascii_uppercase, options, strict=False))
    return f"{question}\n{lines}\nAnswer with the option's letter from the given choices directly."


PROMPT_STYLES: dict[str, Callable[[str, list[str], bool], str]] = {
    "vlmevalkit": vlmevalkit_prompt,
    "mmmu": mmmu_prompt,
}


def mmmu_samples(cfg: BenchmarkConfig) -> BenchmarkData:
    """The MMMU samples of `cfg.split` over the chosen subjects (see the module docstring), at most `cfg.limit`.

    Each sample is `Sample(id=row id, parts=text and images in reading order, answer, meta)`, `answer` being the
    letter, the free-text answer of an open question, or None for the test split's "?".

    Raises:
        FileNotFoundError: `cfg.path` does not exist locally and cannot be fetched from the hub, or a chosen
            subject has no shard (or none has).
    """
    subjects = list(cfg.subjects or SUBJECTS)
    root = resolve_path(cfg.path or HUB_ID, [f"{s}/{cfg.split}-*.parquet" for s in subjects], cfg.revision)
    rows = _read(root, subjects, cfg.split, every_subject=not cfg.subjects)
    style, interleave = PROMPT_STYLES[cfg.prompt_style], cfg.image_order == "interleaved"
    return collect([str(row["id"]) for row in rows], lambda i: _sample(rows[i], style, interleave, cfg.split),
                   cfg.limit, cfg.seed, snapshot_commit(root))


def _read(root: Path, subjects: list[str], split: str, every_subject: bool) -> list[dict]:
    """Rows of every subject's `split` shards, in subject then file order, each with its `subject`."""
    rows: list[dict] = []
    missing = []
    for subject in subjects:
        files = sorted((root / subject).glob(f"{split}-*.parquet"))
        if not files:
            missing.append(subject)
        for file in files:
            rows += read_table(file).assign(subject=subject).to_dict("records")
    if missing and (not every_subject or len(missing) == len(subjects)):
        raise FileNotFoundError(f"{root}: no {split}-*.parquet shard for subjects {missing}; benchmark.path must "
                                f"be the MMMU/MMMU folder with one subfolder per subject")
    if missing:
        log.warning("MMMU %s: %d of %d subjects have no shard under %s and are left out: %s",
                    split, len(missing), len(subjects), root, missing)
    return rows


def _sample(row: Mapping[str, object], style: Callable[[str, list[str], bool], str], interleave: bool,
            split: str) -> Sample:
    try:
        options = ast.literal_eval(str(row["options"]))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise SkipRow(f"unparsable options {str(row['options'])[:80]!r}") from None
    if not isinstance(options, list | tuple):
        raise SkipRow(f"options are not a list: {str(row['options'])[:80]!r}")
    images = {k: image_from_cell(row[f"image_{k}"]) for k in range(1, MAX_IMAGES + 1)
              if row.get(f"image_{k}") is not None}
    if not images:
        raise SkipRow("missing image")
    text = style(utf8(row["question"], "question"), [utf8(o, "options") for o in options],
                 row.get("question_type") == "open")
    placeholders = {int(k) for k in PLACEHOLDER.findall(text)}
    if named := sorted(placeholders - set(images)):
        raise SkipRow(f"the text names <image {named[0]}> but image_{named[0]} is empty")
    if interleave and placeholders and (unnamed := sorted(set(images) - placeholders)):
        raise SkipRow(f"image_{unnamed[0]} has no <image {unnamed[0]}> placeholder in the text, so it has no place "
                      f"(benchmark.image_order=images_first keeps every image)")
    parts: tuple[str | LazyImage, ...] = (
        _interleaved(text, images) if interleave else (*(images[k] for k in sorted(images)), text))
    answer = str(row["answer"]).strip()
    meta = {key: row.get(key) for key in ("subject", "subfield", "question_type", "topic_difficulty", "img_type")}
    meta |= {"split": split, "n_images": sum(isinstance(p, LazyImage) for p in parts)}
    return Sample(id=str(row["id"]), parts=parts, answer=None if answer in ("", "?") else answer, meta=meta)


def _interleaved(text: str, images: Mapping[int, LazyImage]) -> tuple[str | LazyImage, ...]:
    """`split_MMMU`: image k where each `<image k>` stands, the placeholder removed; no placeholder: images first."""
    if not PLACEHOLDER.search(text):
        return (*(images[k] for k in sorted(images)), text)
    parts: list[str | LazyImage] = []
    start = 0
    for match in PLACEHOLDER.finditer(text):
        parts += [text[start:match.start()], images[int(match.group(1))]]
        start = match.end()
    parts.append(text[start:])
    return tuple(p for p in parts if not isinstance(p, str) or p)
