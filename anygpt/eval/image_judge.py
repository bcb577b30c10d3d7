"""The image judge: a small CNN that reads what a world picture shows.

Given a 64x64 picture it predicts the number of objects (one or two), for two objects whether they
stand side by side or one above the other, and the size, colour and shape of each object in the
canonical order of :func:`anygpt.world.images.canonical` (the left one first, or the top one
first).  It is trained on rendered world pictures only, never on a tokenizer's or a model's
output, so it can judge both.  Mild blur and noise are added while training so that a slightly
soft drawing of the right thing still reads as that thing.

::

    picture [B,3,64,64] in [-1,1]
      -> 4 x (conv 3x3, batch norm, ReLU, max-pool 2)   [B,C,4,4]
      -> flatten, linear, ReLU                           [B,hidden]
      -> logits: count 2 | axis 2 | (size 2, colour 8, shape 4) x 2 objects

``anygpt train-judge image`` trains one (:func:`add_args`, :func:`main`); the folder holds
``config.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anygpt.checkpoint import CheckpointError, load_strict, read_state_dict
from anygpt.world.images import (
    Description,
    canonical,
    compare,
    parse_caption,
    random_scene,
    render,
)
from anygpt.world.vocab import COLOURS, SHAPES, SIZES

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
AXIS_RELATIONS = ("to the left of", "above")  # canonical relation of each axis
# Output slices of the logits: count, axis, then size/colour/shape of object 0 and object 1.
_HEADS = [("count", 2), ("axis", 2)]
for _i in range(2):
    _HEADS += [
        (f"size{_i}", len(SIZES)),
        (f"colour{_i}", len(COLOURS)),
        (f"shape{_i}", len(SHAPES)),
    ]
_VOCAB = {"size": SIZES, "colour": COLOURS, "shape": SHAPES}


@dataclass
class JudgeConfig:
    """Sizes of the judge."""

    image_size: int = 64
    channels: tuple[int, int, int, int] = (32, 64, 128, 128)
    hidden: int = 256
    weights_dtype: str = "float16"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> JudgeConfig:
        kw = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        if "channels" in kw:
            kw["channels"] = tuple(int(c) for c in kw["channels"])
        return cls(**kw)


class JudgeNet(nn.Module):
    """Pictures [B,3,64,64] in [-1,1] -> logits [B, 32] (see ``_HEADS`` for the slices)."""

    def __init__(self, cfg: JudgeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = 3
        for c in cfg.channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(cfg.channels)
        self.fc = nn.Linear(c_in * side * side, cfg.hidden)
        self.head = nn.Linear(cfg.hidden, sum(n for _, n in _HEADS))

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x).flatten(1)
        return self.head(F.relu(self.fc(h)))


def split_logits(logits: Tensor) -> dict[str, Tensor]:
    """[B,32] -> {head name: [B,n]}."""
    out, i = {}, 0
    for name, n in _HEADS:
        out[name] = logits[:, i : i + n]
        i += n
    return out


def targets(d: Description) -> dict[str, int]:
    """Class indices of a description (canonical order); -1 where a head does not apply."""
    d = canonical(d)
    t = {name: -1 for name, _ in _HEADS}
    t["count"] = len(d.objects) - 1
    if len(d.objects) == 2:
        t["axis"] = AXIS_RELATIONS.index(d.relation)
    for i, (size, colour, shape) in enumerate(d.objects):
        t[f"size{i}"], t[f"colour{i}"] = SIZES.index(size), COLOURS.index(colour)
        t[f"shape{i}"] = SHAPES.index(shape)
    return t


def _to_pixels(images: Sequence[Any] | Tensor, size: int) -> Tensor:
    if isinstance(images, Tensor):
        return images.float()
    from anygpt.models.vq_image import images_to_tensor

    return images_to_tensor(list(images), size)


class ImageJudge:
    """A trained judge: :meth:`describe` pictures, :meth:`score` a picture against a caption."""

    def __init__(self, net: JudgeNet) -> None:
        self.net = net.eval()

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ImageJudge:
        folder = Path(folder)
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise CheckpointError(f"no image judge {CONFIG_FILE} in '{folder}'")
        net = JudgeNet(JudgeConfig.from_dict(json.loads(cfg_path.read_text())))
        state = read_state_dict(folder / WEIGHTS_FILE, what="image judge weights")
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
        load_strict(net, state, what=f"image judge '{folder}'")
        return cls(net.to(device))

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dtype = getattr(torch, self.net.cfg.weights_dtype)
        state = {
            k: (v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu())
            for k, v in self.net.state_dict().items()
        }
        (folder / CONFIG_FILE).write_text(json.dumps(self.net.cfg.to_dict(), indent=2) + "\n")
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "model": "judge"})
        return folder

    @torch.no_grad()
    def describe(self, images: Sequence[Any] | Tensor, batch_size: int = 256) -> list[Description]:
        """PIL pictures (any size, made 64x64 RGB) or a batch [B,3,64,64] in [-1,1] ->
        one canonical :class:`Description` per picture."""
        pixels = _to_pixels(images, self.net.cfg.image_size)
        dev = next(self.net.parameters()).device
        out: list[Description] = []
        for i in range(0, len(pixels), batch_size):
            heads = split_logits(self.net(pixels[i : i + batch_size].to(dev)))
            pick = {k: v.argmax(1).tolist() for k, v in heads.items()}
            for j in range(len(pick["count"])):
                n = pick["count"][j] + 1
                objs = [
                    (SIZES[pick[f"size{i}"][j]], COLOURS[pick[f"colour{i}"][j]],
                     SHAPES[pick[f"shape{i}"][j]])
                    for i in range(n)
                ]  # fmt: skip
                rel = AXIS_RELATIONS[pick["axis"][j]] if n == 2 else None
                out.append(Description(objs, rel))
        return out

    def score(self, image: Any, caption: str) -> dict:
        """How much of ``caption`` one picture shows: ``objects``, ``objects_correct``,
        ``attributes``, ``attributes_correct``, ``all_correct`` (see
        :func:`anygpt.world.images.compare`).  A caption naming nothing of the world raises
        ``ValueError``."""
        return compare(self.describe([image])[0], parse_caption(caption))

    def score_batch(self, images: Sequence[Any], captions: Sequence[str]) -> list[dict]:
        """:meth:`score` for many pictures in one pass."""
        preds = self.describe(images)
        return [compare(p, parse_caption(c)) for p, c in zip(preds, captions, strict=True)]


# ---------------------------------------------------------------------------------- measuring
def accuracy(judge: ImageJudge, images: Sequence[Any] | Tensor, captions: Sequence[str]) -> dict:
    """Per-attribute accuracy of the judge against true captions (canonical order).

    ``count``: number of objects right; ``relation``: two-object pictures with the pair's axis
    right; ``size``/``colour``/``shape``: per object, where the count is right; ``objects``: all
    three right; ``all``: whole picture right.
    """
    preds = judge.describe(images)
    hits: dict[str, list[int]] = {
        k: [] for k in ("count", "relation", "size", "colour", "shape", "objects", "all")
    }
    for p, c in zip(preds, captions, strict=True):
        t = canonical(parse_caption(c))
        hits["count"].append(int(len(p.objects) == len(t.objects)))
        if len(t.objects) == 2:
            hits["relation"].append(int(p.relation == t.relation and len(p.objects) == 2))
        hits["all"].append(int(compare(p, t)["all_correct"]))
        if len(p.objects) != len(t.objects):
            continue
        for a, b in zip(p.objects, t.objects):
            for k, x, y in zip(("size", "colour", "shape"), a, b):
                hits[k].append(int(x == y))
            hits["objects"].append(int(a == b))
    return {k: round(sum(v) / max(len(v), 1), 4) for k, v in hits.items()}


# ---------------------------------------------------------------------------------- training
def render_batch(rng: random.Random, n: int) -> tuple[Tensor, list[str]]:
    """``n`` fresh world pictures [n,3,64,64] in [-1,1] and their captions."""
    from anygpt.models.vq_image import images_to_tensor
    from anygpt.world.images import caption

    scenes = [random_scene(rng) for _ in range(n)]
    return images_to_tensor([render(s) for s in scenes]), [caption(s) for s in scenes]


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mild, generic damage: blur (half the pictures, sigma up to 1 px), noise, small shifts of
    brightness per channel.  [B,3,H,W] -> same."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * 1.0
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        xs = x[blur]
        out = torch.empty_like(xs)
        for j, s in enumerate(sigma[blur].tolist()):
            out[j] = _gauss_blur(xs[j : j + 1], max(s, 0.3))[0]
        x = x.clone()
        x[blur] = out
    noise = torch.randn(x.shape, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) * 0.04)
    shift = (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.06
    return (x + noise + shift).clamp(-1, 1)


def _gauss_blur(x: Tensor, sigma: float) -> Tensor:
    r = max(1, math.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(
        F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c
    )
    return F.conv2d(
        F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c
    )


def judge_loss(logits: Tensor, tgt: dict[str, Tensor]) -> Tensor:
    """Sum of the heads' cross-entropies; heads marked -1 (no second object) are skipped."""
    heads = split_logits(logits)
    total = logits.new_zeros(())
    for name, _ in _HEADS:
        t = tgt[name]
        if (t >= 0).any():
            total = total + F.cross_entropy(heads[name][t >= 0], t[t >= 0])
    return total


