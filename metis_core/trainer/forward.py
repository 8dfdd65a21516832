"""Forward passes that return the log-probs of trained tokens. Plain torch + an HF causal LM.

The log-probs are those of the distribution the tokens were sampled from: the model's logits
(with its own post-processing, `logit_postprocess`), divided by the sampling temperature, and,
for tokens decoded under a constraint, restricted to the tokens the constraint allowed
(metis_core/trainer/constraints.py).

The LM head (49k-vocab for SmolLM2) and its log-softmax run only on trained positions: the rest
need hidden states, not logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metis_core.batch import GroupedBatch, PackedBatch, length_buckets
from metis_core.group_sequences import group_sequences
from metis_core.trainer.attention import TRAINER_ATTENTION
from metis_core.trainer.constraints import unpack_bitmask

LogitPostprocess = Callable[[torch.Tensor], torch.Tensor]


def _identity(logits: torch.Tensor) -> torch.Tensor:
    return logits


class UnsupportedLogits(ValueError):
    """The model turns hidden states into logits in a way metis cannot reproduce."""


@torch.no_grad()
def logit_postprocess(model: torch.nn.Module, vocab_probe: int = 12) -> LogitPostprocess:
    """What the model does to `lm_head(hidden)` before returning logits, checked on a probe.

    Most causal LMs return the LM head's output as is. Some scale it (Cohere's `logit_scale`,
    Granite's `logits_scaling`, which divides, HyperCLOVA X's, which multiplies) or soft-cap it
    (Gemma 2-4: cap * tanh(logits / cap)). Rather than trust attribute names, this runs one short
    forward and compares `model(...).logits` with the LM head's output: equal -> identity; equal
    to the soft-cap of the config's `final_logit_softcapping` -> that; a constant multiple -> that
    scale. Anything else raises `UnsupportedLogits`: the trainer must not train on logits that
    differ from the ones the model (and the inference engine) samples from.
    """
    was_training = model.training
    model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(vocab_probe) * 7919 + 11) % vocab
    device = next(model.parameters()).device
    ids = ids.unsqueeze(0).to(device)
    expected = model(input_ids=ids).logits.float()
    raw = model.get_output_embeddings()(model.get_decoder()(input_ids=ids).last_hidden_state)
    raw = raw.float()
    model.train(was_training)

    def close(candidate: torch.Tensor) -> bool:
        return torch.allclose(
            candidate, expected, rtol=1e-4, atol=1e-5 * (1 + expected.abs().max())
        )

    if close(raw):
        return _identity
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        cap = float(cap)
        if close(torch.tanh(raw / cap) * cap):
            return lambda logits: torch.tanh(logits / cap) * cap
    scale = float((raw * expected).sum() / (raw * raw).sum().clamp(min=1e-30))
    if close(raw * scale):
        return lambda logits: logits * scale
    raise UnsupportedLogits(
        f"{type(model).__name__} ({getattr(config, 'model_type', '?')}) post-processes its logits in "
        "a way metis does not reproduce (neither a constant scale nor a final soft-cap): training "
        "on its LM head's raw output would not match what it samples. Use a model whose logits are "
        "its LM head's output, or add its post-processing to metis_core/trainer/forward.py."
    )


def outside_nucleus(logits: torch.Tensor, top_p: float, sampled: torch.Tensor) -> torch.Tensor:
    """[M, V] bool, True for tokens top-p sampling drops: vLLM's rule (sort ascending, drop while
    the cumulative probability stays <= 1 - top_p, always keep the most likely token).

    The sampled token ([M]) is always kept: it was inside the engine's nucleus, and a boundary
    that differs by rounding (bf16 engine, fp32 trainer) must not give it probability 0."""
    with torch.no_grad():
        ascending, order = logits.sort(dim=-1)
        drop_sorted = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop_sorted[:, -1] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        drop[torch.arange(drop.shape[0], device=drop.device), sampled] = False
        return drop


def _picked_logprobs(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    postprocess: LogitPostprocess = _identity,
    temperature: float = 1.0,
    allowed_bits: torch.Tensor | None = None,
    top_p: float = 1.0,
) -> torch.Tensor:
    """log p(target) where mask is set, 0 elsewhere: hidden [N, T, H], targets/mask [N, T] -> [N, T].

    p is the sampling distribution, built in vLLM's order: softmax of postprocess(lm_head(h)),
    restricted to the allowed tokens where `allowed_bits` ([N, T, words] int32 constraint
    bitmask) is given, divided by the temperature, then cut to the top-p nucleus.
    """
    mask = mask.bool()
    logits = postprocess(lm_head(hidden[mask]).float())
    if allowed_bits is not None:
        allowed = unpack_bitmask(allowed_bits[mask], logits.shape[-1])
        logits = logits.masked_fill(~allowed, float("-inf"))
    logits = logits / temperature
    picked_ids = targets[mask]
    if top_p < 1.0:
        logits = logits.masked_fill(outside_nucleus(logits, top_p, picked_ids), float("-inf"))
    picked = torch.log_softmax(logits, dim=-1).gather(-1, picked_ids.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(
        mask, picked
    )


def full_logprobs(
    model: torch.nn.Module,
    batch: PackedBatch,
    device: torch.device,
    postprocess: LogitPostprocess = _identity,
) -> torch.Tensor:
    """[N, L-1] log-probs (temperature 1, unconstrained) of response tokens from a plain forward
    of every row."""
    input_ids = batch.input_ids.to(device)
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=batch.attention_mask.to(device)
    ).last_hidden_state
    return _picked_logprobs(
        model.get_output_embeddings(),
        hidden[:, :-1],
        input_ids[:, 1:],
        batch.response_mask.to(device),
        postprocess,
    )


def grouped_logprobs(
    model: torch.nn.Module,
    batch: GroupedBatch,
    device: torch.device,
    max_suffix_passes: int = 3,
    postprocess: LogitPostprocess = _identity,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """[N, S] log-probs of response (suffix) tokens under the sampling distribution (temperature,
    top-p, and for constrained rows, batch.token_bitmask), each group's prefix run once.

    Pass 1 runs the G prefixes. Their KV cache is gathered to the rows and the suffixes run on top
    of it, in up to `max_suffix_passes` buckets of similar length (batch.length_buckets) so short
    rows are not padded to the longest. Gradients flow back through the gathered cache into the
    prefix pass, so values and gradients equal a plain forward of every row
    (tests/unit/test_prefix_sharing.py). Suffix token j is predicted by the hidden state before
    it: the prefix's last one for j = 0, the suffix's (j-1)th after that, so the last suffix
    token is never fed.
    """
    from transformers import DynamicCache

    decoder = model.get_decoder()
    lm_head = model.get_output_embeddings()
    prefix_ids, prefix_mask = batch.prefix_ids.to(device), batch.prefix_mask.to(device)
    prefix_len, row_group = batch.prefix_len.to(device), batch.row_group.to(device)
    suffix_ids, suffix_mask, loss_mask = (
        batch.suffix_ids.to(device),
        batch.suffix_mask.to(device),
        batch.loss_mask.to(device),
    )
    # One embedding lookup for every token of the micro-batch: its backward builds a dense
    # vocab x hidden gradient, once here instead of once per pass.
    embedded = decoder.get_input_embeddings()(
        torch.cat([prefix_ids.flatten(), suffix_ids.flatten()])
    )
    prefix_embeds = embedded[: prefix_ids.numel()].view(*prefix_ids.shape, -1)
    suffix_embeds = embedded[prefix_ids.numel() :].view(*suffix_ids.shape, -1)
    prefix = decoder(inputs_embeds=prefix_embeds, attention_mask=prefix_mask, use_cache=True)
    last = prefix.last_hidden_state[
        torch.arange(prefix_ids.shape[0], device=device), prefix_len - 1
    ]
    layers = [(layer.keys, layer.values) for layer in prefix.past_key_values.layers]

    out = torch.zeros(loss_mask.shape, dtype=torch.float32, device=device)
    lengths = batch.suffix_mask.sum(dim=1).tolist()
    for rows_list in length_buckets(lengths, max_suffix_passes):
        rows = torch.tensor(rows_list, dtype=torch.long, device=device)
        s = max(1, max(int(lengths[r]) for r in rows_list))
        groups = row_group[rows]
        predicting = last[groups].unsqueeze(1)  # [n, 1, H]
        if s > 1:
            cache = DynamicCache(
                ddp_cache_data=[(k[groups], v[groups]) for k, v in layers], config=model.config
            )
            attention_mask = torch.cat([prefix_mask[groups], suffix_mask[rows, : s - 1]], dim=1)
            positions = prefix_len[groups].unsqueeze(1) + torch.arange(
                s - 1, device=device
            ).unsqueeze(0)
            suffix = decoder(
                inputs_embeds=suffix_embeds[rows, : s - 1],
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            predicting = torch.cat([predicting, suffix.last_hidden_state], dim=1)  # [n, s, H]
        bits = None if batch.token_bitmask is None else batch.token_bitmask[rows.cpu(), :s]
        out[rows, :s] = _picked_logprobs(
            lm_head,
            predicting,
            suffix_ids[rows, :s],
            loss_mask[rows, :s],
            postprocess,
            temperature,
            None if bits is None else bits.to(device),
            top_p,
        )
    return out


_BOOLEAN_MASK_ATTENTION = (TRAINER_ATTENTION, "sdpa")


def full_attention_only(config: object) -> bool:
    """Whether every attention layer of the model sees the whole sequence (no sliding window):
    the condition for `sequence_logprobs`, whose one mask serves every layer."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return not getattr(text, "sliding_window", None) or not getattr(
        text, "use_sliding_window", True
    )


