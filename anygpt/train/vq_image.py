"""``anygpt train-tokenizer image``: train a VQ image tokenizer on a folder of pictures.

Input: a folder (searched recursively for .png/.jpg/.jpeg/.bmp/.gif/.webp) or a JSON Lines
manifest with an ``image`` column (paths relative to the manifest's folder).  Every picture is
read once, made RGB 64x64 (centre square, see :func:`anygpt.models.vq_image.prepare_image`) and
kept in memory as bytes (12 KB a picture).

Training starts as a plain autoencoder (``--ae-warmup``, 10 %): the codebook is then seeded from
the encoder's outputs (k-means++), so codes start out telling colours and shapes apart.
Loss: MSE on pixels + MSE on their horizontal and vertical differences (keeps shape edges sharp)
+ the commitment loss; the codebook learns by EMA.  (An L1 loss is a median: on pictures that are
mostly plain background it prefers to draw no object at all for a long time.)  Pictures are
flipped left-right at random.  The learning rate warms up, then follows a cosine to 10 %; with ``--max-minutes`` the schedule
follows whichever of steps or time runs out first, so a time-limited run still ends cooled down.

Output folder: ``config.json`` + ``model.safetensors`` (the tokenizer, rewritten at every
checkpoint), ``training.json`` (settings and measured figures) and ``resume.pt`` (optimizer state;
``--resume`` continues from it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class DataError(ValueError):
    """No usable pictures (one line)."""


# ---------------------------------------------------------------------------------- data
def image_paths(data: str | Path, column: str = "image") -> list[Path]:
    """The picture files a folder or JSON Lines manifest names, in a stable order."""
    data = Path(data)
    if data.is_dir():
        paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif data.is_file():
        paths = [data.parent / row[column] for row in read_manifest(data, column)]
    else:
        raise DataError(f"no such folder or manifest: '{data}'")
    if not paths:
        raise DataError(f"no pictures in '{data}'")
    return paths


def read_manifest(path: str | Path, column: str = "image") -> list[dict[str, Any]]:
    """Rows of a JSON Lines manifest that have ``column`` (blank lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or column not in row:
                raise DataError(f"{path}:{n}: no '{column}' column")
            rows.append(row)
    return rows


def load_pictures(paths: list[Path], size: int = 64, *, progress: bool = True) -> torch.Tensor:
    """Read pictures into uint8 [N,3,size,size]; unreadable files are skipped with a count."""
    import numpy as np
    from tqdm.auto import tqdm

    from anygpt.imageio import ImageError, open_image
    from anygpt.models.vq_image import prepare_image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    n = bad = 0
    for p in tqdm(paths, desc="read pictures", unit="img", disable=not progress, mininterval=2):
        try:
            out[n] = np.asarray(prepare_image(open_image(p), size))
            n += 1
        except ImageError:
            bad += 1
    if bad:
        print(f"skipped {bad} unreadable pictures", file=sys.stderr)
    if n == 0:
        raise DataError("none of the pictures could be read")
    return torch.from_numpy(out[:n]).permute(0, 3, 1, 2).contiguous()


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float [-1,1]."""
    return batch.float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------- losses
def edge_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MSE between the horizontal and vertical pixel differences of two batches [B,C,H,W]."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.pow(2).mean() + dy.pow(2).mean()


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of training, then cosine from 1 to 0.1."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    t = min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def seed_codebook(
    model: Any, pixels: torch.Tensor, gen: torch.Generator, device: torch.device, n: int = 256
) -> None:
    """Fill the codebook from the encoder's outputs on ``n`` random pictures (k-means++)."""
    idx = torch.randint(0, len(pixels), (n,), generator=gen)
    z = model.encoder(to_float(pixels[idx].to(device)))
    model.codebook.fill(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))


