#!/usr/bin/env python
"""Throughput of the SEED image tokenizer (random weights) and, optionally, unCLIP decoding.

Measures, at the chosen size (official by default):

* preprocessing (PIL -> normalised tensor) per image,
* ``encode``: images per second at each batch size (EVA ViT-g + Q-Former + VQ),
* ``decode_embedding``: milliseconds per batch (codes -> 1024-d unCLIP embedding),
* the unCLIP pipeline (``--unclip-folder``): seconds per picture.  Intended for a GPU with a
  real Stable Diffusion 2.1 unCLIP folder; ``--tiny-unclip`` times a tiny random pipeline.

``--official-unclip-random`` instead times only the two parts of the unCLIP drawing that cost
the time, at the official size with random weights: one SD 2.1 unCLIP UNet step (batch 2 for
classifier-free guidance, 96x96 latents) and one VAE decode to 768x768, and estimates a
picture as ``steps`` UNet steps + one decode.

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


def print_table(rows: list[tuple[str, str, str]]) -> None:
    """Print (measurement, result, notes) rows as an aligned table."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measurement':<{w0}}  {'result':<{w1}}  notes")
    print(f"{'-' * w0}  {'-' * w1}  -----")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")


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


def _fill_random(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter and buffer of ``model`` with small random values (timing only)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif p.ndim == 1:
                    p.zero_()
                else:
                    fan_in = math.prod(p.shape[1:])
                    p.normal_(0.0, min(0.02, fan_in**-0.5), generator=gen)
            for b in module.buffers(recurse=False):
                if b.is_floating_point():
                    b.zero_()


def official_unclip_random(steps: int, repeats: int = 2) -> None:
    """Time one SD 2.1 unCLIP UNet step and one VAE decode at 768x768 (random fp32 weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    rows: list[tuple[str, str, str]] = []
    t0 = time.perf_counter()
    with torch.no_grad(), torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=96,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2048,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            latent_channels=4,
            layers_per_block=2,
            sample_size=768,
        )
    unet = unet.to_empty(device="cpu")
    vae = vae.to_empty(device="cpu")
    _fill_random(unet, 0)
    _fill_random(vae, 1)
    unet.eval()
    vae.eval()
    build = time.perf_counter() - t0

    def count(m: torch.nn.Module) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e6

    n_unet, n_vae = count(unet), count(vae)
    n_dec = count(vae.decoder) + count(vae.post_quant_conv)
    rows.append(("build random UNet + VAE (meta + fill)", f"{build:.1f} s", "fp32"))
    rows.append(("UNet parameters", f"{n_unet:.1f} M", "UNet2DConditionModel, SD 2.1 unCLIP"))
    rows.append(("VAE parameters", f"{n_vae:.1f} M", f"decoder part {n_dec:.1f} M"))

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 96, 96, generator=gen)
    t = torch.tensor([999, 999])
    ctx = torch.randn(2, 77, 1024, generator=gen)
    labels = torch.randn(2, 2048, generator=gen)
    z = torch.randn(1, 4, 96, 96, generator=gen)

    def best(fn, label: str) -> tuple[float, float, list[float]]:
        with torch.no_grad():
            t0 = time.perf_counter()
            fn()
            warm = time.perf_counter() - t0
            print(f"{label}: warm-up {warm:.1f} s", flush=True)
            runs = []
            for i in range(repeats):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
                print(f"{label}: run {i + 1} {runs[-1]:.1f} s", flush=True)
        return min(runs), warm, runs

    def unet_step():
        out = unet(x, t, encoder_hidden_states=ctx, class_labels=labels).sample
        assert out.shape == (2, 4, 96, 96)

    def vae_decode():
        img = vae.decode(z).sample
        assert img.shape == (1, 3, 768, 768)

    sec_unet, warm_u, runs_u = best(unet_step, "UNet step")
    runs_txt = ", ".join(f"{r:.1f}" for r in runs_u)
    rows.append(
        (
            "UNet step (batch 2, 96x96, ctx [2,77,1024])",
            f"{sec_unet:.2f} s",
            f"best of {repeats} ({runs_txt} s) after warm-up {warm_u:.1f} s",
        )
    )
    sec_vae, warm_v, runs_v = best(vae_decode, "VAE decode")
    runs_txt = ", ".join(f"{r:.1f}" for r in runs_v)
    rows.append(
        (
            "VAE decode [1,4,96,96] -> 768x768",
            f"{sec_vae:.2f} s",
            f"best of {repeats} ({runs_txt} s) after warm-up {warm_v:.1f} s",
        )
    )
    est = steps * sec_unet + sec_vae
    rows.append(
        (
            f"per-image ESTIMATE = {steps} x UNet step + VAE decode",
            f"{est:.1f} s",
            "from the measured parts; excludes text encoder, scheduler, embedding noising",
        )
    )

    print(
        f"\nSD 2.1 unCLIP at the official size (768x768, {steps} steps, guidance -> UNet batch 2), "
        f"random weights, fp32 on CPU, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print_table(rows)


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
    ap.add_argument(
        "--official-unclip-random",
        action="store_true",
        help="only time one UNet step and one VAE decode of SD 2.1 unCLIP at 768x768\n"
        "(random fp32 weights, CPU) and estimate seconds per picture",
    )
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official_unclip_random:
        official_unclip_random(args.steps)
        return
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
    print_table(rows)


if __name__ == "__main__":
    main()
