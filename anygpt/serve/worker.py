"""Where the server's model work runs: one LLM thread, and one acoustic thread that turns streamed
speech codes into audio windows.

Chat replies decoded without beam search run on the continuous-batching
:class:`~anygpt.runtime.scheduler.Scheduler`: a request joins the running batch at the next step and
leaves it when it ends (or is cancelled), so a new request never waits for a batch to finish.
Beam-search replies, base requests (speech, transcription, images) and any engine with a custom
``backend`` are batched with what arrives together, through the engine.

The app talks to :class:`Generation` only (``submit(job)``), so a continuous-batching scheduler can
replace :class:`BatchingWorker` without touching the app.  The engine is not thread-safe, so every
engine call (media encoding, generation, whole-utterance decoding) runs on the LLM thread; the
acoustic thread only calls the speech tokenizer's ``decode`` on windows.

Cancellation: a job whose client went away is skipped if it has not started; in a running batch
its rows stop producing events, and when every job of the batch is cancelled generation stops at
the next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from anygpt.runtime.chat import ChatSession, PreparedTurn, display_text
from anygpt.runtime.engine import Engine, Outcome
from anygpt.runtime.requests import REQUEST_ERRORS, ChatRequest
from anygpt.serve.streaming import WindowedSpeech

log = logging.getLogger("anygpt.serve")


class Cancelled(Exception):
    """Every job of a running batch was cancelled."""


@dataclass
class ChatJob:
    """One chat completion: the conversation, how to decode, and where events go.

    ``history``: earlier (role, text, images, speech) messages; ``request``: the last user turn.
    Events (on the app's loop): ``("text", choice, delta)``, ``("audio", choice, future)`` (a
    future of ``(window, waveform)`` pairs), ``("done", outcomes)`` or ``("error", exc)``.
    """

    history: list[Any]
    request: ChatRequest
    n: int = 1
    overrides: dict = field(default_factory=dict)
    seed: int | None = None
    stream: bool = False
    stream_speech: bool = False
    decode: bool | set[str] = True
    # start the reply with the requested modality's start tag (as base ``text|X`` prompts do),
    # so a client that asks for audio gets audio
    force_start: bool = True
    events: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # filled on the worker
    turn: PreparedTurn | None = None
    session: ChatSession | None = None
    speech: list[WindowedSpeech] = field(default_factory=list)
    sent_text: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    prefix: list[int] = field(default_factory=list)
    span_start: dict[int, int] = field(default_factory=dict)  # choice -> index of <sosp>
    finish_reasons: list[str | None] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # (outcome, ids) per choice
    scheduled: list[Any] = field(default_factory=list)  # scheduler requests
    answered: bool = False  # a "done" or "error" event was sent

    def emit(self, *event: Any) -> None:
        self.answered = self.answered or event[0] in ("done", "error")
        if self.loop is not None and self.events is not None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class BaseJob:
    """Base-model request lines (``text|speech|...``) with their seed; events as for chat."""

    lines: list[str]
    seed: int | None = None
    events: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    answered: bool = False  # a "done" or "error" event was sent

    def emit(self, *event: Any) -> None:
        self.answered = self.answered or event[0] in ("done", "error")
        if self.loop is not None and self.events is not None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Generation(Protocol):
    """The interface the app uses: queue a job; its events arrive on ``job.events``."""

    def submit(self, job: ChatJob | BaseJob) -> None: ...

    def close(self) -> None: ...


class AcousticStage:
    """A thread decoding speech windows; windows queued together with the same voice share one
    ``decode`` call (the tokenizer groups equal lengths into one forward pass)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.jobs: queue.Queue = queue.Queue()
        self._first_pending = 0
        self._first_done = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="anygpt-acoustic", daemon=True)
        self.thread.start()

    def submit(self, codes: torch.Tensor, windows: list, voice: str | None, seed: int | None):
        fut: Future = Future()
        if windows[0].emit_from == 0:
            with self._first_done:
                self._first_pending += 1
            fut.add_done_callback(self._first_decoded)
        self.jobs.put((codes, windows, voice, seed, fut))
        return fut

    def _first_decoded(self, _fut: Future) -> None:
        with self._first_done:
            self._first_pending -= 1
            self._first_done.notify_all()

    def wait_for_first_chunks(self, timeout: float) -> None:
        """Block while some reply's first audio chunk is waiting to be decoded (at most
        ``timeout`` seconds): the LLM thread pauses so that first audio is not starved of CPU."""
        with self._first_done:
            self._first_done.wait_for(lambda: self._first_pending == 0, timeout)

    def close(self) -> None:
        self.jobs.put(None)

    def _run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            pending = [first]
            while True:
                try:
                    item = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.jobs.put(None)
                    break
                pending.append(item)
            # first chunks first: a reply's first audio waits for no other reply's later windows
            pending.sort(key=lambda item: item[1][0].emit_from)
            # one decode call per voice: on a CPU, one call over 16 windows costs far less than
            # 16 calls.  The vocoder's random phase then comes from the batch's first seed, so a
            # seeded reply's streamed audio is bit-exact only when it is decoded alone.
            groups: dict[Any, list] = defaultdict(list)
            for item in pending:
                groups[item[2]].append(item)
            for voice, items in groups.items():
                seed = next((item[3] for item in items if item[3] is not None), None)
                self._decode(items, voice, seed)

    def _decode(self, items: list, voice: str | None, seed: int | None) -> None:
        from anygpt.modalities.base import Codes

        try:
            tok = self.engine.bundle.modality("speech")
            kw: dict[str, Any] = {}
            if voice:
                kw["voice_prompt"] = tok.load_voice_prompt(voice)
            if seed is not None:
                kw["generator"] = torch.Generator().manual_seed(seed)
            spans = [(codes[:, w.start : w.stop], w) for codes, ws, *_ in items for w in ws]
            waves = tok.decode(Codes.from_list([s for s, _ in spans]), **kw)
            k = 0
            for _codes, ws, _v, _s, fut in items:
                fut.set_result([(w, waves[k + i]) for i, w in enumerate(ws)])
                k += len(ws)
        except Exception as exc:  # noqa: BLE001 - the error goes to the waiting request
            for *_, fut in items:
                if not fut.done():
                    fut.set_exception(exc)


