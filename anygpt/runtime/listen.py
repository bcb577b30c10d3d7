"""``anygpt chat --listen``: a live audio stream, turns cut by the VAD, replies that can be interrupted.

The stream (a wav file played as if live, or a microphone) is fed to
:class:`~anygpt.runtime.vad.StreamingVAD` in 32 ms chunks.  When the user stops speaking the
utterance becomes a speech turn; its reply "plays" in stream time from the moment it is ready for
as long as its speech lasts.  If the user starts speaking while it plays, the reply stops at that
point: the history keeps the reply's text and only the speech frames already played, the span
closed (:func:`truncated_history`), and the new utterance is answered next (a reply the user
spoke over before it began to play keeps none of its speech).  Every event is reported with its
stream time in seconds.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from anygpt.runtime.chat import cut_stop_text
from anygpt.runtime.requests import REQUEST_ERRORS, ChatRequest
from anygpt.runtime.vad import FRAME, SAMPLE_RATE, StreamingVAD

PAD = SAMPLE_RATE * 3 // 10  # audio kept before a detected start (the VAD needs a run to fire)


def truncated_history(engine, ids: list[int], frames: int) -> str:
    """The history text of a reply cut after ``frames`` speech frames: the text before its speech
    span and the span's first ``frames`` frames, closed with its end tag ("" if nothing is left)."""
    lay = engine.layout
    span = next((s for s in lay.find_segments(ids) if s.modality == "speech"), None)
    if span is None:
        return lay.tokenizer.decode(ids).strip()
    before = lay.tokenizer.decode(ids[: span.start]).strip()
    codes = lay.codes_from_ids("speech", span.body).codes  # [K, T]
    frames = max(0, min(frames, int(codes.shape[1])))
    if frames == 0:
        return before
    return (before + " " + lay.segment_text("speech", codes[:, :frames])).strip()


def wav_chunks(path: str) -> Iterator[np.ndarray]:
    """A wav file as 16 kHz mono float32 chunks of one VAD frame."""
    from anygpt.audio import resample

    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = wave[:, 0]
    if rate != SAMPLE_RATE:
        wave = np.asarray(resample(wave, rate, SAMPLE_RATE), dtype=np.float32)
    for i in range(0, len(wave), FRAME):
        yield wave[i : i + FRAME]


def mic_chunks() -> Iterator[np.ndarray]:
    """The default microphone as 16 kHz mono float32 chunks (needs the ``sounddevice`` package)."""
    import queue

    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise RuntimeError("--listen mic needs the sounddevice package and PortAudio") from exc
    try:
        sounddevice.query_devices(kind="input")
    except Exception as exc:  # noqa: BLE001 - PortAudio reports a missing device in many ways
        raise RuntimeError(f"--listen mic: no microphone found ({exc})") from exc
    chunks: queue.Queue = queue.Queue()
    with sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                 blocksize=FRAME, callback=lambda d, *_: chunks.put(d[:, 0].copy())):  # fmt: skip
        while True:
            yield chunks.get()


@dataclass
class Playing:
    turn: int
    ids: list[int]
    start: float  # stream seconds
    frames: int
    frame_rate: float

    @property
    def end(self) -> float:
        return self.start + self.frames / self.frame_rate


