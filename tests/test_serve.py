"""``anygpt serve`` through the official ``openai`` client, on a real uvicorn server on loopback."""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An ``anygpt serve`` app on a thread; ``.worker`` and ``.engine`` are the live objects."""

    def __init__(self, bundle, **options) -> None:
        from anygpt.serve.cli import build

        args = dict(
            model=str(bundle), device="cpu", dtype="auto", seed=0, backend="transformers",
            max_request_mb=1.0, max_audio_seconds=3.0, max_concurrency=8, max_tokens=256,
            max_batch=16, batch_window_ms=100.0, media_root=None, stream_chunk=4,
        )  # fmt: skip
        args.update(options)
        app, self.model_id = build(argparse.Namespace(**args))
        inner = app.app
        self.state = inner.state.anygpt
        self.worker, self.engine = self.state.worker, self.state.engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(debug_bundle):
    s = Server(debug_bundle)
    yield s
    s.close()


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buf.getvalue()


def nan_wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(8000, np.nan, dtype=np.float32), 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_data_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 16), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + b64(buf.getvalue())


def post(server, path: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(server.url + path, content=content, timeout=60, **kw)


def attr(obj, name: str):
    """A field of a client object, standard or extra (the client keeps unknown fields)."""
    if isinstance(obj, dict):
        return obj.get(name)
    value = getattr(obj, name, None)
    return value if value is not None else (obj.model_extra or {}).get(name)


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


# ---------------------------------------------------------------------- endpoints
def test_models_and_health(server):
    ids = [m.id for m in server.client.models.list().data]
    assert ids == [server.model_id]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == server.model_id


def test_chat_text_seeded_n_and_max_tokens(server):
    c = server.client
    kw = dict(model=server.model_id, messages=user("hello there"), max_tokens=6, seed=3, n=2)
    first, again = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
    assert len(first.choices) == 2
    assert [ch.message.content for ch in first.choices] == [
        ch.message.content for ch in again.choices
    ]
    assert first.usage.completion_tokens <= 12
    assert first.usage.prompt_tokens > 0
    assert all(ch.finish_reason in ("stop", "length") for ch in first.choices)


def test_chat_history_image_and_audio_parts(server):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": png_data_url()}}]},
        {"role": "assistant", "content": "a red picture"},
        {"role": "user", "content": [{"type": "text", "text": "and this?"},
                                     {"type": "input_audio",
                                      "input_audio": {"data": b64(wav_bytes(0.5)), "format": "wav"}}]},
    ]  # fmt: skip
    r = server.client.chat.completions.create(
        model=server.model_id, messages=messages, max_tokens=4
    )
    assert r.choices[0].message.role == "assistant"
    # the prompt holds the image and speech codes of both user turns
    assert r.usage.prompt_tokens > 64


def test_chat_audio_reply_whole_and_streamed_agree(server):
    c = server.client
    kw = dict(model=server.model_id, messages=user("say something"), max_tokens=40, seed=11)
    whole = c.chat.completions.create(
        **kw, modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}
    )
    audio = whole.choices[0].message.audio
    wave, rate = sf.read(io.BytesIO(base64.b64decode(audio.data)))
    assert rate == 16000 and wave.size > 0 and audio.id

    stream = c.chat.completions.create(
        **kw, modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    pieces, audio_chunks, reasons, usage = [], 0, [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            a = ch.delta.audio
            if a is not None and attr(a, "data"):
                pieces.append(np.frombuffer(base64.b64decode(attr(a, "data")), dtype="<i2"))
                assert attr(a, "sample_rate") == 16000
                audio_chunks += 1
            if ch.finish_reason:
                reasons.append(ch.finish_reason)
    assert reasons and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens  # same seed, same ids
    streamed = np.concatenate(pieces).astype(np.float32) / 32767
    # several chunks (4 frames each) and exactly the samples of the whole-utterance decode
    assert audio_chunks >= 2
    assert streamed.shape == wave.shape


def test_transcription_speech_and_images(server):
    c = server.client
    t = c.audio.transcriptions.create(model=server.model_id, file=("q.wav", wav_bytes(0.6)))
    assert isinstance(t.text, str)
    speech = c.audio.speech.create(model=server.model_id, input="hello | there", voice="alloy",
                                   response_format="wav")  # fmt: skip
    wave, rate = sf.read(io.BytesIO(speech.content))
    assert rate == 16000 and wave.size > 0
    cloned = c.audio.speech.create(
        model=server.model_id, input="hello", voice="alloy", response_format="flac",
        extra_body={"voice_prompt": b64(wav_bytes(0.8))},
    )  # fmt: skip
    assert sf.read(io.BytesIO(cloned.content))[0].size > 0
    images = c.images.generate(model=server.model_id, prompt="a red circle", n=2)
    from PIL import Image

    for item in images.data:
        im = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert im.size[0] > 0


def test_chat_image_reply_is_readable(server):
    r = server.client.chat.completions.create(
        model=server.model_id, messages=user("draw a circle"), modalities=["text", "image"],
        max_tokens=40,
    )  # fmt: skip
    extra = r.choices[0].message.model_extra or {}
    url = extra["images"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    from PIL import Image

    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size[0] > 0


# ---------------------------------------------------------------------- errors
BAD = [
    # (what, path, body, status, code)
    ("malformed json", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
    ("unknown model", "/v1/chat/completions", {"model": "gpt-9", "messages": user("hi")}, 404,
     "model_not_found"),
    ("bad base64", "/v1/chat/completions",
     {"model": "anygpt", "messages": user([{"type": "input_audio",
                                           "input_audio": {"data": "@@not base64@@", "format": "wav"}}])},
     400, None),
    ("unreadable audio", "/v1/chat/completions",
     {"model": "anygpt", "messages": user([{"type": "input_audio",
                                           "input_audio": {"data": b64(b"RIFF garbage"), "format": "wav"}}])},
     400, None),
    ("audio of NaN samples", "/v1/chat/completions",
     {"model": "anygpt", "messages": user([{"type": "input_audio",
                                           "input_audio": {"data": b64(nan_wav()), "format": "wav"}}])},
     400, None),
    ("audio too short to encode", "/v1/chat/completions",
     {"model": "anygpt", "messages": user([{"type": "input_audio",
                                           "input_audio": {"data": b64(wav_bytes(0.0005)), "format": "wav"}}])},
     400, None),
    ("unreadable image", "/v1/chat/completions",
     {"model": "anygpt", "messages": user([{"type": "image_url",
                                           "image_url": {"url": "data:image/png;base64," + b64(b"nope")}}])},
     400, None),
    ("too long audio", "/v1/chat/completions",
     {"model": "anygpt", "messages": user([{"type": "input_audio",
                                           "input_audio": {"data": b64(wav_bytes(4.0, 8000)), "format": "wav"}}])},
     400, "audio_too_long"),
    ("too many tokens", "/v1/chat/completions",
     {"model": "anygpt", "messages": user("hi"), "max_tokens": 100000}, 400, None),
    ("prompt over the context", "/v1/chat/completions",
     {"model": "anygpt", "messages": user("hello there " * 3000)}, 400, "context_length_exceeded"),
    ("file url refused", "/v1/chat/completions",
     {"model": "anygpt", "messages": user([{"type": "image_url",
                                           "image_url": {"url": "file:///etc/passwd"}}])}, 400, None),
    ("remote url refused", "/v1/chat/completions",
     {"model": "anygpt", "messages": user([{"type": "image_url",
                                           "image_url": {"url": "http://example.com/x.png"}}])}, 400, None),
    ("last message not the user's", "/v1/chat/completions",
     {"model": "anygpt", "messages": [{"role": "assistant", "content": "hi"}]}, 400, None),
    ("bad modalities", "/v1/chat/completions",
     {"model": "anygpt", "messages": user("hi"), "modalities": ["smell"]}, 400, None),
    ("wav stream", "/v1/chat/completions",
     {"model": "anygpt", "messages": user("hi"), "modalities": ["text", "audio"],
      "audio": {"format": "wav"}, "stream": True}, 400, None),
    ("bad temperature", "/v1/chat/completions",
     {"model": "anygpt", "messages": user("hi"), "temperature": "hot"}, 400, None),
    ("json array body", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
    ("empty speech input", "/v1/audio/speech", {"model": "anygpt", "input": "  "}, 400, None),
    ("request too large", "/v1/chat/completions",
     {"model": "anygpt", "messages": user("x" * (2 * 1024 * 1024))}, 413, "request_too_large"),
    ("images bad n", "/v1/images/generations", {"prompt": "a cat", "n": 99}, 400, None),
]  # fmt: skip


@pytest.mark.parametrize("what,path,body,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(server, what, path, body, status, code):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "anygpt-serve-" not in err["message"] and "object at 0x" not in err["message"]
    if code:
        assert err["code"] == code


def test_bad_uploads_and_the_server_stays_healthy(server):
    r = httpx.post(server.url + "/v1/audio/transcriptions", data={"model": "anygpt"},
                   files={"file": ("x.wav", b"not audio at all")}, timeout=30)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/audio/transcriptions", data={"model": "anygpt"}, timeout=30)
    assert r.status_code == 400
    r = httpx.post(server.url + "/v1/audio/transcriptions", content=b"--x\r\nbroken",
                   headers={"content-type": "multipart/form-data; boundary=x"}, timeout=30)  # fmt: skip
    assert r.status_code == 400
    with pytest.raises(openai.BadRequestError):
        server.client.chat.completions.create(model="anygpt", messages=user("hi"), n=0)
    assert httpx.get(server.url + "/health").json()["in_flight"] == 0
    ok = server.client.chat.completions.create(model="anygpt", messages=user("hi"), max_tokens=3)
    assert ok.choices[0].message.role == "assistant"


# ---------------------------------------------------------------------- scheduling
def test_requests_arriving_together_share_a_batch(server):
    """Beam-search text replies are batched with what arrives together; sampled speech replies
    join the continuous batch of the scheduler."""
    before, server.worker.peak_batch = server.worker.batches, 0

    def text(i):
        return server.client.chat.completions.create(
            model="anygpt", messages=user(f"hello {i}"), max_tokens=4
        )

    def spoken(i):
        return server.client.chat.completions.create(
            model="anygpt", messages=user(f"say {i}"), max_tokens=30, seed=i,
            modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        )  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(text, range(4)))
    assert all(r.choices for r in results)
    assert server.worker.batches - before < 4
    assert server.worker._scheduler is None or not server.worker._scheduler.has_work
    server.worker.peak_batch = 0
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(spoken, range(4)))
    assert all(r.choices[0].message.audio.data for r in results)
    assert server.worker.peak_batch >= 2


def test_media_of_requests_arriving_together_is_encoded_in_one_batch(server):
    tok = server.engine.bundle.modality("speech", checked=True)
    sizes, encode = [], tok.encode

    def counting(media):
        sizes.append(len(media))
        return encode(media)

    def ask(seconds):
        part = {
            "type": "input_audio",
            "input_audio": {"data": b64(wav_bytes(seconds)), "format": "wav"},
        }
        return server.client.chat.completions.create(
            model="anygpt", messages=user([part]), max_tokens=2
        )

    tok.encode = counting
    try:
        alone = ask(0.4).usage.prompt_tokens
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(ask, [0.4, 0.6, 0.8]))
    finally:
        del tok.encode
    assert max(sizes) >= 2  # at least two requests' audio shared one encode call
    assert together[0].usage.prompt_tokens == alone  # the same codes as when encoded alone
    assert len({r.usage.prompt_tokens for r in together}) == 3


def test_disconnect_cancels_and_frees_the_slot(debug_bundle):
    s = Server(debug_bundle, max_concurrency=1, max_tokens=4000)
    try:
        # a spoken reply that, with this seed, runs to 1933 tokens (over 10 s on a 2-core CPU)
        body = {"model": "anygpt", "messages": user("talk"), "max_tokens": 3000, "stream": True,
                "seed": 1,
                "modalities": ["text", "audio"], "audio": {"format": "pcm16"}}  # fmt: skip
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept alive: closing it would close the response
            # the first audio chunk: the reply is being generated by the scheduler
            next(line for line in lines if '"audio"' in line)
            # the only slot is taken: the next request is refused at once
            busy = post(s, "/v1/chat/completions", {"model": "anygpt", "messages": user("hi")})
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "rate_limit_exceeded"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (s.state.in_flight or not s.worker.cancelled):
            time.sleep(0.05)
        assert s.state.in_flight == 0
        # the reply was cancelled in the scheduler, not generated to its end
        assert s.worker.cancelled == 1 and not s.worker.scheduler.has_work
        ok = s.client.chat.completions.create(model="anygpt", messages=user("hi"), max_tokens=3)
        assert ok.choices
    finally:
        s.close()


def test_the_engine_backend_is_used_for_every_generation(server):
    from anygpt.serve.backend import TransformersBackend

    calls = []

    class Recording(TransformersBackend):
        def generate(self, prompts, cfg, **kw):
            calls.append(len(prompts))
            return super().generate(prompts, cfg, **kw)

    server.engine.backend = Recording(server.engine.bundle)
    try:
        server.client.chat.completions.create(model="anygpt", messages=user("hi"), max_tokens=2)
        server.client.images.generate(prompt="a blue square")
    finally:
        server.engine.backend = None
    assert calls == [1, 1]


NANO = Path(__file__).resolve().parents[1] / "models" / "anygpt-nano"


@pytest.mark.skipif(not (NANO / "bundle.json").is_file(), reason="the shipped model is absent")
def test_the_shipped_model_streams_spoken_replies_and_transcribes():
    s = Server(NANO, max_audio_seconds=10.0)
    try:
        stream = s.client.chat.completions.create(
            model=s.model_id, messages=user("what colour is the circle?"), max_tokens=60,
            modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"}, stream=True,
        )  # fmt: skip
        samples = 0
        for chunk in stream:
            for ch in chunk.choices:
                if ch.delta.audio is not None and attr(ch.delta.audio, "data"):
                    samples += len(base64.b64decode(attr(ch.delta.audio, "data"))) // 2
        assert samples > 0
        question = (NANO / "demo" / "question.wav").read_bytes()
        text = s.client.audio.transcriptions.create(model=s.model_id, file=("q.wav", question))
        assert text.text.strip()
    finally:
        s.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the vLLM backend needs a CUDA GPU")
def test_vllm_backend_gives_the_transformers_greedy_outputs(debug_bundle):
    pytest.importorskip("vllm", reason="the vllm extra is not installed")
    from anygpt.bundle import Bundle
    from anygpt.config import DecodingConfig
    from anygpt.serve.backend import TransformersBackend, VLLMBackend

    bundle = Bundle(debug_bundle, device="cuda")
    tok, layout = bundle.tokenizer, bundle.layout
    prompts = [tok.encode("hello there"), tok.encode("a red circle") + [layout.start_ids["speech"]]]
    cfg = DecodingConfig(do_sample=False, max_new_tokens=24)
    stops = [tok.eos_id, layout.eos_tag_id]
    reference = TransformersBackend(bundle).generate(prompts, cfg, stop_ids=stops)
    assert VLLMBackend(bundle).generate(prompts, cfg, stop_ids=stops) == reference


def test_serve_command_fails_in_one_line_on_a_busy_port(debug_bundle):
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "anygpt", "serve", "--model", str(debug_bundle),
             "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert r.returncode == 1
    assert "cannot listen" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------- unexpected failures
def assert_server_error(exc: openai.APIStatusError, what: str) -> None:
    """OpenAI's error shape, HTTP 500, one line naming the failure, no traceback or temp path."""
    assert exc.status_code == 500
    err = exc.body if "message" in (exc.body or {}) else (exc.body or {}).get("error", {})
    assert err["type"] == "server_error"
    message = err["message"]
    assert what in message and "\n" not in message
    assert "Traceback" not in message and "anygpt-serve-" not in message