def sequence_logprobs(
    model: torch.nn.Module,
    batch: GroupedBatch,
    device: torch.device,
    pad_id: int = 0,
    postprocess: LogitPostprocess = _identity,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """[N, S] what `grouped_logprobs` returns, from one forward pass: each group's prefix and its
    rows' suffixes as one sequence under a mask (metis_core.group_sequences.GroupSequences).

    One pass instead of a prefix pass and up to three suffix passes: each weight's matmuls run
    once, on all of the micro-batch's tokens, with no cache to gather and no suffix padded to its
    bucket's longest. Only for models whose layers all attend to the whole sequence
    (`full_attention_only`): the mask is handed to every layer as is.
    """
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in _BOOLEAN_MASK_ATTENTION:
        raise ValueError(
            f"sequence_logprobs needs an attention that takes a boolean 4D mask "
            f"({', '.join(_BOOLEAN_MASK_ATTENTION)}), not {attention!r}: use grouped_logprobs"
        )
    packed = group_sequences(batch, pad_id)
    blocks = (
        {}
        if packed.blocks is None or attention != TRAINER_ATTENTION
        else {"attention_blocks": packed.blocks.to(device)}
    )
    hidden = (
        model.get_decoder()(
            input_ids=packed.input_ids.to(device),
            attention_mask=packed.allowed.to(device),
            position_ids=packed.position_ids.to(device),
            **blocks,
        )
        .last_hidden_state.flatten(0, 1)
        .index_select(0, packed.predictors.to(device))
    )
    trained = batch.loss_mask.bool()
    bits = None if batch.token_bitmask is None else batch.token_bitmask[trained].unsqueeze(0)
    picked = _picked_logprobs(
        model.get_output_embeddings(),
        hidden.unsqueeze(0),
        packed.targets.unsqueeze(0).to(device),
        torch.ones(1, hidden.shape[0], dtype=torch.bool, device=device),
        postprocess,
        temperature,
        None if bits is None else bits.to(device),
        top_p,
    )
    out = torch.zeros(trained.shape, dtype=picked.dtype, device=device)
    return out.masked_scatter(trained.to(device), picked[0])


def prompt_features(
    model: torch.nn.Module, batch: PackedBatch, device: torch.device
) -> torch.Tensor:
    """[N, H] the mean of the last hidden layer over each row's tokens (no LM head): a prompt's
    frozen features for value models that read the policy (the PCL sampler)."""
    mask = batch.attention_mask.to(device)
    hidden = model.get_decoder()(
        input_ids=batch.input_ids.to(device), attention_mask=mask
    ).last_hidden_state.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
