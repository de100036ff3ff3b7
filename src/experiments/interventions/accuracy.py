"""Benchmark accuracy by option likelihood: one forward over the prompt, the option letters' next-token logits.

Contract. `option_letters(sample)` reads the options a sample's prompt offers: the run of lines that start
with consecutive letters A, B, C, ... as `A. ` (VLMEvalKit, LLaVA, synthetic) or `(A) ` (the official MMMU
prompt), the last such run in the text (a hint cannot shadow the option list). A sample is scored when it
has options and a gold letter among them; open MMMU questions (`meta.question_type == "open"`) and samples
without options or gold letter are skipped, and the caller counts them (`skip_reason`).

`letter_token_ids(tokenizer, letters)` gives each letter's single-token spellings, bare and after a space
(`"A"`, `" A"`: which one follows the template's generation prompt differs by tokenizer); a letter's score
is the largest next-token logit over its spellings (`choose`). The choice is the letter with the largest
score; ties go to the earlier letter. This is the likelihood protocol of a direct-answer prompt ("answer
with the option's letter"), with no generation and no answer parsing.
"""

from __future__ import annotations

import re
import string
from typing import Any

import torch

from experiments.benchmarks.sample import Sample

_OPTION_LINE = re.compile(r"^(?:\(([A-Z])\)|([A-Z])\.)[ \t]", re.MULTILINE)


def option_letters(sample: Sample) -> list[str]:
    """The option letters the prompt lists (module docstring); [] when it lists none."""
    found = [m.group(1) or m.group(2) for m in _OPTION_LINE.finditer(sample.text)]
    runs: list[list[str]] = []
    for letter in found:
        if letter == "A":
            runs.append(["A"])
        elif runs and letter == string.ascii_uppercase[len(runs[-1])]:
            runs[-1].append(letter)
    return runs[-1] if runs and len(runs[-1]) >= 2 else []


def skip_reason(sample: Sample) -> str | None:
    """Why `sample` cannot be scored by option likelihood (open, no options, no gold letter), or None."""
    if sample.meta.get("question_type") == "open":
        return "open question"
    letters = option_letters(sample)
    if not letters:
        return "no option list in the prompt"
    if sample.answer not in letters:
        return f"gold answer {sample.answer!r} is not one of the options {letters}"
    return None


def letter_token_ids(tokenizer: Any, letters: list[str]) -> list[list[int]]:
    """Per letter, the token ids of its single-token spellings: `L` and ` L` when each encodes to one token, and
    the vocabulary entry `L` itself (a tokenizer whose merges split ` L` into a space and `L` still has it).

    Raises:
        ValueError: a letter has no single-token spelling.
    """
    out = []
    for letter in letters:
        ids = {ids[0] for text in (letter, " " + letter)
               if len(ids := tokenizer.encode(text, add_special_tokens=False)) == 1}
        bare = tokenizer.convert_tokens_to_ids(letter)  # the vocabulary entry "L" itself, if there is one
        if isinstance(bare, int) and bare != tokenizer.unk_token_id:
            ids.add(bare)
        if not ids:
            raise ValueError(f"option letter {letter!r} is not a single token in this tokenizer")
        out.append(sorted(ids))
    return out


def choose(logits: torch.Tensor, token_ids: list[list[int]]) -> tuple[int, torch.Tensor]:
    """The chosen option's index and every option's score.

    Args:
        logits: [vocab] next-token logits after the prompt's last token.
        token_ids: per option, its spellings' token ids (`letter_token_ids`).

    Returns:
        (index of the largest score, first on ties; scores [options], float32).
    """
    scores = torch.stack([logits[ids].float().max() for ids in token_ids])
    return int(scores.argmax()), scores
