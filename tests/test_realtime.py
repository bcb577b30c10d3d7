"""``/v1/realtime`` on a real uvicorn server on loopback, driven by the ``websockets`` client with
scripted audio: the nano bundle's spoken question, silence and noise."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")
pytest.importorskip("silero_vad")

NANO = Path(__file__).resolve().parents[1] / "models" / "anygpt-nano"
SR = 16000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The nano bundle served on a thread; ``.state`` and ``.app`` are the live objects."""

    def __init__(self, **options) -> None:
        from anygpt.serve.cli import build, register

        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        args = vars(parser.parse_args(["serve"]))
        args.update(
            model=str(NANO), device="cpu", seed=0, max_request_mb=1.0, max_audio_seconds=3.0,
            max_concurrency=8, max_tokens=256, stream_chunk=4,
        )  # fmt: skip
        args.update(options)
        app, _ = build(argparse.Namespace(**args))
        self.app = app.app
        self.state = self.app.state.anygpt
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/v1/realtime"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def connection(self):
        (conn,) = self.app.state.realtime
        return conn

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


def question() -> np.ndarray:
    wave, sr = sf.read(NANO / "demo" / "question.wav", dtype="float32")
    assert sr == SR
    return wave if wave.ndim == 1 else wave[:, 0]


def pcm(audio: np.ndarray) -> str:
    return base64.b64encode((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


class Client:
    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []

    async def send(self, **event) -> None:
        await self.ws.send(json.dumps(event))

    async def audio(self, audio: np.ndarray, chunk: float = 0.1) -> None:
        step = int(chunk * SR)
        for i in range(0, len(audio), step):
            await self.send(type="input_audio_buffer.append", audio=pcm(audio[i : i + step]))

    async def until(self, kind: str, timeout: float = 60.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} event; got {[e['type'] for e in self.events][-20:]}"
            event = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            self.events.append(event)
            if event["type"] == kind and all(
                event.get(k) == v or (event.get("response") or {}).get(k) == v
                for k, v in match.items()
            ):
                return event


async def open_client(server, rate: int = 16000) -> Client:
    ws = await websockets.connect(server.url, max_size=None)
    c = Client(ws)
    created = await c.until("session.created")
    assert created["session"]["turn_detection"]["type"] == "server_vad"
    await c.send(type="session.update", session={"input_audio_sample_rate": rate})
    await c.until("session.updated")
    return c


def speech_frames(engine, history: str) -> int:
    lay = engine.layout
    ids = lay.tokenizer.encode(history, add_bos=False)
    (span,) = [s for s in lay.find_segments(ids) if s.modality == "speech"]
    assert span.end is not None  # the truncated span is closed
    return int(lay.codes_from_ids("speech", span.body).codes.shape[1])


def test_a_spoken_turn_is_detected_and_answered(server):
    async def main():
        c = await open_client(server)
        await c.audio(np.concatenate([silence(0.5), question(), silence(1.0)]))
        started = await c.until("input_audio_buffer.speech_started")
        stopped = await c.until("input_audio_buffer.speech_stopped")
        assert 300 <= started["audio_start_ms"] <= 900 < stopped["audio_end_ms"]
        await c.until("input_audio_buffer.committed")
        done = await c.until("response.done")
        assert done["response"]["status"] == "completed"
        kinds = [e["type"] for e in c.events]
        assert "response.created" in kinds and "response.audio.delta" in kinds
        assert done["response"]["output"][0]["role"] == "assistant"
        items = server.connection().items
        assert [i["role"] for i in items] == ["user", "assistant"]
        await c.ws.close()

    asyncio.run(main())


def test_speech_during_the_reply_cancels_it_and_the_history_keeps_what_was_sent(server):
    async def main():
        c = await open_client(server)
        await c.send(type="conversation.item.create", item={"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "say something long"}]})  # fmt: skip
        await c.send(type="response.create", response={"max_response_output_tokens": 256})
        created = await c.until("response.created")
        await c.until("response.audio.delta")
        # the user starts speaking: half a second of speech is enough for the VAD
        await c.audio(question()[: SR // 2], chunk=0.5)
        await c.until("input_audio_buffer.speech_started")
        done = await c.until("response.done", id=created["response"]["id"])
        if done["response"]["status"] == "completed":
            pytest.skip("the reply ended before the interruption reached it")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        rid = created["response"]["id"]
        after = c.events[c.events.index(done) :]
        deltas = [e for e in c.events if e["type"] == "response.audio.delta"]
        assert not any(e.get("response_id") == rid for e in after[1:])
        samples24 = sum(len(base64.b64decode(e["delta"])) // 2 for e in deltas)
        item = next(i for i in server.connection().items if i["role"] == "assistant")
        tok = server.state.engine.bundle.modality("speech")
        hop = tok.sample_rate / tok.frame_rate
        sent_frames = samples24 * tok.sample_rate / 24000 / hop
        assert abs(speech_frames(server.state.engine, item["_text"]) - sent_frames) <= 1.5
        # the new query is answered once the user stops
        await c.audio(np.concatenate([question()[SR // 2 :], silence(1.0)]))
        await c.until("input_audio_buffer.speech_stopped")
        second = await c.until("response.done")
        assert second["response"]["id"] != rid
        await c.ws.close()

    asyncio.run(main())


def test_short_noise_bursts_during_a_reply_do_not_interrupt(server):
    rng = np.random.default_rng(1)
    wave = question()
    loud = int(np.argmax(np.convolve(np.abs(wave), np.ones(2080), "valid")))
    bursts = []
    for k in range(3):
        burst = rng.normal(0, 0.3, 2080).astype(np.float32) if k == 0 else wave[loud : loud + 2080]
        bursts += [burst, silence(0.6)]
    bursts = np.concatenate(bursts)

    async def main():
        c = await open_client(server)
        await c.send(type="conversation.item.create", item={"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "hello"}]})  # fmt: skip
        await c.send(type="response.create")
        await c.until("response.created")
        await c.audio(bursts, chunk=0.05)
        done = await c.until("response.done")
        assert done["response"]["status"] == "completed"
        assert not any(e["type"] == "input_audio_buffer.speech_started" for e in c.events)
        await c.ws.close()

    asyncio.run(main())


def test_malformed_events_give_error_events_and_the_socket_survives(server):
    async def main():
        c = await open_client(server)
        await c.ws.send("{not json")
        assert (await c.until("error"))["error"]["code"] == "invalid_json"
        await c.send(type="no.such.event", event_id="e1")
        err = await c.until("error")
        assert err["error"]["code"] == "invalid_event" and err["error"]["event_id"] == "e1"
        await c.send(type="input_audio_buffer.append", audio="@@not base64@@")
        assert (await c.until("error"))["error"]["code"] == "invalid_base64"
        await c.send(type="response.cancel")
        assert (await c.until("error"))["error"]["code"] == "response_cancel_not_active"
        await c.send(type="session.update", session={"turn_detection": None})
        await c.until("session.updated")
        await c.audio(silence(2.5), chunk=0.5)
        await c.audio(silence(1.0), chunk=1.0)  # past the server's 3 s
        err = await c.until("error")
        assert (
            err["error"]["code"] == "audio_too_long"
            and err["error"]["type"] == "invalid_request_error"
        )
        await c.send(type="input_audio_buffer.clear")
        await c.until("input_audio_buffer.cleared")
        await c.send(type="input_audio_buffer.commit")
        assert (await c.until("error"))["error"]["code"] == "input_audio_buffer_commit_empty"
        # still serving: a manual commit of the question is answered
        await c.audio(question())
        await c.send(type="input_audio_buffer.commit")
        await c.until("input_audio_buffer.committed")
        await c.send(type="response.create")
        assert (await c.until("response.done"))["response"]["status"] == "completed"
        await c.ws.close()

    asyncio.run(main())


def test_a_client_that_leaves_mid_response_frees_its_slot(server):
    async def main():
        c = await open_client(server)
        await c.send(type="conversation.item.create", item={"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "hello"}]})  # fmt: skip
        await c.send(type="response.create", response={"max_response_output_tokens": 256})
        await c.until("response.created")
        assert server.state.in_flight == 1
        await c.ws.close()

    asyncio.run(main())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (server.state.in_flight or server.app.state.realtime):
        time.sleep(0.05)
    assert server.state.in_flight == 0 and not server.app.state.realtime
    worker = server.state.worker
    while time.monotonic() < deadline and worker._busy():
        time.sleep(0.05)
    assert not worker._busy()