@torch.no_grad()
def evaluate(model: Any, pixels: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Reconstruction figures on uint8 pictures [N,3,H,W]: L1, PSNR (dB), codebook use."""
    was = model.training
    model.eval()
    l1 = mse = 0.0
    used = torch.zeros(model.cfg.codebook_size, dtype=torch.bool)
    dev = next(model.parameters()).device
    for i in range(0, len(pixels), batch_size):
        x = to_float(pixels[i : i + batch_size].to(dev))
        out = model(x)
        l1 += float((out.recon - x).abs().mean()) * len(x)
        mse += float(((out.recon - x) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10).sum())
        used[out.codes.reshape(-1).cpu()] = True
    model.train(was)
    n = len(pixels)
    return {
        "l1": l1 / n,
        "psnr": 10 * math.log10(1.0 / (mse / n)),  # of the mean MSE, pixels in [0,1]
        "codes_used": int(used.sum()),
    }


# ---------------------------------------------------------------------------------- CLI
def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``anygpt train-tokenizer image``."""
    p.add_argument("data", help="folder of pictures, or a JSON Lines manifest with an image column")
    p.add_argument("--out", required=True, help="tokenizer folder to write")
    p.add_argument("--column", default="image", help="manifest column of picture paths")
    p.add_argument("--val-data", help="held-out folder/manifest (default: --val-size from data)")
    p.add_argument("--val-size", type=int, default=256, help="pictures held out from data")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (cooled down) by then")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=float, default=0.03, help="fraction of training")
    p.add_argument(
        "--ae-warmup",
        type=float,
        default=0.1,
        help="fraction of training as a plain autoencoder before the codebook is seeded",
    )
    p.add_argument("--edge-weight", type=float, default=3.0, help="weight of the edge loss")
    p.add_argument("--l1-weight", type=float, default=0.0, help="weight of an extra L1 loss")
    p.add_argument("--no-flip", action="store_true", help="no random left-right flips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codebook-size", type=int, default=512)
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument(
        "--channels", default="32,64,128", help="widths at 32x32,16x16,8x8 (default 32,64,128)"
    )
    p.add_argument("--dec-blocks", type=int, default=2, help="decoder residual blocks at 8x8")
    p.add_argument("--dec-blocks-16", type=int, default=1, help="decoder blocks at 16x16")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")


def main(args: argparse.Namespace) -> int:
    """Train and write the tokenizer folder; returns an exit status (1 with a one-line error)."""
    try:
        return _train(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from anygpt.models.vq_image import VQImageConfig, VQImageTokenizer, save_vq_image

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device)
    out = Path(args.out)

    pixels = load_pictures(image_paths(args.data, args.column))
    if args.val_data:
        val = load_pictures(image_paths(args.val_data, args.column))
    else:
        n_val = min(args.val_size, len(pixels) // 10)
        perm = torch.randperm(len(pixels), generator=gen)
        val, pixels = pixels[perm[:n_val]], pixels[perm[n_val:]]
    if len(pixels) == 0:
        raise DataError("no pictures left to train on")
    print(f"{len(pixels)} training pictures, {len(val)} held out", file=sys.stderr)

    cfg = VQImageConfig(
        channels=tuple(int(c) for c in args.channels.split(",")),  # type: ignore[arg-type]
        code_dim=args.code_dim,
        codebook_size=args.codebook_size,
        dec_blocks=args.dec_blocks,
        dec_blocks_16=args.dec_blocks_16,
    )
    model = VQImageTokenizer(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step, spent = 0, 0.0
    resume = out / "resume.pt"
    if args.resume and resume.is_file():
        state = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, spent = int(state["step"]), float(state["seconds"])
        gen.manual_seed(args.seed + step)
        print(f"resumed at step {step}", file=sys.stderr)

    def checkpoint(metrics: dict | None = None) -> None:
        save_vq_image(model, out)
        torch.save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": spent},
            out / "resume.pt.tmp",
        )
        (out / "resume.pt.tmp").replace(resume)
        info = {"args": {k: v for k, v in vars(args).items() if not callable(v)}, "step": step}
        info.update({"seconds": round(spent, 1), "train_pictures": len(pixels)})
        if metrics:
            info["heldout"] = metrics
        (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")

    limit_s = args.max_minutes * 60 if args.max_minutes else None
    bar = tqdm(total=args.steps, initial=step, desc="train vq-image", unit="step", mininterval=5)
    t0 = time.time() - spent
    run = {"loss": 0.0, "mse": 0.0, "l1": 0.0, "edge": 0.0, "commit": 0.0, "restarted": 0, "n": 0}
    while step < args.steps:
        spent = time.time() - t0
        progress = max(step / args.steps, spent / limit_s if limit_s else 0.0)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(progress, args.warmup)
        idx = torch.randint(0, len(pixels), (args.batch_size,), generator=gen)
        x = to_float(pixels[idx].to(device))
        if not args.no_flip:
            flip = torch.rand(len(x), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
        warm = progress < args.ae_warmup
        if not warm and not bool(model.codebook.initted):
            seed_codebook(model, pixels, gen, device)
        o = model(x, bypass=warm)
        mse = (o.recon - x).pow(2).mean()
        edge = edge_mse(o.recon, x)
        l1 = (o.recon - x).abs().mean()
        loss = mse + args.edge_weight * edge + args.l1_weight * l1 + cfg.commitment * o.commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        for k, v in (
            ("loss", loss),
            ("mse", mse),
            ("l1", l1),
            ("edge", edge),
            ("commit", o.commit),
        ):
            run[k] += float(v.detach())
        run["restarted"] += o.restarted
        run["n"] += 1
        bar.update(1)
        if step % args.log_every == 0:
            n = run.pop("n")
            msg = {k: round(v / n, 4) for k, v in run.items() if k != "restarted"}
            msg.update(
                step=step, restarted=run["restarted"], lr=round(opt.param_groups[0]["lr"], 6)
            )
            bar.write(json.dumps(msg))
            run = dict.fromkeys(run, 0.0) | {"restarted": 0, "n": 0}
        if step % args.save_every == 0:
            spent = time.time() - t0
            metrics = evaluate(model, val)
            bar.write(json.dumps({"step": step, "heldout": metrics}))
            checkpoint(metrics)
    bar.close()
    spent = time.time() - t0
    metrics = evaluate(model, val)
    checkpoint(metrics)
    print(
        f"wrote {out}: {step} steps in {spent / 60:.1f} min, held-out L1 {metrics['l1']:.4f}, "
        f"PSNR {metrics['psnr']:.2f} dB, {metrics['codes_used']}/{cfg.codebook_size} codes used"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    sys.exit(main(parser.parse_args()))
