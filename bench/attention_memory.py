"""Memory of the recomputed attention: one 4,096-token sample at LLaVA-7B width (32 heads x 128), on CPU.

Each mode runs in a fresh process (peak RSS = `wait4`'s ru_maxrss, a per-process high-water mark):

- `inputs` (floor): post-RoPE queries and keys of one layer, [4096, 32, 128] float32 each, and the masks;
  no attention. What any analysis of this layer holds.
- `chunked`: `attention.scores.sample_statistics` on them (every statistic of the attention stage), scores
  in chunks of `--chunk-mib` MiB (the `analysis.attention_chunk_mib` default: 32).
- `full` (the named baseline): the scores of all heads at once, as eager attention materialises them
  ([32, 4096, 4096] float32 = 2 GiB, then its softmax, another 2 GiB), reduced to the image mass only.

The layout is LLaVA-NeXT-like: 35 text tokens, 2,880 image tokens (anyres), then text to 4,096.

    python bench/attention_memory.py                 # all three modes (the full baseline needs ~5 GiB)
    python bench/attention_memory.py --modes inputs,chunked
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SEQ, HEADS, DIM, IMAGE_START, IMAGE_TOKENS = 4096, 32, 128, 35, 2880
MODES = ("inputs", "chunked", "full")


def _tensors():
    import torch

    g = torch.Generator().manual_seed(0)
    q = torch.randn(SEQ, HEADS, DIM, generator=g)
    k = torch.randn(SEQ, HEADS, DIM, generator=g)
    is_image = torch.zeros(SEQ, dtype=torch.bool)
    is_image[IMAGE_START:IMAGE_START + IMAGE_TOKENS] = True
    is_sink = torch.zeros(SEQ, dtype=torch.bool)
    is_sink[0] = True
    return q, k, is_image, is_sink


def child(mode: str, chunk_mib: float) -> None:
    """Run one mode in this process and print its result line."""
    import torch

    from experiments.attention.scores import sample_statistics

    q, k, is_image, is_sink = _tensors()
    scaling = DIM**-0.5
    started = time.time()
    if mode == "chunked":
        stats = sample_statistics(q, k, is_image, is_sink, scaling, int(chunk_mib * 2**20))
        share = float(stats.text_share[0].mean())
    elif mode == "full":
        scores = torch.einsum("qhd,khd->hqk", q, k).mul_(scaling)  # [heads, S, S]
        scores.masked_fill_(torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1), float("-inf"))
        probs = scores.softmax(dim=-1)
        eligible = ~is_image & (is_image.cumsum(0) > 0)
        share = float((probs[:, eligible] @ is_image.float()).mean())
    else:
        share = float("nan")
    print(f"RESULT {mode} seconds={time.time() - started:.1f} share={share:.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    parser.add_argument("--chunk-mib", type=float, default=32.0, help="score MiB per chunk (chunked mode)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.chunk_mib)
        return
    full_gib = HEADS * SEQ * SEQ * 4 / 2**30
    print(f"{SEQ} tokens, {HEADS} heads x {DIM}: the full score tensor of all heads is {full_gib:.1f} GiB (float32)")
    rows = {}
    for mode in args.modes.split(","):
        process = subprocess.Popen([sys.executable, __file__, "--child", mode, "--chunk-mib", str(args.chunk_mib)],
                                   stdout=subprocess.PIPE, text=True)
        output = process.stdout.read() if process.stdout else ""
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"mode {mode} failed:\n{output}")
        line = next(line for line in output.splitlines() if line.startswith("RESULT"))
        rows[mode] = usage.ru_maxrss / 2**10  # KiB -> MiB
        print(f"{mode:>8}: peak RSS {rows[mode]:8.0f} MiB  {line.split(' ', 2)[2]}", flush=True)
    if "inputs" in rows and "chunked" in rows:
        print(f"chunked over the inputs floor: +{rows['chunked'] - rows['inputs']:.0f} MiB")
    if "full" in rows and "chunked" in rows:
        print(f"named baseline (full, all heads at once): {rows['full']:.0f} MiB; chunked: {rows['chunked']:.0f} MiB "
              f"({rows['full'] / rows['chunked']:.1f}x less)")


if __name__ == "__main__":
    main()
