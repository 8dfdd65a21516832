"""Time one layer's attention, forward and backward, through SDPA and through the trainer's plain
matmul-softmax path (metis_core/trainer/attention.py), on the shapes a METIS update runs.

Shapes are SmolLM2-135M's (9 query heads and 3 kv heads of 64) with a boolean padding mask as
SDPA's mask builder makes it; the best of --repeat runs counts. The last column says which path
the trainer takes for that shape.

    .venv/bin/python bench/attention_paths.py
    .venv/bin/python bench/attention_paths.py --dtype float32 --shapes 64x5x48 11x700x700
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metis_core.openmp import configure_openmp  # noqa: E402

configure_openmp()  # as `metis` does, before torch loads

import torch  # noqa: E402

from metis_core.trainer import attention  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64
SHAPES = {  # rows x queries x keys: what they are in an update of the CPU default
    "8x100x100": "rollout groups (prompt + 8 completions)",
    "8x130x130": "rollout groups, longer completions",
    "8x160x160": "rollout groups, long completions",
    "1x620x620": "judgments (shared prefix + 8 candidates)",
    "2x1000x1000": "function-calling groups",
    "64x5x48": "suffixes on a gathered cache (sliding-window models)",
}


class _Layer(torch.nn.Module):
    is_causal = True
    num_key_value_groups = HEADS // KV_HEADS


def best_ms(fn, rows: int, queries: int, keys: int, dtype: torch.dtype, repeat: int) -> float:
    q = torch.randn(rows, HEADS, queries, HEAD_DIM, dtype=dtype, requires_grad=True)
    k = torch.randn(rows, KV_HEADS, keys, HEAD_DIM, dtype=dtype, requires_grad=True)
    v = torch.randn(rows, KV_HEADS, keys, HEAD_DIM, dtype=dtype, requires_grad=True)
    mask = torch.ones(queries, keys, dtype=torch.bool).tril(diagonal=keys - queries)
    mask = mask.expand(rows, 1, queries, keys).clone()
    mask[0, :, :, :2] = False  # one left-padded row
    layer = _Layer()
    best = float("inf")
    for _ in range(repeat + 1):  # the first run is a warm-up
        start = time.perf_counter()
        fn(layer, q, k, v, mask, scaling=HEAD_DIM**-0.5)[0].sum().backward()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), metavar="ROWSxQUERIESxKEYS")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}")
    print("| rows x queries x keys | what | SDPA ms | plain ms | the trainer takes |")
    print("|---|---|---|---|---|")
    for shape in args.shapes:
        rows, queries, keys = (int(x) for x in shape.split("x"))
        sdpa = best_ms(sdpa_attention_forward, rows, queries, keys, dtype, args.repeat)
        plain = best_ms(
            lambda *a, **kw: (attention.math_attention(*a, **kw), None),
            rows,
            queries,
            keys,
            dtype,
            args.repeat,
        )
        takes = "plain" if attention.plain_path_pays(rows, HEADS, queries, keys, dtype) else "SDPA"
        what = SHAPES.get(shape, "")
        print(f"| {shape.replace('x', ' x ')} | {what} | {sdpa:.1f} | {plain:.1f} | {takes} |")


if __name__ == "__main__":
    main()
