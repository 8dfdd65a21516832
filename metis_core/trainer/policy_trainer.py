"""The trainer: one DeepSpeed engine holding the policy, stepping on L_task + lambda * L_judge.

On CPU DeepSpeed runs with the gloo backend in this process (world size 1); on GPU the same code
takes the CUDA accelerator. One `train_step` is one optimiser step per PPO epoch: the batch is cut
into micro-batches whose losses are weighted (metis_core.batch.micro_batch_weight) so their sum
equals the whole batch's loss, and DeepSpeed accumulates gradients until the boundary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metis_core.algorithms import agg_loss, judge_loss, kl_k3, policy_token_loss
from metis_core.batch import (
    GroupedBatch,
    micro_batch_weight,
    micro_batches,
    pack_grouped,
    pack_sequences,
)
from metis_core.config import TrainerConfig
from metis_core.trainer.forward import full_logprobs, grouped_logprobs

log = logging.getLogger(__name__)


@dataclass
class RolloutBatch:
    """B*n sampled sequences and their advantages."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    advantages: list[float]


@dataclass
class JudgmentBatch:
    """|S_t| judgments of the selected prompts, their rewards, and the baseline b_t."""

    prompt_ids: list[list[int]]
    judgment_ids: list[list[int]]
    rewards: list[float]
    baseline: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process_distributed() -> None:
    """World size 1 on this machine: gloo on CPU, nccl on GPU."""
    import deepspeed

    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def deepspeed_config(cfg: TrainerConfig, grad_accum: int) -> dict[str, Any]:
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        # "bf16": DeepSpeed keeps bf16 weights with fp32 master copies; "autocast-bf16": fp32 weights,
        # bf16 matmuls under torch.autocast (fast on CPUs with AMX), handled in PolicyTrainer.
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed_config:
        ds.update(json.loads(Path(cfg.deepspeed_config).read_text()))
    return ds


