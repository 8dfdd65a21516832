"""The trainer: one DeepSpeed engine holding the policy, stepping on L_task + lambda * L_judge.

DeepSpeed runs with gloo on CPU (world size 1 here, N ranks in a trainer group), the CUDA
accelerator on GPU. One `train_step` is one optimiser step per PPO epoch: the batch is cut
into micro-batches whose losses are weighted (metis_core.batch.micro_batch_weight) so their sum
equals the whole batch's loss; gradients accumulate over the micro-batches and `step()` closes the
epoch (unmanaged gradient accumulation: the batch decides the number of micro-batches).

What is trained is what was sampled (docs/metis.md, "What the update trains on"):
- log-probs at the sampling temperature (rollout.temperature for rollouts, judge.temperature for
  judgments), and under the decoding constraint's mask for constrained tokens;
- each token's loss weighted by min(pi_trainer / pi_engine, C) (truncated importance sampling)
  for the engine/trainer precision gap, which is measured every step and stops the run above
  `trainer.max_logprob_gap`;
- the judge's REINFORCE term on the first PPO epoch only (on-policy; its weight does not grow with
  ppo_epochs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from metis_core.algorithms import (
    agg_loss,
    judge_loss,
    kl_k3,
    logprob_mismatch,
    policy_token_loss,
    truncated_is_weights,
)
from metis_core.batch import (
    GroupedBatch,
    micro_batch_weight,
    pack_grouped,
    pack_sequences,
    response_values,
)
from metis_core.config import TrainerConfig
from metis_core.group_sequences import micro_batch_slices
from metis_core.ports import JudgmentBatch, RolloutBatch
from metis_core.rounding import engine_weights, round_copies
from metis_core.trainer.attention import register_trainer_attention
from metis_core.trainer.deepspeed_settings import deepspeed_config
from metis_core.trainer.distributed import (
    across_ranks,
    gathered,
    init_single_process_distributed,
    single_process_environment,
)
from metis_core.trainer.forward import (
    full_attention_only,
    full_logprobs,
    grouped_logprobs,
    logit_postprocess,
    prompt_features,
    sequence_logprobs,
)
from metis_core.trainer.hardware import precision_advice, precision_hint
from metis_core.trainer.masters import float32_tensors, master_weight
from metis_core.trainer.rollout_correction import correct_tokens, summarize_mismatch

log = logging.getLogger(__name__)


class PolicyTrainer:
    def __init__(
        self,
        model_dir: str | Path,
        cfg: TrainerConfig,
        max_response_tokens: int,
        engine_dtype: str = "float32",
    ) -> None:
        """`engine_dtype`: the inference engine's dtype, which sets the default limit on the
        engine/trainer log-prob gap (TrainerConfig.logprob_gap_limit)."""
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.model_dir = str(model_dir)
        self.max_response_tokens = max_response_tokens
        self.max_logprob_gap = cfg.logprob_gap_limit(engine_dtype)
        attention = register_trainer_attention()
        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=torch.float32, attn_implementation=attention
        )
        model.config.use_cache = False
        # Raises for a model whose logits are not its LM head's output up to a known post-processing.
        self.postprocess = logit_postprocess(model)
        self.reference = None
        if cfg.kl_coef > 0:
            self.reference = AutoModelForCausalLM.from_pretrained(
                self.model_dir, dtype=torch.float32, attn_implementation=attention
            ).eval()
            self.reference.requires_grad_(False)
        self.pad_id = model.config.pad_token_id or model.config.eos_token_id or 0
        # one forward pass per micro-batch under a mask where every layer can take that mask
        self.one_pass = full_attention_only(model.config)
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self._constraints: Any = None
        # fused: one kernel over all parameters (CPU and CUDA), not a dozen ops per parameter
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )
        with single_process_environment():  # (DeepSpeed reads LOCAL_RANK as it initializes)
            init_single_process_distributed()
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=deepspeed_config(cfg)
            )
        if self.engine.dp_world_size == 1 and cfg.zero_stage == 0:
            # nothing to reduce: at each step DeepSpeed would still flatten every gradient into
            # one buffer, all-reduce it over the one rank and copy it back, 0.07-0.12 s a bf16
            # step for SmolLM2-135M, 0.12-0.51 s fp32 (docs/BENCHMARKS.md). (ZeRO 1-2 move the
            # gradients into their partitions on that path: it stays.)
            self.engine.enable_backward_allreduce = False
        self.device = torch.device(self.engine.device)
        if self.reference is not None:  # where DeepSpeed put the policy: a GPU where there is one
            self.reference.to(self.device)
        self.autocast = cfg.precision == "autocast-bf16"
        if advice := precision_advice(cfg.precision, self.device):
            log.warning(advice)  # e.g. bf16 on an AVX2-only CPU: slower than fp32
        if hint := precision_hint(cfg.precision, self.device):
            log.info(hint)  # fp32 where bf16 matmuls are native

    # ---- forward passes -------------------------------------------------------------------------
    def _logprobs(
        self,
        batch: GroupedBatch,
        temperature: float,
        top_p: float = 1.0,
        model: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """[N, S] log-probs of the batch's trained tokens under the policy (or `model`), in the
        distribution they were sampled from: temperature, top-p, each row's decoding constraint."""
        model = self.engine.module if model is None else model
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.one_pass:
                return sequence_logprobs(
                    model, batch, self.device, self.pad_id, self.postprocess, temperature, top_p
                )
            return grouped_logprobs(
                model,
                batch,
                self.device,
                postprocess=self.postprocess,
                temperature=temperature,
                top_p=top_p,
            )

    @torch.no_grad()
    def sequence_logprobs(self, token_ids: list[int]) -> list[float]:
        """The trainer's log-prob of each token after the first (compare with the engine's), in
        float32 arithmetic on the weights the engine is sent (named_weights), so the sync check
        measures the engine, not the trainer's bf16 rounding (autocast, or bf16 weights)."""
        self.engine.eval()
        batch = pack_sequences([token_ids[:1]], [token_ids[1:]], self.pad_id)
        with float32_tensors(self.engine.module, self._master):
            logprobs = full_logprobs(self.engine.module, batch, self.device, self.postprocess)
        return logprobs[0].tolist()

    @torch.no_grad()
    def prompt_features(self, prompts: list[list[int]]) -> list[list[float]]:
        """Mean last-layer hidden state of each prompt under the current policy (not trained by it)."""
        self.engine.eval()
        batch = pack_sequences(prompts, [[] for _ in prompts], self.pad_id)
        return prompt_features(self.engine.module, batch, self.device).tolist()

    def _bitmasks(
        self, responses: Sequence[Sequence[int]], regexes: Sequence[str | None] | None
    ) -> list[torch.Tensor | None] | None:
        if not regexes or not any(regexes):
            return None
        if self._constraints is None:
            from transformers import AutoTokenizer

            from metis_core.trainer.constraints import ConstraintMasks

            tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            self._constraints = ConstraintMasks(tokenizer, self.vocab_size)
        return [
            None if regex is None else self._constraints.bitmask(regex, response)
            for regex, response in zip(regexes, responses, strict=True)
        ]

    def _pack(
        self,
        prompts: list[list[int]],
        responses: list[list[int]],
        regexes: Sequence[str | None] | None,
        engine_logprobs: list[list[float]] | None,
    ) -> list[tuple[slice, GroupedBatch, torch.Tensor | None]]:
        """Micro-batches of consecutive rows, each grouped by shared prefix (see GroupedBatch),
        with the constraint masks of constrained rows and the engine's log-probs laid out like
        the loss mask."""
        masks = self._bitmasks(responses, regexes)
        packs = []
        cfg = self.cfg
        slices = micro_batch_slices(
            prompts, responses, cfg.micro_batch_size, cfg.micro_batch_tokens, self.one_pass
        )
        for s in slices:
            mb = pack_grouped(
                prompts[s], responses[s], self.pad_id, None if masks is None else masks[s]
            )
            engine_lp = (
                None
                if engine_logprobs is None
                else response_values(mb.loss_mask, engine_logprobs[s])
            )
            packs.append((s, mb, engine_lp))
        return packs

    # ---- the update -----------------------------------------------------------------------------
    def train_step(
        self, rollouts: RolloutBatch, judgments: JudgmentBatch | None, lam: float
    ) -> dict[str, float]:
        """One optimiser step per PPO epoch on L_task + lam * L_judge. Returns scalar metrics.

        Raises EngineTrainerMismatch, before any weight changes, when the mean gap between the
        trainer's and the engine's log-probs of the sampled tokens exceeds max_logprob_gap."""
        cfg = self.cfg
        packs = self._pack(
            rollouts.prompt_ids, rollouts.response_ids, rollouts.regexes, rollouts.engine_logprobs
        )
        advantages = torch.tensor(rollouts.advantages, dtype=torch.float32)
        # data parallel: each rank holds a share of the batch; the loss is normalised by the whole
        # batch's tokens and rows, and scaled by the world size that DeepSpeed averages over
        local = [
            sum(float(mb.loss_mask.sum()) for _, mb, _ in packs),
            float(len(rollouts.prompt_ids)),
        ]
        (total_tokens, n_rows), world = across_ranks(local)
        n_seq = int(n_rows)
        judge_packs = None
        if judgments is not None and lam > 0 and judgments.prompt_ids:
            judge_packs = self._pack(
                judgments.prompt_ids,
                judgments.judgment_ids,
                judgments.regexes,
                judgments.engine_logprobs,
            )
        # Filled on the first epoch, before any optimiser step: the trainer's log-probs of the
        # sampled tokens ("old" for the PPO ratio) and the rollout-correction weights.
        old: list[torch.Tensor] = []
        is_weights: list[torch.Tensor | None] = []
        mismatch: list[dict[str, float]] = []
        metrics: dict[str, float] = {}
        for epoch in range(cfg.ppo_epochs):
            self.engine.train()
            sums = {"task_loss": 0.0, "clip_frac": 0.0, "kl": 0.0}
            for k, (s, mb, engine_lp) in enumerate(packs):
                mask = mb.loss_mask.to(self.device)
                logprobs = self._logprobs(mb, rollouts.temperature, rollouts.top_p)
                if epoch == 0:
                    old.append(logprobs.detach())
                    weights = correct_tokens(logprobs, engine_lp, mask, self.cfg, mismatch)
                    is_weights.append(weights)
                token_loss, clipped = policy_token_loss(
                    logprobs, old[k], advantages[s].to(self.device), cfg.clip_eps, is_weights[k]
                )
                weight = micro_batch_weight(mb.loss_mask, total_tokens, n_seq, cfg.loss_agg)
                loss = agg_loss(token_loss, mask, cfg.loss_agg, self.max_response_tokens) * weight
                sums["task_loss"] += loss.item()
                sums["clip_frac"] += float((clipped.float() * mask).sum()) / max(total_tokens, 1.0)
                if self.reference is not None:
                    with torch.no_grad():
                        ref = self._logprobs(
                            mb, rollouts.temperature, rollouts.top_p, model=self.reference
                        )
                    kl = (
                        agg_loss(kl_k3(logprobs, ref), mask, cfg.loss_agg, self.max_response_tokens)
                        * weight
                    )
                    sums["kl"] += kl.item()
                    loss = loss + cfg.kl_coef * kl
                self.engine.backward(loss * world, scale_wrt_gas=False)
            if epoch == 0:
                # the whole batch's gap, so every rank stops (or goes on) together
                metrics |= summarize_mismatch(gathered(mismatch), "mismatch", self.max_logprob_gap)
                if judge_packs is not None:  # on-policy: the first epoch only
                    metrics |= self._judge_backward(judge_packs, judgments, lam)  # type: ignore[arg-type]
            self.engine.step()
            self._round_bf16_copies()
            metrics |= sums
        # each rank summed its share of the batch's loss terms: report the whole batch's
        (metrics["task_loss"], metrics["clip_frac"], metrics["kl"]), _ = across_ranks(
            [metrics["task_loss"], metrics["clip_frac"], metrics["kl"]]
        )
        grad_norm = self.engine.get_global_grad_norm()  # None where DeepSpeed did not compute it
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        metrics["response_tokens"] = total_tokens
        metrics["trainer/ranks"] = float(world)  # the data-parallel ranks that took the step
        return metrics

    def _judge_backward(
        self,
        packs: list[tuple[slice, GroupedBatch, torch.Tensor | None]],
        judgments: JudgmentBatch,
        lam: float,
    ) -> dict[str, float]:
        # log pi(judgment | judgment prompt) of the distribution the judgment was sampled from:
        # judge temperature, and the constraint's mask when judgments are constrained
        # (docs/metis.md). Sequence-level TIS: one weight per judgment.
        rewards = torch.tensor(judgments.rewards, dtype=torch.float32)
        (n_rows,), world = across_ranks([float(len(judgments.prompt_ids))])
        n = int(n_rows)
        total, mismatch = 0.0, []
        for s, mb, engine_lp in packs:
            mask = mb.loss_mask.to(self.device)
            logprobs = self._logprobs(mb, judgments.temperature)
            seq_logprob = (logprobs * mask).sum(dim=-1)
            weights = None
            if engine_lp is not None:
                engine_lp = engine_lp.to(self.device)
                mismatch.append(logprob_mismatch(logprobs, engine_lp, mask))
                if self.cfg.rollout_correction == "tis":
                    weights = truncated_is_weights(
                        seq_logprob, (engine_lp * mask).sum(dim=-1), self.cfg.tis_cap
                    )
            loss = judge_loss(seq_logprob, rewards[s].to(self.device), judgments.baseline, weights)
            loss = loss * ((s.stop - s.start) / n)
            total += loss.item()
            self.engine.backward(lam * loss * world, scale_wrt_gas=False)
        (total,), _ = across_ranks([total])  # the whole batch's judge loss, on every rank
        return {"judge_loss": total} | summarize_mismatch(
            gathered(mismatch), "mismatch/judge", self.max_logprob_gap
        )

    # ---- weights out: sync and checkpoints ------------------------------------------------------
    def _master(self, param: torch.Tensor) -> torch.Tensor:
        """The fp32 weight the optimiser steps for `param` (masters.py)."""
        return master_weight(self.engine.optimizer, param)

    def _round_bf16_copies(self) -> None:
        """precision=bf16, stochastic: remake the bf16 weights from the masters (rounding.py)."""
        if self.cfg.precision == "bf16" and self.cfg.bf16_rounding == "stochastic":
            params = [p for p in self.engine.module.parameters() if p.dtype == torch.bfloat16]
            round_copies([(p, self._master(p)) for p in params], step=self.engine.global_steps)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full HF-named fp32 weights (gathered under ZeRO-3) for the inference engine: under
        precision=bf16 the master weights, not their bf16 copies, since updates at lr 1e-5 are
        mostly below bf16's resolution: sent the bf16 copies, the engine sampled a policy that
        moved 0.01-0.03 nats a step where fp32's moved 0.3 (docs/BENCHMARKS.md)."""
        module = self.engine.module
        if self.cfg.zero_stage == 3:
            import deepspeed

            params = list(module.parameters())
            with deepspeed.zero.GatheredParameters(params):
                yield from ((n, self._master(p).clone()) for n, p in module.named_parameters())
        else:
            yield from ((n, self._master(p)) for n, p in module.named_parameters())

    def engine_weights(self, engine_dtype: str, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        """What an engine of `engine_dtype` is sent after step `step`'s update. A bf16 engine
        beside a bf16 trainer whose copies are rounded stochastically gets those copies: they
        already equal the masters in expectation, the engine then samples the very policy the
        trainer's forward computes, and no second rounding is paid. Otherwise
        `rounding.engine_weights` of the masters."""
        own_copies = (
            engine_dtype == "bfloat16"
            and self.cfg.precision == "bf16"
            and self.cfg.bf16_rounding == "stochastic"
        )  # (stochastic rounding needs zero_stage 0-2: the copies are whole)
        if own_copies:
            yield from ((n, p.detach()) for n, p in self.engine.module.named_parameters())
        else:
            yield from engine_weights(self.named_weights(), engine_dtype, step)

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state)

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        _, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        if client_state is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        return client_state

    def close(self) -> None:
        """Nothing to release: the trainer lives in this process (the port's close is for a
        trainer group in processes of its own)."""

    def export_hf(self, directory: Path) -> None:
        """An HF folder of the current policy (for `metis eval`, a restarted engine, the model registry)."""
        state = dict(self.named_weights())
        self.engine.module.save_pretrained(str(directory), state_dict=state)
