"""A small VQ image tokenizer (VQGAN / Chameleon family): 64x64 RGB <-> 8x8 grid of codes.

::

    images [B,3,64,64] in [-1,1]
      -> encoder: three stride-2 convs (64 -> 32 -> 16 -> 8) + residual blocks   [B,D,8,8]
      -> nearest of K codebook rows (EMA k-means codebook, dead codes restarted)  codes [B,64]
      -> decoder: residual blocks at 8x8 and 16x16, transposed convs back to 64x64
    images [B,3,64,64] in [-1,1]

Codes are in raster order (row by row, left to right).  The codebook follows the encoder with
exponential moving averages of the vectors assigned to each code (no gradient reaches it); the
encoder is pulled towards its codes by a commitment loss and the decoder's gradient passes the
quantiser unchanged (straight-through).  A code that no vector has chosen for a while is moved
onto a random encoder output of the current batch, so the whole codebook stays in use.

Saved as ``config.json`` (:class:`VQImageConfig`) beside ``model.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anygpt.checkpoint import CheckpointError, load_strict, read_state_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class VQImageConfig:
    """Sizes of the tokenizer; the defaults are the nano world's.

    ``channels``: widths at 32x32, 16x16 and 8x8; ``code_dim``: codebook vector size;
    ``enc_blocks`` / ``dec_blocks``: residual blocks at 8x8; ``dec_blocks_16``: at 16x16.
    ``weights_dtype``: how the weights are stored (they always run in float32 on the CPU).
    """

    image_size: int = 64
    channels: tuple[int, int, int] = (32, 64, 128)
    code_dim: int = 32
    codebook_size: int = 512
    enc_blocks: int = 1
    dec_blocks: int = 2
    dec_blocks_16: int = 1
    groups: int = 8
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_threshold: float = 0.1  # EMA assignments per step below which a code is restarted
    weights_dtype: str = "float16"

    @property
    def grid(self) -> int:
        return self.image_size // 8

    @property
    def codes_per_image(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VQImageConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "channels" in kw:
            kw["channels"] = tuple(int(c) for c in kw["channels"])
        return cls(**kw)


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))), shape kept [B,C,H,W]."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """[B,3,64,64] -> [B,code_dim,8,8]."""

    def __init__(self, cfg: VQImageConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.down = nn.ModuleList(
            [nn.Conv2d(3, c0, 4, 2, 1), nn.Conv2d(c0, c1, 4, 2, 1), nn.Conv2d(c1, c2, 4, 2, 1)]
        )
        self.blocks = nn.Sequential(*[ResBlock(c2, cfg.groups) for _ in range(cfg.enc_blocks)])
        self.norm = nn.GroupNorm(cfg.groups, c2)
        self.out = nn.Conv2d(c2, cfg.code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.down):
            x = conv(x)
            if i < len(self.down) - 1:
                x = F.silu(x)
        return self.out(F.silu(self.norm(self.blocks(x))))


class Decoder(nn.Module):
    """[B,code_dim,8,8] -> [B,3,64,64] (unbounded; ``tanh`` is left to the caller)."""

    def __init__(self, cfg: VQImageConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.inp = nn.Conv2d(cfg.code_dim, c2, 3, padding=1)
        self.blocks8 = nn.Sequential(*[ResBlock(c2, cfg.groups) for _ in range(cfg.dec_blocks)])
        self.norm8 = nn.GroupNorm(cfg.groups, c2)
        self.up16 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
        self.blocks16 = nn.Sequential(*[ResBlock(c1, cfg.groups) for _ in range(cfg.dec_blocks_16)])
        self.norm16 = nn.GroupNorm(cfg.groups, c1)
        self.up32 = nn.ConvTranspose2d(c1, c0, 4, 2, 1)
        self.up64 = nn.ConvTranspose2d(c0, c0 // 2, 4, 2, 1)
        self.out = nn.Conv2d(c0 // 2, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks8(self.inp(z))
        h = self.blocks16(self.up16(F.silu(self.norm8(h))))
        h = F.silu(self.up32(F.silu(self.norm16(h))))
        h = F.silu(self.up64(h))
        return self.out(h)


class EMACodebook(nn.Module):
    """K code vectors [K,D] kept as running means of the encoder outputs assigned to them.

    Buffers: ``embed`` [K,D] (the codebook), ``cluster_size`` [K] and ``embed_sum`` [K,D] (the EMA
    statistics), ``initted`` (the codebook is filled from the first training batch).
    """

    def __init__(self, k: int, d: int, decay: float, dead_threshold: float) -> None:
        super().__init__()
        self.k, self.d, self.decay, self.dead_threshold = k, d, decay, dead_threshold
        self.register_buffer("embed", torch.randn(k, d) * 0.1)
        self.register_buffer("cluster_size", torch.ones(k))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """[N,D] -> (code indices [N], squared distances to them [N])."""
        e = self.embed
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        d, idx = dist.min(1)
        return idx, d.clamp_min(0)

    @torch.no_grad()
    def update(self, flat: Tensor, idx: Tensor, err: Tensor) -> int:
        """One EMA step on vectors ``flat`` [N,D] assigned ``idx`` [N] at squared distance
        ``err`` [N]; returns the number of codes restarted."""
        onehot = F.one_hot(idx, self.k).type_as(flat)  # [N,K]
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + self.k * 1e-5) * n  # Laplace smoothing
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            # Restart on the worst-served vectors: a uniform pick would mostly land on plain
            # background, and rare patches (small coloured shapes) would never get codes of their own.
            pick = torch.multinomial(err + 1e-12, n_dead, replacement=n_dead > flat.shape[0])
            fresh = flat[pick] + 0.01 * flat.std() * torch.randn_like(flat[pick])
            # A restarted code gets a small count: it dies again soon if nothing chooses it.
            self.embed[dead] = fresh
            self.embed_sum[dead] = fresh * (2 * self.dead_threshold)
            self.cluster_size[dead] = 2 * self.dead_threshold
        return n_dead

    @torch.no_grad()
    def fill(self, flat: Tensor) -> None:
        """Initialise the codebook from encoder outputs [N,D] (k-means++ seeding)."""
        k = self.k
        pick = [int(torch.randint(0, flat.shape[0], (1,)))]
        d = (flat - flat[pick[0]]).pow(2).sum(1)
        for _ in range(1, k):
            j = int(torch.multinomial(d + 1e-12, 1))
            pick.append(j)
            d = torch.minimum(d, (flat - flat[j]).pow(2).sum(1))
        fresh = flat[pick] + 0.01 * flat.std() * torch.randn(k, self.d, device=flat.device)
        self.embed.copy_(fresh)
        self.embed_sum.copy_(fresh * (2 * self.dead_threshold))
        self.cluster_size.fill_(2 * self.dead_threshold)
        self.initted.fill_(True)


@dataclass
class VQOutput:
    """``recon`` [B,3,H,W] in [-1,1]; ``codes`` [B,H/8*W/8]; ``commit`` (scalar loss);
    ``restarted``: codes restarted by this step (training only)."""

    recon: Tensor
    codes: Tensor
    commit: Tensor
    restarted: int = 0


class VQImageTokenizer(nn.Module):
    """Images <-> codes: :meth:`encode` [B,3,64,64] -> [B,64], :meth:`decode` [B,64] -> images."""

    def __init__(self, cfg: VQImageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.codebook = EMACodebook(
            cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.dead_threshold
        )
        self.decoder = Decoder(cfg)

    @property
    def codes_per_image(self) -> int:
        return self.cfg.codes_per_image

    def _check(self, images: Tensor) -> None:
        s = self.cfg.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"images must be [B,3,{s},{s}], got {list(images.shape)}")

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """[B,D,h,w] -> (code vectors [B,D,h,w], codes [B,h*w] raster order)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx, _ = self.codebook.nearest(flat)
        q = self.codebook.embed[idx].view(b, h, w, d).permute(0, 3, 1, 2)
        return q, idx.view(b, h * w)

    def forward(self, images: Tensor, *, bypass: bool = False) -> VQOutput:
        """Reconstruct a batch [B,3,64,64]; in training mode the codebook learns too.

        ``bypass``: decode the encoder's output unquantised (a plain autoencoder; used to warm up
        the encoder and decoder before the codebook is seeded from the encoder's outputs).
        """
        self._check(images)
        z = self.encoder(images)
        if bypass:
            recon = torch.tanh(self.decoder(z))
            codes = torch.zeros(z.shape[0], z.shape[2] * z.shape[3], dtype=torch.long)
            return VQOutput(recon, codes, z.new_zeros(()), 0)
        restarted = 0
        if self.training:
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            if not bool(self.codebook.initted):
                self.codebook.fill(flat)
            idx, err = self.codebook.nearest(flat)
            restarted = self.codebook.update(flat, idx, err)
        q, codes = self.quantize(z)
        commit = F.mse_loss(z, q.detach())
        zq = z + (q - z).detach()  # straight-through: the decoder's gradient reaches the encoder
        recon = torch.tanh(self.decoder(zq))
        return VQOutput(recon, codes, commit, restarted)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """[B,3,64,64] in [-1,1] -> codes [B,64] int64 (raster order)."""
        self._check(images)
        return self.quantize(self.encoder(images))[1]

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B,64] -> images [B,3,64,64] in [-1,1]."""
        g = self.cfg.grid
        if codes.dim() != 2 or codes.shape[1] != g * g:
            raise ValueError(f"codes must be [B,{g * g}], got {list(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cfg.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.cfg.codebook_size})")
        b = codes.shape[0]
        q = self.codebook.embed[codes.reshape(-1)].view(b, g, g, -1).permute(0, 3, 1, 2)
        return torch.tanh(self.decoder(q))


# ---------------------------------------------------------------------------------- pixels
def prepare_image(image: Any, size: int = 64) -> Any:
    """Any PIL image -> RGB ``size`` x ``size``: transparency over white, centre square, resized.

    A non-square picture loses its longer sides' edges rather than being stretched.
    """
    from PIL import Image, ImageOps

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(flat, rgba)
    image = image.convert("RGB")
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS)
    return image


def images_to_tensor(images: Sequence[Any], size: int = 64) -> Tensor:
    """PIL images -> [B,3,size,size] float32 in [-1,1]."""
    import numpy as np

    arr = np.stack([np.asarray(prepare_image(im, size), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(pixels: Tensor) -> list[Any]:
    """[B,3,H,W] in [-1,1] -> PIL RGB images."""
    from PIL import Image

    arr = pixels.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy(), "RGB") for a in arr]


# ---------------------------------------------------------------------------------- files
def save_vq_image(model: VQImageTokenizer, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (stored as ``cfg.weights_dtype``)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, model.cfg.weights_dtype)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        # The codebook is stored in float32: code choice is a nearest-neighbour search.
        if v.is_floating_point() and not k.startswith("codebook."):
            v = v.to(dtype)
        state[k] = v.contiguous()
    (directory / CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "model": "vq-image"})
    tmp.replace(directory / WEIGHTS_FILE)
    return directory


def load_vq_image(directory: str | Path, device: str | torch.device = "cpu") -> VQImageTokenizer:
    """Load a folder written by :func:`save_vq_image` (strict; float32, eval mode)."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"no VQ image tokenizer {CONFIG_FILE} in '{directory}'")
    try:
        cfg = VQImageConfig.from_dict(json.loads(cfg_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"unreadable VQ image tokenizer config '{cfg_path}': {exc}") from exc
    model = VQImageTokenizer(cfg)
    state = read_state_dict(directory / WEIGHTS_FILE, what="VQ image tokenizer weights")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    load_strict(model, state, what=f"VQ image tokenizer '{directory}'")
    return model.to(device).eval()
