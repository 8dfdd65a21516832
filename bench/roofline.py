"""A measured roofline for this machine: matmuls of SmolLM2-135M's own shapes in fp32 and bf16.

For a micro-batch of T tokens it times every projection of one decoder layer (q/o 576x576,
k/v 576x192, gate/up 576x1536, down 1536x576), the LM head (576x49152) and attention scores and
values (9 heads of 64 over S-token sequences), forward and the two backward matmuls (so 3x the
forward FLOPs), and prints the achieved TFLOP/s of each and of the whole, per dtype. The best
of --repeat runs counts (the machine may be shared). Compare a stage's achieved rate with the
total row: that is what this CPU can do on these shapes with torch's kernels.

    .venv/bin/python bench/roofline.py --tokens 2048 --seq 128
"""

from __future__ import annotations

import argparse
import time

HIDDEN, KV, FFN, VOCAB, HEADS, HEAD_DIM, LAYERS = 576, 192, 1536, 49152, 9, 64, 30


def shapes(tokens: int) -> dict[str, tuple[int, int, int, int]]:
    """name -> (count per model forward, m, k, n) of the [m, k] @ [k, n] matmuls."""
    return {
        "q,o 576x576": (2 * LAYERS, tokens, HIDDEN, HIDDEN),
        "k,v 576x192": (2 * LAYERS, tokens, HIDDEN, KV),
        "gate,up 576x1536": (2 * LAYERS, tokens, HIDDEN, FFN),
        "down 1536x576": (LAYERS, tokens, FFN, HIDDEN),
        "lm head 576x49152": (1, tokens, HIDDEN, VOCAB),
    }


def best_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (oneDNN picks and caches its kernel)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per micro-batch (T)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length for attention (S)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.tokens}, S={args.seq}"
    )
    print(f"{'matmul':22s} {'dtype':9s} {'GFLOP':>8s} {'ms':>8s} {'TFLOP/s':>8s}")
    totals: dict[str, list[float]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        flops = seconds = 0.0
        for label, (count, m, k, n) in shapes(args.tokens).items():
            # laid out as nn.Linear holds them: weight [n, k]. (A [32, 49152] @ [49152, 576]
            # product with the right operand a transposed view of [576, 49152], which no layer
            # computes, dies with SIGFPE in torch 2.13's bf16 kernels on an AMX CPU.)
            a, weight = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            grad = torch.randn(m, n, dtype=dtype)

            def fwd_bwd(a=a, weight=weight, grad=grad):
                torch.nn.functional.linear(a, weight)  # forward: a @ weight.T
                grad @ weight  # d input
                grad.T @ a  # d weight

            s = best_seconds(fwd_bwd, args.repeat)
            f = 3 * 2 * m * k * n
            print(f"{label:22s} {name:9s} {f / 1e9:8.2f} {s * 1e3:8.2f} {f / s / 1e12:8.3f}")
            flops, seconds = flops + count * f, seconds + count * s
        batch = max(1, args.tokens // args.seq)
        q = torch.randn(batch, HEADS, args.seq, HEAD_DIM, dtype=dtype)
        kk, v = torch.randn_like(q), torch.randn_like(q)

        def attention(q=q, kk=kk, v=v):
            torch.nn.functional.scaled_dot_product_attention(q, kk, v, is_causal=True)

        s = 3 * best_seconds(attention, args.repeat)  # backward ~ 2x forward
        f = 3 * 2 * 2 * batch * HEADS * args.seq * args.seq * HEAD_DIM / 2  # causal: half
        print(
            f"{'attention (sdpa)':22s} {name:9s} {f / 1e9:8.2f} {s * 1e3:8.2f} {f / s / 1e12:8.3f}"
        )
        flops, seconds = flops + LAYERS * f, seconds + LAYERS * s
        totals[name] = [flops, seconds]
        print(
            f"{'total fwd+bwd':22s} {name:9s} {flops / 1e9:8.1f} {seconds * 1e3:8.1f} {flops / seconds / 1e12:8.3f}"
        )
    fp32, bf16 = (totals[k][0] / totals[k][1] for k in ("float32", "bfloat16"))
    print(f"bf16 / fp32 matmul rate on these shapes: {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
