"""For both real families, a real MMMU row becomes exactly the prompt the model's chat template defines,
with the image-token expansion the real processor settings give."""

from __future__ import annotations

import pytest
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
