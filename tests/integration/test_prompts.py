"""For the real families (LLaVA, Qwen2.5-VL, Gemma 3, PaliGemma 2), a real MMMU row becomes exactly the prompt
the model's chat template (PaliGemma: its processor's layout) defines,
with the image-token expansion the real processor settings give."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from experiments.benchmarks import load_samples
from experiments.config import BenchmarkConfig
from experiments.models import get_adapter

from ..conftest import REPO, tiny_model_config
from .test_models import _smart_resize

MMMU = REPO / "tests" / "fixtures" / "real_samples" / "mmmu" / "MMMU"


def _rows():
    samples = load_samples(BenchmarkConfig(name="mmmu", path=str(MMMU), split="validation", limit=None)).samples
    one = next(s for s in samples if len(s.images) == 1)
    two = next(s for s in samples if len(s.images) == 2)
    return [one.decoded(), two.decoded()]


def _llava_expected(sample) -> tuple[str, list[int]]:
    """llava-1.5-hf template: 'USER: ' + '<image>\\n' per image + each text + ' ' + 'ASSISTANT:'; 576 per image."""
    texts = [p for p in sample.parts if isinstance(p, str)]
    return "USER: " + "<image>\n" * len(sample.images) + "".join(t + " " for t in texts) + "ASSISTANT:", \
        [576] * len(sample.images)


def _qwen_expected(sample, processor_settings) -> tuple[str, list[int]]:
    """Qwen2.5-VL template: system turn, then each part in order, image = vision_start/pad/vision_end."""
    body = "".join(p if isinstance(p, str) else "<|vision_start|><|image_pad|><|vision_end|>" for p in sample.parts)
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + body
            + "<|im_end|>\n<|im_start|>assistant\n")
    counts = []
    for image in sample.images:
        h, w = _smart_resize(image.height, image.width, 28, processor_settings["min_pixels"],
                             processor_settings["max_pixels"])
        counts.append((h // 28) * (w // 28))
    return text, counts


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_real_row_prompt_and_image_tokens(name, tmp_path):
    cfg = tiny_model_config(name, tmp_path)
    adapter = get_adapter(cfg.family)
    processor = adapter.offline_processor(**cfg.processor)
    image_token = "<image>" if name == "llava" else "<|image_pad|>"
    for sample in _rows():
        assert all(isinstance(i, Image.Image) for i in sample.images)
        rendered = processor.apply_chat_template(adapter.conversation(sample), add_generation_prompt=True,
                                                 tokenize=False)
        expected, counts = _llava_expected(sample) if name == "llava" else _qwen_expected(sample, cfg.processor)
        assert rendered == expected
        ids = adapter.model_inputs(processor, [sample])["input_ids"][0].tolist()
        expanded = expected
        for count in counts:  # expand each placeholder once, in order, to its image's token count
            expanded = expanded.replace(image_token, "\0" * count, 1)
        expanded = expanded.replace("\0", image_token)
        assert ids == processor.tokenizer(expanded)["input_ids"]
        assert ids.count(processor.tokenizer.convert_tokens_to_ids(image_token)) == sum(counts)


def _gemma3_expected(sample) -> tuple[str, str]:
    """gemma-3-it template: <bos>, the user turn with each part in order (an image as <start_of_image>, a text
    trimmed), the model turn; each placeholder expands to blank lines around <start_of_image>, 256 soft tokens
    and <end_of_image>."""
    body = "".join(p.strip() if isinstance(p, str) else "<start_of_image>" for p in sample.parts)
    rendered = "<bos><start_of_turn>user\n" + body + "<end_of_turn>\n<start_of_turn>model\n"
    image = "\n\n<start_of_image>" + "<image_soft_token>" * 256 + "<end_of_image>\n\n"
    return rendered, rendered.replace("<start_of_image>", "\0").replace("\0", image)


def _paligemma_expected(sample) -> tuple[str, str]:
    """PaliGemma's prompt (big_vision's layout, no chat template): every image first, 1024 <image> tokens each at
    448 px, then <bos>, the text and a newline."""
    text = "".join(p for p in sample.parts if isinstance(p, str))
    return "<image>" * len(sample.images) + text, "<image>" * (1024 * len(sample.images)) + "<bos>" + text + "\n"


@pytest.mark.parametrize("name", ["gemma3", "paligemma"])
def test_gemma_families_real_row_prompt(name, tmp_path):
    cfg = tiny_model_config(name, tmp_path)
    adapter = get_adapter(cfg.family)
    processor = adapter.offline_processor(**cfg.processor)
    for sample in _rows():
        rendered, expanded = (_gemma3_expected if name == "gemma3" else _paligemma_expected)(sample)
        assert processor.apply_chat_template(adapter.conversation(sample), add_generation_prompt=True,
                                             tokenize=False) == rendered
        inputs = adapter.model_inputs(processor, [sample])
        assert inputs["input_ids"][0].tolist() == processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]
        image = processor.tokenizer.convert_tokens_to_ids("<image_soft_token>" if name == "gemma3" else "<image>")
        is_image = inputs["input_ids"][0] == image
        assert int(is_image.sum()) == (256 if name == "gemma3" else 1024) * len(sample.images)
        # the mask's input: Gemma 3 marks its image tokens; PaliGemma's whole prompt is the bidirectional prefix
        marked = is_image if name == "gemma3" else torch.zeros_like(is_image)
        assert torch.equal(inputs["token_type_ids"][0].bool(), marked)
