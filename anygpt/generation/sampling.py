"""Logits processing and sampling on batch tensors, one setting per row.

The processors follow transformers' definitions and order (repetition penalty, the span constraint,
then temperature, top-k, top-p), so greedy decoding matches ``generate`` token for token.  Sampling
draws from the same distribution with a per-row counter-based random number: it depends only on
the row's seed and its step, never on which other rows share the batch, so seeded sampling is
reproducible and a request samples the same tokens alone or in any batch.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x * constant mod 2**32`` for ``x < 2**32`` in int64, without overflowing int64."""
    low = (x * (constant & 0xFFFF)) & _MASK32
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply), elementwise on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One uniform number in (0, 1) per row ``[S]`` from its seed ``[S]`` and step ``[S]``."""
    bits = _mix32((seeds & _MASK32) ^ _mix32((steps & _MASK32) ^ _mix32(seeds >> 32)))
    bits = _mix32(bits ^ 0x9E3779B9)
    return ((bits >> 8).float() + 0.5) / float(1 << 24)


def repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """transformers' repetition penalty: ids already in the sequence ``seen [S, V]`` get their
    logit divided by ``penalty [S, 1]`` (multiplied when negative)."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, top_k: torch.Tensor, largest_k: int) -> torch.Tensor:
    """Keep each row's ``top_k [S]`` best logits (0: no filtering); ``largest_k`` is their max."""
    largest_k = min(largest_k, logits.shape[-1])
    kth = logits.topk(largest_k, dim=-1).values
    index = (top_k.clamp(1, largest_k) - 1).unsqueeze(1)
    threshold = kth.gather(1, index)
    threshold = torch.where(top_k.unsqueeze(1) > 0, threshold, float("-inf"))
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of best ids whose probability reaches ``top_p [S]`` (transformers'
    rule: drop the ascending-sorted ids whose cumulative probability is ``<= 1 - top_p``)."""
    sorted_logits, order = logits.sort(dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p).unsqueeze(1)
    remove[:, -1] = False
    return logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def sample(
    logits: torch.Tensor,
    *,
    greedy: torch.Tensor | None,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    largest_k: int,
    top_p: torch.Tensor | None,
    seeds: torch.Tensor,
    steps: torch.Tensor,
) -> torch.Tensor:
    """The next id per row ``[S]`` from processed logits ``[S, V]``.

    Rows with ``greedy [S]`` take the argmax (``None``: no row does); the others sample at ``temperature [S]`` after the
    optional top-k (``top_k [S]``, 0 = off) and top-p (``top_p [S]``) filters, by inverting the
    cumulative distribution at one counter-based uniform number per row (ids of probability 0 are
    never drawn).
    """
    scaled = logits / temperature.unsqueeze(1)
    if top_k is not None:
        scaled = top_k_filter(scaled, top_k, largest_k)
    if top_p is not None:
        scaled = top_p_filter(scaled, top_p)
    cumulative = scaled.softmax(dim=-1).cumsum(dim=-1)
    target = uniform_noise(seeds, steps) * cumulative[:, -1]
    drawn = torch.searchsorted(cumulative, target.unsqueeze(1), right=True).squeeze(1)
    drawn = drawn.clamp(max=logits.shape[-1] - 1)
    return drawn if greedy is None else torch.where(greedy, logits.argmax(dim=-1), drawn)
