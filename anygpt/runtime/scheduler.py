"""Continuous batching: requests join and leave a running decode batch at step boundaries.

A :class:`Scheduler` owns one LLM's preallocated KV cache (:class:`~anygpt.generation.model.CachedLM`)
and a batch of up to ``max_batch`` rows.  Each :meth:`Scheduler.step` first decodes one token for
every running request (one forward over the batch), then admits waiting requests into free rows
(prefill, which also yields their first token), samples all rows together with their own settings
(:mod:`anygpt.generation.sampling`) under the span constraint
(:class:`~anygpt.generation.spans.SpanMachine`), and retires the requests that finished.

API (for the command lines, :func:`anygpt.generation.generate` and servers)::

    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=16, max_length=2048)
    # or Scheduler.for_bundle(bundle, max_batch=16): rows of the bundle's context length
    request = scheduler.submit(
        prompt_ids,                      # list of ids, BOS included
        decoding,                        # DecodingConfig (num_beams must be 1)
        span_decoding={"speech": speech_cfg},  # optional: the config inside <sosp>..<eosp>
        stop_ids=[2, eos_tag], stop_texts=["<eom>"], max_new_tokens=200, seed=7,
        on_tokens=lambda request, new_ids, finished: ...,  # called from the stepping thread
    )
    scheduler.cancel(request)            # from any thread; takes effect at the next step
    while scheduler.has_work:            # one thread steps the batch
        for out in scheduler.step():     # StepOutput(request, new_ids, finished)
            ...
    request.tokens, request.finish_reason  # "stop", "stop_text", "length", "cancelled"
    request.wait(timeout)                # blocks until finished (for other threads)

The KV cache is allocated at construction: ``2 * layers * max_batch * kv_heads * max_length *
head_dim`` values of the model's dtype (a 7B LLaMA in bf16: 0.5 MiB per token and row, 2 GiB per
row of 4096 tokens), so a server sizes ``max_batch`` and ``max_length`` to its memory.

``submit`` and ``cancel`` are thread-safe; ``step`` must be called from one thread at a time.
A request's new ids never include the stop id that ended it; a plain-text stop (``stop_texts``) stays
in them (callers cut it from the text).  Finished rows free their slot at once, so a waiting request
starts at the next step.

Per request: the decoding config (temperature, top-k, top-p, repetition penalty, greedy or sampled),
optional per-span configs (``span_decoding``: modality name -> config, ``"text"`` for outside spans),
stop ids and texts, the token limit, the seed (sampling noise depends only on it and the step, so a
request samples the same tokens alone or in any batch), and an optional
:class:`RepetitionGuard`.

Per-span decoding and the repetition guard are off unless asked for (they change what AnyGPT's
settings would produce).  For the command lines' engine::

    engine.generate_options = {"span_decoding": span_configs(bundle, chat=True),
                               "guard": RepetitionGuard(max_period=4, repeats=8)}
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from anygpt.config import DecodingConfig
from anygpt.generation.model import CachedLM
from anygpt.generation.sampling import repetition_penalty, sample
from anygpt.generation.spans import SpanMachine
from anygpt.layout import TokenLayout

FINISH_REASONS = ("stop", "stop_text", "length", "cancelled")


@dataclass(frozen=True)
class RepetitionGuard:
    """Closes a modality span that loops: once its last ``repeats`` periods of up to ``max_period``
    frames are identical, the span's end tag is forced (at a frame boundary).

    Off unless asked for, since it changes what the model would otherwise produce.
    """

    max_period: int = 4
    repeats: int = 8

    def __post_init__(self) -> None:
        if self.max_period < 1 or self.repeats < 2:
            raise ValueError("a repetition guard needs max_period >= 1 and repeats >= 2")


def span_configs(bundle, chat: bool) -> dict[str, DecodingConfig]:
    """Per-span decoding configs of a bundle: each modality's own config inside its spans and the
    text config outside (``"text"``), as ``span_decoding`` for :meth:`Scheduler.submit` or
    :func:`anygpt.generation.generate`.  Beam search does not mix with per-span sampling, so a
    beam config (AnyGPT's chat text config: 5-beam sampling) becomes plain sampling here."""
    configs = {"text": bundle.decoding(None, chat)}
    for name in bundle.modality_names:
        configs[name] = bundle.decoding(name, chat)
    return {k: c.with_overrides(num_beams=1) for k, c in configs.items()}


TokensCallback = Callable[["Request", list[int], bool], None]


@dataclass(eq=False)
class Request:
    """One generation request and what it has produced so far.

    Attributes:
        tokens: the new ids so far (stop ids excluded).
        finish_reason: ``None`` while running, then one of :data:`FINISH_REASONS`.
        submitted_at / first_token_at / finished_at: ``time.perf_counter()`` stamps.
        token_times: when each new id was produced (inter-token latency).
    """

    id: int
    prompt: list[int]
    decoding: DecodingConfig
    span_decoding: dict[str, DecodingConfig]
    stop_ids: frozenset[int]
    stop_texts: tuple[str, ...]
    max_new_tokens: int
    seed: int
    guard: RepetitionGuard | None
    on_tokens: TokensCallback | None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    submitted_at: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    token_times: list[float] = field(default_factory=list)
    _event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request finished; ``False`` on timeout."""
        return self._event.wait(timeout)


@dataclass
class StepOutput:
    """What one step produced for one request: its new ids (zero or one) and whether it ended."""

    request: Request
    new_tokens: list[int]
    finished: bool


class Scheduler:
    """A continuously batched decoder over one LLaMA model.

    Args:
        model: a transformers ``LlamaForCausalLM`` (see :mod:`anygpt.generation.model`).
        layout: the token layout (span constraint, per-span configs).
        max_batch: rows decoded together (KV cache slots).
        max_length: tokens per row, prompt included (default: the model's position limit).
        constrain: apply the modality-span constraint.
        compile: ``torch.compile`` the one-token step.
    """

    def __init__(
        self,
        model,
        layout: TokenLayout,
        *,
        max_batch: int = 16,
        max_length: int | None = None,
        constrain: bool = True,
        compile: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        max_length = max_length or int(getattr(model.config, "max_position_embeddings", 2048))
        self.lm = CachedLM(model, max_batch, max_length, compile=compile)
        self.layout = layout
        self.tokenizer = layout.tokenizer
        self.constrain = constrain
        self.max_batch, self.max_length = max_batch, max_length
        device, vocab = self.lm.device, self.lm.vocab_size
        self.device, self.vocab_size = device, vocab
        self.machine = SpanMachine(layout, vocab, device)
        self.kinds = ["text", *self.machine.names]
        self._codebooks = int(self.machine.codebooks.max())
        kinds = len(self.kinds)

        def zeros(*shape, dtype=torch.long):
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.last_token = zeros(max_batch)
        self.positions = zeros(max_batch)
        self.state = zeros(max_batch)
        self.count = zeros(max_batch)
        self.span_length = zeros(max_batch)
        self.seeds = zeros(max_batch)
        self.min_new = zeros(max_batch)
        self.greedy = zeros(max_batch, kinds, dtype=torch.bool)
        self.temperature = torch.ones(max_batch, kinds, device=device)
        self.top_k = zeros(max_batch, kinds)
        self.top_p = torch.ones(max_batch, kinds, device=device)
        self.penalty = torch.ones(max_batch, kinds, device=device)
        self.seen = zeros(max_batch, vocab, dtype=torch.bool)
        self.stop_mask = zeros(max_batch, vocab, dtype=torch.bool)
        self.guard_on = zeros(max_batch, dtype=torch.bool)
        self.guard_period = zeros(max_batch)
        self.guard_repeats = zeros(max_batch)
        self._row_tensors = [
            self.last_token, self.positions, self.state, self.count, self.span_length,
            self.seeds, self.min_new, self.greedy, self.temperature, self.top_k, self.top_p,
            self.penalty, self.seen, self.stop_mask, self.guard_on, self.guard_period,
            self.guard_repeats,
        ]  # fmt: skip
        self.recent: torch.Tensor | None = None  # [B, W] last ids, allocated with the first guard
        self.rows: list[Request] = []
        self.lengths: list[int] = []  # tokens in each row's cache (= its next position)
        self._pending: deque[Request] = deque()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._next_id = 0
        self._flags: dict = {}

    @classmethod
    def for_bundle(cls, bundle, *, max_batch: int = 16, **kw) -> Scheduler:
        """A scheduler over a bundle's LLM whose rows hold the bundle's context length."""
        return cls(
            bundle.llm,
            bundle.layout,
            max_batch=max_batch,
            max_length=bundle.config.max_context,
            **kw,
        )

    # ------------------------------------------------------------------ public API
    def submit(
        self,
        prompt: Sequence[int],
        decoding: DecodingConfig,
        *,
        span_decoding: Mapping[str, DecodingConfig] | None = None,
        stop_ids: Sequence[int] = (),
        stop_texts: Sequence[str] = (),
        max_new_tokens: int | None = None,
        seed: int | None = None,
        guard: RepetitionGuard | None = None,
        on_tokens: TokensCallback | None = None,
    ) -> Request:
        """Queue a request; it joins the batch at the next step with a free row.

        Raises:
            ValueError: an empty or too long prompt, ids outside the vocabulary, beam search, an
                unknown span name or a limit below 1.
        """
        prompt = [int(i) for i in prompt]
        span_decoding = dict(span_decoding or {})
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.max_length:
            raise ValueError(
                f"the prompt is {len(prompt)} tokens; this scheduler holds {self.max_length} per row"
            )
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt ids must lie in [0, {self.vocab_size})")
        unknown = sorted(set(span_decoding) - set(self.kinds))
        if unknown:
            raise ValueError(f"no span named {unknown[0]!r}; spans are {', '.join(self.kinds)}")
        for cfg in (decoding, *span_decoding.values()):
            if cfg.num_beams > 1:
                raise ValueError("beam search (num_beams > 1) is not supported by the scheduler")
        limit = decoding.max_new_tokens if max_new_tokens is None else max_new_tokens
        if limit < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        with self._lock:
            request = Request(
                id=self._next_id,
                prompt=prompt,
                decoding=decoding,
                span_decoding=span_decoding,
                stop_ids=frozenset(int(i) for i in stop_ids),
                stop_texts=tuple(stop_texts),
                max_new_tokens=int(limit),
                seed=int(seed),
                guard=guard,
                on_tokens=on_tokens,
                submitted_at=time.perf_counter(),
            )
            self._next_id += 1
            self._pending.append(request)
        return request

    def cancel(self, request: Request | int) -> None:
        """Stop a request at the next step (its ids so far stay; reason ``"cancelled"``)."""
        with self._lock:
            self._cancelled.add(request if isinstance(request, int) else request.id)

    @property
    def has_work(self) -> bool:
        return bool(self.rows or self._pending)

    @property
    def running(self) -> int:
        return len(self.rows)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def run_until_idle(self) -> None:
        """Step until no request is running or waiting."""
        while self.has_work:
            self.step()

    def iter_steps(self) -> Iterator[StepOutput]:
        """Every step's outputs until no request is running or waiting."""
        while self.has_work:
            yield from self.step()

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Decode one token for every running request and admit waiting ones."""
        outputs = self._apply_cancellations()
        logits = []
        running = len(self.rows)
        if running:
            logits.append(
                self.lm.decode(self.last_token[:running], self.positions[:running], self.lengths)
            )
            self.positions[:running] += 1
            self.lengths = [n + 1 for n in self.lengths]
        admitted = self._admit(logits)
        if not self.rows:
            return outputs
        if admitted:
            self._update_flags()
        chosen = self._choose(torch.cat(logits) if len(logits) > 1 else logits[0])
        outputs += self._record(chosen)
        return outputs

    def _apply_cancellations(self) -> list[StepOutput]:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if not cancelled:
                return []
            waiting = [r for r in self._pending if r.id in cancelled]
            for r in waiting:
                self._pending.remove(r)
        outputs = []
        for r in waiting:
            outputs.append(self._finish(r, "cancelled"))
        for slot in reversed(range(len(self.rows))):
            if self.rows[slot].id in cancelled:
                outputs.append(self._finish(self.rows[slot], "cancelled"))
                self._retire(slot)
        if outputs:
            self._update_flags()
        return outputs

    def _admit(self, logits: list[torch.Tensor]) -> int:
        """Prefill waiting requests into free rows; appends their first-token logits ``[1, V]``."""
        admitted = []
        with self._lock:
            while self._pending and len(self.rows) + len(admitted) < self.max_batch:
                admitted.append(self._pending.popleft())
        for request in admitted:
            slot = len(self.rows)
            ids = torch.tensor(request.prompt, dtype=torch.long, device=self.device)
            logits.append(self.lm.prefill(slot, ids).unsqueeze(0))
            self._set_row(slot, request, ids)
            self.rows.append(request)
            self.lengths.append(len(request.prompt))
        return len(admitted)

    def _set_row(self, slot: int, request: Request, ids: torch.Tensor) -> None:
        self.positions[slot] = len(request.prompt)
        self.state[slot] = self.machine.initial_state(request.prompt)
        self.count[slot] = 0
        self.span_length[slot] = 0
        self.seeds[slot] = request.seed
        self.min_new[slot] = (
            request.decoding.min_new_tokens if request.decoding.apply_min_new_tokens else 0
        )
        for kind, name in enumerate(self.kinds):
            cfg = request.span_decoding.get(name, request.decoding)
            self.greedy[slot, kind] = not cfg.do_sample
            self.temperature[slot, kind] = cfg.temperature if cfg.temperature > 0 else 1.0
            self.top_k[slot, kind] = cfg.top_k or 0
            self.top_p[slot, kind] = cfg.top_p
            self.penalty[slot, kind] = cfg.repetition_penalty
        self.seen[slot] = False
        self.seen[slot, ids] = True
        self.stop_mask[slot] = False
        if request.stop_ids:
            stops = [i for i in request.stop_ids if 0 <= i < self.vocab_size]
            self.stop_mask[slot, stops] = True
        guard = request.guard
        self.guard_on[slot] = guard is not None
        if guard is not None:
            self.guard_period[slot] = guard.max_period
            self.guard_repeats[slot] = guard.repeats
            self._ensure_recent(guard)
            self.recent[slot] = -1

    def _ensure_recent(self, guard: RepetitionGuard) -> None:
        width = guard.max_period * self._codebooks * guard.repeats
        if self.recent is None or self.recent.shape[1] < width:
            recent = torch.full((self.max_batch, width), -1, dtype=torch.long, device=self.device)
            if self.recent is not None:
                recent[:, -self.recent.shape[1] :] = self.recent
            self.recent = recent

    def _update_flags(self) -> None:
        """Which processing the current rows need (decided on the host, so no step syncs)."""
        rows = self.rows
        configs = [[r.span_decoding.get(k, r.decoding) for k in self.kinds] for r in rows]
        every = [c for row in configs for c in row]
        self._flags = {
            "per_span": any(len(set(row)) > 1 for row in configs),
            "all_greedy": all(not c.do_sample for c in every),
            "any_greedy": any(not c.do_sample for c in every),
            "top_k": max([c.top_k or 0 for c in every if c.do_sample], default=0),
            "top_p": any(c.do_sample and c.top_p < 1.0 for c in every),
            "penalty": any(c.repetition_penalty != 1.0 for c in every),
            "min_new": any(
                r.decoding.apply_min_new_tokens and r.decoding.min_new_tokens for r in rows
            ),
            "guard": any(r.guard is not None for r in rows),
            "guard_period": max(
                [r.guard.max_period * self._codebooks for r in rows if r.guard], default=0
            ),
        }

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Process logits ``[S, V]`` of rows ``0..S-1`` and pick each row's next id ``[S]``."""
        flags = self._flags
        rows = logits.shape[0]
        state = self.state[:rows]
        if flags["per_span"]:
            kind = self.machine.kind[state].unsqueeze(1)

            def pick(table):
                return table[:rows].gather(1, kind).squeeze(1)
        else:

            def pick(table):
                return table[:rows, 0]

        if flags["penalty"]:
            logits = repetition_penalty(logits, self.seen[:rows], pick(self.penalty).unsqueeze(1))
        if flags["min_new"]:
            early = (self.count[:rows] < self.min_new[:rows]).unsqueeze(1)
            logits = logits.masked_fill(self.stop_mask[:rows] & early, float("-inf"))
        if self.constrain:
            logits = logits.masked_fill(self.machine.banned[state], float("-inf"))
        if flags["all_greedy"]:
            chosen = logits.argmax(dim=-1)
        else:
            chosen = sample(
                logits,
                greedy=pick(self.greedy) if flags["any_greedy"] else None,
                temperature=pick(self.temperature),
                top_k=pick(self.top_k) if flags["top_k"] else None,
                largest_k=flags["top_k"],
                top_p=pick(self.top_p) if flags["top_p"] else None,
                seeds=self.seeds[:rows],
                steps=self.count[:rows],
            )
        if flags["guard"]:
            chosen = self._guard(chosen, state)
        # advance every row's state on the device
        self.seen[:rows].scatter_(1, chosen.unsqueeze(1), True)
        new_state = self.machine.next_state(state, chosen)
        entered = self.machine.start_state[chosen] >= 0
        self.span_length[:rows] = torch.where(entered, 0, self.span_length[:rows] + 1)
        self.state[:rows] = new_state
        self.count[:rows] += 1
        self.last_token[:rows] = chosen
        return chosen

    def _guard(self, chosen: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Replace the id of rows whose open span loops by the span's end tag, where the span may
        end now (multi-codebook spans at a frame boundary); rows without a guard are untouched."""
        rows = chosen.shape[0]
        recent = self.recent[:rows]  # the ids before this one, oldest first
        width = recent.shape[1]
        codebooks = self.machine.codebooks[state]
        span_length = self.span_length[:rows]
        repeats, periods = self.guard_repeats[:rows], self.guard_period[:rows] * codebooks
        looping = torch.zeros(rows, dtype=torch.bool, device=self.device)
        for period in range(1, min(self._flags["guard_period"], width - 1) + 1):
            covered = period * repeats  # ids the repeated pattern must cover
            fits = (covered <= width) & (span_length >= covered)
            fits &= (period % codebooks == 0) & (period <= periods)
            same = recent[:, period:] == recent[:, :-period]
            run = (
                same.flip(1).int().cumprod(1).sum(1)
            )  # trailing ids equal to the one a period back
            looping |= fits & (run >= covered - period)
        close = looping & self.guard_on[:rows] & self.machine.end_allowed[state]
        chosen = torch.where(close, self.machine.end_id[state], chosen)
        recent.copy_(torch.cat([recent[:, 1:], chosen.unsqueeze(1)], dim=1))
        return chosen

    def _record(self, chosen: torch.Tensor) -> list[StepOutput]:
        """Host bookkeeping: new ids, stop rules, limits, callbacks, retirement."""
        now = time.perf_counter()
        outputs = []
        finished = []
        for slot, (request, token) in enumerate(zip(self.rows, chosen.tolist(), strict=True)):
            if request.first_token_at is None:
                request.first_token_at = now
            if token in request.stop_ids:
                outputs.append(self._finish(request, "stop"))
                finished.append(slot)
                continue
            request.tokens.append(token)
            request.token_times.append(now)
            reason = None
            if request.stop_texts and self._ends_with_text(request):
                reason = "stop_text"
            elif (
                len(request.tokens) >= request.max_new_tokens
                or len(request.prompt) + len(request.tokens) >= self.max_length
            ):
                reason = "length"
            if reason is not None:
                finished.append(slot)
                outputs.append(self._finish(request, reason, [token]))
            else:
                outputs.append(StepOutput(request, [token], False))
                if request.on_tokens is not None:
                    request.on_tokens(request, [token], False)
        for slot in reversed(finished):
            self._retire(slot)
        if finished:
            self._update_flags()
        return outputs

    def _ends_with_text(self, request: Request) -> bool:
        text = self.tokenizer.decode(request.tokens[-12:])
        return any(text.endswith(t) for t in request.stop_texts)

    def _finish(self, request: Request, reason: str, new: list[int] | None = None) -> StepOutput:
        request.finish_reason = reason
        request.finished_at = time.perf_counter()
        request._event.set()
        if request.on_tokens is not None:
            request.on_tokens(request, new or [], True)
        return StepOutput(request, new or [], True)

    def _retire(self, slot: int) -> None:
        """Free ``slot``; the last row moves into it so running rows stay in ``0..S-1``."""
        last = len(self.rows) - 1
        if slot != last:
            self.lm.move(last, slot, self.lengths[last])
            for table in self._row_tensors:
                table[slot] = table[last]
            if self.recent is not None:
                self.recent[slot] = self.recent[last]
            self.rows[slot] = self.rows[last]
            self.lengths[slot] = self.lengths[last]
        self.rows.pop()
        self.lengths.pop()
