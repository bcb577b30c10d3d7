#!/usr/bin/env python
"""Throughput of the SEED image tokenizer (random weights) and, optionally, unCLIP decoding.

Measures, at the chosen size (official by default):

* preprocessing (PIL -> normalised tensor) per image,
* ``encode``: images per second at each batch size (EVA ViT-g + Q-Former + VQ),
* ``decode_embedding``: milliseconds per batch (codes -> 1024-d unCLIP embedding),
* the unCLIP pipeline (``--unclip-folder``): seconds per picture.  Intended for a GPU with a
  real Stable Diffusion 2.1 unCLIP folder; ``--tiny-unclip`` times a tiny random pipeline.

A measurement whose estimated time exceeds ``--budget`` seconds is skipped and reported so.

Example::

    python scripts/bench_seed.py --device cpu --dtype float32 --batch-sizes 1 16
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch

from anygpt.models.seed import SEED_OFFICIAL, SEED_TINY, build_seed, preprocess_images

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_model(cfg, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A SEED model with random weights, allocated directly on ``device`` (fast at full size)."""
    with torch.device("meta"):
        model = build_seed(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.LayerNorm):
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif p.ndim == 1:
                    p.zero_()
                else:
                    fan_in = math.prod(p.shape[1:])
                    p.normal_(0.0, min(0.02, fan_in**-0.5), generator=gen)
        pos = model.Qformer.bert.embeddings.position_ids
        pos.copy_(torch.arange(pos.shape[1], device=device)[None])
    return model.to(dtype).eval()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (seconds)."""
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--size", default="official", choices=["official", "tiny"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    ap.add_argument("--budget", type=float, default=240.0, help="max seconds per measurement")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--unclip-folder", default=None, help="local SD 2.1 unCLIP pipeline folder")
    ap.add_argument("--tiny-unclip", action="store_true", help="time a tiny random pipeline")
    ap.add_argument("--steps", type=int, default=20, help="unCLIP inference steps")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cfg = SEED_OFFICIAL if args.size == "official" else SEED_TINY
    rows: list[tuple[str, str, str]] = []
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    t0 = time.perf_counter()
    model = random_model(cfg, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    rows.append(
        (
            "build random model",
            f"{time.perf_counter() - t0:.1f} s",
            f"{n_params / 1e6:.1f} M params",
        )
    )

    from PIL import Image

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    sec = timed(lambda: preprocess_images([photo] * 8, cfg.image_size), torch.device("cpu"), 3)
    rows.append(
        ("preprocess 640x480 -> 224", f"{sec / 8 * 1e3:.2f} ms/image", "PIL bicubic + CLIP norm")
    )

    per_image: float | None = None
    for bs in args.batch_sizes:
        x = torch.randn(bs, 3, cfg.image_size, cfg.image_size, device=device)
        label = f"encode batch {bs}"
        if per_image is not None and per_image * bs * (args.repeats + 1) > args.budget:
            if per_image * bs > args.budget:
                est = per_image * bs
                rows.append((label, "skipped", f"est. {est:.0f} s per batch > budget"))
                continue
            reps = 1
        else:
            reps = args.repeats
        t0 = time.perf_counter()
        model.encode(x)  # warm-up
        _sync(device)
        warm = time.perf_counter() - t0
        if warm * reps > args.budget:
            reps = 1
            sec = warm
            note = "single (warm-up) run"
        else:
            sec = timed(lambda x=x: model.encode(x), device, reps)
            note = f"median of {reps}"
        per_image = sec / bs
        rows.append((label, f"{bs / sec:.3f} img/s", f"{sec:.2f} s/batch, {note}"))

    for bs in args.batch_sizes:
        codes = torch.randint(0, cfg.codebook_size, (bs, cfg.num_queries), device=device)
        model.decode_embedding(codes)
        sec = timed(lambda c=codes: model.decode_embedding(c), device, max(args.repeats, 5))
        rows.append(
            (f"decode_embedding batch {bs}", f"{sec * 1e3:.1f} ms/batch", f"{bs / sec:.1f} img/s")
        )

    folder = args.unclip_folder
    tmp = None
    if folder is None and args.tiny_unclip:
        from anygpt.models.unclip import build_tiny_unclip_pipeline

        tmp = tempfile.TemporaryDirectory()
        folder = build_tiny_unclip_pipeline(tmp.name, embed_dim=cfg.image_feature_dim)
    if folder is not None:
        from anygpt.models.unclip import draw, embed_dim, load_unclip_pipeline

        pipe = load_unclip_pipeline(folder, device=device)
        e = torch.randn(1, embed_dim(pipe))
        draw(pipe, e, seed=0, steps=args.steps)
        sec = timed(lambda: draw(pipe, e, seed=0, steps=args.steps), device, args.repeats)
        size = draw(pipe, e, seed=0, steps=1)[0].size
        rows.append(
            (
                f"unCLIP draw ({args.steps} steps)",
                f"{sec:.3f} s/image",
                f"{size[0]}x{size[1]}, {pipe.unet.dtype}",
            )
        )
    elif device.type != "cuda":
        rows.append(("unCLIP draw", "not run", "needs a GPU and --unclip-folder"))
    else:
        rows.append(("unCLIP draw", "not run", "pass --unclip-folder"))
    if tmp is not None:
        tmp.cleanup()

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nSEED ({args.size}) on {device} / {args.dtype}, torch threads "
        f"{torch.get_num_threads()}; 1-min load average {load_before:.1f} -> {load_after:.1f} "
        f"on {os.cpu_count()} CPUs (above the CPU count, other work competed for the CPUs)"
    )
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measurement':<{w0}}  {'result':<{w1}}  notes")
    print(f"{'-' * w0}  {'-' * w1}  -----")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")


if __name__ == "__main__":
    main()
