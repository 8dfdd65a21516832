"""update, sync, evaluate, checkpoint: change the policy, push it to the engine, measure, save."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from metis_core import checkpoints
from metis_core.domains import decoding_regex
from metis_core.failpoints import failpoint
from metis_core.metrics import accuracy_metrics, spread_over_domains
from metis_core.ports import JudgmentBatch, RolloutBatch
from metis_core.run import Run, read_json, trains_judge, write_json
from metis_core.stages.curriculum import judgment_regex
from metis_core.stages.generation import sample_and_score

SYNC_PROBE = "Sync probe: 12 + 30 = 42."


def update(
    run: Run, step: int, rollouts_file: Path, verified_file: Path, judgments_file: Path
) -> dict[str, float]:
    """One policy step on L_task + lambda * L_judge (DeepSpeed), on the distributions the tokens
    were sampled from: the rollout / judge temperature, each row's decoding constraint, and the
    engine's log-probs for the mismatch check and the importance correction."""
    groups = read_json(rollouts_file)
    verified = {v["prompt_id"]: v for v in read_json(verified_file)}
    sampling = run.cfg.rollout
    rollouts = RolloutBatch(
        [],
        [],
        [],
        engine_logprobs=[],
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        regexes=[],
    )
    for g in groups:
        regex = decoding_regex(run.cfg, run.train_row(g["prompt_id"]))
        for c, adv in zip(g["completions"], verified[g["prompt_id"]]["advantages"], strict=True):
            rollouts.prompt_ids.append(g["prompt_token_ids"])
            rollouts.response_ids.append(c["token_ids"])
            rollouts.advantages.append(adv)
            rollouts.engine_logprobs.append(c["logprobs"])  # type: ignore[union-attr]
            rollouts.regexes.append(regex)  # type: ignore[union-attr]
    judgments = None
    metrics: dict[str, float] = {}
    if trains_judge(run.cfg, run.sampler):
        candidates = {c["prompt_id"]: c for c in read_json(judgments_file)["candidates"]}
        chosen = [candidates[g["prompt_id"]] for g in groups]
        rewards = [verified[c["prompt_id"]]["judge_reward"] for c in chosen]
        batch_mean = sum(rewards) / len(rewards)
        judgments = JudgmentBatch(
            prompt_ids=[c["prompt_token_ids"] for c in chosen],
            judgment_ids=[c["judgment_token_ids"] for c in chosen],
            rewards=rewards,
            baseline=run.baseline.current(batch_mean),
            # absent from judgments written before the engine reported them (a resumed old run)
            engine_logprobs=None
            if any(c.get("judgment_logprobs") is None for c in chosen)
            else [c["judgment_logprobs"] for c in chosen],
            temperature=run.cfg.judge.temperature,
            regexes=[judgment_regex(run.cfg)] * len(chosen),
        )
        metrics["judge/baseline"] = judgments.baseline
        metrics["judge/reward_mean"] = batch_mean
    metrics.update(run.trainer.train_step(rollouts, judgments, run.cfg.judge.lam))
    trained = zip(rollouts.prompt_ids, rollouts.response_ids, strict=True)
    run.charge("trainer_tokens", sum(len(p) + len(r) for p, r in trained))
    if judgments is not None:
        judged = zip(judgments.prompt_ids, judgments.judgment_ids, strict=True)
        run.charge("trainer_tokens", sum(len(p) + len(j) for p, j in judged))
    if judgments is not None:
        run.baseline.update(metrics["judge/reward_mean"])
    return metrics


def sync(run: Run, step: int) -> dict[str, float]:
    """New weights into the engine, then a check that they arrived: on a fixed probe sequence the
    engine's log-probs must now match the trainer's (gap) and differ from its own before (change)."""
    probe = run.engine.tokenizer.encode(SYNC_PROBE, add_special_tokens=False)
    before = run.engine.sequence_logprobs(probe)
    run.engine.load_weights(run.trainer.engine_weights(run.cfg.model.dtype, step))
    after = run.engine.sequence_logprobs(probe)
    trainer_lp = run.trainer.sequence_logprobs(probe)
    return {
        "sync/max_logprob_gap": max(abs(a - b) for a, b in zip(after, trainer_lp, strict=True)),
        "sync/max_logprob_change": max(abs(a - b) for a, b in zip(after, before, strict=True)),
    }


def evaluate(run: Run, step: int) -> dict[str, float]:
    """Held-out accuracy: avg@k (mean reward over k samples), pass@1 and pass@k (unbiased), over
    all held-out prompts, per domain and per task. The prompts are spread evenly over the domains."""
    cfg = run.cfg.eval
    rows = spread_over_domains(run.rows("heldout"), cfg.max_prompts)
    results = sample_and_score(
        run.engine,
        run.cfg,
        rows,
        [run.task_prompt_ids(r) for r in rows],
        k=cfg.samples,
        temperature=cfg.temperature,
        seed=run.engine_seed(step, "evaluate"),
    )
    write_json(run.step_file(step, "evaluation"), results)
    return accuracy_metrics(results, cfg.samples, prefix="eval")


def latest_heldout_accuracy(run: Run, through_step: int | None = None) -> float | None:
    """The policy's most recent held-out avg@k (the steps table), at `through_step` or before
    when given; None before any evaluation."""
    key = f"eval/avg_at_{run.cfg.eval.samples}"
    return run.store.latest_metric(run.run_id, key, through_step)


def checkpoint(
    run: Run, step: int, keep: int = 2, before_commit: Callable[[], None] = lambda: None
) -> Path:
    """DeepSpeed checkpoint (weights, optimiser, sampler state, judge baseline, spend totals) plus
    an HF export of the policy, written so a half-written one is never resumed from
    (metis_core/checkpoints.py); MLflow gets where it is before it counts as complete, so a kill
    in between replays the step and logs nothing twice. `before_commit` runs last of all."""

    def save(folder: Path) -> None:
        run.trainer.save_checkpoint(run.checkpoint_dir, folder.name, run.client_state(step))
        failpoint("checkpoint-write", step)
        run.trainer.export_hf(folder / "hf")
        run.engine.tokenizer.save_pretrained(str(folder / "hf"))
        # The weights stay on disk (hundreds of MB); MLflow gets where they are, for the UI.
        manifest = {
            "step": step,
            "deepspeed": str(folder.resolve()),
            "hf_export": str((folder / "hf").resolve()),
        }
        run.tracker.log_dict(manifest, f"checkpoints/{folder.name}.json")
        run.tracker.set_tag("metis.latest_checkpoint", manifest["hf_export"])
        if run.cfg.register_checkpoints:
            accuracy = latest_heldout_accuracy(run)
            run.tracker.register_checkpoint(
                manifest["hf_export"], step, run.run_id, accuracy, run.cfg.registered_versions_kept
            )
        before_commit()

    return checkpoints.write(run.checkpoint_dir, step, save, keep).path


def register_restored(run: Run, step: int, folder: Path) -> None:
    """The checkpoint a resumed run restarts from (`folder`, written at `step`) as a model
    version, if it has none: its registration is lost when MLflow was down as it was taken and the
    process was killed before MLflow came back. Idempotent: a registered one is found, not added
    again."""
    hf_dir = folder / "hf"
    if run.cfg.register_checkpoints and (hf_dir / "config.json").is_file():
        run.tracker.register_checkpoint(
            str(hf_dir.resolve()),
            step,
            run.run_id,
            latest_heldout_accuracy(run, through_step=step),
            run.cfg.registered_versions_kept,
        )
