"""The modality-span constraint as a small state machine per batch row.

Each row is in one state: outside any span (state 0) or at some point inside a span of one
modality.  Everything a step needs is precomputed per state, so a step is a few gathers over the
batch, never a Python loop over rows:

* ``banned [N, V]``: the ids a row in that state may not produce next (the same rules as
  :class:`~anygpt.generation.hf.SpanConstraint`: outside a span no code ids; after ``<sosp>`` only
  speech codes, then also ``<eosp>``; images exactly their fixed number of codes; multi-codebook
  codes strictly in codebook order with the end tag only at a frame boundary);
* ``advance [N]``: the state after one more token inside the span;
* ``start_state [V]`` / ``closes [V]``: a start tag enters its modality's first state, an end tag (or
  a turn tag, which closes a span left open) returns to state 0;
* ``kind [N]``: 0 outside, ``i + 1`` inside the ``i``-th modality (selects per-span decoding configs);
* ``end_id [N]`` / ``end_allowed [N]``: the span's end tag and whether it may come now (the
  repetition guard closes a looping span with it).

States of a modality with ``K`` codebooks: with a fixed length ``F`` one state per count
``0..F*K`` (the last allows only the end tag); otherwise one state for the empty span and ``K``
states for ``count > 0`` by ``count % K``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anygpt.layout import ROLE_TAGS, TokenLayout


class SpanMachine:
    """Per-state tables of the span constraint for one layout and vocabulary size.

    Args:
        layout: the token layout.
        vocab_size: rows of the LM head (may exceed the tokenizer's vocabulary).
        device: where the tables live.
    """

    def __init__(self, layout: TokenLayout, vocab_size: int, device: torch.device | str) -> None:
        self.layout = layout
        self.names = list(layout.modalities)
        self.vocab_size = vocab_size
        outside = torch.zeros(vocab_size, dtype=torch.bool)
        tok_vocab = layout.tokenizer.vocab_size
        if tok_vocab < vocab_size:
            outside[tok_vocab:] = True
        if self.names:
            outside[layout.all_code_ids] = True
        banned = [outside]
        kind, advance, end_id, end_allowed, codebooks = [0], [0], [0], [False], [1]
        self.base: list[int] = []
        start_state = torch.full((vocab_size,), -1, dtype=torch.long)
        closes = torch.zeros(vocab_size, dtype=torch.bool)
        for index, name in enumerate(self.names):
            spec = layout.spec(name)
            k_total = spec.num_codebooks
            base = len(banned)
            self.base.append(base)
            counts = (
                list(range(spec.fixed_length * k_total + 1))
                if spec.fixed_length is not None
                else [0, *range(k_total, 2 * k_total)]  # empty span, then count % K = 0..K-1
            )
            for position, count in enumerate(counts):
                ids, end_ok = layout.allowed_next(name, count)
                allowed = torch.zeros(vocab_size, dtype=torch.bool)
                allowed[ids] = True
                allowed[layout.end_ids[name]] = end_ok
                banned.append(~allowed)
                kind.append(index + 1)
                end_id.append(layout.end_ids[name])
                end_allowed.append(end_ok)
                codebooks.append(k_total)
                if spec.fixed_length is not None:
                    advance.append(base + min(position + 1, len(counts) - 1))
                elif position == 0:
                    advance.append(base + 1 + 1 % k_total)
                else:
                    advance.append(base + 1 + position % k_total)
            start_state[layout.start_ids[name]] = base
            closes[layout.end_ids[name]] = True
        for tag in ROLE_TAGS:  # a turn boundary closes any span left open
            if layout.tokenizer.has_token(tag):
                closes[layout.tokenizer.token_to_id(tag)] = True
        self.banned = torch.stack(banned).to(device)
        self.kind = torch.tensor(kind, dtype=torch.long, device=device)
        self.advance = torch.tensor(advance, dtype=torch.long, device=device)
        self.end_id = torch.tensor(end_id, dtype=torch.long, device=device)
        self.end_allowed = torch.tensor(end_allowed, dtype=torch.bool, device=device)
        self.codebooks = torch.tensor(codebooks, dtype=torch.long, device=device)
        self.start_state = start_state.to(device)
        self.closes = closes.to(device)
        self._start_cpu, self._closes_cpu = start_state, closes

    @property
    def num_states(self) -> int:
        return self.banned.shape[0]

    def state_for(self, index: int, count: int) -> int:
        """The state after ``count`` tokens of an open span of the ``index``-th modality."""
        spec = self.layout.spec(self.names[index])
        base = self.base[index]
        if spec.fixed_length is not None:
            return base + min(count, spec.fixed_length * spec.num_codebooks)
        return base if count == 0 else base + 1 + count % spec.num_codebooks

    def initial_state(self, ids: Sequence[int]) -> int:
        """The state at the end of a prompt: inside the span its last start tag opened, unless an
        end or turn tag came after it."""
        if not ids or not self.names:
            return 0
        t = torch.as_tensor(list(ids), dtype=torch.long).clamp(0, self.vocab_size - 1)
        positions = torch.arange(t.numel())
        start = int(torch.where(self._start_cpu[t] >= 0, positions, -1).max())
        end = int(torch.where(self._closes_cpu[t], positions, -1).max())
        if start <= end:
            return 0
        index = self.names.index(self.layout._start_to_name[int(t[start])])
        return self.state_for(index, t.numel() - 1 - start)

    def next_state(self, state: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """States ``[S]`` after each row produced ``token [S]``."""
        entered = self.start_state[token]
        moved = torch.where(self.closes[token], 0, self.advance[state])
        return torch.where(entered >= 0, entered, moved)
