#!/usr/bin/env python
"""Real-time factor of speech-unit extraction (mHuBERT base + k-means) and of unit vocoding
(unit HiFi-GAN), at official sizes with random weights.

RTF = wall time / audio duration (lower is faster; < 1 is faster than real time).  The CPU
column is the process CPU time of the same run (all threads); on a shared machine it is less
sensitive than wall time to other load.

    python scripts/bench_units.py --seconds 10 --batch-sizes 1 4
"""

from __future__ import annotations

import argparse
import time

import torch

from anygpt.models.hubert_units import (
    MHUBERT_BASE_HF_CONFIG,
    MHUBERT_BASE_UNITS,
    UnitExtractor,
    build_hubert,
)
from anygpt.models.unit_hifigan import UNIT_HIFIGAN_OFFICIAL, build_unit_hifigan


def _time(fn, repeats: int) -> tuple[float, float]:
    """Best wall time and the CPU time (all threads) of that run, in seconds."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def bench_extract(
    seconds: float, batch_sizes: list[int], repeats: int, num_units: int
) -> list[tuple]:
    torch.manual_seed(0)
    hubert = build_hubert(MHUBERT_BASE_HF_CONFIG)
    extractor = UnitExtractor(
        hubert, torch.randn(num_units, hubert.config.hidden_size), MHUBERT_BASE_UNITS
    )
    n = int(seconds * 16000)
    extractor.extract([torch.randn(16000) * 0.1], 16000)  # warm-up
    rows = []
    for b in batch_sizes:
        # Slightly different lengths, so the padded path is what is measured.
        wavs = [torch.randn(n - 160 * i) * 0.1 for i in range(b)]
        dt = _time(lambda wavs=wavs, b=b: extractor.extract(wavs, 16000, batch_size=b), repeats)
        audio = sum(w.numel() for w in wavs) / 16000
        rows.append(("extract (mHuBERT L11 + km1000)", b, audio, dt))
    return rows


def bench_vocode(
    seconds: float, batch_sizes: list[int], repeats: int, dur_prediction: bool
) -> list[tuple]:
    torch.manual_seed(0)
    model = build_unit_hifigan(UNIT_HIFIGAN_OFFICIAL).eval().fold_weight_norm()
    frames = int(seconds * UNIT_HIFIGAN_OFFICIAL.frame_rate)
    model.vocode([torch.randint(0, 1000, (25,))])  # warm-up
    rows = []
    for b in batch_sizes:
        units = [torch.randint(0, 1000, (frames - 5 * i,)) for i in range(b)]
        out: list[torch.Tensor] = []

        def run(units=units, out=out):
            out[:] = model.vocode(units, dur_prediction=dur_prediction)

        dt = _time(run, repeats)
        audio = sum(w.numel() for w in out) / UNIT_HIFIGAN_OFFICIAL.sampling_rate
        name = "vocode (unit HiFi-GAN" + (", durations)" if dur_prediction else ")")
        rows.append((name, b, audio, dt))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0, help="audio length per utterance")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case (best is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--num-units", type=int, default=1000, help="k-means clusters")
    p.add_argument(
        "--dur-prediction", action="store_true", help="vocode with the duration predictor"
    )
    p.add_argument("--skip-extract", action="store_true")
    p.add_argument("--skip-vocode", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[tuple] = []
    with torch.inference_mode():
        if not args.skip_extract:
            rows += bench_extract(args.seconds, args.batch_sizes, args.repeats, args.num_units)
        if not args.skip_vocode:
            rows += bench_vocode(args.seconds, args.batch_sizes, args.repeats, args.dur_prediction)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    header = (
        f"{'component':<36} {'batch':>5} {'audio s':>8} {'wall s':>8} {'cpu s':>8} {'RTF':>7} "
        f"{'x real time':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, b, audio, (dt, cpu) in rows:
        print(
            f"{name:<36} {b:>5} {audio:>8.2f} {dt:>8.2f} {cpu:>8.2f} {dt / audio:>7.3f} "
            f"{audio / dt:>12.2f}"
        )


if __name__ == "__main__":
    main()
