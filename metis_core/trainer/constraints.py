"""The token masks of constrained decoding, rebuilt for the trainer.

vLLM's structured outputs sample each constrained token from the policy's softmax restricted to
the tokens its grammar allows next (an xgrammar bitmask applied to the logits before sampling).
To train on that same distribution, the trainer needs the same masks for the emitted tokens:
this module replays each emitted sequence through an xgrammar matcher compiled from the same
regex, as vLLM's xgrammar backend does, and returns the allowed-token bitmask at every position.

Bitmasks are int32 words, 32 tokens a word (xgrammar's layout): [rows, positions, ceil(V / 32)].
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

ALL_ALLOWED = -1
"""An int32 word with every bit set: no token is masked."""


class ConstraintMasks:
    """Compiles regexes once per tokenizer and replays emitted tokens through them."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=True)
        self._compile = lru_cache(maxsize=256)(self._compiler.compile_regex)

    def bitmask(self, regex: str, token_ids: Sequence[int]) -> torch.Tensor:
        """[len(token_ids), words] allowed-token bitmask before each emitted token.

        Tokens after the grammar has terminated (none in a vLLM output, whose constrained text
        ends with the grammar) are left unmasked. A token the grammar refuses means the tokens
        were not decoded under this regex: that raises, naming the position.
        """
        xgr = self._xgr
        matcher = xgr.GrammarMatcher(self._compile(regex))
        out = torch.full((len(token_ids), self.words), ALL_ALLOWED, dtype=torch.int32)
        row = xgr.allocate_token_bitmask(1, self.vocab_size)
        for i, token in enumerate(token_ids):
            if matcher.is_terminated():
                break
            matcher.fill_next_token_bitmask(row)
            out[i] = row[0]
            if not matcher.accept_token(int(token)):
                raise ValueError(
                    f"token {int(token)} at position {i} is not allowed by the decoding regex "
                    f"{regex[:80]!r}: these tokens were not generated under that constraint"
                )
        return out


def unpack_bitmask(bits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[M, words] int32 bitmask -> [M, vocab_size] bool, True where the token is allowed."""
    shifts = torch.arange(32, dtype=torch.int32, device=bits.device)
    allowed = (bits.unsqueeze(-1) >> shifts) & 1
    return allowed.reshape(bits.shape[0], -1)[:, :vocab_size].bool()
