"""The DeepSpeed policy update's settings. Part of `RunConfig` (metis_core/config.py) as its
`trainer` section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from metis_core.config_section import Section as _Section
from metis_core.precision import auto_precision, trainer_has_native_bf16


class TrainerConfig(_Section):
    lr: float = Field(1e-5, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage."""
    ranks: int = Field(1, ge=1)
    """Data-parallel ranks of the update. 1: the trainer runs in the flow's process. N > 1: a
    group of N ranks that torchrun starts on this machine (metis_core/trainer/group.py); each
    trains on its share of the step's prompt groups (group i on rank i mod N) and the update
    equals the one-rank update on the whole batch. Needs at least N prompts per step
    (curriculum.batch_prompts) and ZeRO stage 0 or 1 (gradients reduced once per step)."""
    nodes: int = Field(1, ge=1)
    """Machines the ranks span, trainer.ranks / nodes on each. 1: all on this machine. N > 1:
    this machine (the flow's) is node 0 and holds rank 0; every other node runs `metis
    trainer-node --node-rank I` with the same config (docs/deployments.md), and the run waits
    for them when its trainer starts. Checkpoints need a folder every node sees."""
    rendezvous: str = "127.0.0.1:29500"
    """HOST:PORT where the nodes' ranks meet (torchrun's master address and port, on node 0):
    an address of node 0 that the other nodes reach. Used when nodes > 1."""
    precision: Literal["auto", "fp32", "bf16", "autocast-bf16"] = "auto"
    """auto (bf16 where the trainer's hardware multiplies bf16 natively: a CUDA GPU, a CPU with
    AMX or AVX512-BF16; fp32 elsewhere, and where ZeRO-3 or several ranks at ZeRO-1 would shard
    the bf16 state; metis_core/precision.py); fp32; bf16 (DeepSpeed bf16 weights and gradients,
    fp32 master weights and AdamW state, the bf16 weights remade from the masters by
    stochastic rounding after each step); autocast-bf16 (fp32 weights, bf16 matmuls). On a 2-core
    AMX CPU, bf16 learned as fp32 did over the 16-step default (3 seeds each, a tie) at 0.69 of
    fp32's time per iteration; on an AVX2-only CPU its matmuls ran 15-20x slower than fp32's, and
    the trainer warns (docs/BENCHMARKS.md). A run's folder stores what auto became: a resumed run
    keeps it."""
    bf16_rounding: Literal["stochastic", "nearest"] = "stochastic"
    """How precision=bf16 makes its bf16 weights from the fp32 masters after each step. At lr
    1e-5 most updates are below bf16's resolution: rounded to nearest, the bf16 weights lag the
    masters in the direction of the updates, and the trainer/engine gap grew to 0.3 nats/token
    within 4 steps; rounded stochastically (metis_core/rounding.py), the copies equal the
    masters in expectation, to about 2.4e-4 of a bf16 step. Stochastic needs zero_stage 0-2
    (ZeRO-3 shards the copies)."""
    micro_batch_size: int = Field(64, gt=0)
    """Rows per forward/backward pass; gradients accumulate to one optimiser step. Rows sharing a
    prompt run it once (metis_core/batch.py), so fewer, larger micro-batches are much faster;
    lower it only to save memory. Keep it a multiple of rollout.n so groups stay whole."""
    micro_batch_tokens: int = Field(8192, gt=0)
    """At most this many padded tokens per forward/backward pass (rows x the longest row; where
    each shared-prefix group is one sequence, groups x the longest group's), whatever
    micro_batch_size says: memory follows tokens, not rows (the logits alone are tokens x 49152
    x 4 bytes for SmolLM2, 1.6 GB at 8192). Long-prompt domains (BFCL) get smaller batches."""
    ppo_epochs: int = Field(1, ge=1)
    """Optimiser passes over each batch; ratios are clipped when it is > 1."""
    clip_eps: float = Field(0.2, gt=0)
    """PPO ratio clip range epsilon (active only when ppo_epochs > 1)."""
    loss_agg: Literal[
        "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    ] = "token-mean"
    """How token losses are aggregated (verl's names)."""
    kl_coef: float = Field(0.0, ge=0)
    """Weight of a k3 KL penalty to the initial policy; 0 keeps no reference model."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip."""
    deepspeed_config: str | None = None
    """Optional DeepSpeed JSON file merged over the one metis generates from these fields."""
    rollout_correction: Literal["tis", "none"] = "tis"
    """`tis`: weight each sampled token's loss by min(pi_trainer / pi_engine, tis_cap), truncated
    importance sampling for the gap between the inference engine (bf16 by default) and the fp32
    trainer, as TRL and verl do; judgments get one weight per sequence. `none`: no correction."""
    tis_cap: float = Field(2.0, ge=1)
    """C: the largest importance weight TIS gives a token (verl's default)."""
    max_logprob_gap: float | None = Field(None, gt=0)
    """The run stops, before the update, when the mean |log pi_trainer - log pi_engine| of the
    sampled tokens exceeds this (nats/token). Unset: 0.01 when the engine is float32 and the
    trainer fp32 (measured 5e-6), 0.3 when either computes in bfloat16 (measured 0.03-0.12; a
    wrong temperature gave 0.23; docs/metis.md)."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_precision(cls, data: Any) -> Any:
        """precision=auto -> bf16 or fp32 for this machine (metis_core/precision.py)."""
        if not isinstance(data, dict) or data.get("precision", "auto") != "auto":
            return data
        fields = cls.model_fields

        def given(name: str) -> Any:
            return data.get(name, fields[name].default)

        try:
            zero_stage, ranks = int(given("zero_stage")), int(given("ranks"))
        except (TypeError, ValueError):  # the fields' own validation says what is wrong
            return data
        precision = auto_precision(
            zero_stage, ranks, str(given("bf16_rounding")), trainer_has_native_bf16()
        )
        return {**data, "precision": precision}

    @model_validator(mode="after")
    def _ranks_need_one_reduction_per_step(self) -> TrainerConfig:
        # ZeRO 2 and 3 reduce gradients at every micro-batch, so every rank would need the same
        # number of micro-batches; stages 0 and 1 reduce once, at step(), whatever each rank holds
        if self.ranks > 1 and self.zero_stage > 1:
            raise ValueError(
                f"trainer.ranks={self.ranks} needs trainer.zero_stage 0 or 1 (got "
                f"{self.zero_stage}): stages 2 and 3 reduce gradients per micro-batch, and the "
                "ranks' shares need not have the same number of micro-batches"
            )
        if self.ranks > 1 and self.zero_stage == 1 and self.precision == "bf16":
            raise ValueError(
                f"trainer.ranks={self.ranks} with precision=bf16 needs trainer.zero_stage 0: "
                "ZeRO-1 shards the fp32 master weights across the ranks, and rank 0 alone reads "
                "them whole for the engine and the sync check"
            )
        return self

    @model_validator(mode="after")
    def _nodes_share_the_ranks(self) -> TrainerConfig:
        if self.ranks % self.nodes:
            raise ValueError(
                f"trainer.ranks={self.ranks} do not split evenly over trainer.nodes={self.nodes}: "
                "give every node the same number of ranks"
            )
        host, _, port = self.rendezvous.rpartition(":")
        if self.nodes > 1 and not (host and port.isdigit()):
            raise ValueError(f"trainer.rendezvous={self.rendezvous!r} is not HOST:PORT")
        return self

    @model_validator(mode="after")
    def _stochastic_rounding_needs_whole_copies(self) -> TrainerConfig:
        if self.precision == "bf16" and self.bf16_rounding == "stochastic" and self.zero_stage == 3:
            raise ValueError(
                "trainer.bf16_rounding=stochastic rounds whole bf16 weights, which ZeRO-3 shards "
                "across ranks: set trainer.zero_stage to 0-2 or trainer.bf16_rounding=nearest"
            )
        return self

    def logprob_gap_limit(self, engine_dtype: str) -> float:
        """max_logprob_gap, or its default for the engine's dtype and this trainer's precision."""
        if self.max_logprob_gap is not None:
            return self.max_logprob_gap
        return 0.01 if engine_dtype == "float32" and self.precision == "fp32" else 0.3
