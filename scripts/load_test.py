"""Load test of ``anygpt serve``: N concurrent clients (the official ``openai`` package) on loopback.

    .venv/bin/python scripts/load_test.py                       # the shipped model, N = 1, 4, 16
    .venv/bin/python scripts/load_test.py --model B --concurrency 1,2 --requests 3
    .venv/bin/python scripts/load_test.py --url http://127.0.0.1:8000/v1   # a running server

Starts the server (unless ``--url``), then for each N runs N client threads, each sending
``--requests`` streamed chat requests one after another (spoken replies by default), bounded by
``--time-limit`` seconds per level.  Prints p50/p95 of the metrics of ``vllm bench serve --omni``:

* ``ttft``: request sent -> first content or audio chunk;
* ``audio_ttfp``: request sent -> first audio chunk;
* ``tpot``: (e2el - ttft) / (completion tokens - 1);
* ``itl``: gaps between consecutive streamed chunks (a chunk is one token of text, or one audio
  window of speech);
* ``e2el``: request sent -> last chunk;
* ``audio_rtf``: e2el / seconds of audio received;

and the error count, output throughput and the server's peak resident memory (``VmHWM``).
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "what colour is the circle?",
    "say something about the big red square",
    "describe a small blue triangle",
    "tell me about two green circles",
]


@dataclass
class Sample:
    ttft: float | None = None
    audio_ttfp: float | None = None
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    audio_s: float = 0.0
    error: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB, from /proc."""
    now = peak = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return now, peak


def one_request(client, model: str, prompt: str, args, seed: int) -> Sample:
    sample = Sample()
    kw = dict(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=args.max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        seed=seed,
    )
    if args.reply == "speech":
        kw.update(modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"})
    start = time.perf_counter()
    last = None
    try:
        for chunk in client.chat.completions.create(**kw):
            t = time.perf_counter()
            if chunk.usage:
                sample.tokens = chunk.usage.completion_tokens
            for ch in chunk.choices:
                delta = ch.delta
                audio = delta.audio
                data = getattr(audio, "data", None) if audio is not None else None
                extra = (getattr(audio, "model_extra", None) or {}) if audio is not None else {}
                if data:
                    rate = extra.get("sample_rate") or 16000
                    sample.audio_s += len(base64.b64decode(data)) / 2 / rate
                    if sample.audio_ttfp is None:
                        sample.audio_ttfp = t - start
                if delta.content or data:
                    if sample.ttft is None:
                        sample.ttft = t - start
                    if last is not None:
                        sample.itl.append(t - last)
                    last = t
        sample.e2el = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - every failure is counted and named
        sample.error = f"{type(exc).__name__}: {exc}"
    return sample


def run_level(client, model: str, n: int, args) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.time_limit

    def worker(k: int) -> None:
        for r in range(args.requests):
            if time.monotonic() > deadline:
                return
            s = one_request(client, model, PROMPTS[(k + r) % len(PROMPTS)], args, 1000 * k + r)
            with lock:
                samples.append(s)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, time.perf_counter() - start


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "anygpt-nano"))
    p.add_argument("--url", default=None, help="a running server's /v1 URL (no server started)")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=60)
    p.add_argument("--reply", choices=["speech", "text"], default="speech")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per level at most")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the started server")
    args = p.parse_args()

    import openai

    server = None
    url = args.url
    if url is None:
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "anygpt", "serve", "--model", args.model, "--port", str(port),
               "--max-concurrency", "256", "--device", "cpu"]  # fmt: skip
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                model = client.models.list().data[0].id
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline or (server and server.poll() is not None):
                    print("error: the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        one_request(client, model, PROMPTS[0], args, 0)  # warm-up: lazy model loading
        header = (f"{'N':>3} {'reqs':>4} {'err':>3} | {'ttft p50/p95':>13} | {'audio_ttfp':>11} | "
                  f"{'tpot':>9} | {'itl':>9} | {'e2el':>11} | {'audio_rtf':>9} | {'tok/s':>6} | "
                  f"{'rss/peak MiB':>12}")  # fmt: skip
        print(f"model {model}, reply {args.reply}, max_tokens {args.max_tokens}, "
              f"{args.requests} requests per client; latencies in ms")  # fmt: skip
        print(header)
        print("-" * len(header))
        for n in [int(x) for x in args.concurrency.split(",")]:
            samples, wall = run_level(client, model, n, args)
            ok = [s for s in samples if s.error is None]
            errors = [s.error for s in samples if s.error]
            ttft = [s.ttft for s in ok if s.ttft is not None]
            ttfp = [s.audio_ttfp for s in ok if s.audio_ttfp is not None]
            tpot = [(s.e2el - s.ttft) / (s.tokens - 1) for s in ok if s.ttft and s.tokens > 1]
            itl = [x for s in ok for x in s.itl]
            e2el = [s.e2el for s in ok]
            rtf = [s.e2el / s.audio_s for s in ok if s.audio_s > 0]
            tokens = sum(s.tokens for s in ok)
            rss, peak = peak_rss_mib(server.pid) if server else (0.0, 0.0)

            def two(v: list[float]) -> str:
                return f"{fmt_ms(pct(v, 50))}/{fmt_ms(pct(v, 95))}"

            rtf_s = "-" if not rtf else f"{pct(rtf, 50):.2f}/{pct(rtf, 95):.2f}"
            print(f"{n:>3} {len(samples):>4} {len(errors):>3} | {two(ttft):>13} | {two(ttfp):>11} | "
                  f"{two(tpot):>9} | {two(itl):>9} | {two(e2el):>11} | {rtf_s:>9} | "
                  f"{tokens / wall:>6.1f} | {rss:>5.0f}/{peak:<6.0f}")  # fmt: skip
            for e in sorted(set(errors))[:3]:
                print(f"    error: {e[:200]}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