def assert_healthy(server) -> None:
    h = httpx.get(server.url + "/health", timeout=10).json()
    assert h["status"] == "ok" and h["in_flight"] == 0
    ok = server.client.chat.completions.create(model="anygpt", messages=user("hi"), max_tokens=3)
    assert ok.choices[0].message.role == "assistant"


def audio_part() -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(wav_bytes(0.4)), "format": "wav"}}


def test_an_unexpected_encoder_error_answers_500_and_spares_the_batch(server, monkeypatch):
    """A tokenizer raising an error no request check anticipates answers its request (plain and
    streamed) at once with a 500; a request batched with it is still answered."""
    tok = server.engine.bundle.modality("speech", checked=True)

    def broken(_media):
        raise RuntimeError("speech encoder exploded\nsecond line /tmp/anygpt-serve-x.wav")

    monkeypatch.setattr(tok, "encode", broken)
    client = server.client.with_options(timeout=15)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(
                model="anygpt", messages=user([audio_part()]), max_tokens=3, stream=stream
            )
        assert_server_error(caught.value, "speech encoder exploded")

    def ask(content):
        try:
            return client.chat.completions.create(
                model="anygpt", messages=user(content), max_tokens=3
            )
        except openai.APIStatusError as exc:
            return exc

    # arriving together (the batch window is 100 ms): two audio requests and a text one
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(ask, [[audio_part()], [audio_part()], "hello"]))
    for failed in results[:2]:
        assert isinstance(failed, openai.InternalServerError)
        assert_server_error(failed, "speech encoder exploded")
    assert results[2].choices[0].message.role == "assistant"
    monkeypatch.undo()
    assert_healthy(server)


