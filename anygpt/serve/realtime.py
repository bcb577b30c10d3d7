"""``/v1/realtime``: a WebSocket speaking OpenAI's Realtime API events, with interruption.

Client events: ``session.update``, ``input_audio_buffer.append`` (base64 pcm16, mono, 24 kHz as
OpenAI's default or 16 kHz with ``session.input_audio_sample_rate``), ``input_audio_buffer.commit``,
``input_audio_buffer.clear``, ``response.create``, ``response.cancel``,
``conversation.item.create``, ``conversation.item.truncate``.  Server events follow OpenAI's names
(``session.created``, ``input_audio_buffer.speech_started``, ``response.audio.delta``,
``response.done``, ``error``, ...).

With ``turn_detection: {type: server_vad}`` (the default) the audio goes through
:class:`~anygpt.runtime.vad.StreamingVAD`: when the user stops speaking the utterance is committed
as a user item and answered; when the user starts speaking while a reply streams, the reply is
cancelled at once (``response.done`` with status ``cancelled``) and the assistant item is truncated
to the audio already sent: its speech codes are cut at that frame and the span closed, so the
history holds what the user heard.  Replies run on the server's generation worker as streamed chat
jobs, exactly as ``stream: true`` chat completions do.  An empty reply (the model stays silent)
ends with a ``response.done`` holding no output.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from fastapi import WebSocket  # at module level: FastAPI resolves the handler's annotation here

from anygpt.runtime.listen import truncated_history
from anygpt.runtime.requests import ChatRequest
from anygpt.runtime.vad import SAMPLE_RATE, StreamingVAD
from anygpt.serve.protocol import ChatMessage, TempFiles, new_id
from anygpt.serve.worker import ChatJob

log = logging.getLogger("anygpt.serve")

RATES = (16000, 24000)


class RealtimeError(Exception):
    """A client event the server refuses: OpenAI's error event fields."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


def mount_realtime(app, state) -> None:
    """Add the ``/v1/realtime`` WebSocket route to ``app`` (``state``: the server's state)."""
    live: set = set()
    app.state.realtime = live  # the open connections (the tests read their conversations)

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket):
        await ws.accept()
        conn = RealtimeConnection(ws, state)
        live.add(conn)
        try:
            await conn.run()
        finally:
            live.discard(conn)


class Response:
    """One reply in flight: its chat job, the item it fills and the audio sent so far."""

    def __init__(self, job: ChatJob, modalities: list[str]) -> None:
        self.id = new_id("resp")
        self.job = job
        self.modalities = modalities
        self.item: dict | None = None
        self.transcript = ""
        self.samples_sent = 0  # model-rate samples of reply audio sent to the client
        self.task: asyncio.Task | None = None
        self.reason = "turn_detected"
        self.started = False  # its task has begun (and will release its slot itself)