def _targets_tensor(captions: Sequence[str]) -> dict[str, Tensor]:
    rows = [targets(parse_caption(c)) for c in captions]
    return {name: torch.tensor([r[name] for r in rows]) for name, _ in _HEADS}


def _read_labelled(data: str, column: str, caption_column: str) -> tuple[Tensor, list[str]]:
    from anygpt.train.vq_image import load_pictures, read_manifest, to_float

    rows = read_manifest(data, column)
    caps = [r.get(caption_column) or r.get("text") or r.get("caption") or "" for r in rows]
    pixels = load_pictures([Path(data).parent / r[column] for r in rows], progress=False)
    if len(pixels) != len(rows):
        raise ValueError(f"some pictures of '{data}' could not be read")
    return to_float(pixels), caps


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``anygpt train-judge image``."""
    p.add_argument("--out", required=True, help="judge folder to write")
    p.add_argument(
        "--data",
        help="JSON Lines manifest (image + caption columns) to train on; "
        "default: fresh world pictures rendered on the fly",
    )
    p.add_argument("--val-data", help="held-out manifest (default: 1000 pictures of --val-seed)")
    p.add_argument("--column", default="image")
    p.add_argument("--caption-column", default="caption", help="falls back to 'text'")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (cooled down) by then")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-seed", type=int, default=987654)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=100)


def main(args: argparse.Namespace) -> int:
    """Train the judge, write its folder and print its held-out accuracy; returns exit status."""
    from tqdm.auto import tqdm

    from anygpt.train.vq_image import lr_factor

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    try:
        if args.val_data:
            val_x, val_c = _read_labelled(args.val_data, args.column, args.caption_column)
        else:
            val_x, val_c = render_batch(random.Random(args.val_seed), 1000)
        train_x = train_t = None
        if args.data:
            train_x, caps = _read_labelled(args.data, args.column, args.caption_column)
            train_t = _targets_tensor(caps)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    judge = ImageJudge(JudgeNet(JudgeConfig()))
    net = judge.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    limit_s = args.max_minutes * 60 if args.max_minutes else None
    t0 = time.time()
    bar = tqdm(total=args.steps, desc="train image judge", unit="step", mininterval=5)
    step, run = 0, 0.0
    while step < args.steps:
        progress = max(step / args.steps, (time.time() - t0) / limit_s if limit_s else 0.0)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(progress, 0.03)
        if train_x is None:
            x, caps = render_batch(rng, args.batch_size)
            tgt = _targets_tensor(caps)
        else:
            idx = torch.randint(0, len(train_x), (args.batch_size,), generator=gen)
            x, tgt = train_x[idx], {k: v[idx] for k, v in train_t.items()}
        loss = judge_loss(net(augment(x, gen)), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run += float(loss.detach())
        bar.update(1)
        if step % args.log_every == 0:
            bar.write(json.dumps({"step": step, "loss": round(run / args.log_every, 4)}))
            run = 0.0
        if step % args.save_every == 0:
            net.eval()
            bar.write(json.dumps({"step": step, "heldout": accuracy(judge, val_x, val_c)}))
            judge.save(args.out)
            net.train()
    bar.close()
    net.eval()
    acc = accuracy(judge, val_x, val_c)
    out = judge.save(args.out)
    info = {"args": vars(args) | {"handler": None}, "steps": step, "heldout": acc}
    info["minutes"] = round((time.time() - t0) / 60, 2)
    (out / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(f"wrote {out}: {step} steps, held-out accuracy {json.dumps(acc)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    sys.exit(main(parser.parse_args()))
