"""Constraint masks rebuilt for the trainer, on the embedded SmolLM2 tokenizer."""

import pytest
import torch

from metis_core.judgment import JUDGMENT_REGEX
from metis_core.trainer.constraints import ConstraintMasks, unpack_bitmask


@pytest.fixture(scope="module")
def masks():
    from transformers import AutoTokenizer

    from metis_core.model.weights import embedded_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_tokenizer()))
    return tokenizer, ConstraintMasks(tokenizer, len(tokenizer))


def test_each_emitted_token_is_allowed_and_the_mask_narrows(masks):
    tokenizer, constraint = masks
    ids = tokenizer.encode("\\boxed{0.12}", add_special_tokens=False) + [tokenizer.eos_token_id]
    allowed = unpack_bitmask(constraint.bitmask(JUDGMENT_REGEX, ids), constraint.vocab_size)
    assert allowed.shape == (len(ids), constraint.vocab_size)
    assert all(allowed[i, token] for i, token in enumerate(ids))
    # the first token must start "\boxed{": a handful of tokens, not the vocabulary
    assert 0 < int(allowed[0].sum()) < 50
    # after "\boxed{0.2" only 0-5 may follow: "0.26" and above are outside 0.00-0.25
    prefix = tokenizer.encode("\\boxed{0.2", add_special_tokens=False)
    after = unpack_bitmask(
        constraint.bitmask(
            JUDGMENT_REGEX, prefix + tokenizer.encode("5", add_special_tokens=False)
        ),
        constraint.vocab_size,
    )[len(prefix)]
    digits = {d: tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)}
    assert all(after[digits[d]] for d in range(6))
    assert not any(after[digits[d]] for d in range(6, 10))


def test_a_token_the_constraint_forbids_is_an_error(masks):
    tokenizer, constraint = masks
    ids = tokenizer.encode("\\boxed{0.9}", add_special_tokens=False)
    with pytest.raises(ValueError, match="not allowed by the decoding regex"):
        constraint.bitmask(JUDGMENT_REGEX, ids)


def test_unpack_bitmask_bit_order():
    bits = torch.tensor([[0b101, -1]], dtype=torch.int32)
    allowed = unpack_bitmask(bits, 40)
    assert allowed[0, :3].tolist() == [True, False, True]
    assert not allowed[0, 3:32].any()
    assert allowed[0, 32:].all()
