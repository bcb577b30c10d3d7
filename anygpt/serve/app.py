"""The FastAPI app: OpenAI's chat, speech, transcription, image and model endpoints over the engine.

Non-standard parts, all readable by the official ``openai`` client (extra fields):

* ``modalities`` may also name ``image`` or ``music`` (the reply's modality); ``audio`` is speech.
* Images a reply draws come as ``message.images`` (and, streamed, ``delta.images`` in the last
  chunk): ``[{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]``.
* ``message.audio`` / ``delta.audio`` also carry ``format`` and ``sample_rate`` (the model's own
  rate, 16 kHz for speech; streamed audio is raw 16-bit little-endian PCM at that rate).
* ``audio.voice_prompt`` (chat) and ``voice_prompt`` (speech), base64 audio: speak in that voice.
  OpenAI's voice names are accepted and mean the model's default voice.
* ``speech_mode``: ``"end-to-end"`` (the chat model speaks) or ``"cascaded"`` (ASR -> a text reply
  -> TTS sentence by sentence, see :mod:`anygpt.serve.cascade`); default: ``serve --speech-mode``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.responses import StreamingResponse

from anygpt.runtime.requests import REQUEST_ERRORS, ChatRequest, RequestError
from anygpt.serve.protocol import (
    AUDIO_FORMATS_OUT,
    APIError,
    Limits,
    TempFiles,
    b64decode,
    check_audio,
    encode_audio,
    encode_image,
    new_id,
    now,
    number,
    parse_messages,
)
from anygpt.serve.worker import BaseJob, Cancelled, ChatJob, outcome_transcript

log = logging.getLogger("anygpt.serve")
STATIC_DIR = Path(__file__).parent / "static"
KEEP_ALIVE_S = 10.0  # longest silence on a stream (e.g. while a picture is drawn)
REPLY_MODALITIES = {"text": "", "audio": "speech", "image": "image", "music": "music"}


class BodyTooLarge(Exception):
    pass


def server_error(exc: BaseException) -> APIError:
    """A 500 naming an unexpected failure in one line (its traceback goes to the log)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = f"internal error: {type(exc).__name__}" + (f": {first[:300]}" if first else "")
    return APIError(500, message, type="server_error")


