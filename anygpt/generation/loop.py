"""The engine's decode loop: prefill, one-token decode, sampling, generate.

``generate`` runs a batch of prompts through a :class:`~anygpt.runtime.scheduler.Scheduler` sized to
it (a preallocated KV cache, per-row sampling settings, the span constraint as a state machine);
beam search (``num_beams > 1``) and models without the LLaMA module layout go through
transformers' ``generate`` (:func:`anygpt.generation.hf.hf_generate`) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from anygpt.config import DecodingConfig
from anygpt.generation.hf import hf_generate
from anygpt.generation.model import CachedLM, supports
from anygpt.layout import TokenLayout


def prefill(lm: CachedLM, slot: int, prompt: torch.Tensor) -> torch.Tensor:
    """Run ``prompt [T]`` into cache ``slot``; the logits of its next token ``[V]``."""
    return lm.prefill(slot, prompt)


def decode_one_token(lm: CachedLM, tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """One decode step for slots ``0..S-1``: ``tokens [S]`` at positions ``lengths``; logits
    ``[S, V]``."""
    positions = torch.tensor(lengths, dtype=torch.long, device=lm.device)
    return lm.decode(tokens, positions, lengths)


def row_seed(seed: int | None, row: int) -> int | None:
    """The sampling seed of row ``row`` of a batch generated with ``seed``."""
    return None if seed is None else (int(seed) * 1_000_003 + row) % (1 << 62)


@torch.inference_mode()
def generate(
    model,
    layout: TokenLayout,
    prompts: Sequence[Sequence[int]],
    decoding: DecodingConfig,
    *,
    stop_ids: Sequence[int],
    seed: int | None = None,
    constrain: bool = True,
    stop_texts: Sequence[str] = (),
    on_step=None,
    span_decoding: Mapping[str, DecodingConfig] | None = None,
    guard=None,
    compile: bool = False,
) -> list[list[int]]:
    """Generate continuations for a batch of prompts (token id lists, BOS included).

    Returns the new ids of each prompt, cut before the first stop id.  ``stop_texts`` also end a
    row (they stay in the returned ids; callers cut them from the text).  ``on_step`` is called
    after every step with the new ids so far ``[B, t]`` (rows that ended early padded with the pad
    id).  ``span_decoding`` (modality -> config, ``"text"`` outside spans) switches the config per
    span; ``guard`` (a :class:`~anygpt.runtime.scheduler.RepetitionGuard`) closes looping spans.
    Without a seed, sampling follows torch's global generator.
    """
    from anygpt.runtime.scheduler import Scheduler

    if not prompts:
        return []
    configs = [decoding, *(span_decoding or {}).values()]
    if any(c.num_beams > 1 for c in configs) or not supports(model):
        return hf_generate(
            model,
            layout,
            prompts,
            decoding,
            stop_ids=stop_ids,
            seed=seed,
            constrain=constrain,
            stop_texts=stop_texts,
            on_step=on_step,
        )
    if seed is not None:
        torch.manual_seed(seed)
    longest = max(len(p) for p in prompts)
    scheduler = Scheduler(
        model,
        layout,
        max_batch=len(prompts),
        max_length=longest + decoding.max_new_tokens + 1,
        constrain=constrain,
        compile=compile,
    )
    requests = [
        scheduler.submit(
            p,
            decoding,
            span_decoding=span_decoding,
            stop_ids=stop_ids,
            stop_texts=stop_texts,
            seed=row_seed(seed, row),
            guard=guard,
        )
        for row, p in enumerate(prompts)
    ]
    pad = layout.tokenizer.pad_id
    while scheduler.has_work:
        scheduler.step()
        if on_step is not None:
            width = max(len(r.tokens) for r in requests)
            so_far = torch.full((len(requests), width), pad, dtype=torch.long)
            for row, r in enumerate(requests):
                so_far[row, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
            on_step(so_far)
    return [list(r.tokens) for r in requests]
