"""How far the trainer's log-probs of sampled tokens are from the engine's, on the embedded model.

    .venv/bin/python bench/logprob_gap.py --engine-dtype bfloat16

16 training prompts of the default pool, 8 rollouts each at temperatures 0.7 and 1.0, scored by
the trainer at the sampling temperature and at 1.0; 16 constrained judgments scored under the
constraint's mask and without it; then one update (lr 1e-5, random advantages) and a sync, and
the rollouts again (a bf16 engine is sent the weights rounded as `--engine-rounding` says).
Prints metis_core.algorithms.logprob_mismatch for each. Numbers in docs/metis.md ("What the
update trains on", "Engine/trainer precision").
"""

from __future__ import annotations

import argparse
import itertools

SEEDS = itertools.count()  # each engine call its own seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--trainer-precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--engine-rounding",
        choices=["stochastic", "nearest"],
        default="stochastic",
        help="how a bf16 engine gets the weights at the sync: rounded stochastically, as a run "
        "sends them (PolicyTrainer.engine_weights), or the fp32 masters, rounded to nearest by "
        "the engine itself",
    )
    args = parser.parse_args()

    import torch

    from metis_core.algorithms import logprob_mismatch
    from metis_core.batch import pack_grouped, response_values
    from metis_core.config import RunConfig, TrainerConfig
    from metis_core.engine.vllm_engine import PolicyEngine
    from metis_core.judgment import JUDGMENT_REGEX, CalibrationExample, judgment_messages
    from metis_core.launch import build_run_pool, configure_runtime_environment
    from metis_core.model.weights import resolve_model
    from metis_core.ports import RolloutBatch
    from metis_core.run import task_prompt_ids
    from metis_core.trainer.policy_trainer import PolicyTrainer

    configure_runtime_environment()
    cfg = RunConfig()
    model_dir = resolve_model(cfg.model.path)
    engine = PolicyEngine(model_dir, args.engine_dtype, cfg.model.max_model_len, seed=0)
    # no limit on the gap here: this measures it
    trainer = PolicyTrainer(
        model_dir,
        TrainerConfig(max_logprob_gap=100.0, precision=args.trainer_precision),
        max_response_tokens=24,
    )
    tok = engine.tokenizer
    rows = [r for r in build_run_pool(cfg) if r["split"] == "train"][: args.prompts]

    def report(name, prompts, responses, engine_lp, temperature, masks=None):
        batch = pack_grouped(prompts, responses, trainer.pad_id, masks)
        with torch.no_grad():
            lp = trainer._logprobs(batch, temperature)
        stats = logprob_mismatch(lp, response_values(batch.loss_mask, engine_lp), batch.loss_mask)
        print(f"{name:58s} " + "  ".join(f"{k} {v:.3g}" for k, v in stats.items()))

    prompts = [task_prompt_ids(cfg, tok, r) for r in rows]
    math = cfg.domain("math")

    def rollouts(t: float):
        """(prompts, responses, engine log-probs) of n rollouts per row at temperature t."""
        groups = engine.generate(
            prompts,
            n=cfg.rollout.n,
            temperature=t,
            max_tokens=math.max_tokens,
            stop=math.stop,
            seed=next(SEEDS),
        )
        flat = [(p, c) for p, g in zip(prompts, groups, strict=True) for c in g]
        return [p for p, _ in flat], [c.token_ids for _, c in flat], [c.logprobs for _, c in flat]

    for t in (cfg.rollout.temperature, 1.0):
        ps, rs, ls = rollouts(t)
        for trainer_t in sorted({t, 1.0}):
            report(f"rollouts sampled at T={t}, trainer at T={trainer_t}", ps, rs, ls, trainer_t)

    memory = [
        CalibrationExample("What is 2 + 3?", 0.0),
        CalibrationExample("Find the gcd of 12 and 18.", 0.1875),
        CalibrationExample("What is 5 + 7?", 0.25),
    ]
    judge_prompts = [
        tok.encode(
            tok.apply_chat_template(
                judgment_messages(r["prompt"], memory, lambda text, n: text, 64, 192),
                tokenize=False,
                add_generation_prompt=True,
            ),
            add_special_tokens=False,
        )
        for r in rows
    ]
    outs = engine.generate(
        judge_prompts,
        n=1,
        temperature=cfg.judge.temperature,
        max_tokens=12,
        regex=JUDGMENT_REGEX,
        seed=next(SEEDS),
    )
    ids, lps = [o[0].token_ids for o in outs], [o[0].logprobs for o in outs]
    masks = trainer._bitmasks(ids, [JUDGMENT_REGEX] * len(ids))
    report("judgments, trainer under the constraint's mask", judge_prompts, ids, lps, 1.0, masks)
    report("judgments, trainer unmasked", judge_prompts, ids, lps, 1.0)

    t = cfg.rollout.temperature

    ps, rs, ls = rollouts(t)
    gen = torch.Generator().manual_seed(0)
    advantages = (0.3 * torch.randn(len(ps), generator=gen)).tolist()
    trainer.train_step(RolloutBatch(ps, rs, advantages, ls, temperature=t), None, lam=0.0)
    report(f"after one update, before the sync (T={t})", *rollouts(t), t)
    if args.engine_rounding == "stochastic":  # as a run's sync sends them
        engine.load_weights(trainer.engine_weights(args.engine_dtype, step=0))
    else:
        engine.load_weights(trainer.named_weights())
    report(f"after one update and the sync (T={t}, {args.engine_rounding})", *rollouts(t), t)


if __name__ == "__main__":
    main()
