#!/usr/bin/env python
"""Benchmark SoundStorm generation: seconds of speech produced per second of compute.

Runs :func:`anygpt.models.soundstorm.generate` on a randomly initialised model (official size
by default) for utterances of ``--seconds`` seconds (50 frames per second), with and without a
voice prompt, and prints one table row per (batch, prompt, kernels).  ``reference`` kernels are the original
formulation (explicit softmax attention, channels-first convolution module with a two-pass
variance); their rows are the "before" figure for the default ``fast`` kernels.  "same
tokens" is the share of output tokens equal to those of the first kernel set's row (same
weights, inputs and seed).  With random weights the confidence scores are nearly flat, so
float-rounding differences between kernel sets can move a re-masking cut-off and the runs
then drift apart; the reference fixtures check exactness on weights with real margins.

Examples::

    python scripts/bench_soundstorm.py                       # batch 1, 10 s, prompt 0 and 3 s
    python scripts/bench_soundstorm.py --batch 8 --seconds 2 --prompt-seconds 0
    python scripts/bench_soundstorm.py --device cuda --dtype bfloat16 --batch 1 8
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from anygpt.models.soundstorm import (
    SOUNDSTORM_OFFICIAL,
    SOUNDSTORM_TINY,
    build_soundstorm,
    generate,
    set_kernels,
)

FRAMES_PER_SECOND = 50
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default: 1)")
    p.add_argument("--seconds", type=float, default=10.0, help="utterance length (default: 10)")
    p.add_argument(
        "--prompt-seconds",
        type=float,
        nargs="+",
        default=[0.0, 3.0],
        help="voice prompt lengths, 0 = none (default: 0 3)",
    )
    p.add_argument("--steps", type=int, default=3, help="level-0 steps (AnyGPT: 3)")
    p.add_argument(
        "--kernels",
        nargs="+",
        default=["fast", "reference"],
        choices=["fast", "reference"],
        help="kernel sets to time; 'reference' is the 'before' variant (default: both)",
    )
    p.add_argument("--size", default="official", choices=["official", "tiny"])
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs per row, interleaved across kernel sets (best is kept)",
    )
    p.add_argument(
        "--forward-repeats",
        type=int,
        default=3,
        help="timed single network calls per kernel set for the first table (0 = skip)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return p.parse_args()


def random_model(cfg, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Model with random weights, built on the meta device and filled in place (fast)."""
    with torch.device("meta"):
        model = build_soundstorm(cfg)
    model = model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or (p.ndim == 1 and name.endswith("weight")):
                p.fill_(1.0)  # norm gains
            elif p.ndim == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
    model.reset_buffers(device)
    return model.to(dtype=dtype).eval()


def time_forward(model, args, cfg, device: torch.device, n: int) -> None:
    """Best-of-R time of one network call (the unit of work of every pass), interleaved."""
    print(f"one network call, best of {args.forward_repeats}:")
    print(f"{'batch':>5} {'frames':>6} " + " ".join(f"{k + ' s':>12}" for k in args.kernels))
    g = torch.Generator().manual_seed(2)
    q, k = cfg.num_quantizers, cfg.codebook_size
    for batch in args.batch:
        for p_sec in args.prompt_seconds:
            frames = n + round(p_sec * FRAMES_PER_SECOND)
            sem = torch.randint(0, cfg.num_semantic_tokens, (batch, frames), generator=g)
            codes = torch.randint(0, k + 1, (batch, frames, q), generator=g)
            sem, codes = sem.to(device), codes.to(device)
            best = {kind: float("inf") for kind in args.kernels}
            for _ in range(args.forward_repeats):
                for kind in args.kernels:
                    set_kernels(model, kind)
                    with torch.inference_mode():
                        sync(device)
                        t0 = time.perf_counter()
                        model(sem, codes)
                        sync(device)
                    best[kind] = min(best[kind], time.perf_counter() - t0)
            row = " ".join(f"{best[kind]:>12.3f}" for kind in args.kernels)
            print(f"{batch:>5} {frames:>6} {row}", flush=True)
    set_kernels(model, "fast")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cfg = SOUNDSTORM_OFFICIAL if args.size == "official" else SOUNDSTORM_TINY
    model = random_model(cfg, device, dtype)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    n = round(args.seconds * FRAMES_PER_SECOND)
    q = cfg.num_quantizers
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"SoundStorm {args.size} ({n_params:.1f} M params), device={device}, dtype={args.dtype}, "
        f"threads={torch.get_num_threads()}, steps={args.steps}, "
        f"passes/call={args.steps + q}, load avg at start={load:.2f}"
    )
    # warm-up on a short input (allocator, kernels)
    generate(model, torch.zeros(1, 8, dtype=torch.long, device=device), steps=args.steps)

    if args.forward_repeats and len(args.kernels) > 1:
        time_forward(model, args, cfg, device, n)

    header = (
        f"{'batch':>5} {'speech s':>8} {'prompt s':>8} {'kernels':>9} {'wall s':>8} "
        f"{'s/pass':>7} {'speech s per compute s':>22} {'same tokens':>11}"
    )
    print(header)
    print("-" * len(header))
    g = torch.Generator().manual_seed(1)
    for batch in args.batch:
        semantic = torch.randint(0, cfg.num_semantic_tokens, (batch, n), generator=g)
        for p_sec in args.prompt_seconds:
            n_p = round(p_sec * FRAMES_PER_SECOND)
            prompt = None
            if n_p:
                prompt = torch.randint(0, cfg.codebook_size, (batch, n_p, q + 1), generator=g)
                prompt = prompt.to(device)
            # Kernel sets are timed in turn, `repeats` times, keeping the best of each:
            # on a shared machine that is the least disturbed run.
            best = {kind: float("inf") for kind in args.kernels}
            tokens: dict[str, torch.Tensor] = {}
            for _ in range(args.repeats):
                for kind in args.kernels:
                    set_kernels(model, kind)
                    sync(device)
                    t0 = time.perf_counter()
                    tokens[kind] = generate(
                        model,
                        semantic.to(device),
                        prompt,
                        steps=args.steps,
                        generator=torch.Generator(device=device).manual_seed(0),
                    )
                    sync(device)
                    best[kind] = min(best[kind], time.perf_counter() - t0)
            speech = batch * n / FRAMES_PER_SECOND
            first = tokens[args.kernels[0]]
            for kind in args.kernels:
                assert tokens[kind].shape == (batch, n, q + 1)
                same = (tokens[kind] == first).float().mean().item() * 100
                print(
                    f"{batch:>5} {speech:>8.1f} {n_p / FRAMES_PER_SECOND:>8.1f} {kind:>9} "
                    f"{best[kind]:>8.2f} {best[kind] / (args.steps + q):>7.2f} "
                    f"{speech / best[kind]:>22.3f} {same:>10.1f}%",
                    flush=True,
                )
    set_kernels(model, "fast")


if __name__ == "__main__":
    main()
