"""The trainer's logits equal the model's own (`model(...).logits`), post-processing included, or
the model is refused: tiny random Llama, Gemma 2 (final soft-cap), Cohere (logit_scale) and
Granite (logits_scaling, which divides), and a model with a transform metis does not know."""

import pytest
import torch

from metis_core.batch import pack_grouped
from metis_core.trainer.forward import (
    UnsupportedLogits,
    full_attention_only,
    grouped_logprobs,
    logit_postprocess,
    sequence_logprobs,
)
from tests.devices import DEVICE_IDS, DEVICES

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
)


def tiny(kind: str) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    if kind == "llama":
        config = tf.LlamaConfig(**COMMON)
        model = tf.LlamaForCausalLM(config)
    elif kind == "gemma2":
        config = tf.Gemma2Config(**COMMON, head_dim=16, final_logit_softcapping=0.05)
        model = tf.Gemma2ForCausalLM(config)
    elif kind == "cohere":
        config = tf.CohereConfig(**COMMON, logit_scale=7.0)
        model = tf.CohereForCausalLM(config)
    elif kind == "granite":
        config = tf.GraniteConfig(**COMMON, logits_scaling=0.125)
        model = tf.GraniteForCausalLM(config)
    else:
        raise ValueError(kind)
    with torch.no_grad():  # logits large enough that a missed transform shows
        model.get_output_embeddings().weight.mul_(20.0)
    return model.eval()


def reference_logprobs(model, prompt, response, temperature):
    device = model.get_output_embeddings().weight.device
    ids = torch.tensor([prompt + response], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    chosen = torch.tensor(response, device=device).unsqueeze(-1)
    return torch.log_softmax(logits, -1).gather(-1, chosen)[:, 0]


@pytest.mark.parametrize(
    ("kind", "logprobs"),
    [(kind, grouped_logprobs) for kind in ("llama", "gemma2", "cohere", "granite")]
    # Gemma 2's sliding-window layers take grouped_logprobs only (full_attention_only)
    + [(kind, sequence_logprobs) for kind in ("llama", "cohere", "granite")],
)
@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
def test_trained_logprobs_equal_the_models_own_logits(kind, logprobs, device):
    model = tiny(kind).to(device)
    prompt, responses = [5, 9, 17, 3], [[40, 41, 2], [7, 8]]
    batch = pack_grouped([prompt, prompt], responses, pad_id=0)
    with torch.no_grad():
        ours = logprobs(model, batch, device, postprocess=logit_postprocess(model), temperature=0.7)
        plain = logprobs(model, batch, device, temperature=0.7)
    for row, response in enumerate(responses):
        expected = reference_logprobs(model, prompt, response, 0.7)
        assert torch.allclose(ours[row, : len(response)], expected, atol=1e-4)
        if kind != "llama":  # the transform matters: without it the values differ
            assert not torch.allclose(plain[row, : len(response)], expected, atol=1e-2)


def test_only_gemma2_needs_the_grouped_forward():
    assert [
        kind
        for kind in ("llama", "gemma2", "cohere", "granite")
        if not full_attention_only(tiny(kind).config)
    ] == ["gemma2"]


def test_a_model_with_an_unknown_logit_transform_is_refused():
    model = tiny("llama")
    forward = model.forward

    def shifted(*args, **kwargs):  # a per-token bias after the LM head: no constant scale
        out = forward(*args, **kwargs)
        out.logits = out.logits + torch.arange(out.logits.shape[-1], dtype=out.logits.dtype)
        return out

    model.forward = shifted
    with pytest.raises(UnsupportedLogits, match="post-processes its logits"):
        logit_postprocess(model)


def test_nucleus_follows_vllms_rule_and_keeps_the_sampled_token():
    from metis_core.trainer.forward import outside_nucleus

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    # ascending cumulative mass 0.2, 0.5, 1.0: with top_p 0.6, drop while <= 0.4 -> only 0.2
    drop = outside_nucleus(logits, 0.6, sampled=torch.tensor([0, 2]))
    assert drop[0].tolist() == [False, False, True]
    assert drop[1].tolist() == [False, False, False]  # row 1 sampled token 2: kept
