"""The judge and rollout stages against bare vLLM on the same requests: how much of the engine's
speed the pipeline keeps.

Opens a run of the config (vLLM, the trainer, the pool, as `metis train` does), then, for a few
steps, runs the stage functions `judge` and `rollout` (metis_core/stages, without Prefect's task
wrapper) with the engine wrapped in a recorder, and replays every engine request each stage
made through vLLM's own `LLM.generate`, with the same prompts and sampling parameters (same
seeds, so the same tokens). Each stage runs once untimed first (vLLM compiles and caches each
decoding grammar once: both sides then find it), then stage and replay are timed in turn, each
after an emptied prefix cache, in alternating order, so load on the machine hits both alike. Reports tokens/s of each and their ratio (the goal: the
stages at >= 0.95 of bare vLLM).

    .venv/bin/python bench/engine_overhead.py --config configs/default.yaml --steps 4
    .venv/bin/python bench/engine_overhead.py --tiny --steps 1        # the tiny test model
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metis_core.openmp import configure_openmp  # noqa: E402

configure_openmp()  # as `metis` does, before torch loads (metis_core/openmp.py)


class Recorder:
    """The engine, with each generate/next_token_logprobs request kept for a replay."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.requests = engine, []

    def generate(self, prompt_token_ids: Any, **kwargs: Any) -> Any:
        self.requests.append(("generate", [list(p) for p in prompt_token_ids], kwargs))
        return self.engine.generate(prompt_token_ids, **kwargs)

    def next_token_logprobs(self, prompt_token_ids: Any, allowed: Any, temperature: float) -> Any:
        self.requests.append(
            ("next", [list(p) for p in prompt_token_ids], {"allowed": allowed, "t": temperature})
        )
        return self.engine.next_token_logprobs(prompt_token_ids, allowed, temperature)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def bare_params(kind: str, kw: dict[str, Any], count: int) -> list[Any]:
    """vLLM SamplingParams of one recorded request, one per prompt: what a user of vLLM would
    write for the same sampling (per-prompt seeds and patterns as the engine derives them)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    if kind == "next":
        return [
            SamplingParams(max_tokens=1, temperature=kw["t"], logprobs=len(a), allowed_token_ids=a)
            for a in kw["allowed"]
        ]
    regex = kw.get("regex")
    patterns = [regex] * count if regex is None or isinstance(regex, str) else regex
    return [
        SamplingParams(
            seed=(kw["seed"] + i * kw["n"]) % 2**63,
            n=kw["n"],
            temperature=kw["temperature"],
            top_p=kw.get("top_p", 1.0),
            max_tokens=kw["max_tokens"],
            stop=list(kw.get("stop", ())) or None,
            logprobs=kw.get("top_logprobs", 0) or (0 if kw.get("logprobs", True) else None),
            structured_outputs=StructuredOutputsParams(regex=p) if p else None,
        )  # fmt: skip
        for i, p in enumerate(patterns)
    ]


def replay(llm: Any, requests: list[tuple[str, list[list[int]], dict[str, Any]]]) -> int:
    """Every request through `llm.generate`; the tokens generated."""
    from vllm.inputs import TokensPrompt

    tokens = 0
    for kind, prompts, kw in requests:
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            bare_params(kind, kw, len(prompts)),
            use_tqdm=False,
        )
        tokens += sum(len(c.token_ids) for out in outputs for c in out.outputs)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=4, help="steps measured (after a warm-up)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model (a smoke run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--output-dir", default="runs/bench-overhead")
    args = parser.parse_args()

    from metis_core.config_loading import load_config
    from metis_core.launch import named_run_dir, open_run
    from metis_core.stages import curriculum, outcomes

    overrides = [f"output_dir={args.output_dir}", "eval.at_start=false", *args.overrides]
    if args.tiny:
        from metis_core.model.weights import embedded_tokenizer, make_tiny_llama

        model = Path(args.output_dir) / "tiny-llama"
        if not (model / "config.json").is_file():
            make_tiny_llama(model, embedded_tokenizer())
        overrides += [f"model.path={model}", "model.dtype=float32", "trainer.precision=fp32"]
    cfg = load_config(args.config, overrides)
    run = open_run(named_run_dir(cfg, f"overhead-{time.strftime('%Y%m%d-%H%M%S')}"))
    engine = run.engine
    llm = engine.llm
    seconds: dict[str, list[float]] = {
        k: [] for k in ("judge", "rollout", "judge-bare", "rollout-bare")
    }
    tokens = {"judge": 0, "rollout": 0}

    def measure(stage: str, step: int, call: Any, *args: Any) -> Any:
        """`call(run, step, *args)` once untimed with the engine recorded (which also warms vLLM's
        compiled decoding grammars for both), then timed, and its requests replayed through
        bare vLLM, timed: bare first on even steps, the stage first on odd ones."""
        recorder = Recorder(engine)
        run.engine = recorder
        try:
            out = call(run, step, *args)
        finally:
            run.engine = engine
        requests = list(recorder.requests)

        def own() -> float:
            llm.reset_prefix_cache()
            started = time.perf_counter()
            call(run, step, *args)
            return time.perf_counter() - started

        def bare() -> tuple[float, int]:
            llm.reset_prefix_cache()
            started = time.perf_counter()
            made = replay(llm, requests)
            return time.perf_counter() - started, made

        if step % 2:
            own_s, (bare_s, made) = own(), bare()
        else:
            (bare_s, made), own_s = bare(), own()
        if stage == "rollout":  # the same seeds: the same tokens
            groups = json.loads(Path(out).read_text())
            mine = sum(len(c["token_ids"]) for g in groups for c in g["completions"])
            assert mine == made, f"the replay made {made} tokens, the stage {mine}"
        if step > 0:  # step 0 warms up
            seconds[stage].append(own_s)
            seconds[f"{stage}-bare"].append(bare_s)
            tokens[stage] += made
        return out

    try:
        for step in range(args.steps + 1):
            # history and select are DuckDB's and numpy's work: not timed
            memory = curriculum.history(run, step, curriculum.draw_candidates(run, step))
            judged = measure("judge", step, curriculum.judge, memory)
            selection = curriculum.select(run, step, judged)
            rolled = measure("rollout", step, outcomes.rollout, selection)
            # outcomes into the history, so the next step's judge has its calibration memory
            # (no update: every step measures the same weights)
            verified = outcomes.verify(run, step, rolled, judged)
            outcomes.record(run, step, rolled, verified, judged)
            print(
                f"step {step}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items() if v)
            )
    finally:
        run.tracker.end("FINISHED")
        engine.close()

    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"\n{platform.processor() or platform.machine()}, {args.steps} steps after a warm-up, "
        f"{time.strftime('%Y-%m-%d')}, load average {' '.join(load)}\n"
    )
    print("| stage | stage s (mean) | bare vLLM s (mean) | tokens | stage / bare tokens/s |")
    print("|---|---|---|---|---|")
    for stage in ("judge", "rollout"):
        own, bare = statistics.mean(seconds[stage]), statistics.mean(seconds[f"{stage}-bare"])
        print(f"| {stage} | {own:.2f} | {bare:.2f} | {tokens[stage]} | {bare / own:.3f} |")


if __name__ == "__main__":
    main()