class PolicyTrainer:
    def __init__(
        self,
        model_dir: str | Path,
        cfg: TrainerConfig,
        rollouts_per_step: int,
        judgments_per_step: int,
        max_response_tokens: int,
    ) -> None:
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        from transformers import AutoModelForCausalLM

        init_single_process_distributed()
        self.cfg = cfg
        self.max_response_tokens = max_response_tokens
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        model.config.use_cache = False
        self.reference = None
        if cfg.kl_coef > 0:
            self.reference = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=torch.float32
            ).eval()
            self.reference.requires_grad_(False)
        self.pad_id = model.config.pad_token_id or model.config.eos_token_id or 0
        # Every optimiser step sees the same number of micro-batches, so the accumulation count is fixed.
        self.grad_accum = math.ceil(rollouts_per_step / cfg.micro_batch_size) + math.ceil(
            judgments_per_step / cfg.micro_batch_size
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg, self.grad_accum)
        )
        self.device = torch.device(self.engine.device)
        self.autocast = cfg.precision == "autocast-bf16"

    # ---- forward passes -------------------------------------------------------------------------
    def _logprobs(self, batch: GroupedBatch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """[N, S] log-probs of the batch's trained tokens under the policy (or `model`)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return grouped_logprobs(
                self.engine.module if model is None else model, batch, self.device
            )

    @torch.no_grad()
    def sequence_logprobs(self, token_ids: list[int]) -> list[float]:
        """The trainer's log-prob of each token after the first (compare with the engine's), in
        full precision so the sync check measures the engine, not autocast rounding."""
        self.engine.eval()
        batch = pack_sequences([token_ids[:1]], [token_ids[1:]], self.pad_id)
        return full_logprobs(self.engine.module, batch, self.device)[0].tolist()

    def _pack(
        self, prompts: list[list[int]], responses: list[list[int]]
    ) -> list[tuple[slice, GroupedBatch]]:
        """Micro-batches of consecutive rows, each grouped by shared prefix (see GroupedBatch)."""
        return [
            (s, pack_grouped(prompts[s], responses[s], self.pad_id))
            for s in micro_batches(len(prompts), self.cfg.micro_batch_size)
        ]

    # ---- the update -----------------------------------------------------------------------------
    def train_step(
        self, rollouts: RolloutBatch, judgments: JudgmentBatch | None, lam: float
    ) -> dict[str, float]:
        """One optimiser step per PPO epoch on L_task + lam * L_judge. Returns scalar metrics."""
        cfg = self.cfg
        packs = self._pack(rollouts.prompt_ids, rollouts.response_ids)
        advantages = torch.tensor(rollouts.advantages, dtype=torch.float32)
        n_seq = len(rollouts.prompt_ids)
        total_tokens = sum(float(mb.loss_mask.sum()) for _, mb in packs)
        old_logprobs = self._old_logprobs(packs) if cfg.ppo_epochs > 1 else None
        judge_packs = None
        if judgments is not None and lam > 0 and judgments.prompt_ids:
            judge_packs = self._pack(judgments.prompt_ids, judgments.judgment_ids)

        metrics: dict[str, float] = {}
        for _epoch in range(cfg.ppo_epochs):
            self.engine.train()
            sums = {"task_loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "judge_loss": 0.0}
            backward_calls = 0
            for k, (s, mb) in enumerate(packs):
                mask = mb.loss_mask.to(self.device)
                logprobs = self._logprobs(mb)
                old = logprobs.detach() if old_logprobs is None else old_logprobs[k].to(self.device)
                token_loss, clipped = policy_token_loss(
                    logprobs, old, advantages[s].to(self.device), cfg.clip_eps
                )
                weight = micro_batch_weight(mb.loss_mask, total_tokens, n_seq, cfg.loss_agg)
                loss = agg_loss(token_loss, mask, cfg.loss_agg, self.max_response_tokens) * weight
                sums["task_loss"] += loss.item()
                sums["clip_frac"] += float((clipped.float() * mask).sum()) / max(total_tokens, 1.0)
                if self.reference is not None:
                    with torch.no_grad():
                        ref = self._logprobs(mb, model=self.reference)
                    kl = (
                        agg_loss(kl_k3(logprobs, ref), mask, cfg.loss_agg, self.max_response_tokens)
                        * weight
                    )
                    sums["kl"] += kl.item()
                    loss = loss + cfg.kl_coef * kl
                self.engine.backward(loss, scale_wrt_gas=False)
                self.engine.step()
                backward_calls += 1
            if judge_packs is not None:
                backward_calls += self._judge_backward(judge_packs, judgments, lam, sums)  # type: ignore[arg-type]
            if backward_calls != self.grad_accum:
                raise RuntimeError(
                    f"a step made {backward_calls} micro-batches but DeepSpeed was set up for {self.grad_accum}; "
                    "every batch must hold B*n rollouts and B judgments"
                )
            metrics = dict(sums)
        grad_norm = self.engine.get_global_grad_norm()  # None where DeepSpeed did not compute it
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        metrics["response_tokens"] = total_tokens
        return metrics

    def _judge_backward(
        self,
        packs: list[tuple[slice, GroupedBatch]],
        judgments: JudgmentBatch,
        lam: float,
        sums: dict[str, float],
    ) -> int:
        # log pi(judgment | judgment prompt) under the *unconstrained* policy: constrained decoding
        # only chose which tokens were emitted; this forward pass scores them with the full softmax.
        rewards = torch.tensor(judgments.rewards, dtype=torch.float32)
        n = len(judgments.prompt_ids)
        for s, mb in packs:
            seq_logprob = (self._logprobs(mb) * mb.loss_mask.to(self.device)).sum(dim=-1)
            loss = judge_loss(seq_logprob, rewards[s].to(self.device), judgments.baseline) * (
                (s.stop - s.start) / n
            )
            sums["judge_loss"] += loss.item()
            self.engine.backward(lam * loss, scale_wrt_gas=False)
            self.engine.step()
        return len(packs)

    @torch.no_grad()
    def _old_logprobs(self, packs: list[tuple[slice, GroupedBatch]]) -> list[torch.Tensor]:
        self.engine.eval()
        return [self._logprobs(mb).cpu() for _, mb in packs]

    # ---- weights out: sync and checkpoints ------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full HF-named parameters (gathered under ZeRO-3) for the inference engine."""
        module = self.engine.module
        if self.cfg.zero_stage == 3:
            import deepspeed

            params = list(module.parameters())
            with deepspeed.zero.GatheredParameters(params):
                yield from ((n, p.detach().clone()) for n, p in module.named_parameters())
        else:
            yield from ((n, p.detach()) for n, p in module.named_parameters())

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state)

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        _, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        if client_state is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        return client_state

    def export_hf(self, directory: Path) -> None:
        """An HF folder of the current policy (for `metis eval`, a restarted engine, the model registry)."""
        state = dict(self.named_weights())
        self.engine.module.save_pretrained(str(directory), state_dict=state)
