"""The embedded default benchmark: drawn images with multiple-choice questions, offline and seeded.

Each sample draws a few coloured shapes and one digit on a plain background and asks one question
about them (how many of a shape, which colour a shape has, which digit is written), with four
options. `style="mmbench_cn"` words it in Chinese and lays it out as VLMEvalKit's default MMBench
prompt (image first, "Hint/Question/Options" scaffolding); `style="mmmu"` words it in English with an
MMMU-style `<image 1>` reference, the image interleaved where the reference stands; `style="mixed"`
alternates. The same seed gives the same pixels and the same text. The picture's parameters are drawn with
the text; its pixels are drawn only when the `LazyImage` is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from experiments.benchmarks.sample import BenchmarkData, LazyImage, Sample
from experiments.config import BenchmarkConfig

COLOURS = {  # name -> (RGB, Chinese name)
    "red": ((220, 40, 40), "红色"),
    "green": ((40, 170, 60), "绿色"),
    "blue": ((40, 80, 220), "蓝色"),
    "yellow": ((235, 200, 30), "黄色"),
    "purple": ((140, 60, 180), "紫色"),
    "black": ((20, 20, 20), "黑色"),
}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
LETTERS = "ABCD"

QUESTIONS = {
    "count": ("How many {shape}s are in the image?", "图中有几个{shape}？"),
    "colour": ("What colour is the {shape}?", "图中的{shape}是什么颜色？"),
    "digit": ("Which digit is written in the image?", "图中写的数字是几？"),
}
HINTS = ("The image shows simple shapes on a plain background.", "图片中是纯色背景上的简单几何图形。")
MMBENCH_TAIL = "Please select the correct answer from the options above. \n"
MMMU_TAIL = "Answer with the option's letter from the given choices directly."
STYLES = ("mmbench_cn", "mmmu", "mixed")


def synthetic_samples(cfg: BenchmarkConfig) -> BenchmarkData:
    """`cfg.limit` deterministic samples (see the module docstring).

    `cfg.limit` is a number (the config schema requires it for synthetic).
    """
    samples = []
    for i in range(cfg.limit or 0):
        rng = np.random.default_rng([cfg.seed, i])
        chinese = cfg.style == "mmbench_cn" or (cfg.style == "mixed" and i % 2 == 0)
        samples.append(_sample(i, rng, cfg.image_size, chinese))
    return BenchmarkData(samples)


def vocabulary_text() -> list[str]:
    """Every word the generator can emit, so an offline-trained tokenizer covers it."""
    lines = [q.format(shape=s) for q, _ in QUESTIONS.values() for s in SHAPES]
    lines += [q.format(shape=s) for _, q in QUESTIONS.values() for s in SHAPES.values()]
    lines += [" ".join(COLOURS), " ".join(c for _, c in COLOURS.values()), *HINTS, MMBENCH_TAIL, MMMU_TAIL]
    lines += ["Hint: Question: Options: A. B. C. D. 0 1 2 3 4 5 6 7 8 9"]
    return lines


def _sample(index: int, rng: np.random.Generator, size: int, chinese: bool) -> Sample:
    picture = _picture(rng, size)
    image = LazyImage((size, size), picture.render)
    drawn, digit = [(shape, colour) for shape, colour, *_ in picture.shapes], picture.digit
    kind = ("count", "colour", "digit")[int(rng.integers(3))]
    target_shape = drawn[int(rng.integers(len(drawn)))][0]
    if kind == "count":
        answer = str(sum(s == target_shape for s, _ in drawn))
        options = _options(answer, [str(n) for n in range(1, 6)], rng)
    elif kind == "colour":
        colour = next(c for s, c in drawn if s == target_shape)
        names = {c: (COLOURS[c][1] if chinese else c) for c in COLOURS}
        answer = names[colour]
        options = _options(answer, list(names.values()), rng)
    else:
        answer = str(digit)
        options = _options(answer, [str(n) for n in range(10)], rng)
    english, chinese_q = QUESTIONS[kind]
    shape_name = SHAPES[target_shape] if chinese else target_shape
    question = (chinese_q if chinese else english).format(shape=shape_name)
    option_lines = "".join(f"{letter}. {text}\n" for letter, text in zip(LETTERS, options, strict=True))
    gold = LETTERS[options.index(answer)]
    meta = {"kind": kind, "language": "zh" if chinese else "en"}
    if chinese:  # VLMEvalKit ImageMCQDataset.build_prompt: English scaffolding even for MMBench-CN
        text = f"Hint: {HINTS[1]}\nQuestion: {question}\nOptions:\n{option_lines}{MMBENCH_TAIL}"
        return Sample(id=f"synthetic-{index}", parts=(image, text), answer=gold, meta=meta)
    # MMMU: the question opens with "<image 1>"; the image goes where that placeholder stands.
    text = f"{question}\n{option_lines}{MMMU_TAIL}"
    return Sample(id=f"synthetic-{index}", parts=(image, text), answer=gold, meta=meta)


@dataclass(frozen=True)
class Picture:
    """What one synthetic image shows, drawn from the seed up front; `render()` draws the pixels.

    Attributes:
        size: width and height in pixels.
        background: RGB of the plain background.
        shapes: (shape, colour, radius, centre x, centre y) of each shape, in drawing order.
        digit: the digit written on the picture, at pixel `digit_at` (x, y).
    """

    size: int
    background: tuple[int, ...]
    shapes: tuple[tuple[str, str, int, int, int], ...]
    digit: int
    digit_at: tuple[int, int]

    def render(self) -> Image.Image:
        """The RGB picture: background, the shapes in order, then the digit in black."""
        image = Image.new("RGB", (self.size, self.size), self.background)
        draw = ImageDraw.Draw(image)
        for shape, colour, r, cx, cy in self.shapes:
            box = (cx - r, cy - r, cx + r, cy + r)
            fill = COLOURS[colour][0]
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            elif shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        draw.text(self.digit_at, str(self.digit), fill=(0, 0, 0))
        return image


def _picture(rng: np.random.Generator, size: int) -> Picture:
    """2-4 coloured shapes and one digit on a plain background, each drawn from `rng`."""
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    shapes = []
    for _ in range(int(rng.integers(2, 5))):
        shape = list(SHAPES)[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        r = int(rng.integers(size // 10, size // 5))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        shapes.append((shape, colour, r, cx, cy))
    digit = int(rng.integers(10))
    digit_at = (int(rng.integers(2, size - 12)), int(rng.integers(2, size - 14)))
    return Picture(size, background, tuple(shapes), digit, digit_at)


def _options(answer: str, pool: list[str], rng: np.random.Generator) -> list[str]:
    """Four distinct options containing the answer, in a seeded order."""
    distractors = [p for p in pool if p != answer]
    chosen = [distractors[i] for i in rng.permutation(len(distractors))[:3]] + [answer]
    return [chosen[i] for i in rng.permutation(4)]
