"""Time one policy update (DeepSpeed, no vLLM) on a batch shaped like the CPU default's.

B=8 prompts of 38-64 tokens with n=8 completions each (lengths drawn from 3-6 tokens with one in
six at 24), plus 8 judgments sharing a 131-token instruction, each with 100-180 tokens of its own
(calibration memory and candidate) and a 4-token judgment: the layout of the batches a default
run (seed 0) handed its trainer on 2026-12-02. `--shape earlier`: the batch this benchmark used
before that date (43-token prompts; judgments sharing a 240-token prefix with a 42-token
candidate and a 7-token judgment), to compare with the numbers measured on it. Prints the time of each step and of its
forward, backward and optimiser parts, the process's CPU time (user + system; on a shared machine
it moves less than wall time), minor page faults and involuntary context switches, and the peak
RSS at the end. `--shape bfcl`: rows like the mixed config's function-calling ones instead
(700-token prompts, 60-token calls). `--vary`: a new batch every step (new lengths, so new
tensor shapes, as in a training run) instead of the same batch again. Each step's rate, in
TFLOP/s, counts 6 x (parameters outside the embedding) per token the passes run (each shared
prefix once, no padding) plus 6 x (LM head parameters) per trained token; attention scores are
left out: compare it with bench/roofline.py's whole-model rate.

    .venv/bin/python bench/update_step.py --steps 5 --set precision=fp32
    .venv/bin/python bench/update_step.py --steps 2 --shape bfcl --set micro_batch_tokens=8192
    .venv/bin/python bench/update_step.py --steps 3 --set precision=bf16 --profile 25
    .venv/bin/python bench/update_step.py --steps 2 --model <HF folder>   # another model
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metis_core.openmp import configure_openmp  # noqa: E402

configure_openmp()  # as `metis` does, before torch loads (metis_core/openmp.py)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--shape", choices=["default", "earlier", "bfcl"], default="default")
    parser.add_argument("--vary", action="store_true", help="a new batch every step")
    parser.add_argument(
        "--model", default="embedded:smollm2-135m-instruct",
        help="the policy: the embedded default, or an HF folder (a tiny one for a smoke run)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", type=int, default=0, metavar="ROWS",
        help="profile the last step with torch.profiler and print its top ROWS operators",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="TRAINER_KEY=VALUE"
    )
    args = parser.parse_args()

    import torch

    from bench.stage_work import size_of, update_tflop
    from metis_core.config_loading import ConfigError, load_section
    from metis_core.model.weights import configure_runtime_environment, resolve_model
    from metis_core.ports import JudgmentBatch, RolloutBatch
    from metis_core.trainer.policy_trainer import PolicyTrainer
    from metis_core.trainer_config import TrainerConfig

    configure_runtime_environment()
    try:  # the trainer section alone: a whole config would also load its tasks' datasets
        cfg = load_section(TrainerConfig, "trainer", args.overrides)
    except ConfigError as err:
        parser.error(str(err))
    trainer = PolicyTrainer(
        resolve_model(args.model),
        cfg,
        max_response_tokens=24,
    )
    rng = random.Random(0)
    prompt_lens, response_lens = {
        "default": ([38, 40, 43, 47, 49, 56, 62, 64], [3, 4, 4, 5, 6, 24]),
        "earlier": ([43], [3, 4, 4, 5, 6, 24]),
        "bfcl": ([700], [60]),
    }[args.shape]

    def tokens(k: int) -> list[int]:
        return [rng.randrange(1000, 40000) for _ in range(k)]

    def batch(vary: bool) -> tuple[RolloutBatch, JudgmentBatch]:
        def length(k: int) -> int:  # +-20%: a new shape, as a new batch of a run has
            return max(1, k + rng.randint(-k // 5, k // 5)) if vary else k

        prompts, responses = [], []
        for _ in range(8):
            prompt = tokens(length(rng.choice(prompt_lens)))
            for _ in range(8):
                prompts.append(prompt)
                responses.append(tokens(length(rng.choice(response_lens))))
        rollouts = RolloutBatch(prompts, responses, [rng.uniform(-0.5, 0.5) for _ in prompts])
        if args.shape == "default":
            shared = tokens(length(131))
            judgment_prompts = [shared + tokens(length(rng.randint(100, 180))) for _ in range(8)]
            judgment_ids = [tokens(4) for _ in range(8)]
        else:
            shared = tokens(length(240))
            judgment_prompts = [shared + tokens(length(42)) for _ in range(8)]
            judgment_ids = [tokens(length(7)) for _ in range(8)]
        judgments = JudgmentBatch(judgment_prompts, judgment_ids, [0.5] * 8, 0.4)
        return rollouts, judgments

    size = size_of(trainer.engine.module)

    def work_tflop(rollouts: RolloutBatch, judgments: JudgmentBatch) -> float:
        return update_tflop(
            size,
            [
                (rollouts.prompt_ids, rollouts.response_ids),
                (judgments.prompt_ids, judgments.judgment_ids),
            ],
        )

    rollouts, judgments = batch(vary=False)

    parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def timed(name, fn):
        def inner(*a, **k):
            start = time.perf_counter()
            result = fn(*a, **k)
            parts[name] += time.perf_counter() - start
            return result

        return inner

    trainer._logprobs = timed("forward", trainer._logprobs)
    trainer.engine.backward = timed("backward", trainer.engine.backward)
    trainer.engine.step = timed("optimizer", trainer.engine.step)
    print(f"trainer: {cfg.model_dump()}")
    for step in range(args.steps):
        if args.vary and step > 0:
            rollouts, judgments = batch(vary=True)
        parts.update(dict.fromkeys(parts, 0.0))
        before = resource.getrusage(resource.RUSAGE_SELF)
        profiling = args.profile and step == args.steps - 1
        profiler = torch.profiler.profile(record_shapes=True) if profiling else nullcontext()
        start = time.perf_counter()
        with profiler:
            trainer.train_step(rollouts, judgments, lam=0.01)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        print(
            f"step {step}: {wall:.2f} s  "
            + "  ".join(f"{k} {v:.2f} s" for k, v in parts.items())
            + f"  cpu {user:.2f}+{system:.2f} s  faults {after.ru_minflt - before.ru_minflt}"
            + f"  preempted {after.ru_nivcsw - before.ru_nivcsw}"
            + f"  {work_tflop(rollouts, judgments) / wall:.3f} TFLOP/s"
            + f"  load {Path('/proc/loadavg').read_text().split()[0]}"
        )
    if args.profile and args.steps:
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile)
        print(table)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