class ClosingStream(StreamingResponse):
    """A streaming response that runs ``on_close`` however it ends, even when its body was
    never started (the client left before the first byte), so the request's slot and
    temporary files are always freed."""

    def __init__(self, content, on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()
            self.on_close()


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes (by header, and while reading)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await _send_error(send, self._error())
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await _send_error(send, self._error())

    def _error(self) -> APIError:
        return APIError(
            413, f"the request body is over {self.limit} bytes", code="request_too_large"
        )


async def _send_error(send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class ServerState:
    engine: Any
    worker: Any
    limits: Limits
    model_id: str
    in_flight: int = 0
    served: int = 0
    aliases: set[str] = field(default_factory=set)


def create_app(
    engine, worker, limits: Limits, model_id: str, speech_mode: str = "end-to-end", cascade=None
):
    """The app over ``engine`` with ``worker`` (a :class:`~anygpt.serve.worker.Generation`).

    ``cascade``: the :class:`~anygpt.runtime.cascade.Cascade` of cascaded spoken replies (default:
    built on ``engine`` when it has speech).
    """
    from anygpt.serve.cascade import SPEECH_MODES, CascadeJob, make_cascade

    cascade = cascade or make_cascade(engine)
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    state = ServerState(engine, worker, limits, model_id, aliases={model_id, "anygpt"})

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        worker.close()

    app = FastAPI(title="anygpt", lifespan=lifespan)
    app.state.anygpt = state

    @app.exception_handler(APIError)
    async def api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):
        code = "not_found" if exc.status_code == 404 else None
        err = APIError(exc.status_code, str(exc.detail), code=code)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected_error(_request, exc):
        if not isinstance(exc, Cancelled):
            log.error("a request failed", exc_info=exc)
        err = server_error(exc)
        return JSONResponse(err.body(), status_code=500)

    # ------------------------------------------------------------------ helpers
    def acquire() -> None:
        """Take a request slot, or refuse at once (429) when all are in use."""
        if state.in_flight >= limits.max_concurrency:
            raise APIError(
                429,
                f"the server is busy ({limits.max_concurrency} requests in flight); retry later",
                code="rate_limit_exceeded",
                type="rate_limit_error",
            )
        state.in_flight += 1

    def release() -> None:
        state.in_flight -= 1
        state.served += 1

    @contextlib.asynccontextmanager
    async def slot():
        acquire()
        try:
            yield
        finally:
            release()

    async def read_json(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        return body

    def check_model(name: Any, required: bool = True) -> None:
        if name is None:
            if required:
                raise APIError(
                    400, "model is required", param="model", code="missing_required_parameter"
                )
            return
        if not isinstance(name, str) or name not in state.aliases:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server serves '{model_id}'",
                param="model",
                code="model_not_found",
            )

    def as_api_error(exc: BaseException) -> APIError:
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, RequestError) and "context is" in str(exc):
            return APIError(400, str(exc), code="context_length_exceeded", param="messages")
        if isinstance(exc, REQUEST_ERRORS):
            return APIError(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return server_error(exc)

    async def submit(job, request: Request):
        """Queue ``job`` and return its first event; cancels the job if the client leaves."""
        job.loop = asyncio.get_running_loop()
        job.events = asyncio.Queue()
        worker.submit(job)
        return await next_event(job, request)

    async def next_event(job, request: Request):
        """The job's next event; the job is cancelled when its client goes away.

        Not for streams: a streaming response itself cancels the stream on a disconnect
        (polling ``is_disconnected`` there would compete for the same ASGI messages).
        """
        getter = asyncio.ensure_future(job.events.get())
        while True:
            done, _ = await asyncio.wait({getter}, timeout=0.25)
            if done:
                return getter.result()
            if await request.is_disconnected():
                job.cancelled.set()
                getter.cancel()
                raise Cancelled("the client disconnected")

    async def outcome_of(job, request) -> Any:
        event = await submit(job, request)
        while event[0] == "started":
            event = await next_event(job, request)
        if event[0] == "error":
            raise as_api_error(event[1])
        return event[1]

    def audio_format(spec: dict, stream: bool) -> str:
        fmt = str(spec.get("format") or ("pcm16" if stream else "wav")).lower()
        if fmt not in AUDIO_FORMATS_OUT:
            raise APIError(
                400,
                f"audio.format '{fmt}' is not supported ({', '.join(AUDIO_FORMATS_OUT)})",
                param="audio.format",
            )
        if stream and fmt not in ("pcm16", "pcm"):
            raise APIError(400, "streamed audio is pcm16", param="audio.format")
        return fmt

    def voice_prompt_file(value: Any, files: TempFiles, param: str) -> str:
        if value is None:
            return ""
        data = b64decode(value, param)
        check_audio(data, limits, param)
        return files.write(data, ".wav")

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "in_flight": state.in_flight}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "anygpt"}],
        }

    @app.get("/v1/models/{name}")
    async def model(name: str):
        check_model(name)
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "anygpt"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        acquire()
        files = TempFiles()
        handed_to_stream = False
        try:
            body = await read_json(request)
            check_model(body.get("model"))
            job = chat_job(body, files)
            if not job.stream:
                results = await outcome_of(job, request)
                return JSONResponse(completion(job, results, body))
            event = await submit(job, request)
            if event[0] == "error":
                raise as_api_error(event[1])
            handed_to_stream = True  # the stream releases the slot and the files when it ends
            closed = False

            def close() -> None:
                nonlocal closed
                if not closed:
                    closed = True
                    job.cancelled.set()  # a stream that ends early (client gone) frees its rows
                    files.cleanup()
                    release()

            events = sse(job, request, body, close)
            return ClosingStream(events, close, media_type="text/event-stream")
        finally:
            if not handed_to_stream:
                files.cleanup()
                release()

    def chat_job(body: dict, files: TempFiles) -> ChatJob:
        modalities = body.get("modalities") or ["text"]
        if not isinstance(modalities, list) or not all(m in REPLY_MODALITIES for m in modalities):
            raise APIError(
                400,
                f"modalities must be a list of {', '.join(REPLY_MODALITIES)}",
                param="modalities",
            )
        target = next((REPLY_MODALITIES[m] for m in modalities if m != "text"), "")
        mode = body.get("speech_mode", speech_mode)
        if mode not in SPEECH_MODES:
            raise APIError(
                400, f"speech_mode must be one of {', '.join(SPEECH_MODES)}", param="speech_mode"
            )
        cascaded = mode == "cascaded" and target == "speech"
        if cascaded and cascade is None:
            raise APIError(400, "no speech bundle for cascaded replies", param="speech_mode")
        if target and target not in engine.bundle.modality_names and not cascaded:
            raise APIError(400, f"this model cannot reply with {target}", param="modalities")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise APIError(400, "stream must be a boolean", param="stream")
        audio = body.get("audio") or {}
        if not isinstance(audio, dict):
            raise APIError(400, "audio must be an object", param="audio")
        if target in ("speech", "music"):
            fmt = audio_format(audio, stream)
        else:
            fmt = "wav"
        n = number(body, "n", 1, limits.max_n, 1, integer=True)
        temperature = number(body, "temperature", 0, 2)
        top_p = number(body, "top_p", 0, 1)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            max_tokens = number(
                {"max_tokens": max_tokens}, "max_tokens", 1, limits.max_tokens, integer=True
            )
        seed = number(body, "seed", -(2**62), 2**62, integer=True)
        messages = parse_messages(body.get("messages"), limits, files)
        voice = voice_prompt_file(audio.get("voice_prompt"), files, "audio.voice_prompt")
        last = messages[-1]
        if not (last.text or last.images or last.speech):
            raise APIError(400, "the last user message is empty", param="messages")
        overrides: dict[str, Any] = {"max_new_tokens": max_tokens, "top_p": top_p}
        if stream:
            overrides["num_beams"] = 1  # a beam search's best reply is known only at its end
        if temperature is not None:
            overrides["temperature"] = max(temperature, 1e-5)
            if temperature == 0:
                overrides["do_sample"] = False
        req = ChatRequest(
            "interleaved", last.text, target, voice, images=last.images, speech=last.speech
        )
        stream_speech = stream and target == "speech"
        if cascaded:
            if n != 1:
                raise APIError(400, "cascaded replies have n = 1", param="n")
            job = CascadeJob(messages[:-1], req, 1, overrides, seed, stream, stream_speech)
            job.cascade = cascade
            job.audio_format, job.target = fmt, target  # type: ignore[attr-defined]
            job.completion_id = new_id("chatcmpl")  # type: ignore[attr-defined]
            return job
        # whole-utterance decoding: every drawn modality, speech only when asked for and not streamed
        decode = set(engine.bundle.modality_names) - {"speech"}
        if target == "speech" and not stream:
            decode.add("speech")
        job = ChatJob(messages[:-1], req, n, overrides, seed, stream, stream_speech, decode=decode)
        job.audio_format = fmt  # type: ignore[attr-defined]
        job.target = target  # type: ignore[attr-defined]
        job.completion_id = new_id("chatcmpl")  # type: ignore[attr-defined]
        return job

    def finish_reason(job: ChatJob, ids: list[int]) -> str:
        for choice, (_out, row) in enumerate(job.results or []):
            if row is ids and job.finish_reasons[choice]:
                return job.finish_reasons[choice]
        return "length" if len(ids) >= job.turn.decoding.max_new_tokens else "stop"

    def message_of(job: ChatJob, outcome) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": outcome.text or ""}
        if outcome.error:
            msg["content"] = ""
            msg["error"] = outcome.error
        images = [m for m in outcome.media if not m.is_audio]
        if images:
            msg["images"] = [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + encode_image(m.data)}}
                for m in images
            ]  # fmt: skip
        clips = [m for m in outcome.media if m.is_audio and m.modality == job.target]
        if clips:
            m = clips[0]
            fmt = job.audio_format  # type: ignore[attr-defined]
            msg["audio"] = {
                "id": new_id("audio"),
                "data": base64.b64encode(encode_audio(m.numpy(), m.sample_rate, fmt)).decode(),
                "expires_at": now() + 3600,
                "transcript": outcome_transcript(outcome),
                "format": fmt,
                "sample_rate": m.sample_rate,
            }
        if outcome.notes:
            msg["notes"] = outcome.notes
        return msg

    def usage(job: ChatJob, results) -> dict:
        completion_tokens = sum(len(ids) for _, ids in results)
        return {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": job.prompt_tokens + completion_tokens,
        }

    def completion(job: ChatJob, results, body: dict) -> dict:
        return {
            "id": job.completion_id,  # type: ignore[attr-defined]
            "object": "chat.completion",
            "created": now(),
            "model": model_id,
            "choices": [
                {
                    "index": i,
                    "message": message_of(job, out),
                    "finish_reason": finish_reason(job, ids),
                    "logprobs": None,
                }
                for i, (out, ids) in enumerate(results)
            ],
            "usage": usage(job, results),
        }

    def audio_delta(audio_id: str, wave, sr: int) -> dict:
        """A streamed audio delta: a waveform [S] as base64 16-bit PCM."""
        data = base64.b64encode(encode_audio(wave.numpy(), sr, "pcm16")).decode()
        return {"id": audio_id, "data": data, "expires_at": now() + 3600,
                "transcript": "", "format": "pcm16", "sample_rate": sr}  # fmt: skip

    async def sse(job: ChatJob, request: Request, body: dict, close: Callable[[], None]):
        created = now()
        audio_ids = [new_id("audio") for _ in range(job.n)]

        def chunk(choice: int, delta: dict, reason: str | None = None, **extra) -> str:
            data = {
                "id": job.completion_id,  # type: ignore[attr-defined]
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "choices": [{"index": choice, "delta": delta, "finish_reason": reason}],
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n"

        try:
            for c in range(job.n):
                yield chunk(c, {"role": "assistant", "content": ""})
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), KEEP_ALIVE_S)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see life
                    continue
                kind = event[0]
                if kind == "text":
                    yield chunk(event[1], {"content": event[2]})
                elif kind == "audio":
                    choice = event[1]
                    speech_state = job.speech[choice]
                    pairs = await asyncio.wrap_future(event[2])
                    for window, wave in pairs:
                        piece = speech_state.accept(window, wave)
                        sr = engine.bundle.modality("speech").sample_rate
                        yield chunk(choice, {"audio": audio_delta(audio_ids[choice], piece, sr)})
                elif kind == "pcm":  # a cascaded reply's sentence: its whole waveform [S]
                    _, choice, wave, sr = event
                    yield chunk(choice, {"audio": audio_delta(audio_ids[choice], wave, sr)})
                elif kind == "error":
                    err = as_api_error(event[1])
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                elif kind == "done":
                    results = event[1]
                    for c, (out, ids) in enumerate(results):
                        msg = message_of(job, out)
                        delta: dict[str, Any] = {}
                        if "images" in msg:
                            delta["images"] = msg["images"]
                        if "audio" in msg:
                            delta["audio"] = msg["audio"]
                        elif job.stream_speech:
                            delta["audio"] = {
                                "id": audio_ids[c],
                                "transcript": outcome_transcript(out),
                            }
                        if out.error:
                            delta["error"] = out.error
                        yield chunk(c, delta, finish_reason(job, ids))
                    options = body.get("stream_options") or {}
                    if isinstance(options, dict) and options.get("include_usage"):
                        yield (
                            "data: "
                            + json.dumps(
                                {
                                    "id": job.completion_id,
                                    "object": "chat.completion.chunk",  # type: ignore[attr-defined]
                                    "created": created,
                                    "model": model_id,
                                    "choices": [],
                                    "usage": usage(job, results),
                                }
                            )  # fmt: skip
                            + "\n\n"
                        )
                    break
            yield "data: [DONE]\n\n"
        except Cancelled:
            job.cancelled.set()
        except Exception as exc:  # noqa: BLE001 - a started stream ends with an error event
            log.error("a streamed reply failed", exc_info=exc)
            yield f"data: {json.dumps(server_error(exc).body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            close()

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        async with slot():
            files = TempFiles()
            try:
                body = await read_json(request)
                check_model(body.get("model"))
                text = body.get("input")
                if not isinstance(text, str) or not text.strip():
                    raise APIError(400, "input must be a non-empty string", param="input")
                fmt = str(body.get("response_format") or "wav").lower()
                if fmt not in AUDIO_FORMATS_OUT:
                    raise APIError(
                        400,
                        f"response_format '{fmt}' is not supported ({', '.join(AUDIO_FORMATS_OUT)})",
                        param="response_format",
                    )
                if "speech" not in engine.bundle.modality_names:
                    raise APIError(400, "this model has no speech output")
                voice = voice_prompt_file(body.get("voice_prompt"), files, "voice_prompt")
                line = "text|speech|" + text.replace("|", "\\|") + (f"|{voice}" if voice else "")
                seed = number(body, "seed", -(2**62), 2**62, integer=True)
                out = (await outcome_of(BaseJob([line], seed), request))[0]
                if out.error:
                    raise as_api_error(RequestError(out.error))
                m = out.media[0]
                media = {"wav": "audio/wav", "flac": "audio/flac"}.get(fmt, "audio/pcm")
                return Response(encode_audio(m.numpy(), m.sample_rate, fmt), media_type=media)
            finally:
                files.cleanup()

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        async with slot():
            files = TempFiles()
            try:
                try:
                    form = await request.form()
                except Exception as exc:  # noqa: BLE001 - malformed multipart bodies
                    raise APIError(
                        400, f"the body is not valid multipart form data ({exc})"
                    ) from exc
                check_model(form.get("model"))
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise APIError(400, "a 'file' upload is required", param="file")
                data = await upload.read()
                check_audio(data, limits, "file")
                suffix = Path(upload.filename or "audio.wav").suffix.lower() or ".wav"
                path = files.write(data, suffix if len(suffix) <= 6 else ".wav")
                fmt = str(form.get("response_format") or "json")
                if fmt not in ("json", "text", "verbose_json"):
                    raise APIError(
                        400, f"response_format '{fmt}' is not supported", param="response_format"
                    )
                if "speech" not in engine.bundle.modality_names:
                    raise APIError(400, "this model has no speech input")
                out = (await outcome_of(BaseJob([f"speech|text|{path}"]), request))[0]
                if out.error:
                    raise as_api_error(RequestError(out.error))
                if fmt == "text":
                    return Response(out.text or "", media_type="text/plain")
                return {"text": out.text or ""}
            finally:
                files.cleanup()

    @app.post("/v1/images/generations")
    async def images(request: Request):
        async with slot():
            body = await read_json(request)
            check_model(body.get("model"), required=False)
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise APIError(400, "prompt must be a non-empty string", param="prompt")
            if "image" not in engine.bundle.modality_names:
                raise APIError(400, "this model has no image output")
            n = number(body, "n", 1, limits.max_n, 1, integer=True)
            fmt = body.get("response_format") or "b64_json"
            if fmt not in ("b64_json", "url"):
                raise APIError(
                    400, "response_format must be b64_json or url", param="response_format"
                )
            seed = number(body, "seed", -(2**62), 2**62, integer=True)
            line = "text|image|" + prompt.replace("|", "\\|")
            outs = await outcome_of(BaseJob([line] * n, seed), request)
            data = []
            for out in outs:
                if out.error:
                    raise as_api_error(RequestError(out.error))
                b64 = encode_image(out.media[0].data)
                data.append(
                    {"b64_json": b64}
                    if fmt == "b64_json"
                    else {"url": "data:image/png;base64," + b64}
                )
            return {"created": now(), "data": data}

    from anygpt.serve.realtime import mount_realtime

    mount_realtime(app, state)  # /v1/realtime: the WebSocket of OpenAI's Realtime API

    if STATIC_DIR.is_dir() and any(STATIC_DIR.iterdir()):
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=str(STATIC_DIR), html=True), name="static")
    return app
