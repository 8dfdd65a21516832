"""Do honest completions score the same under two versions of the code grader?

Issue 11 moved grading into a trusted process and the candidate into a fresh root; an honest
completion must keep its reward. This takes the policy's own completions on the code prompts of
a config (the embedded model, the config's rollout temperature), and scores them with whichever
`metis_core` is importable, so an older checkout scores the same file through PYTHONPATH:

    .venv/bin/python bench/honest_code_rewards.py generate --out /tmp/honest
    .venv/bin/python bench/honest_code_rewards.py score --out /tmp/honest --label new
    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old .venv/bin/python bench/honest_code_rewards.py score --out /tmp/honest --label old
    .venv/bin/python bench/honest_code_rewards.py compare --out /tmp/honest old new

Each completion is scored continuous and discrete. Files: completions.jsonl, rewards-LABEL.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def generate(out: Path, config: str, prompts: int, n: int) -> None:
    from metis_core.config_loading import load_config
    from metis_core.engine.vllm_engine import PolicyEngine
    from metis_core.launch import build_run_pool, configure_runtime_environment
    from metis_core.model.weights import resolve_model
    from metis_core.run import task_prompt_ids
    from metis_core.stages.generation import generate_for_rows

    configure_runtime_environment()
    cfg = load_config(config)
    rows = [r for r in build_run_pool(cfg) if r["domain"] == "code" and r["split"] == "train"]
    rows = rows[:prompts]
    engine = PolicyEngine(
        resolve_model(cfg.model.path), "bfloat16", cfg.model.max_model_len, seed=0
    )
    ids = [task_prompt_ids(cfg, engine.tokenizer, r) for r in rows]
    groups = generate_for_rows(
        engine, cfg, rows, ids, n=n, temperature=cfg.rollout.temperature, logprobs=False, seed=0
    )
    with (out / "completions.jsonl").open("w") as f:
        for row, group in zip(rows, groups, strict=True):
            keep = {k: row[k] for k in ("answer", "metadata", "task", "difficulty")}
            f.write(json.dumps({**keep, "completions": [c.text for c in group]}) + "\n")
    print(f"{len(rows)} prompts x {n} completions -> {out / 'completions.jsonl'}")


def score(out: Path, label: str) -> None:
    from metis_core.domains.code import code_tests_reward

    records = [json.loads(line) for line in (out / "completions.jsonl").open()]
    start, rewards = time.monotonic(), []
    for i, r in enumerate(records):
        kw = {"answer": r["answer"], "metadata": r["metadata"]}
        cont = code_tests_reward(r["completions"], **kw)
        disc = code_tests_reward(r["completions"], mode="discrete", **kw)
        rewards.append({"continuous": cont, "discrete": disc})
        print(f"\r{i + 1}/{len(records)} prompts scored", end="", flush=True)
    seconds = time.monotonic() - start
    (out / f"rewards-{label}.json").write_text(json.dumps({"seconds": seconds, "rewards": rewards}))
    print(f"\n{label}: {seconds:.0f} s")


def compare(out: Path, a: str, b: str) -> None:
    records = [json.loads(line) for line in (out / "completions.jsonl").open()]
    ra, rb = (json.loads((out / f"rewards-{x}.json").read_text()) for x in (a, b))
    for mode in ("continuous", "discrete"):
        pairs = [
            (x, y, rec["completions"][j])
            for rec, pa, pb in zip(records, ra["rewards"], rb["rewards"], strict=True)
            for j, (x, y) in enumerate(zip(pa[mode], pb[mode], strict=True))
        ]
        diff = [(x, y, c) for x, y, c in pairs if x != y]
        mean_a, mean_b = (sum(p[k] for p in pairs) / len(pairs) for k in (0, 1))
        print(
            f"{mode}: {len(pairs)} completions, mean {a} {mean_a:.4f}, {b} {mean_b:.4f}, "
            f"{sum(x == 1.0 for x, _, _ in pairs)} vs {sum(y == 1.0 for _, y, _ in pairs)} at 1.0, "
            f"{len(diff)} differ"
        )
        for x, y, c in diff[:10]:
            print(f"  {a} {x} {b} {y}: {c[:200]!r}")
    print(f"seconds: {a} {ra['seconds']:.0f}, {b} {rb['seconds']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["generate", "score", "compare"])
    parser.add_argument("labels", nargs="*", help="compare: the two labels")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="configs/mixed.yaml")
    parser.add_argument("--prompts", type=int, default=160)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--label", default="new")
    args = parser.parse_intermixed_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "generate":
        generate(args.out, args.config, args.prompts, args.n)
    elif args.command == "score":
        score(args.out, args.label)
    else:
        compare(args.out, *args.labels)


if __name__ == "__main__":
    main()