def test_a_failing_speech_decoder_ends_a_started_stream_with_an_error(server, monkeypatch):
    tok = server.engine.bundle.modality("speech", checked=True)

    def broken(*_args, **_kw):
        raise RuntimeError("vocoder exploded")

    monkeypatch.setattr(tok, "decode", broken)
    stream = server.client.with_options(timeout=15).chat.completions.create(
        model="anygpt", messages=user("say something"), max_tokens=40, seed=11, stream=True,
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
    )  # fmt: skip
    chunks = 0
    with pytest.raises(openai.APIError) as caught:
        for _chunk in stream:
            chunks += 1
    assert chunks >= 1  # the stream had started before the error event
    assert "vocoder exploded" in caught.value.message and "\n" not in caught.value.message
    monkeypatch.undo()
    assert_healthy(server)


def test_a_failing_scheduler_step_answers_every_request_of_the_batch(server, monkeypatch):
    sched = server.worker.scheduler

    def broken():
        raise RuntimeError("step exploded")

    monkeypatch.setattr(sched, "step", broken)

    def ask(i):
        try:
            return server.client.with_options(timeout=15).chat.completions.create(
                model="anygpt", messages=user(f"say {i}"), max_tokens=5, seed=i, stream=i == 1,
                modalities=["text", "audio"], audio={"format": "pcm16" if i == 1 else "wav"},
            )  # fmt: skip
        except openai.APIStatusError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        plain, streamed = list(pool.map(ask, [0, 1]))
    assert_server_error(plain, "step exploded")
    with pytest.raises(openai.APIError) as caught:
        list(streamed)
    assert "step exploded" in caught.value.message
    monkeypatch.undo()
    assert_healthy(server)


