"""The model work (FLOPs) each stage of a METIS iteration did, counted from the step's hand-off files.

A dense decoder's forward costs 2 FLOPs per parameter per token it runs, and the update's forward
plus backward 6 (attention scores are left out, as bench/roofline.py's whole-model row leaves
them out). The LM head runs only where logits are needed, so the body (every parameter but the
LM head, which SmolLM2 ties to its embedding) and the head are counted apart:

- judge: the judgment prompts, each shared prefix once (an ideal prefix cache: what vLLM's
  automatic prefix caching computes at best), plus every decoded token and, with
  judge.scoring=expected, the one-token scoring requests; logits at each decoded or scored token.
- rollout: each selected prompt once (its n samples share it), plus every completion token.
- update: the batch as the trainer packs it (metis_core.batch.prefix_groups: each group's prefix
  once, then the suffixes) for the rollouts and, when the judge is trained, the selected
  judgments; LM head on the trained tokens only.

So the TFLOP here are the work a stage could not avoid, and TFLOP/s the rate it achieved on it:
compare with bench/roofline.py's whole-model rate on this machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metis_core.batch import prefix_groups, shared_prefix_len


@dataclass(frozen=True)
class ModelSize:
    body: int
    """Parameters every token runs through: all but the LM head."""
    head: int
    """LM head parameters (vocab x hidden), run only where logits are needed."""


def model_size(model_dir: str | Path) -> ModelSize:
    """Parameter counts of an HF causal LM, from its config alone (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return size_of(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)))


def size_of(model: Any) -> ModelSize:
    """Parameter counts of a loaded HF causal LM (the trainer's module, say)."""
    head = model.get_output_embeddings().weight.numel()
    unique = {id(p): p.numel() for p in model.parameters()}  # a tied head counts once
    embedding = model.get_input_embeddings().weight.numel()
    tied = model.config.tie_word_embeddings
    return ModelSize(body=sum(unique.values()) - head - (0 if tied else embedding), head=head)


def unique_prefix_tokens(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens an ideal prefix cache computes for these prompts: each distinct prefix once (the
    nodes of their token trie)."""
    ordered = sorted(tuple(p) for p in prompts)
    # sorted, a prompt shares the most with its predecessor
    previous = [(), *ordered]  # the first has none: shares 0
    return sum(len(p) - shared_prefix_len([p, q]) for p, q in zip(ordered, previous, strict=False))


def packed_tokens(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> int:
    """Tokens the trainer runs for these rows: each prefix group's prefix once, then every row's
    suffix (rest of its prompt and its response)."""
    prefixes, row_group = prefix_groups(prompts)
    suffixes = sum(
        len(p) - len(prefixes[g]) + len(r)
        for p, r, g in zip(prompts, responses, row_group, strict=True)
    )
    return sum(len(p) for p in prefixes) + suffixes


Rows = tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]]


def update_tflop(size: ModelSize, batches: Sequence[Rows]) -> float:
    """Forward and backward over (prompts, responses) batches as the trainer packs them, the LM
    head on the responses' (trained) tokens."""
    body = sum(packed_tokens(prompts, responses) for prompts, responses in batches)
    trained = sum(len(r) for _, responses in batches for r in responses)
    return 6 * (size.body * body + size.head * trained) / 1e12


def stage_work(step_dir: Path, size: ModelSize, trains_judge: bool) -> dict[str, float]:
    """TFLOP of the judge, rollout and update stages of one step (those whose files exist)."""

    def tflop(per_param: int, body_tokens: int, head_tokens: int) -> float:
        return per_param * (size.body * body_tokens + size.head * head_tokens) / 1e12

    work: dict[str, float] = {}
    judged, chosen = [], {}
    judgments_file = step_dir / "judgments.json"
    if judgments_file.is_file():
        judged = [
            c
            for c in json.loads(judgments_file.read_text())["candidates"]
            if c.get("prompt_token_ids")
        ]
        chosen = {c["prompt_id"]: c for c in judged}
    if judged:
        decoded = sum(len(c["judgment_token_ids"]) + c.get("scoring_tokens", 0) for c in judged)
        prompts = unique_prefix_tokens([c["prompt_token_ids"] for c in judged])
        work["judge"] = tflop(2, prompts + decoded, decoded)
    rollouts_file = step_dir / "rollouts.json"
    if not rollouts_file.is_file():
        return work
    groups = json.loads(rollouts_file.read_text())
    completions = sum(len(c["token_ids"]) for g in groups for c in g["completions"])
    prompt_tokens = sum(len(g["prompt_token_ids"]) for g in groups)
    work["rollout"] = tflop(2, prompt_tokens + completions, completions)
    prompts = [g["prompt_token_ids"] for g in groups for _ in g["completions"]]
    responses = [c["token_ids"] for g in groups for c in g["completions"]]
    batches: list[Rows] = [(prompts, responses)]
    judge_rows = [chosen[g["prompt_id"]] for g in groups if g["prompt_id"] in chosen]
    if trains_judge and judge_rows:
        batches.append(
            (
                [c["prompt_token_ids"] for c in judge_rows],
                [c["judgment_token_ids"] for c in judge_rows],
            )
        )
    work["update"] = update_tflop(size, batches)
    return work
