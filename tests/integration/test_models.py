"""Model loading as a user meets it: offline hub ids fail clearly; real processor settings give the
published image-token counts; random weights of a published architecture build offline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from experiments.benchmarks import load_samples
from experiments.config import BenchmarkConfig
from experiments.models import ModelUnavailableError, decoder_depth, get_adapter, load_model

from ..conftest import REPO, tiny_model_config


@pytest.mark.parametrize("name", ["llava", "qwen", "gemma3", "paligemma", "idefics3"])
def test_unreachable_checkpoint_says_how_to_fix(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    cfg = tiny_model_config(name, tmp_path)
    for attempt in (decoder_depth, load_model):
        with pytest.raises(ModelUnavailableError) as info:
            attempt(cfg)
        message = str(info.value)
        assert cfg.path in message and "model.path=" in message and "model.weights=random" in message
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_llava_336_gives_576_image_tokens(tmp_path):
    cfg = tiny_model_config("llava", tmp_path)
    processor = get_adapter("llava").offline_processor(**(cfg.processor or {}))
    inputs = processor(images=[Image.new("RGB", (500, 375))], text=["USER: <image>\nWhat? ASSISTANT:"],
                       return_tensors="pt")
    assert int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()) == 576


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule, written out from qwen-vl-utils (`smart_resize`)."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


# model config -> (pixels per image token side: patch x 2x2 merge, image tokens of a 448 x 448 image)
QWEN_TOKEN_GRID = {"qwen": (28, 256), "qwen3_vl": (32, 196)}


@pytest.mark.parametrize("name", list(QWEN_TOKEN_GRID))
@pytest.mark.parametrize("size", [(448, 448), (640, 480), (2000, 300), (60, 40)], ids=str)
def test_qwen_image_tokens_follow_its_pixel_budget(size, name, tmp_path):
    factor, at_448 = QWEN_TOKEN_GRID[name]
    cfg = tiny_model_config(name, tmp_path)
    processor = get_adapter(cfg.family).offline_processor(**cfg.processor)
    width, height = size
    inputs = processor(images=[Image.new("RGB", size)], text=["<|vision_start|><|image_pad|><|vision_end|>"],
                       return_tensors="pt")
    h, w = _smart_resize(height, width, factor, cfg.processor["min_pixels"], cfg.processor["max_pixels"])
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == (h // factor) * (w // factor)
    if size == (448, 448):
        assert (h // factor) * (w // factor) == at_448


def _onevision_tokens(width: int, height: int, view: int = 384, side: int = 27, max_crops: int = 9) -> int:
    """LLaVA-OneVision's tokens for a prompt's only image, written out from its anyres_max_9 scheme: a base view
    (side^2 features) plus the crop grid (1x1 to 6x6 views) that keeps the most of the image's resolution (then
    wastes the least), its features cut back to the image's aspect ratio (centred), shrunk when over max_crops
    views' worth, and one newline feature per row."""
    def fit(grid: tuple[int, int]) -> tuple[int, int]:
        scale = min(grid[1] * view / width, grid[0] * view / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        return -kept, grid[0] * grid[1] * view * view - kept

    grid_rows, grid_cols = min(((i, j) for i in range(1, 7) for j in range(1, 7)), key=fit)
    rows, cols = grid_rows * side, grid_cols * side
    if width / height > cols / rows:
        rows -= 2 * ((rows - int(round(height * cols / width, 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(width * rows / height, 7))) // 2)
    ratio = math.sqrt(rows * cols / (max_crops * side * side))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return side * side + rows * cols + rows


@pytest.mark.parametrize("size", [(384, 384), (640, 480), (1024, 899), (2000, 300), (60, 40)], ids=str)
def test_llava_onevision_image_tokens_follow_its_anyres_grid(size, tmp_path):
    """The published processor settings (offline) give the anyres_max_9 count; 1485 for one 384 px view."""
    cfg = tiny_model_config("llava_onevision", tmp_path)
    processor = get_adapter("llava_onevision").offline_processor(**cfg.processor)
    inputs = processor(images=[Image.new("RGB", size)], text=["<image>"], return_tensors="pt")
    count = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert count == _onevision_tokens(*size)
    if size == (384, 384):
        assert count == 729 + 27 * 27 + 27


def test_random_weights_of_published_shape_build_in_memory(tmp_path):
    """`model=qwen model.weights=random` builds in memory (here a 2-layer cut of Qwen2.5-VL-7B on the meta device);
    the hub id left in `model.path` is not used, and nothing is written for it."""
    cfg = tiny_model_config("qwen", tmp_path)
    cfg.weights, cfg.device, cfg.dtype = "random", "meta", "bfloat16"
    assert cfg.path == "Qwen/Qwen2.5-VL-7B-Instruct" and cfg.build_dir is None
    cfg.architecture["text_config"]["num_hidden_layers"] = 2
    cfg.architecture["vision_config"]["depth"] = 2
    loaded = load_model(cfg)
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.adapter.layers(loaded.model)[0].self_attn.k_proj.out_features == 512
    assert loaded.model.config.image_token_id == loaded.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert not (REPO / "Qwen").exists() and not Path("Qwen").exists()


# model config -> (kv_heads * head_dim, parameters of the whole published model in billions, as its hub page states)
PUBLISHED_SHAPES = {  # config name -> (key width kv_heads x head_dim, billions of parameters)
    "llava": (32 * 128, 7.06),
    "llava_next": (32 * 128, 7.06),
    "qwen": (4 * 128, 8.29),
    "qwen2_vl": (4 * 128, 8.29),
    "idefics3": (8 * 128, 8.46),
    "qwen3_vl": (8 * 128, 8.77),
    "llava_onevision": (4 * 128, 8.03),
    "gemma3": (4 * 256, 4.30),
    "paligemma": (8 * 256, 9.66),
    "internvl": (4 * 128, 7.94),
    "mistral3": (8 * 128, 24.01),  # the hub page rounds to 24B
}
IMAGE_TOKEN = {"gemma3": "<image_soft_token>"}  # else the processor's placeholder (Gemma 3's is <start_of_image>)


@pytest.mark.parametrize("name", list(PUBLISHED_SHAPES))
def test_published_shape_has_its_key_width_and_size(name, tmp_path):
    """`model=<name> model.weights=random` on the meta device: the published parameter count and key width
    (read from the key module the adapter names), image tokens tied to the offline tokenizer."""
    width, billions = PUBLISHED_SHAPES[name]
    cfg = tiny_model_config(name, tmp_path)
    cfg.weights, cfg.device, cfg.dtype = "random", "meta", "bfloat16"
    loaded = load_model(cfg)
    adapter, model = loaded.adapter, loaded.model
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions
    key = adapter.key_module(adapter.layers(model)[0])  # a projection, or a per-head norm after it (k_norm)
    text = model.config.get_text_config()
    assert getattr(key, "out_features", text.num_key_value_heads * key.weight.numel()) == width
    assert text.num_key_value_heads * adapter.attention_module(adapter.layers(model)[0]).head_dim == width
    image = loaded.processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN.get(name, loaded.processor.image_token))
    assert adapter.image_token_id(model) == image


def _idefics3_views(width: int, height: int, longest_edge: int, tile: int) -> int:
    """Idefics3's views of one image, written out from its model card: the longest edge resized to `longest_edge`
    (aspect kept, the other side made even), both sides rounded up to whole tiles; more than one tile adds a
    global view."""
    long_side, short_side = max(width, height), min(width, height)
    short_side = int(longest_edge * short_side / long_side)
    short_side += short_side % 2
    tiles = math.ceil(longest_edge / tile) * math.ceil(short_side / tile)
    return tiles + 1 if tiles > 1 else 1


@pytest.mark.parametrize("size", [(500, 375), (364, 364), (2000, 300), (60, 40)], ids=str)
def test_idefics3_image_tokens_follow_its_tiling(size, tmp_path):
    """Idefics3-8B's processor (offline, the checkpoint's settings) gives views x (364 / 14)^2 / 2^2 = 169 tokens."""
    cfg = tiny_model_config("idefics3", tmp_path)
    processor = get_adapter("idefics3").offline_processor(**cfg.processor)
    vision = cfg.architecture["vision_config"]
    per_view = (vision["image_size"] // vision["patch_size"]) ** 2 // cfg.architecture["scale_factor"] ** 2
    inputs = processor(images=[Image.new("RGB", size)], text=["User:<image>What?"], return_tensors="pt")
    views = _idefics3_views(*size, longest_edge=4 * 364, tile=vision["image_size"])
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == views * per_view
    assert inputs["pixel_values"].shape[1] == views
    if size == (500, 375):
        assert views * per_view == 13 * 169


# model config -> (prompt with the processor's placeholder, image tokens per image as the model card states)
GEMMA_TOKENS = {"gemma3": ("<start_of_image>What?", 256), "paligemma": ("<image>What?", 1024)}


@pytest.mark.parametrize("name", list(GEMMA_TOKENS))
@pytest.mark.parametrize("size", [(640, 480), (60, 40)], ids=str)
def test_gemma_families_give_fixed_image_tokens(name, size, tmp_path):
    """Gemma 3 (896 px, 64^2 patches pooled 4 x 4) and PaliGemma 2 at 448 px ((448 / 14)^2): a fixed count per image,
    whatever its size, which the published architecture's vision side produces too."""
    prompt, count = GEMMA_TOKENS[name]
    cfg = tiny_model_config(name, tmp_path)
    processor = get_adapter(cfg.family).offline_processor(**cfg.processor)
    inputs = processor(images=[Image.new("RGB", size)], text=[prompt], return_tensors="pt")
    image = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN.get(name, processor.image_token))
    assert int((inputs["input_ids"] == image).sum()) == count
    vision = cfg.architecture["vision_config"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    assert count == patches // (4 * 4 if name == "gemma3" else 1)
    assert inputs["token_type_ids"].sum() == (count if name == "gemma3" else 0)  # 1: Gemma 3's image; 0: prefix


def _internvl_tiles(width: int, height: int, tile: int = 448, max_tiles: int = 12) -> int:
    """InternVL's tiles of one image, written out from its `dynamic_preprocess`: the grid (columns x rows, 1 to
    max_tiles tiles, fewest first) whose aspect ratio is nearest the image's, a tie going to the larger grid
    while the image has more than half its pixels; a thumbnail is added when there is more than one tile."""
    grids = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if c * r <= max_tiles),
                   key=lambda grid: grid[0] * grid[1])
    best, nearest = (1, 1), math.inf
    for columns, rows in grids:
        distance = abs(width / height - columns / rows)
        if distance < nearest or (distance == nearest and width * height > 0.5 * tile * tile * columns * rows):
            best, nearest = (columns, rows), distance
    return best[0] * best[1] + (best[0] * best[1] > 1)


@pytest.mark.parametrize("size", [(448, 448), (896, 448), (800, 600), (2000, 300), (60, 40)], ids=str)
def test_internvl_image_tokens_follow_its_tiling(size, tmp_path):
    """InternVL3's processor (offline, the checkpoint's settings): 256 tokens per 448 px tile, 1 tile at 448 px."""
    cfg = tiny_model_config("internvl", tmp_path)
    processor = get_adapter("internvl").offline_processor(**cfg.processor)
    inputs = processor(images=[Image.new("RGB", size)], text=["<IMG_CONTEXT>"], return_tensors="pt")
    tiles = _internvl_tiles(*size)
    assert inputs["pixel_values"].shape[0] == tiles
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == tiles * cfg.architecture["image_seq_length"]
    if size == (448, 448):
        assert tiles * cfg.architecture["image_seq_length"] == 256


@pytest.mark.parametrize("size", [(448, 448), (1024, 768), (2000, 300), (60, 40)], ids=str)
def test_mistral3_image_tokens_follow_its_28_pixel_blocks(size, tmp_path):
    """Mistral Small 3.1's processor (offline, the checkpoint's settings): the longest edge shrunk to at most
    1540 px (aspect kept, floored), then one [IMG] per started 28 x 28 block (patch 14, 2x2 merge), an
    [IMG_BREAK] after each row but the last and an [IMG_END] after it."""
    cfg = tiny_model_config("mistral3", tmp_path)
    processor = get_adapter("mistral3").offline_processor(**cfg.processor)
    inputs = processor(images=[Image.new("RGB", size)], text=["[IMG]"], return_tensors="pt")
    width, height = size
    shrink = max(width / 1540, height / 1540, 1)
    columns, rows = (math.ceil(math.floor(side / shrink) / 28) for side in (width, height))
    ids = inputs["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == rows * columns
    assert int((ids == processor.image_break_token_id).sum()) == rows - 1
    assert int((ids == processor.image_end_token_id).sum()) == 1
    if size == (448, 448):
        assert rows * columns == 256


def test_mistral3_prompt_is_the_templates_default_with_the_date_fixed():
    """Mistral 3's template writes today's date into its default system prompt; the adapter sends that prompt with the
    release date instead, so the same sample gives the same prompt (and keys) every day."""
    import datetime

    from experiments.models.mistral3 import MISTRAL3, RELEASE_DATE, offline_processor

    processor = offline_processor()
    sample = load_samples(BenchmarkConfig(name="synthetic", limit=1)).samples[0].decoded()
    ours = processor.apply_chat_template(MISTRAL3.conversation(sample), add_generation_prompt=True, tokenize=False)
    user_only = [turn for turn in MISTRAL3.conversation(sample) if turn["role"] == "user"]
    default = processor.apply_chat_template(user_only, add_generation_prompt=True, tokenize=False)
    today = datetime.date.today().isoformat()
    assert today in default and today not in ours
    assert ours == default.replace(today, RELEASE_DATE)
