"""Interruption latency: from the first sample of the user's new speech to the reply stopping.

    OMP_NUM_THREADS=1 python scripts/bench_interrupt.py [--model models/anygpt-nano] [--trials 8]

Two front ends, with the same VAD settings (``--min-speech-ms``: speech needed to fire):

* ``chat --listen`` (in process, the stream paced in real time): the reply "plays" from the moment
  it is ready; the latency is the stream time of the ``interrupted`` event minus the onset of the
  interrupting speech (the VAD's detection delay plus one 32 ms chunk).
* ``/v1/realtime`` (a real ``anygpt serve`` on loopback, driven by the ``websockets`` client): a
  text turn starts a long spoken reply; once it is created the client streams the
  nano demo question in real time (20 ms chunks) while the reply is generated.  Measured on the
  client's wall clock from sending the chunk holding the speech onset to
  ``input_audio_buffer.speech_started`` (where a client stops playing) and to ``response.done``
  with status ``cancelled`` (no audio delta of the reply follows it).

Each trial shifts the onset by a few milliseconds so that it falls at different places in a chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def onset(wave: np.ndarray) -> int:
    """First sample of a 10 ms window above 1 % of the peak (the speech's true start)."""
    env = np.convolve(np.abs(wave), np.ones(160) / 160, "same")
    return int(np.argmax(env > 0.01 * np.abs(wave).max()))


def bench_listen(
    model: str, question: np.ndarray, trials: int, min_speech_ms: float
) -> list[float]:
    from anygpt.bundle import Bundle
    from anygpt.runtime.chat import ChatSession
    from anygpt.runtime.engine import Engine
    from anygpt.runtime.listen import listen
    from anygpt.runtime.vad import StreamingVAD

    session = ChatSession(Engine(Bundle(model, device="cpu"), seed=0))
    q_on = onset(question)
    silent = np.zeros(SR, dtype=np.float32)
    warm_up = np.concatenate([silent, question, silent, silent])
    warm = (warm_up[i : i + 512] for i in range(0, len(warm_up), 512))
    listen(session, warm, vad=StreamingVAD(), speed=0, report=lambda *a: None)  # lazy loading
    out = []
    for k in range(trials):
        lead = 0.5 + 0.004 * k
        # the second question begins 0.55 s after the first ends: during the reply when it is long
        parts = [np.zeros(int(lead * SR)), question, np.zeros(int(0.55 * SR)), question]
        audio = np.concatenate(parts + [np.zeros(2 * SR)]).astype(np.float32)
        second = (len(parts[0]) + len(question) + len(parts[2]) + q_on) / SR
        session.clear()
        chunks = (audio[i : i + 512] for i in range(0, len(audio), 512))
        events = listen(
            session,
            chunks,
            vad=StreamingVAD(min_speech_ms=min_speech_ms),
            speed=1.0,
            report=lambda *a: None,
        )
        cut = [e for e in events if e["kind"] == "interrupted"]
        if cut:
            out.append(cut[0]["time"] - second)
        else:
            print(f"listen trial {k}: the reply ended before the interruption", file=sys.stderr)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pcm16(audio: np.ndarray) -> str:
    return base64.b64encode((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()).decode()


async def realtime_trial(
    url: str, question: np.ndarray, shift: float, min_speech_ms: float
) -> dict | None:
    """One interruption; None when the reply was generated in full before the VAD fired."""
    import websockets

    async with websockets.connect(url, max_size=None) as ws:
        seen: dict[str, tuple[float, dict]] = {}  # first event of each type, after `reset`

        async def reader():
            async for raw in ws:
                ev, t = json.loads(raw), time.perf_counter()
                seen.setdefault(ev["type"], (t, ev))

        async def until(kind: str, timeout: float = 60.0) -> tuple[float, dict]:
            deadline = time.perf_counter() + timeout
            while kind not in seen:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"no {kind} event; got {sorted(seen)}")
                await asyncio.sleep(0.001)
            return seen[kind]

        async def send(**event):
            await ws.send(json.dumps(event))

        task = asyncio.create_task(reader())
        try:
            await until("session.created")
            vad = {"type": "server_vad", "min_speech_duration_ms": min_speech_ms}
            await send(
                type="session.update",
                session={"input_audio_sample_rate": SR, "turn_detection": vad},
            )
            await until("session.updated")
            await send(type="conversation.item.create", item={"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "say something long"}]})  # fmt: skip
            await send(type="response.create", response={"max_response_output_tokens": 256})
            await until("response.created")
            # the user starts talking at once: the reply is still being generated when the VAD fires
            lead = int((0.05 + shift) * SR)
            audio = np.concatenate([np.zeros(lead), question, np.zeros(SR)]).astype(np.float32)
            times: dict[str, float] = {}
            streamer = asyncio.create_task(stream(send, audio, lead + onset(question), times))
            t_started, _ = await until("input_audio_buffer.speech_started", timeout=10)
            t_done, done = await until("response.done", timeout=30)
            streamer.cancel()
        finally:
            task.cancel()
        if done["response"]["status"] != "cancelled":
            return None
        return {
            "speech_started": t_started - times["onset"],
            "cancelled": t_done - times["onset"],
        }


async def stream(send, audio: np.ndarray, first: int, times: dict) -> None:
    """Append ``audio`` in real time, 20 ms per event; ``times["onset"]``: when sample ``first``
    was sent."""
    step = SR // 50
    t0 = time.perf_counter()
    for i in range(0, len(audio), step):
        await asyncio.sleep(max(0.0, t0 + i / SR - time.perf_counter()))
        await send(type="input_audio_buffer.append", audio=pcm16(audio[i : i + step]))
        if "onset" not in times and i + step > first:
            times["onset"] = time.perf_counter()


def bench_realtime(
    model: str, question: np.ndarray, trials: int, min_speech_ms: float
) -> list[dict]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "anygpt", "serve", "--model", model, "--device", "cpu",
           "--port", str(port), "--seed", "0", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode()[-2000:]
                    raise RuntimeError(f"server did not start: {err}") from None
                time.sleep(0.3)
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        asyncio.run(
            realtime_trial(url, question, 0.0, min_speech_ms)
        )  # warm-up: lazy loading, not counted
        out = []
        for k in range(trials):
            r = asyncio.run(realtime_trial(url, question, 0.003 * k, min_speech_ms))
            if r is None:
                print(
                    f"realtime trial {k}: the reply ended before the interruption", file=sys.stderr
                )
            else:
                out.append(r)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "anygpt-nano"))
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--min-speech-ms", type=float, default=250.0, help="the VAD's (default 250)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    question, sr = sf.read(Path(args.model) / "demo" / "question.wav", dtype="float32")
    assert sr == SR, "the demo question is 16 kHz"
    question = question if question.ndim == 1 else question[:, 0]

    listen_s = bench_listen(args.model, question, args.trials, args.min_speech_ms)
    realtime = bench_realtime(args.model, question, args.trials, args.min_speech_ms)
    figures = {"listen_interrupted_s": listen_s, "realtime": realtime}
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"trials: {args.trials}; min speech {args.min_speech_ms:g} ms; threads: {threads}")
    print(f"{'front end, event':44s} {'median':>8s} {'p90':>8s} {'n':>3s}")
    print(f"{'chat --listen: reply stopped':44s} {pct(listen_s, .5):8.3f} {pct(listen_s, .9):8.3f} {len(listen_s):3d}")  # fmt: skip
    for key in ("speech_started", "cancelled"):
        vals = [r[key] for r in realtime]
        print(f"{'/v1/realtime: ' + key:44s} {pct(vals, .5):8.3f} {pct(vals, .9):8.3f} {len(vals):3d}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
