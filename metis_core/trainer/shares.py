"""Each data-parallel rank's share of a batch: whole prompt groups, group i on rank i mod N, and
judgment i (the judgment of group i's prompt, metis_core/stages/policy.py) with it.

A group is a run of consecutive rows with the same prompt (the update lays out each prompt's
rollouts one after another). Which rank holds a row does not change the update: the loss is
normalised by the whole batch's tokens and rows (metis_core/trainer/distributed.across_ranks);
keeping groups whole keeps each prompt's shared prefix in one forward pass. Pure: no torch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from metis_core.ports import JudgmentBatch, RolloutBatch

T = TypeVar("T")


class EmptyShare(ValueError):
    """A rank would get no rows: every rank must take part in every backward and reduction."""


def prompt_groups(prompt_ids: list[list[int]]) -> list[int]:
    """The group index of each row: a new group starts wherever the prompt changes."""
    groups: list[int] = []
    for i, prompt in enumerate(prompt_ids):
        same = i > 0 and prompt == prompt_ids[i - 1]
        groups.append(groups[-1] if same else (groups[-1] + 1 if groups else 0))
    return groups


def share_rows(groups: list[int], rank: int, world: int) -> list[int]:
    """The rows (indices) of rank `rank` out of `world`: those whose group is rank mod world."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world} ranks")
    return [i for i, g in enumerate(groups) if g % world == rank]


def _pick(values: list[T] | None, rows: list[int]) -> list[T] | None:
    return None if values is None else [values[i] for i in rows]


def rollout_share(rollouts: RolloutBatch, rank: int, world: int) -> RolloutBatch:
    """The rollouts rank `rank` trains on; raises EmptyShare when it would get none."""
    groups = prompt_groups(rollouts.prompt_ids)
    rows = share_rows(groups, rank, world)
    if not rows:
        count = groups[-1] + 1 if groups else 0
        raise EmptyShare(
            f"{count} prompt groups cannot give each of {world} ranks one "
            "(trainer.ranks must not exceed the prompts per step)"
        )
    return replace(
        rollouts,
        prompt_ids=[rollouts.prompt_ids[i] for i in rows],
        response_ids=[rollouts.response_ids[i] for i in rows],
        advantages=[rollouts.advantages[i] for i in rows],
        engine_logprobs=_pick(rollouts.engine_logprobs, rows),
        regexes=_pick(rollouts.regexes, rows),
    )


def judgment_share(judgments: JudgmentBatch | None, rank: int, world: int) -> JudgmentBatch | None:
    """The judgments rank `rank` trains on: judgment i on rank i mod world, like group i. None
    stays None, and no judgments stay none on every rank; otherwise raises EmptyShare when this
    rank would get none (the judge loss's reduction needs every rank)."""
    if judgments is None or not judgments.prompt_ids:
        return judgments
    rows = share_rows(list(range(len(judgments.prompt_ids))), rank, world)
    if not rows:
        raise EmptyShare(
            f"{len(judgments.prompt_ids)} judgments cannot give each of {world} ranks one"
        )
    return replace(
        judgments,
        prompt_ids=[judgments.prompt_ids[i] for i in rows],
        judgment_ids=[judgments.judgment_ids[i] for i in rows],
        rewards=[judgments.rewards[i] for i in rows],
        engine_logprobs=_pick(judgments.engine_logprobs, rows),
        regexes=_pick(judgments.regexes, rows),
    )
