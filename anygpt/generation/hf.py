"""Generation through transformers' ``generate``, with the modality-span constraint as a logits
processor.

The engine's own loop (:mod:`anygpt.generation.loop`) replaces this path for everything but beam
search (``num_beams > 1``); it stays as the reference the loop's greedy outputs are tested against.

Prompts of different lengths are left-padded and generated together.  Inside a modality span the
next token is restricted by the :class:`~anygpt.layout.TokenLayout`: after ``<sosp>`` only speech
codes (or ``<eosp>``), images get exactly their fixed number of codes, and music/audio codes come
strictly in codebook order 0, 1, 2, 3 per frame, so no repair of the code order is ever needed.
Outside a span, code tokens are not allowed (they mean nothing there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anygpt.config import DecodingConfig
from anygpt.layout import TokenLayout


class SpanConstraint:
    """A logits processor (transformers interface) that enforces the layout inside spans."""

    def __init__(self, layout: TokenLayout) -> None:
        self.layout = layout
        self.names = list(layout.modalities)
        self._vocab = -1

    def _prepare(self, vocab: int, device: torch.device) -> None:
        if vocab == self._vocab:
            return
        lay = self.layout
        tok_vocab = lay.tokenizer.vocab_size
        self._outside = torch.zeros(vocab, dtype=torch.bool)  # True = banned outside spans
        if tok_vocab < vocab:
            self._outside[tok_vocab:] = True
        if self.names:
            self._outside[lay.all_code_ids] = True
        self._start_to_index = torch.full((vocab,), -1, dtype=torch.long)
        self._is_end = torch.zeros(vocab, dtype=torch.bool)
        self._masks: dict[tuple[int, int, bool], torch.Tensor] = {}
        for i, name in enumerate(self.names):
            self._start_to_index[lay.start_ids[name]] = i
            self._is_end[lay.end_ids[name]] = True
        # a turn boundary closes any span left open (e.g. a reply cut off in the history)
        for tag in ("[Human]", "[MMGPT]", "<eoh>", "<eos>"):
            if lay.tokenizer.has_token(tag):
                self._is_end[lay.tokenizer.token_to_id(tag)] = True
        self._outside = self._outside.to(device)
        self._start_to_index = self._start_to_index.to(device)
        self._is_end = self._is_end.to(device)
        self._vocab = vocab

    def _allowed(self, index: int, count: int, device: torch.device) -> torch.Tensor:
        name = self.names[index]
        spec = self.layout.spec(name)
        k = count % spec.num_codebooks
        fixed_done = (
            spec.fixed_length is not None and count >= spec.fixed_length * spec.num_codebooks
        )
        key = (index, -1 if fixed_done else k, count > 0)
        if key not in self._masks:
            ids, end_ok = self.layout.allowed_next(name, count)
            mask = torch.zeros(self._vocab, dtype=torch.bool)
            mask[ids] = True
            if end_ok:
                mask[self.layout.end_ids[name]] = True
            self._masks[key] = mask.to(device)
        return self._masks[key]

    def _span_state(self, input_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of the last start tag and last end tag per row (-1: none).

        Without beam search rows never reorder, so after the first call only the newest token is
        looked at; otherwise the whole sequence is scanned.
        """
        batch, length = input_ids.shape
        cache = getattr(self, "_cache", None)
        if (
            cache is not None
            and cache[0] == batch
            and cache[1] == length - 1
            and cache[4].equal(input_ids[:, -2])
        ):
            starts, ends = cache[2], cache[3]
            last = input_ids[:, -1]
            starts = torch.where(self._start_to_index[last] >= 0, length - 1, starts)
            ends = torch.where(self._is_end[last], length - 1, ends)
        else:
            positions = torch.arange(length, device=input_ids.device).expand(batch, length)
            starts = torch.where(self._start_to_index[input_ids] >= 0, positions, -1).amax(dim=1)
            ends = torch.where(self._is_end[input_ids], positions, -1).amax(dim=1)
        self._cache = (batch, length, starts, ends, input_ids[:, -1].clone())
        return starts, ends

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, length = input_ids.shape
        self._prepare(scores.shape[-1], scores.device)
        starts, ends = self._span_state(input_ids)
        rows = torch.nonzero(starts > ends).flatten().tolist()
        if not rows:  # the common case: one broadcast mask for the whole batch
            return scores.masked_fill_(self._outside, float("-inf"))
        banned = self._outside.unsqueeze(0).expand(batch, -1).clone()
        for row in rows:
            start = int(starts[row])
            index = int(self._start_to_index[input_ids[row, start]])
            banned[row] = ~self._allowed(index, length - 1 - start, scores.device)
        return scores.masked_fill_(banned, float("-inf"))


class TextStop:
    """Stops a row once its decoded tail ends with one of ``texts`` (for end markers that are
    plain text rather than one token, such as ``<eom>`` of AnyGPT's SFT template)."""

    def __init__(
        self, tokenizer, texts: Sequence[str], prompt_length: int, window: int = 12
    ) -> None:
        self.tokenizer = tokenizer
        self.texts = tuple(texts)
        self.prompt_length = prompt_length
        self.window = window

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_
    ) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if input_ids.shape[1] <= self.prompt_length:
            return done
        tail = input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.window) :].tolist()
        for row, ids in enumerate(tail):
            text = self.tokenizer.decode(ids)
            done[row] = any(text.endswith(t) for t in self.texts)
        return done


class StepHook:
    """Calls ``fn(new_ids [B, t])`` after every generation step; never stops generation."""

    def __init__(self, fn, prompt_length: int) -> None:
        self.fn = fn
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_):
        self.fn(input_ids[:, self.prompt_length :])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists -> (ids [B, L], attention mask [B, L])."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, length - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, length - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def hf_generate(
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
) -> list[list[int]]:
    """Generate continuations for a batch of prompts (token id lists, BOS included).

    Returns the new ids of each prompt, cut before the first stop id.  ``stop_texts`` also end a
    row (they stay in the returned ids; callers cut them from the text).  ``on_step`` is called
    after every step with the new ids so far ``[B, t]`` (streaming front ends use it).
    """
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    if not prompts:
        return []
    device = next(model.parameters()).device
    pad = layout.tokenizer.pad_id
    ids, mask = left_pad(prompts, pad)
    gen_cfg = GenerationConfig(
        **decoding.generation_kwargs(),
        eos_token_id=list(stop_ids),
        pad_token_id=pad,
        bos_token_id=layout.tokenizer.bos_id,
        num_return_sequences=1,
    )
    if seed is not None:
        torch.manual_seed(seed)
    processors = LogitsProcessorList([SpanConstraint(layout)] if constrain else [])
    criteria = StoppingCriteriaList(
        [TextStop(layout.tokenizer, stop_texts, ids.shape[1])] if stop_texts else []
    )
    if on_step is not None:
        criteria.append(StepHook(on_step, ids.shape[1]))
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        generation_config=gen_cfg,
        logits_processor=processors,
        stopping_criteria=criteria,
    )
    return cut_at_stops(out[:, ids.shape[1] :].tolist(), stop_ids)


def cut_at_stops(rows: Sequence[Sequence[int]], stop_ids: Sequence[int]) -> list[list[int]]:
    """Each row of new ids cut before its first stop id."""
    stops = {int(i) for i in stop_ids}
    results = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        results.append(list(row[:cut]))
    return results
