"""Classifier-free guidance for text -> media generation.

Each prompt is decoded beside an *unconditional* twin: the same prompt with the text to render
left out.  At every step the next-token log-probabilities are pushed away from the twin's::

    guided = uncond + scale * (cond - uncond)        # log-softmax of each, [B, V]

so what the text asks for (a colour, a shape, a tempo) weighs ``scale`` times more than what any
picture or melody would contain.  ``scale = 1`` is plain decoding.  Both rows of a pair get the
token chosen from the guided distribution, so they stay in step (and in the same span state).
The cost is one extra cache row per prompt: the step runs ``2B`` rows instead of ``B``.

The span constraint, temperature, top-k and top-p apply to the guided distribution as in
:mod:`anygpt.runtime.scheduler`; sampling noise depends only on each row's seed and step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anygpt.config import DecodingConfig
from anygpt.generation.hf import cut_at_stops
from anygpt.generation.loop import row_seed
from anygpt.generation.model import CachedLM
from anygpt.generation.sampling import sample
from anygpt.generation.spans import SpanMachine
from anygpt.layout import TokenLayout


def mix(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Guided log-probabilities ``[B, V]`` from conditional and unconditional logits ``[B, V]``
    (ids banned in either stay banned)."""
    c, u = cond.log_softmax(dim=-1), uncond.log_softmax(dim=-1)
    guided = u + scale * (c - u)
    return guided.masked_fill(c.isneginf() | u.isneginf(), float("-inf"))


@torch.inference_mode()
def guided_generate(
    model,
    layout: TokenLayout,
    prompts: Sequence[Sequence[int]],
    unconditional: Sequence[Sequence[int]],
    decoding: DecodingConfig,
    *,
    scale: float,
    stop_ids: Sequence[int],
    seed: int | None = None,
    constrain: bool = True,
    on_step=None,
) -> list[list[int]]:
    """Generate continuations of ``prompts`` guided away from ``unconditional`` (one twin per
    prompt, token id lists with BOS).

    Returns the new ids of each prompt, cut before the first stop id.  ``on_step`` is called after
    every step with the new ids so far ``[B, t]``.  ``seed`` seeds row ``i`` as
    :func:`anygpt.generation.loop.row_seed` does, so a prompt samples the same tokens in any batch.
    """
    if len(prompts) != len(unconditional):
        raise ValueError("every prompt needs one unconditional twin")
    if not prompts:
        return []
    batch = len(prompts)
    rows = [list(p) for p in prompts] + [list(u) for u in unconditional]
    if any(not r for r in rows):
        raise ValueError("a prompt is empty")
    limit = decoding.max_new_tokens
    lm = CachedLM(model, 2 * batch, max(len(r) for r in rows) + limit + 1)
    machine = SpanMachine(layout, lm.vocab_size, lm.device)
    logits = torch.stack(
        [
            lm.prefill(i, torch.tensor(r, dtype=torch.long, device=lm.device))
            for i, r in enumerate(rows)
        ]
    )
    lengths = [len(r) for r in rows]
    state = torch.tensor([machine.initial_state(p) for p in prompts], device=lm.device)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    seeds = torch.tensor([row_seed(seed, i) for i in range(batch)], device=lm.device)
    stops = torch.zeros(lm.vocab_size, dtype=torch.bool, device=lm.device)
    stops[[i for i in stop_ids if 0 <= i < lm.vocab_size]] = True
    temperature = torch.full((batch,), decoding.temperature or 1.0, device=lm.device)
    top_k = torch.full((batch,), decoding.top_k or 0, dtype=torch.long, device=lm.device)
    top_p = torch.full((batch,), decoding.top_p, device=lm.device)
    new = torch.zeros(batch, 0, dtype=torch.long, device=lm.device)
    done = torch.zeros(batch, dtype=torch.bool, device=lm.device)
    for step in range(limit):
        guided = mix(logits[:batch], logits[batch:], scale)
        if constrain:
            guided = guided.masked_fill(machine.banned[state], float("-inf"))
        if decoding.do_sample:
            chosen = sample(
                guided,
                greedy=None,
                temperature=temperature,
                top_k=top_k if decoding.top_k else None,
                largest_k=decoding.top_k or 0,
                top_p=top_p if decoding.top_p < 1.0 else None,
                seeds=seeds,
                steps=torch.full((batch,), step, dtype=torch.long, device=lm.device),
            )
        else:
            chosen = guided.argmax(dim=-1)
        chosen = torch.where(done, layout.tokenizer.pad_id, chosen)
        new = torch.cat([new, chosen.unsqueeze(1)], dim=1)
        done |= stops[chosen]
        state = machine.next_state(state, chosen)
        if on_step is not None:
            on_step(new.cpu())
        if bool(done.all()) or step == limit - 1:
            break
        pair = torch.cat([chosen, chosen])
        logits = lm.decode(pair, torch.tensor(lengths, device=lm.device), lengths)
        lengths = [n + 1 for n in lengths]
    return cut_at_stops(new.tolist(), stop_ids)