class RealtimeConnection:
    """One client's session: its settings, audio buffer, VAD, conversation and reply."""

    def __init__(self, ws, state) -> None:
        self.ws, self.state = ws, state
        self.engine = state.engine
        self.files = TempFiles()
        self.lock = asyncio.Lock()
        self.closed = False
        self.session: dict[str, Any] = {
            "id": new_id("sess"),
            "object": "realtime.session",
            "model": state.model_id,
            "modalities": ["text", "audio"],
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_sample_rate": 24000,
            "output_audio_sample_rate": 24000,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "min_speech_duration_ms": 250,
                "create_response": True,
                "interrupt_response": True,
            },
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
        }
        self.items: list[dict] = []  # conversation items, with private "_history" / "_speech"
        self.response: Response | None = None
        self.buffer = np.zeros(0, dtype=np.float32)  # uncommitted input audio, 16 kHz
        self.buffer_origin = 0  # stream sample (16 kHz) of buffer[0]
        self.fed = 0  # input samples (16 kHz) received this session
        self.speech_item: str | None = None
        self.speech_start = 0
        self._configure()

    # ------------------------------------------------------------------ plumbing
    async def send(self, event: dict) -> None:
        if self.closed:
            return
        event = {"event_id": new_id("event"), **event}
        async with self.lock:
            try:
                await self.ws.send_text(json.dumps(event))
            except Exception:  # noqa: BLE001 - a gone client ends the session, nothing else
                self.closed = True

    async def error(self, exc: RealtimeError, client_event_id: Any = None) -> None:
        await self.send({"type": "error", "error": {
            "type": "invalid_request_error", "code": exc.code, "message": str(exc),
            "param": exc.param, "event_id": client_event_id}})  # fmt: skip

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.public_session()})
        try:
            while not self.closed:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None and message.get("bytes") is not None:
                    raw = message["bytes"].decode("utf-8", "replace")
                await self.handle(raw or "")
        finally:
            self.closed = True
            await self.cancel_response()
            self.files.cleanup()

    async def handle(self, raw: str) -> None:
        event_id = None
        try:
            try:
                event = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RealtimeError(f"the event is not valid JSON ({exc})", "invalid_json") from exc
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise RealtimeError("an event must be a JSON object with a type", "invalid_event")
            event_id = event.get("event_id")
            handler = HANDLERS.get(event["type"])
            if handler is None:
                raise RealtimeError(
                    f"unknown event type '{str(event['type'])[:60]}'", "invalid_event", "type"
                )
            await handler(self, event)
        except RealtimeError as exc:
            await self.error(exc, event_id)
        except Exception as exc:  # noqa: BLE001 - one bad event never ends the session
            log.exception("a realtime event failed")
            await self.send({"type": "error", "error": {
                "type": "server_error", "code": None, "message": str(exc)[:200] or "server error",
                "param": None, "event_id": event_id}})  # fmt: skip

    def public_session(self) -> dict:
        return dict(self.session)

    def _configure(self) -> None:
        td = self.session["turn_detection"]
        self.vad = None
        if td and td.get("type") == "server_vad":
            self.vad = StreamingVAD(
                threshold=float(td.get("threshold", 0.5)),
                min_speech_ms=float(td.get("min_speech_duration_ms", 250)),
                min_silence_ms=float(td.get("silence_duration_ms", 500)),
                max_utterance_s=self.state.limits.max_audio_seconds,
            )
            self.vad_origin = self.fed
        rate = self.session["input_audio_sample_rate"]
        self.resampler = (
            None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32")
        )

    # ------------------------------------------------------------------ session
    async def session_update(self, event: dict) -> None:
        new = event.get("session")
        if not isinstance(new, dict):
            raise RealtimeError("session must be an object", "invalid_value", "session")
        merged = dict(self.session)
        for key in ("modalities", "voice", "instructions", "temperature",
                    "max_response_output_tokens", "input_audio_transcription", "tools"):  # fmt: skip
            if key in new:
                merged[key] = new[key]
        for key in ("input_audio_format", "output_audio_format"):
            if key in new and new[key] != "pcm16":
                raise RealtimeError(f"{key} must be pcm16", "invalid_value", f"session.{key}")
        for key in ("input_audio_sample_rate", "output_audio_sample_rate"):
            if key in new:
                if new[key] not in RATES:
                    raise RealtimeError(
                        f"{key} must be 16000 or 24000", "invalid_value", f"session.{key}"
                    )
                merged[key] = new[key]
        mods = merged["modalities"]
        if not isinstance(mods, list) or not mods or not set(mods) <= {"text", "audio"}:
            raise RealtimeError(
                "modalities must be a list of text, audio", "invalid_value", "session.modalities"
            )
        if "turn_detection" in new:
            td = new["turn_detection"]
            if td is not None and (not isinstance(td, dict) or td.get("type") != "server_vad"):
                raise RealtimeError(
                    "turn_detection must be null or {type: server_vad}",
                    "invalid_value",
                    "session.turn_detection",
                )
            merged["turn_detection"] = None if td is None else {**(self.session["turn_detection"] or {}), **td}  # fmt: skip
        self.session = merged
        self._configure()
        await self.send({"type": "session.updated", "session": self.public_session()})

    # ------------------------------------------------------------------ input audio
    async def buffer_append(self, event: dict) -> None:
        data = event.get("audio")
        if not isinstance(data, str):
            raise RealtimeError("audio must be a base64 string", "invalid_value", "audio")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RealtimeError(
                f"audio is not valid base64 ({exc})", "invalid_base64", "audio"
            ) from exc
        if len(raw) % 2:
            raise RealtimeError(
                "pcm16 audio must have an even byte count", "invalid_value", "audio"
            )
        pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        audio = pcm if self.resampler is None else self.resampler.resample_chunk(pcm)
        limit = int(self.state.limits.max_audio_seconds * SAMPLE_RATE)
        if self.vad is None and self.buffer.shape[0] + audio.shape[0] > limit:
            raise RealtimeError(
                f"the input audio buffer would exceed {self.state.limits.max_audio_seconds:g} s; "
                "commit or clear it",
                "audio_too_long",
                "audio",
            )
        self.buffer = np.concatenate([self.buffer, audio.astype(np.float32)])
        self.fed += audio.shape[0]
        if self.vad is None:
            return
        for ev in self.vad.feed(audio):
            at = self.vad_origin + round(ev.time * SAMPLE_RATE)
            if ev.kind == "speech_started":
                await self.on_speech_started(at)
            else:
                await self.on_speech_stopped(at)
        if self.speech_item is None:
            # outside speech keep only the prefix padding that a coming utterance will start with
            pad = int(self.session["turn_detection"].get("prefix_padding_ms", 300) * 16)
            drop = max(0, self.buffer.shape[0] - pad)
            self.buffer = self.buffer[drop:]
            self.buffer_origin += drop

    async def on_speech_started(self, at: int) -> None:
        self.speech_item = new_id("item")
        self.speech_start = at
        await self.send({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": at // 16, "item_id": self.speech_item})  # fmt: skip
        td = self.session["turn_detection"] or {}
        if self.response is not None and td.get("interrupt_response", True):
            self.response.reason = "turn_detected"
            await self.cancel_response()

    async def on_speech_stopped(self, at: int) -> None:
        item_id, self.speech_item = self.speech_item or new_id("item"), None
        await self.send({"type": "input_audio_buffer.speech_stopped",
                         "audio_end_ms": at // 16, "item_id": item_id})  # fmt: skip
        pad = int(self.session["turn_detection"].get("prefix_padding_ms", 300) * 16)
        lo = max(0, self.speech_start - pad - self.buffer_origin)
        hi = max(lo, at - self.buffer_origin)
        audio = self.buffer[lo:hi]
        self.buffer = self.buffer[hi:]
        self.buffer_origin += hi
        await self.commit_audio(audio, item_id)
        if (self.session["turn_detection"] or {}).get("create_response", True):
            await self.start_response({})

    async def buffer_commit(self, event: dict) -> None:
        if self.buffer.shape[0] < SAMPLE_RATE // 10:
            raise RealtimeError(
                "the input audio buffer holds less than 100 ms of audio",
                "input_audio_buffer_commit_empty",
            )
        audio, self.buffer = self.buffer, np.zeros(0, dtype=np.float32)
        self.buffer_origin += audio.shape[0]
        await self.commit_audio(audio, new_id("item"))

    async def buffer_clear(self, event: dict) -> None:
        self.buffer_origin += self.buffer.shape[0]
        self.buffer = np.zeros(0, dtype=np.float32)
        self.speech_item = None
        if self.vad is not None:
            self.vad.reset()
            self.vad_origin = self.fed
        await self.send({"type": "input_audio_buffer.cleared"})

    async def commit_audio(self, audio: np.ndarray, item_id: str) -> None:
        """Store ``audio`` (float32 [N], 16 kHz) as a user item and announce it."""
        buf = io.BytesIO()
        sf.write(buf, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        path = self.files.write(buf.getvalue(), ".wav")
        previous = self.items[-1]["id"] if self.items else None
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                "status": "completed", "content": [{"type": "input_audio", "transcript": None}],
                "_speech": [path], "_text": ""}  # fmt: skip
        self.items.append(item)
        await self.send({"type": "input_audio_buffer.committed",
                         "previous_item_id": previous, "item_id": item_id})  # fmt: skip
        await self.announce(item, previous)

    async def announce(self, item: dict, previous: str | None) -> None:
        public = {k: v for k, v in item.items() if not k.startswith("_")}
        await self.send(
            {"type": "conversation.item.created", "previous_item_id": previous, "item": public}
        )

    # ------------------------------------------------------------------ conversation
    async def item_create(self, event: dict) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise RealtimeError("item must be a message object", "invalid_value", "item")
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise RealtimeError("item.role must be user or assistant", "invalid_value", "item.role")
        content = item.get("content")
        if not isinstance(content, list):
            raise RealtimeError("item.content must be a list", "invalid_value", "item.content")
        texts, speech = [], []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "text"):
                texts.append(str(part.get("text", "")))
            elif kind == "audio" and role == "assistant":
                texts.append(str(part.get("transcript") or ""))
            elif kind == "input_audio" and role == "user":
                try:
                    raw = base64.b64decode(part.get("audio") or "", validate=True)
                except (binascii.Error, ValueError, TypeError) as exc:
                    raise RealtimeError(
                        f"audio is not valid base64 ({exc})", "invalid_base64",
                        f"item.content[{k}].audio",
                    ) from exc  # fmt: skip
                pcm = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float32)
                rate = self.session["input_audio_sample_rate"]
                pcm = soxr.resample(pcm / 32768.0, rate, SAMPLE_RATE).astype(np.float32)
                if pcm.shape[0] > self.state.limits.max_audio_seconds * SAMPLE_RATE:
                    raise RealtimeError("the audio part is too long", "audio_too_long")
                buf = io.BytesIO()
                sf.write(buf, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
                speech.append(self.files.write(buf.getvalue(), ".wav"))
            else:
                raise RealtimeError(
                    f"unsupported content part {str(kind)[:40]}", "invalid_value",
                    f"item.content[{k}]",
                )  # fmt: skip
        previous = self.items[-1]["id"] if self.items else None
        new = {"id": item.get("id") or new_id("item"), "object": "realtime.item",
               "type": "message", "role": role, "status": "completed", "content": content,
               "_speech": speech, "_text": " ".join(texts)}  # fmt: skip
        self.items.append(new)
        await self.announce(new, previous)

    async def item_truncate(self, event: dict) -> None:
        item = next((i for i in self.items if i["id"] == event.get("item_id")), None)
        if item is None or item["role"] != "assistant":
            raise RealtimeError("no assistant item with that item_id", "item_not_found", "item_id")
        end_ms = event.get("audio_end_ms")
        if not isinstance(end_ms, int) or end_ms < 0:
            raise RealtimeError(
                "audio_end_ms must be an integer >= 0", "invalid_value", "audio_end_ms"
            )
        if self.response is not None and self.response.item is item:
            self.response.reason = "client_cancelled"
            await self.cancel_response()
        tok = self.engine.bundle.modality("speech")
        frames = int(end_ms * tok.frame_rate / 1000)
        if item.get("_ids") is not None:
            item["_text"] = truncated_history(self.engine, item["_ids"], frames)
        await self.send({"type": "conversation.item.truncated", "item_id": item["id"],
                         "content_index": event.get("content_index", 0),
                         "audio_end_ms": end_ms})  # fmt: skip

    def history(self) -> tuple[list[ChatMessage], dict]:
        """The chat messages before the last user item, and that item."""
        msgs = [
            ChatMessage(i["role"], i["_text"], speech=list(i["_speech"]))
            for i in self.items
            if i["_text"] or i["_speech"]
        ]
        if not msgs or msgs[-1].role != "user":
            raise RealtimeError("the conversation has no user item to respond to", "invalid_value")
        return msgs[:-1], msgs[-1]

    # ------------------------------------------------------------------ responses
    async def start_response(self, event: dict) -> None:
        if self.response is not None:
            raise RealtimeError(
                "the conversation already has an active response",
                "conversation_already_has_active_response",
            )
        spec = event.get("response") or {}
        if not isinstance(spec, dict):
            raise RealtimeError("response must be an object", "invalid_value", "response")
        history, last = self.history()
        state, limits = self.state, self.state.limits
        if state.in_flight >= limits.max_concurrency:
            raise RealtimeError(
                f"the server is busy ({limits.max_concurrency} requests in flight); retry later",
                "rate_limit_exceeded",
            )
        modalities = spec.get("modalities") or self.session["modalities"]
        target = "speech" if "audio" in modalities else ""
        overrides: dict[str, Any] = {}
        most = spec.get("max_response_output_tokens", self.session["max_response_output_tokens"])
        if isinstance(most, int) and most > 0:
            overrides["max_new_tokens"] = min(most, limits.max_tokens)
        temperature = spec.get("temperature", self.session.get("temperature"))
        if isinstance(temperature, int | float) and temperature > 0:
            overrides["temperature"] = float(temperature)
        names = set(self.engine.bundle.modality_names)
        req = ChatRequest("interleaved", last.text, target, None, speech=last.speech)
        streamed = target == "speech"
        job = ChatJob(history, req, 1, overrides, None, True, streamed, decode=names - {"speech"})
        resp = Response(job, list(modalities))
        self.response = resp
        state.in_flight += 1  # released when the reply's task ends, however it ends
        await self.send({"type": "response.created", "response": self.response_body(resp, "in_progress")})  # fmt: skip
        resp.task = asyncio.ensure_future(self.stream_response(resp))

    def response_body(self, resp: Response, status: str, details: dict | None = None) -> dict:
        output = [] if resp.item is None else [self.public(resp.item)]
        return {"id": resp.id, "object": "realtime.response", "status": status,
                "status_details": details, "output": output, "modalities": resp.modalities,
                "usage": {"output_tokens": len(resp_tokens(resp))}}  # fmt: skip

    def public(self, item: dict) -> dict:
        return {k: v for k, v in item.items() if not k.startswith("_")}

    async def open_item(self, resp: Response) -> dict:
        if resp.item is None:
            previous = self.items[-1]["id"] if self.items else None
            resp.item = {"id": new_id("item"), "object": "realtime.item", "type": "message",
                         "role": "assistant", "status": "in_progress",
                         "content": [{"type": "audio", "transcript": ""}],
                         "_speech": [], "_text": "", "_ids": None}  # fmt: skip
            self.items.append(resp.item)
            await self.send({"type": "response.output_item.added", "response_id": resp.id,
                             "output_index": 0, "item": self.public(resp.item)})  # fmt: skip
            await self.announce(resp.item, previous)
        return resp.item

    async def stream_response(self, resp: Response) -> None:
        resp.started = True
        job = resp.job
        job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        speech = self.engine.bundle.modality("speech") if job.stream_speech else None
        out_rate = self.session["output_audio_sample_rate"]
        resampler = None
        if speech is not None and speech.sample_rate != out_rate:
            resampler = soxr.ResampleStream(speech.sample_rate, out_rate, 1, "float32")
        status, details = "completed", None
        try:
            self.state.worker.submit(job)
            while True:
                kind, *rest = await job.events.get()
                if kind == "text":
                    delta = rest[1].replace("[speech]", " ")
                    if delta.strip():
                        item = await self.open_item(resp)
                        resp.transcript += delta
                        await self.send({"type": "response.audio_transcript.delta",
                                         "response_id": resp.id, "item_id": item["id"],
                                         "output_index": 0, "content_index": 0,
                                         "delta": delta})  # fmt: skip
                elif kind == "audio":
                    state = job.speech[rest[0]]
                    for window, wave in await asyncio.wrap_future(rest[1]):
                        piece = state.accept(window, wave).numpy().astype(np.float32)
                        if piece.size == 0:
                            continue
                        item = await self.open_item(resp)
                        resp.samples_sent += piece.shape[0]
                        if resampler is not None:
                            piece = resampler.resample_chunk(piece, last=window.final)
                        pcm = (np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes()
                        await self.send({"type": "response.audio.delta", "response_id": resp.id,
                                         "item_id": item["id"], "output_index": 0,
                                         "content_index": 0,
                                         "delta": base64.b64encode(pcm).decode()})  # fmt: skip
                elif kind == "error":
                    status, details = "failed", {"type": "failed", "error": {
                        "type": "server_error", "message": str(rest[0])[:200]}}  # fmt: skip
                    break
                elif kind == "done":
                    outcome, _ids = rest[0][0]
                    if resp.item is not None and job.session is not None:
                        resp.item["_text"] = job.session.conversation.messages[-1][1]
                        resp.item["_ids"] = job.prefix + list(_ids)
                    if outcome.error:
                        status = "failed"
                    break
        except asyncio.CancelledError:
            job.cancelled.set()
            status = "cancelled"
            details = {"type": "cancelled", "reason": resp.reason}
            if resp.item is not None:
                ids = resp_tokens(resp)
                resp.item["_ids"] = ids
                hop = speech.sample_rate / speech.frame_rate if speech is not None else 1
                frames = int(resp.samples_sent / hop)
                resp.item["_text"] = truncated_history(self.engine, ids, frames)
        finally:
            job.cancelled.set()  # frees the scheduler row of a reply the client no longer wants
            self.state.in_flight -= 1
            self.state.served += 1
        await self.finish_response(resp, status, details)

    async def finish_response(self, resp: Response, status: str, details: dict | None) -> None:
        item = resp.item
        if item is not None:
            item["status"] = "completed" if status == "completed" else "incomplete"
            item["content"] = [{"type": "audio", "transcript": " ".join(resp.transcript.split())}]
            base = {"response_id": resp.id, "item_id": item["id"], "output_index": 0,
                    "content_index": 0}  # fmt: skip
            await self.send({"type": "response.audio_transcript.done", **base,
                             "transcript": item["content"][0]["transcript"]})  # fmt: skip
            await self.send({"type": "response.audio.done", **base})
            await self.send({"type": "response.output_item.done", "response_id": resp.id,
                             "output_index": 0, "item": self.public(item)})  # fmt: skip
        if self.response is resp:
            self.response = None
        await self.send({"type": "response.done", "response": self.response_body(resp, status, details)})  # fmt: skip

    async def cancel_response(self) -> None:
        """Stop the reply now; returns once its ``response.done`` has been sent."""
        resp = self.response
        if resp is None or resp.task is None:
            return
        resp.job.cancelled.set()
        resp.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resp.task
        if not resp.started:  # cancelled before its task ran: nothing was queued or sent
            self.state.in_flight -= 1
            self.state.served += 1
            await self.finish_response(
                resp, "cancelled", {"type": "cancelled", "reason": resp.reason}
            )

    async def response_cancel(self, event: dict) -> None:
        if self.response is None:
            raise RealtimeError(
                "there is no active response to cancel", "response_cancel_not_active"
            )
        self.response.reason = "client_cancelled"
        await self.cancel_response()


def resp_tokens(resp: Response) -> list[int]:
    """The reply's ids so far (its forced start tag first)."""
    job = resp.job
    if job.scheduled:
        return job.prefix + list(job.scheduled[0].tokens)
    if job.results and job.results[0] is not None:
        return job.prefix + list(job.results[0][1])
    return list(job.prefix) if resp.item is not None else []


HANDLERS = {
    "session.update": RealtimeConnection.session_update,
    "input_audio_buffer.append": RealtimeConnection.buffer_append,
    "input_audio_buffer.commit": RealtimeConnection.buffer_commit,
    "input_audio_buffer.clear": RealtimeConnection.buffer_clear,
    "conversation.item.create": RealtimeConnection.item_create,
    "conversation.item.truncate": RealtimeConnection.item_truncate,
    "response.create": RealtimeConnection.start_response,
    "response.cancel": RealtimeConnection.response_cancel,
}