def test_upload_files_are_removed_on_every_path(server, monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ok = server.client.chat.completions.create(
        model="anygpt", messages=user([audio_part()]), max_tokens=2
    )
    assert ok.choices
    tok = server.engine.bundle.modality("speech", checked=True)
    monkeypatch.setattr(tok, "encode", lambda _m: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(openai.InternalServerError):
        server.client.with_options(timeout=15).chat.completions.create(
            model="anygpt", messages=user([audio_part()]), max_tokens=2
        )
    # a stream refused before it starts, then one whose client leaves without reading it
    body = {"model": "anygpt", "messages": user([audio_part()]), "max_tokens": 2, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=15) as r:
        assert r.status_code == 500
    monkeypatch.undo()
    body["messages"] = user([audio_part()])
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=15) as r:
        assert r.status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (list(tmp_path.iterdir()) or server.state.in_flight):
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
    assert server.state.in_flight == 0


def test_a_stream_whose_client_left_before_its_first_byte_is_still_closed():
    import asyncio

    from starlette.requests import ClientDisconnect

    from anygpt.serve.app import ClosingStream

    started, closed = [], []

    async def events():
        started.append(True)
        yield "data: [DONE]\n\n"

    async def gone(_message):
        raise OSError("the client went away")

    async def receive():
        return {"type": "http.disconnect"}

    response = ClosingStream(events(), lambda: closed.append(True))
    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    with pytest.raises(ClientDisconnect):
        asyncio.run(response(scope, receive, gone))
    assert closed == [True] and not started