def listen(
    session,
    chunks: Iterable[np.ndarray],
    *,
    vad: StreamingVAD,
    speed: float = 1.0,
    sink=None,
    report: Callable[[float, str], None] = lambda t, msg: print(f"[{t:7.2f}s] {msg}", flush=True),
) -> list[dict]:
    """Run the stream; returns one record per event (``kind``, ``time`` and details).

    ``speed``: stream seconds per wall second (0: as fast as the CPU goes; model time then
    counts as no stream time).  ``sink``: a :class:`~anygpt.runtime.media.FileSink` for the
    replies' audio.
    """
    eng = session.engine
    tok = eng.bundle.modality("speech", checked=True)
    events: list[dict] = []
    audio = np.zeros(0, dtype=np.float32)  # stream audio kept since `origin` (samples)
    origin = fed = 0
    speaking_from: int | None = None
    playing: Playing | None = None
    turns = 0
    wall0 = time.monotonic()

    def note(t: float, kind: str, msg: str, **info) -> None:
        events.append({"kind": kind, "time": t, **info})
        report(t, msg)

    for chunk in chunks:
        if speed > 0:
            delay = wall0 + fed / SAMPLE_RATE / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        audio = np.concatenate([audio, chunk])
        fed += len(chunk)
        now = fed / SAMPLE_RATE
        if playing is not None and now >= playing.end:
            note(playing.end, "reply_finished", f"reply {playing.turn} finished")
            playing = None
        for ev in vad.feed(chunk):
            at = round(ev.time * SAMPLE_RATE)
            if ev.kind == "speech_started":
                speaking_from = at
                note(ev.time, "speech_started", "speech started")
                if playing is not None:
                    # a reply not yet playing (the user spoke while it was computed) is dropped
                    played = int(max(0.0, now - playing.start) * playing.frame_rate)
                    session.conversation.messages[-1] = (
                        "assistant",
                        truncated_history(eng, playing.ids, played),
                    )
                    note(now, "interrupted", f"reply {playing.turn} interrupted after "
                         f"{played / playing.frame_rate:.2f} s of {playing.frames / playing.frame_rate:.2f} s",
                         speech_start=ev.time, played_frames=played)  # fmt: skip
                    playing = None
                continue
            start = max(0, (speaking_from or 0) - PAD - origin)
            utterance = audio[start : at - origin]
            audio, origin, speaking_from = audio[at - origin :], at, None
            forced = " (longest utterance reached)" if ev.forced else ""
            note(
                ev.time,
                "speech_stopped",
                f"speech stopped{forced}: {len(utterance) / SAMPLE_RATE:.2f} s",
            )
            turns += 1
            t0 = time.monotonic()
            reply = answer(session, utterance, sink)
            took = time.monotonic() - t0
            ready = now + (took * speed if speed > 0 else 0.0)
            if isinstance(reply, str):
                note(ready, "error", f"turn {turns}: error: {reply}")
                continue
            ids, outcome, frames = reply
            text = " ".join((outcome.text or "").replace("[speech]", " ").split())
            if not text and not frames:
                note(ready, "no_reply", f"turn {turns}: no reply (the model stayed silent)")
                continue
            files = [str(f) for f in outcome.files]
            saved = f" -> {', '.join(files)}" if files else ""
            extra = "".join(f"; {n}" for n in outcome.notes)
            said = f"{text!r}, " if text else ""
            note(ready, "reply", f"reply {turns}: {said}{frames / tok.frame_rate:.2f} s of speech"
                 f"{saved}{extra}", frames=frames, text=text, files=files)  # fmt: skip
            if frames:
                playing = Playing(turns, ids, ready, frames, tok.frame_rate)
        if speaking_from is None and len(audio) > PAD:
            origin += len(audio) - PAD
            audio = audio[-PAD:]
    for ev in vad.flush():
        note(ev.time, "speech_stopped", "stream ended")
    if playing is not None:
        note(playing.end, "reply_finished", f"reply {playing.turn} finished")
    count = {k: sum(e["kind"] == k for e in events) for k in ("reply", "interrupted", "error")}
    report(fed / SAMPLE_RATE, f"stream ended: {turns} turns, {count['reply']} replies, "
           f"{count['interrupted']} interrupted, {count['error']} errors")  # fmt: skip
    return events


def answer(session, utterance: np.ndarray, sink=None):
    """One spoken turn through the chat pipeline: ``(ids, outcome, speech frames)`` of the reply,
    or an error line.  The reply's audio is decoded (and written by ``sink`` when given)."""
    eng = session.engine
    fd, path = tempfile.mkstemp(prefix="anygpt-listen-", suffix=".wav")
    os.close(fd)
    try:
        sf.write(path, utterance, SAMPLE_RATE, subtype="PCM_16")
        req = ChatRequest("interleaved", "", "speech", None, speech=[path])
        turn = session.prepare(req, "[spoken turn]")
        prefix = eng.forced_start("speech")
        turn.prompt = turn.prompt + prefix
        try:
            new = eng.generate_ids([turn.prompt], turn.decoding, seed=eng.next_seed(),
                                   stop_texts=turn.stop_texts)[0]  # fmt: skip
        except REQUEST_ERRORS:
            session.conversation.messages[:] = turn.saved
            raise
    except REQUEST_ERRORS as exc:
        return str(exc)
    finally:
        os.unlink(path)
    ids = cut_stop_text(prefix + list(new), turn.stop_texts, eng.tokenizer)
    outcome = session.finish(turn, ids)
    if outcome.error:
        return outcome.error
    if sink is not None:
        sink.write(outcome)
    frames = sum(
        int(eng.layout.codes_from_ids("speech", seg.body).codes.shape[1])
        for seg in eng.layout.find_segments(ids)
        if seg.modality == "speech"
    )
    return ids, outcome, frames
