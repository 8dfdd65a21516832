"""One DeepSpeed update, data parallel: N ranks on CPU (gloo) against one rank on the whole batch.

Every rank builds the same seeded batch (8 prompts x 4 rollouts of random tokens, random
advantages), keeps its share of the groups (prompt i on rank i mod N), takes one train_step and
saves its weights and metrics to OUT/step-rank<r>-of-<N>.pt. Launched by torchrun, the launcher that ships
with torch (DeepSpeed's `deepspeed` launcher works the same way on a hostfile):

    torchrun --standalone --nproc_per_node 2 bench/data_parallel_step.py --model DIR --out OUT
    .venv/bin/python bench/data_parallel_step.py --model DIR --out OUT      # the 1-rank reference

tests/integration/test_data_parallel.py compares the files: the ranks agree exactly, and match
the 1-rank step within float tolerance; so do the gradient norm (after DeepSpeed's all-reduce)
and the loss (the ranks' shares add up to it), which a wrong normalisation would change even
where Adam's first step, nearly sign(gradient), would hide it in the weights.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an HF model folder (the tiny test model)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--lam", type=float, default=0.5, help="judge-loss weight (0: no judgments)"
    )
    args = parser.parse_args()

    import torch

    from metis_core.config import TrainerConfig
    from metis_core.ports import JudgmentBatch, RolloutBatch
    from metis_core.trainer.policy_trainer import PolicyTrainer

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    rng = random.Random(0)
    prompts, responses, advantages, groups = [], [], [], []
    for g in range(8):
        prompt = [rng.randrange(100, 30000) for _ in range(rng.randint(8, 16))]
        for _ in range(4):
            prompts.append(prompt)
            responses.append([rng.randrange(100, 30000) for _ in range(rng.randint(2, 9))])
            advantages.append(rng.uniform(-1, 1))
            groups.append(g)
    mine = [i for i, g in enumerate(groups) if g % world == rank]
    rollouts = RolloutBatch(
        [prompts[i] for i in mine], [responses[i] for i in mine], [advantages[i] for i in mine]
    )
    judged = [([rng.randrange(100, 30000) for _ in range(20)], [rng.randrange(100, 30000) for _ in range(3)],
               rng.uniform(0, 1)) for _ in range(6)]  # fmt: skip
    share = [j for i, j in enumerate(judged) if i % world == rank]
    judgments = JudgmentBatch([p for p, _, _ in share], [r for _, r, _ in share],
                              [w for _, _, w in share], 0.4)  # fmt: skip
    cfg = TrainerConfig(
        lr=1e-3, micro_batch_size=4, max_logprob_gap=100.0, grad_clip=1e9
    )  # no clip
    trainer = PolicyTrainer(args.model, cfg, max_response_tokens=16)
    real_step, norms = trainer.engine.optimizer.step, []

    def step(*a, **k):  # the gradient the optimiser applies (all-reduced over the ranks)
        grads = [p.grad.double() for p in trainer.engine.module.parameters() if p.grad is not None]
        norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads))))
        return real_step(*a, **k)

    trainer.engine.optimizer.step = step
    metrics = trainer.train_step(rollouts, judgments if args.lam > 0 else None, lam=args.lam)
    metrics["applied_grad_norm"] = norms[-1]
    weights = {name: w.detach().clone() for name, w in trainer.named_weights()}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"weights": weights, "metrics": metrics}, args.out / f"step-rank{rank}-of-{world}.pt"
    )
    print(f"rank {rank}/{world}: {len(mine)} rows, applied grad norm {metrics['applied_grad_norm']:.8f}, "
          f"task loss (the whole batch's) {metrics['task_loss']:.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
