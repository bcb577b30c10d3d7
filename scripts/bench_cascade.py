"""Cascaded vs end-to-end spoken chat on a nano world: first-audio latency, total latency, score.

    OMP_NUM_THREADS=1 python scripts/bench_cascade.py --world /tmp/evalworld [--limit N]

Both modes answer the same held-out spoken questions about a picture and are scored by
``anygpt eval``'s spoken-chat task (the reply's text must start with the answer and come with
speech).  Latency is measured in process, per turn from the request to:

* end to end: the first streamed audio window, decoded as ``anygpt serve`` streams it (the
  reply's speech span has ``first_chunk + lookahead`` frames, then that window is decoded);
* cascaded: the first sentence synthesised (ASR and the chat model's first sentence before it);
* total: the whole turn, every sentence spoken / the whole utterance decoded.

The first turn of each mode (lazy loading) is run once beforehand and not counted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anygpt
from anygpt.eval.nano import eval_spoken_chat, read_rows
from anygpt.runtime.cascade import Cascade
from anygpt.serve.streaming import WindowedSpeech, decode_windows


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


class Clock:
    """Per-turn start, first-audio and end times, filled by the hooks below."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.firsts: list[float] = []
        self.totals: list[float] = []

    def audio(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def turn_done(self, _outcome) -> None:
        end = time.perf_counter()
        self.totals.append(end - self.start)
        self.firsts.append((self.first or end) - self.start)  # no audio: the whole turn
        self.start, self.first = time.perf_counter(), None


def streamed_first_audio(engine, clock: Clock):
    """An ``on_token`` hook: decode the first streaming window once the speech span allows it."""
    tok = engine.bundle.modality("speech")
    plan = WindowedSpeech(round(tok.sample_rate / tok.frame_rate))
    need = (plan.first_chunk or plan.chunk) + plan.lookahead

    def on_token(new) -> None:  # new ids so far [1, t]
        if clock.first is not None:
            return
        ids = new[0].tolist()
        spans = [s for s in engine.layout.find_segments(ids) if s.modality == "speech"]
        if not spans:
            return
        codes = engine.layout.codes_from_ids("speech", spans[0].body).codes
        ended = spans[0].end is not None
        if codes.shape[1] >= need or (ended and codes.shape[1] > 0):
            window = WindowedSpeech(plan.hop).plan(codes.shape[1], final=ended)[:1]
            if window:
                decode_windows(tok, codes, window)
                clock.audio()

    return on_token


def run(mode: str, engine, split: Path, limit: int | None) -> dict:
    cascade = Cascade(engine) if mode == "cascaded" else None
    clock = Clock()
    if cascade is not None:
        speak = cascade.speak

        def timed_speak(sentence, voice):
            media = speak(sentence, voice)
            clock.audio()
            return media

        cascade.speak = timed_speak
    else:
        engine.on_token = streamed_first_audio(engine, clock)
    eval_spoken_chat(engine, split, 1, cascade)  # warm-up, not counted
    clock.start, clock.first = time.perf_counter(), None
    score = eval_spoken_chat(engine, split, limit, cascade, on_turn=clock.turn_done)
    engine.on_token = None
    return {
        "mode": mode,
        "score": round(score.value, 3),
        "n": score.n,
        "first_audio_p50_s": round(pct(clock.firsts, 0.5), 3),
        "first_audio_p95_s": round(pct(clock.firsts, 0.95), 3),
        "total_p50_s": round(pct(clock.totals, 0.5), 3),
        "total_p95_s": round(pct(clock.totals, 0.95), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True, help="a world folder made by 'anygpt world'")
    p.add_argument("--model", default=None, help="bundle (default: models/anygpt-nano)")
    p.add_argument("--limit", type=int, default=None, help="held-out spoken questions (all)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    split = Path(args.world) / "heldout"
    read_rows(split / "dialogues.jsonl", 1)  # a clear error when the world is missing
    engine = anygpt.load(args.model, device="cpu", seed=0)
    rows = [run(mode, engine, split, args.limit) for mode in ("end-to-end", "cascaded")]
    print("| mode | spoken chat score | n | first audio p50 / p95 (s) | total p50 / p95 (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['score']:.3f} | {r['n']} | {r['first_audio_p50_s']:.2f} / "
            f"{r['first_audio_p95_s']:.2f} | {r['total_p50_s']:.2f} / {r['total_p95_s']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
