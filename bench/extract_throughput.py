"""Key-extraction throughput: keyspace's extraction path against a plain transformers script.

For each model, in one process and on identical inputs (synthetic images at the benchmark resolution,
MMMU-style English questions), it times:

  (a) baseline: what a typical research script does: preprocess one sample, run the full
      `*ForConditionalGeneration` forward (lm_head included) with `use_cache=True`, read the layer's
      keys from the KV cache; batch 1, transformers modules as shipped;
  (b) keyspace: `extract_keys` at its best settings: batches bucketed by size, DataLoader workers,
      early exit, no lm_head, exact fast paths (Qwen2.5-VL grouped window attention), async copies.

and prints samples/s and tokens/s of both, the ratio (b)/(a), the fraction of the matmul ceiling
(FLOPs counted with torch's FlopCounterMode on one batch; ceiling = a large bf16 GEMM timed in the
same run), peak GPU memory, and the largest difference between the keys of (a) and (b).

GPU (the issue's target, full-size random-init weights):
    python bench/extract_throughput.py --models llava,qwen --batch-size 32 --workers 8
CPU smoke run of the same code on the tiny models:
    python bench/extract_throughput.py --models tiny_llava,tiny_qwen --samples 16 --batch-size 8
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = {"llava": 336, "qwen": 448, "llava_next": 336}


def model_config(name: str, device: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import register_configs

    register_configs()
    overrides = [f"model={name}", "paths.cache_dir=.cache/keyspace", f"model.device={device}"]
    if not name.startswith("tiny"):  # full size: random weights of the published architecture, built on the GPU
        overrides += ["model.weights=random"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        job = OmegaConf.to_object(compose(config_name="config", overrides=overrides))
    return dataclasses.replace(job.model, fast_paths=False), job.layer  # the baseline runs transformers as shipped


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def matmul_ceiling(device: torch.device) -> float:
    """FLOP/s of a large GEMM in the extraction dtype: bf16 8192^3 on GPU, fp32 2048^3 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        sync(device)
        runs.append(time.perf_counter() - start)
    return 2 * n**3 / sorted(runs)[len(runs) // 2]


def baseline(loaded, samples, layer: int) -> tuple[float, list[torch.Tensor], int]:
    """(seconds, keys per sample [tokens, dim], tokens): batch 1, full forward, keys from the cache."""
    model, adapter = loaded.model, loaded.adapter
    device = next(model.parameters()).device
    keys, tokens = [], 0
    start = time.perf_counter()
    for _, sample in samples:
        inputs = adapter.model_inputs(loaded.processor, [sample.decoded()]).to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            out = model(**inputs, use_cache=True)
        keys.append(out.past_key_values.layers[layer].keys[0].transpose(0, 1).flatten(1).float().cpu())
        tokens += inputs["input_ids"].shape[1]
    sync(device)
    return time.perf_counter() - start, keys, tokens


def keyspace(loaded, samples, layer: int, batch_size: int, workers: int) -> tuple[float, list[torch.Tensor]]:
    from experiments.keys.extract import extract_keys

    device = next(loaded.model.parameters()).device
    start = time.perf_counter()
    kept, _ = extract_keys(loaded, samples, [layer], "post_rope", batch_size, None, 0, loaded.model.dtype,
                           num_workers=workers)
    sync(device)
    return time.perf_counter() - start, [r.keys[layer].float() for r in kept]


def flops_per_sample(run, n: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops() / n


def bench_model(name: str, args: argparse.Namespace, ceiling: float) -> dict:
    from experiments.benchmarks import load_samples
    from experiments.config import BenchmarkConfig
    from experiments.keys.layers import resolve_layers
    from experiments.models import load_model

    cfg, layer_cfg = model_config(name, args.device)
    loaded = load_model(cfg)
    device = next(loaded.model.parameters()).device
    depth = len(loaded.adapter.layers(loaded.model))
    layer = resolve_layers(["late"], layer_cfg.fractions, depth)[0].index
    size = RESOLUTION.get(name, 96)
    samples = list(enumerate(load_samples(BenchmarkConfig(
        name="synthetic", limit=args.samples, style="mmmu", image_size=size, seed=1)).samples))
    warm = samples[: min(4, len(samples))]

    baseline(loaded, warm, layer)
    flops_a = flops_per_sample(lambda: baseline(loaded, warm[:1], layer), 1)
    reset_peak(device)
    seconds_a, keys_a, tokens = baseline(loaded, samples, layer)
    peak_a = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")

    for install in loaded.adapter.fast_paths:
        install(loaded.model)
    keyspace(loaded, warm, layer, args.batch_size, 0)
    flops_b = flops_per_sample(lambda: keyspace(loaded, warm, layer, len(warm), 0), len(warm))
    reset_peak(device)
    seconds_b, keys_b = keyspace(loaded, samples, layer, args.batch_size, args.workers)
    peak_b = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")

    diff = max(float((a - b).abs().max()) for a, b in zip(keys_a, keys_b, strict=True))
    scale = max(float(a.abs().max()) for a in keys_a)
    n = len(samples)
    return {"model": name, "layer": layer, "depth": depth, "samples": n, "tokens/sample": tokens / n,
            "a samples/s": n / seconds_a, "b samples/s": n / seconds_b, "ratio b/a": seconds_a / seconds_b,
            "a tokens/s": tokens / seconds_a, "b tokens/s": tokens / seconds_b,
            "a MFU": flops_a * n / seconds_a / ceiling, "b MFU": flops_b * n / seconds_b / ceiling,
            "b GFLOP/sample": flops_b / 1e9, "a peak GiB": peak_a, "b peak GiB": peak_b,
            "max |key diff|": diff, "max |key|": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="llava,qwen")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    import transformers

    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    ceiling = matmul_ceiling(device)
    print(f"device {name}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"batch {args.batch_size}, workers {args.workers}; matmul ceiling {ceiling / 1e12:.1f} TFLOP/s")
    print("(a) = plain transformers forward, batch 1; (b) = keyspace extraction path")
    for model in args.models.split(","):
        row = bench_model(model, args, ceiling)
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
