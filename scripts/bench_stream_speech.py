"""Streamed vs whole-utterance speech decoding on the same codes (quality cost and delay).

    .venv/bin/python scripts/bench_stream_speech.py [--model models/anygpt-nano] [--repeat 2]

Encodes the bundle's demo question (repeated ``--repeat`` times), decodes the codes whole and as a
stream (:func:`anygpt.serve.streaming.stream_decode`) with several window settings, and prints the
mean |log-mel| distance to the whole decode, the distance between two whole decodes with different
vocoder seeds (the decoder's own run-to-run spread), the frames needed before the first chunk, and
the decode times.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from anygpt.bundle import Bundle
from anygpt.modalities.base import Codes
from anygpt.serve.streaming import mel_distance, stream_decode

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [  # chunk, left context, lookahead, first chunk
    (20, 20, 10, 10),
    (10, 10, 5, 5),
    (20, 10, 5, None),
    (40, 20, 10, 10),
    (20, 0, 0, None),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=str(ROOT / "models" / "anygpt-nano"))
    p.add_argument("--audio", default=None, help="speech to encode (default: the demo question)")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    bundle = Bundle(args.model, device="cpu")
    tok = bundle.modality("speech", checked=True)
    audio = args.audio or str(Path(args.model) / "demo" / "question.wav")
    codes = tok.encode([tok.load(audio)]).unbatch()[0].repeat(1, args.repeat)
    rate = tok.sample_rate
    frames = codes.shape[1]

    def whole(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return tok.decode(Codes.from_list([codes]), generator=gen)[0]

    t = time.perf_counter()
    reference = whole(0)
    whole_s = time.perf_counter() - t
    spread = mel_distance(whole(1), reference, rate)
    print(f"{Path(args.model).name}: {frames} frames ({frames / tok.frame_rate:.1f} s); "
          f"whole decode {1000 * whole_s:.0f} ms; two whole decodes (other seed) differ by "
          f"{spread:.3f}")  # fmt: skip
    print(f"{'chunk':>5} {'left':>4} {'ahead':>5} {'first':>5} | {'mel dist':>8} | "
          f"{'first chunk after':>17} | {'stream ms':>9}")  # fmt: skip
    for chunk, left, ahead, first in SETTINGS:
        t = time.perf_counter()
        streamed, ready = stream_decode(tok, codes, generator_seed=0, chunk=chunk,
                                        left_context=left, lookahead=ahead, first_chunk=first)  # fmt: skip
        ms = 1000 * (time.perf_counter() - t)
        d = mel_distance(streamed, reference, rate)
        after = f"{ready[0]} fr ({1000 * ready[0] / tok.frame_rate:.0f} ms)"
        print(f"{chunk:>5} {left:>4} {ahead:>5} {first or chunk:>5} | {d:>8.3f} | {after:>17} | "
              f"{ms:>9.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