class BatchingWorker:
    """Runs jobs on one thread, batching the jobs that arrive within ``window_s`` of each other.

    Chat jobs with the same decoding settings (and no seed) are generated together, up to
    ``max_batch`` sequences; base lines of all waiting jobs go to one ``Engine.run_base`` call.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        window_s: float = 0.01,
        max_batch: int = 16,
        stream_options: dict | None = None,
        continuous: bool = True,
        first_audio_priority: bool = True,
    ) -> None:
        self.engine = engine
        self.window_s = window_s
        self.max_batch = max(1, max_batch)
        self.stream_options = stream_options or {}
        self.jobs: queue.Queue = queue.Queue()
        self.acoustic = AcousticStage(engine)
        # the LLM waits for pending first audio chunks before its next step (see the README)
        self.first_audio_priority = first_audio_priority
        self.batches = 0  # generation calls of the batch path
        self.peak_batch = 0  # most sequences decoded together so far
        self.cancelled = 0  # scheduler requests stopped because their client left
        self.continuous = continuous
        self._scheduler: Any = None
        self._scheduled: list[ChatJob] = []  # jobs with requests in the scheduler
        self._code_ids: set[int] | None = None
        self.thread = threading.Thread(target=self._run, name="anygpt-llm", daemon=True)
        self.thread.start()

    def submit(self, job: ChatJob | BaseJob) -> None:
        self.jobs.put(job)

    def close(self) -> None:
        self.jobs.put(None)
        self.acoustic.close()

    # ------------------------------------------------------------------ loop
    @property
    def scheduler(self):
        """The continuous-batching scheduler (built on first use over the bundle's LLM)."""
        if self._scheduler is None:
            from anygpt.runtime.scheduler import Scheduler

            bundle = self.engine.bundle
            self._scheduler = Scheduler(
                bundle.llm,
                bundle.layout,
                max_batch=self.max_batch,
                max_length=bundle.config.max_context,
            )
        return self._scheduler

    def _busy(self) -> bool:
        return self._scheduler is not None and self._scheduler.has_work

    def _collect(self, block: bool) -> list | None:
        """Jobs waiting now; when idle, block for the first and wait ``window_s`` for more."""
        jobs: list = []
        if block:
            first = self.jobs.get()
            if first is None:
                return None
            jobs.append(first)
            deadline = time.monotonic() + self.window_s
        else:
            deadline = time.monotonic()
        while len(jobs) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)
                return jobs or None
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._collect(block=not self._busy())
            if jobs is None:
                return
            try:
                self._run_once([j for j in jobs if not j.cancelled.is_set()])
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one failure
                # last resort: every job of this round that got no answer and is not in the
                # scheduler's running batch gets the error, so no client waits for its timeout
                log.exception("the worker failed on a round of %d requests", len(jobs))
                for j in jobs:
                    if not j.answered and j not in self._scheduled:
                        j.emit("error", exc)

    def _run_once(self, jobs: list) -> None:
        """One round of the loop: run the base jobs, prepare and queue the chat jobs, and take
        one scheduler step."""
        base = [j for j in jobs if isinstance(j, BaseJob)]
        # a job that runs itself (a cascaded spoken reply, anygpt/serve/cascade.py) runs whole here
        own = [j for j in jobs if getattr(j, "runs_itself", False)]
        chats = [j for j in jobs if isinstance(j, ChatJob) and not getattr(j, "runs_itself", False)]
        if base:
            self._guard(base, self._run_base)
        for j in own:
            self._guard([j], lambda js: js[0].run_here())
        encoded = self._encode_together(chats)
        ready = [j for j in chats if self._prepare(j, encoded)]
        later = []
        for j in ready:
            if self._can_schedule(j):
                self._guard([j], self._schedule)
            else:
                later.append(j)
        for group in self._chat_groups(later):
            self._guard(group, self._run_chat)
        if self._busy():
            self._step_safely()

    def _guard(self, jobs: list, fn: Callable[[list], None]) -> None:
        try:
            fn(jobs)
        except Cancelled:
            for j in jobs:
                j.emit("error", Cancelled("cancelled"))
        except Exception as exc:  # noqa: BLE001 - one batch failing must not stop the server
            log.exception("a batch of %d requests failed", len(jobs))
            for j in jobs:
                j.emit("error", exc)

    # ------------------------------------------------------------------ base requests
    def _run_base(self, jobs: list[BaseJob]) -> None:
        seeded = [j for j in jobs if j.seed is not None]
        plain = [j for j in jobs if j.seed is None]
        groups = [[j] for j in seeded] + ([plain] if plain else [])
        eng = self.engine
        for group in groups:
            lines = [line for j in group for line in j.lines]
            saved = (eng.seed, eng.rng, eng._calls)
            if group[0].seed is not None:
                import random

                eng.seed, eng.rng, eng._calls = group[0].seed, random.Random(group[0].seed), 0
            try:
                self.batches += 1
                outcomes = eng.run_base(lines)
            finally:
                if group[0].seed is not None:
                    eng.seed, eng.rng, eng._calls = saved
            k = 0
            for j in group:
                j.emit("done", outcomes[k : k + len(j.lines)])
                k += len(j.lines)

    # ------------------------------------------------------------------ chat
    def _encode_together(self, jobs: list[ChatJob]) -> dict:
        """Encode the media inputs of chat jobs that arrived together, one batch per modality.

        Returns ``{(modality, path): segment text}``; a file that cannot be loaded or a batch that
        fails is left out, so that request's own encoding reports its error as usual.
        """
        wanted: dict[str, list[str]] = defaultdict(list)
        for job in jobs:
            for m in [*job.history, job.request]:
                for modality, paths in (("image", m.images), ("speech", m.speech)):
                    wanted[modality].extend(p for p in paths if p not in wanted[modality])
        eng = self.engine
        out: dict = {}
        for modality, paths in wanted.items():
            if len(paths) < 2 or modality not in eng.bundle.modality_names:
                continue
            try:
                tok = eng.bundle.modality(modality, checked=True)
                loaded = {}
                for p in paths:
                    try:
                        loaded[p] = tok.load(p)
                    except REQUEST_ERRORS:
                        continue
                codes = tok.encode(list(loaded.values())).unbatch() if loaded else []
                for p, c in zip(loaded, codes, strict=True):
                    out[(modality, p)] = eng.layout.segment_text(modality, c)
            except REQUEST_ERRORS:
                continue
            except Exception:  # noqa: BLE001 - each request's own encoding reports the error
                log.exception("a shared %s encoding of %d files failed", modality, len(paths))
                continue
        return out

    def _prepare(self, job: ChatJob, encoded: dict | None = None) -> bool:
        """Build the job's prompt; False (and an error event) when that fails."""
        try:
            self._prepare_turn(job, encoded)
        except REQUEST_ERRORS as exc:
            job.emit("error", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - an unexpected failure ends this request only
            log.exception("preparing a chat request failed")
            job.emit("error", exc)
            return False
        job.emit("started")
        return True

    def _prepare_turn(self, job: ChatJob, encoded: dict | None) -> None:
        eng = self.engine
        session = ChatSession(PreEncoded(eng, encoded) if encoded else eng)
        for m in job.history:
            if m.role == "user":
                req = ChatRequest("interleaved", m.text, images=m.images, speech=m.speech)
                session.conversation.add_user(session.user_message(req))
            else:
                session.conversation.add_assistant(m.text)
        turn = session.prepare(job.request)
        target = job.request.to_modality
        if job.force_start and target in eng.bundle.modality_names:
            job.prefix = eng.forced_start(target)
            turn.prompt = turn.prompt + job.prefix
        turn.decoding = turn.decoding.with_overrides(**job.overrides)
        turn.decoding = eng.fit([turn.prompt], turn.decoding)
        job.turn, job.session = turn, session
        job.prompt_tokens = len(turn.prompt)
        job.sent_text = [""] * job.n
        if job.stream_speech:
            tok = eng.bundle.modality("speech", checked=True)
            hop = round(tok.sample_rate / tok.frame_rate)
            job.speech = [WindowedSpeech(hop, **self.stream_options) for _ in range(job.n)]

    def _chat_groups(self, jobs: list[ChatJob]) -> list[list[ChatJob]]:
        groups: dict[Any, list[ChatJob]] = defaultdict(list)
        for j in jobs:
            key = (j.turn.decoding, j.turn.stop_texts, j.seed, id(j) if j.seed is not None else 0)
            groups[key].append(j)
        out = []
        for group in groups.values():
            batch: list[ChatJob] = []
            for j in group:
                if batch and sum(b.n for b in batch) + j.n > self.max_batch:
                    out.append(batch)
                    batch = []
                batch.append(j)
            out.append(batch)
        return out

    def _run_chat(self, jobs: list[ChatJob]) -> None:
        eng = self.engine
        rows = [(j, c) for j in jobs for c in range(j.n)]
        prompts = [j.turn.prompt for j, _ in rows]
        stops = set(eng.stop_ids())
        streaming = any(j.stream for j in jobs)

        def on_step(new: torch.Tensor) -> None:
            if all(j.cancelled.is_set() for j in jobs):
                raise Cancelled("every request of the batch was cancelled")
            if not streaming or new.shape[0] != len(rows):
                return
            for r, ids in enumerate(new.tolist()):
                job, choice = rows[r]
                if job.stream and not job.cancelled.is_set():
                    cut = next((i for i, t in enumerate(ids) if t in stops), None)
                    self._stream_row(job, choice, job.prefix + ids[:cut], final=False)

        seed = jobs[0].seed if jobs[0].seed is not None else eng.next_seed()
        cfg = jobs[0].turn.decoding
        self.batches += 1
        self.peak_batch = max(self.peak_batch, len(rows))
        new = eng.generate_ids(prompts, cfg, seed=seed, stop_texts=jobs[0].turn.stop_texts,
                               on_step=on_step)  # fmt: skip
        results: dict[int, list] = defaultdict(list)
        for (job, choice), ids in zip(rows, new, strict=True):
            if job.cancelled.is_set():
                continue
            if job.stream:
                self._stream_row(job, choice, job.prefix + ids, final=True)
            out = job.session.finish(
                job.turn,
                job.prefix + ids,
                decode=job.decode,
                seed=None if job.seed is None else job.seed + 1,
            )
            results[id(job)].append((out, ids))
        for job in jobs:
            if not job.cancelled.is_set():
                job.emit("done", results[id(job)])

    # ------------------------------------------------------------------ continuous batching
    def _can_schedule(self, job: ChatJob) -> bool:
        return (
            self.continuous
            and self.engine.backend is None
            and job.turn.decoding.num_beams == 1
            and job.n <= self.max_batch
        )

    def _schedule(self, jobs: list[ChatJob]) -> None:
        for job in jobs:
            try:
                self._submit(job)
            except ValueError:
                for r in job.scheduled:
                    self.scheduler.cancel(r)
                if job in self._scheduled:
                    self._scheduled.remove(job)
                raise

    def _submit(self, job: ChatJob) -> None:
        eng = self.engine
        job.finish_reasons = [None] * job.n
        job.results = [None] * job.n
        for choice in range(job.n):
            seed = None if job.seed is None else (job.seed + choice) % 2**62
            job.scheduled.append(
                self.scheduler.submit(
                    job.turn.prompt,
                    job.turn.decoding,
                    stop_ids=eng.stop_ids(),
                    stop_texts=job.turn.stop_texts,
                    seed=seed,
                    on_tokens=self._on_tokens(job, choice),
                )
            )
        self._scheduled.append(job)

    def _on_tokens(self, job: ChatJob, choice: int):
        def on_tokens(request, _new: list[int], finished: bool) -> None:
            if job.stream and not job.cancelled.is_set() and not finished:
                self._stream_row(job, choice, job.prefix + list(request.tokens), final=False)

        return on_tokens

    def _step_safely(self) -> None:
        if self.first_audio_priority:
            self.acoustic.wait_for_first_chunks(timeout=1.0)
        try:
            self._step()
        except Exception as exc:  # noqa: BLE001 - a failed step ends its requests, not the server
            log.exception("a generation step failed; its %d requests end", len(self._scheduled))
            for job in self._scheduled:
                job.emit("error", exc)
            self._scheduled.clear()
            self._scheduler = None  # a fresh cache for the next requests

    def _step(self) -> None:
        sched = self.scheduler
        for job in self._scheduled:
            if job.cancelled.is_set():
                for r in job.scheduled:
                    if not r.done:
                        sched.cancel(r)
        outputs = sched.step()
        self.peak_batch = max(self.peak_batch, sched.running)
        for out in outputs:
            if out.finished:
                try:
                    self._finish_scheduled(out.request)
                except Exception as exc:  # noqa: BLE001 - the error goes to its request
                    job = next((j for j in self._scheduled if out.request in j.scheduled), None)
                    if job is not None:
                        self._scheduled.remove(job)
                        for r in job.scheduled:
                            sched.cancel(r)
                        job.emit("error", exc)

    def _finish_scheduled(self, request) -> None:
        job = next((j for j in self._scheduled if request in j.scheduled), None)
        if job is None:
            return
        choice = job.scheduled.index(request)
        reason = request.finish_reason
        self.cancelled += reason == "cancelled"
        job.finish_reasons[choice] = "stop" if reason == "stop_text" else reason
        if reason != "cancelled" and not job.cancelled.is_set():
            ids = list(request.tokens)
            if job.stream:
                self._stream_row(job, choice, job.prefix + ids, final=True)
            out = job.session.finish(
                job.turn,
                job.prefix + ids,
                decode=job.decode,
                seed=None if job.seed is None else job.seed + 1,
            )
            job.results[choice] = (out, ids)
        if all(r.done for r in job.scheduled):
            self._scheduled.remove(job)
            if job.cancelled.is_set() or any(x is None for x in job.results):
                job.emit("error", Cancelled("cancelled"))
            else:
                job.emit("done", job.results)

    def _stream_row(self, job: ChatJob, choice: int, ids: list[int], final: bool) -> None:
        """Send the new text of one row and queue the speech windows that can be decoded now.

        Called after every step with all the row's ids, so the per-step work is kept small:
        text is re-decoded only when the new token is not a code, and the speech span is parsed
        only when enough frames for the next window exist.
        """
        lay = self.engine.layout
        if self._code_ids is None:
            self._code_ids = set(lay.all_code_ids.tolist())
        if final or not job.sent_text[choice] or (ids and ids[-1] not in self._code_ids):
            segments = lay.find_segments(ids)
            text = display_text(ids, segments, lay) if ids else ""
            sent = job.sent_text[choice]
            # SentencePiece pieces can change the tail of the decoded text; send settled text only
            if (
                text.startswith(sent)
                and len(text) > len(sent)
                and (final or not text.endswith("\ufffd"))
            ):
                job.emit("text", choice, text[len(sent) :])
                job.sent_text[choice] = text
        if not job.speech or job.speech[choice].planned_all:
            return
        state = job.speech[choice]
        start = job.span_start.get(choice)
        if start is None:
            start_id = lay.start_ids["speech"]
            start = next((i for i, t in enumerate(ids) if t == start_id), None)
            if start is None:
                return
            job.span_start[choice] = start
        end_id = lay.end_ids["speech"]
        ended = final or end_id in ids[start + 1 :]
        size = state.first_chunk if (state.planned == 0 and state.first_chunk) else state.chunk
        if not ended and len(ids) - start - 1 < state.planned + size + state.lookahead:
            return
        span = next(s for s in lay.find_segments(ids[start:]) if s.modality == "speech")
        codes = lay.codes_from_ids("speech", span.body).codes  # [K, T]
        windows = state.plan(int(codes.shape[1]), final=final or span.end is not None)
        if windows:
            seed = None if job.seed is None else job.seed + 7 + windows[0].emit_from
            voice = job.request.voice_prompt or None
            job.emit("audio", choice, self.acoustic.submit(codes, windows, voice, seed))


class PreEncoded:
    """The engine, with media segments already encoded in a shared batch served from memory."""

    def __init__(self, engine: Engine, segments: dict) -> None:
        self._engine = engine
        self._segments = segments

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def encode_media(self, modality: str, paths: list[str], **load_kw: Any) -> list[str]:
        if not load_kw and all((modality, p) in self._segments for p in paths):
            return [self._segments[(modality, p)] for p in paths]
        return self._engine.encode_media(modality, paths, **load_kw)


def outcome_transcript(outcome: Outcome) -> str:
    """The reply text without the ``[speech]`` placeholders of its spans."""
    return " ".join((outcome.text or "").replace("[speech]", " ").split())
