"""Forward passes that return the log-probs of trained tokens. Plain torch + an HF causal LM.

The LM head (49k-vocab for SmolLM2) and its log-softmax run only on trained positions: the rest
need hidden states, not logits.
"""

from __future__ import annotations

import torch

from metis_core.batch import GroupedBatch, PackedBatch, length_buckets


def _picked_logprobs(
    lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """log p(target) where mask is set, 0 elsewhere: hidden [N, T, H], targets/mask [N, T] -> [N, T]."""
    mask = mask.bool()
    logits = lm_head(hidden[mask])
    picked = (
        torch.log_softmax(logits.float(), dim=-1)
        .gather(-1, targets[mask].unsqueeze(-1))
        .squeeze(-1)
    )
    return torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(
        mask, picked
    )


def full_logprobs(model: torch.nn.Module, batch: PackedBatch, device: torch.device) -> torch.Tensor:
    """[N, L-1] log-probs of response tokens from a plain forward of every row."""
    input_ids = batch.input_ids.to(device)
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=batch.attention_mask.to(device)
    ).last_hidden_state
    return _picked_logprobs(
        model.get_output_embeddings(),
        hidden[:, :-1],
        input_ids[:, 1:],
        batch.response_mask.to(device),
    )


def grouped_logprobs(
    model: torch.nn.Module, batch: GroupedBatch, device: torch.device, max_suffix_passes: int = 3
) -> torch.Tensor:
    """[N, S] log-probs of response (suffix) tokens, each group's prefix run once.

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
    prefix = decoder(input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=True)
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
                input_ids=suffix_ids[rows, : s - 1],
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            predicting = torch.cat([predicting, suffix.last_hidden_state], dim=1)  # [n, s, H]
        out[rows, :s] = _picked_logprobs(
            lm_head, predicting, suffix_ids[rows, :s], loss_mask[rows, :s]
        )
    return out
