"""Nano speech units: log-mel features, a small CTC recogniser, and k-means units of its hidden layer.

The recogniser reads log-mel frames at 100 frames/s, subsamples them by 4 with two strided
convolutions (25 frames/s), runs a few transformer layers and emits characters with CTC.  Each
25 frames/s step emits two CTC slots, so fast speech (about 15 characters a second) still has more
slots than characters.  Because it is trained to recognise words across many voices, its middle
layers keep the words and drop most of the voice; k-means clusters of one such layer are the speech
units (one code per 40 ms) that the LLM reads and writes.  :mod:`anygpt.models.nano_vocoder` turns
units back into sound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


def _from_dict(cls, d: dict):
    return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


# ---------------------------------------------------------------------- features
@dataclass
class FeatureConfig:
    """Log-mel analysis shared by the recogniser, the speaker encoder and the vocoder."""

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 160  # 10 ms: 100 frames/s
    n_mels: int = 80
    log_floor: float = 1e-5

    to_dict = asdict
    from_dict = classmethod(_from_dict)


def mel_filterbank(cfg: FeatureConfig) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, area-normalised: [n_mels, n_fft // 2 + 1]."""
    n_bins = cfg.n_fft // 2 + 1
    freqs = torch.linspace(0.0, cfg.sample_rate / 2, n_bins, dtype=torch.float64)

    def mel(f: torch.Tensor | float) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)

    pts = 700.0 * (
        10.0
        ** (
            torch.linspace(
                0.0, float(mel(cfg.sample_rate / 2)), cfg.n_mels + 2, dtype=torch.float64
            )
            / 2595.0
        )
        - 1.0
    )
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    rise = (freqs[None] - lo) / (mid - lo)
    fall = (hi - freqs[None]) / (hi - mid)
    fb = torch.clamp(torch.minimum(rise, fall), min=0.0) * (2.0 / (hi - lo))
    return fb.float()


class LogMel(nn.Module):
    """Waveform -> log-mel.

    ``frames(n) = n // hop_length``: a waveform of ``4 * k * hop_length`` samples gives exactly
    ``4 * k`` frames and ``k`` unit frames.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("fb", mel_filterbank(cfg), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def frames(self, num_samples: int) -> int:
        return int(num_samples) // self.cfg.hop_length

    def magnitude(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, T] -> |STFT| [B, n_fft // 2 + 1, T // hop]."""
        c = self.cfg
        spec = torch.stft(
            wav.float(), c.n_fft, c.hop_length, c.n_fft, self.window, return_complex=True
        )
        return spec.abs()[..., : self.frames(wav.shape[-1])]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, T] -> log-mel [B, n_mels, T // hop]."""
        mel = torch.einsum("mf,bft->bmt", self.fb, self.magnitude(wav))
        return torch.log(torch.clamp(mel, min=self.cfg.log_floor))


def lengths_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B] lengths -> [B, t] bool, True on valid frames."""
    return torch.arange(t, device=lengths.device)[None] < lengths[:, None]


def normalise(mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean and variance normalisation of each mel bin over valid frames.

    Removes loudness and channel differences (and some of the voice) before the networks see it.
    mel [B, M, T], lengths [B] -> [B, M, T] (zeros past each length).
    """
    m = lengths_mask(lengths, mel.shape[-1])[:, None].float()
    n = m.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (mel * m).sum(-1, keepdim=True) / n
    var = (((mel - mean) * m) ** 2).sum(-1, keepdim=True) / n
    return (mel - mean) / torch.sqrt(var + 1e-3) * m


# ---------------------------------------------------------------------- recogniser
ALPHABET = " abcdefghijklmnopqrstuvwxyz'"


@dataclass
class RecogniserConfig:
    """A CTC character recogniser; CTC label 0 is blank, label i + 1 is ``alphabet[i]``."""

    n_mels: int = 80
    dim: int = 144
    layers: int = 4
    heads: int = 4
    ff: int = 384
    dropout: float = 0.1
    alphabet: str = ALPHABET
    slots: int = 2  # CTC slots per 25 frames/s step
    unit_layer: int = 3  # transformer layer (1-based) whose output the units cluster

    to_dict = asdict
    from_dict = classmethod(_from_dict)

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1


def text_to_labels(text: str, alphabet: str = ALPHABET) -> list[int]:
    """Lower-cased text -> CTC labels (characters outside ``alphabet`` are dropped)."""
    index = {ch: i + 1 for i, ch in enumerate(alphabet)}
    return [index[ch] for ch in " ".join(text.lower().split()) if ch in index]


def ctc_greedy(logits: torch.Tensor, lengths: torch.Tensor, alphabet: str = ALPHABET) -> list[str]:
    """logits [B, S, V], lengths [B] -> best-path texts (repeats merged, blanks removed)."""
    best = logits.argmax(-1)
    out = []
    for row, n in zip(best, lengths.tolist()):
        ids = torch.unique_consecutive(row[:n]).tolist()
        text = "".join(alphabet[i - 1] for i in ids if i > 0)
        out.append(" ".join(text.split()))
    return out


class Subsample(nn.Module):
    """Two stride-2 convolutions: [B, n_mels, T] -> [B, dim, ceil(T / 4)]."""

    def __init__(self, n_mels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(dim, dim, 5, stride=2, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv2(F.gelu(self.conv1(x))))


def subsampled(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after :class:`Subsample`: ceil(n / 4)."""
    return torch.div(lengths + 3, 4, rounding_mode="floor")


class ConvPosition(nn.Module):
    """A depthwise convolution that gives the transformer relative position (any length)."""

    def __init__(self, dim: int, kernel: int = 15) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]."""
        return x + F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)


def encoder_layer(dim: int, heads: int, ff: int, dropout: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        dim, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True
    )


class Recogniser(nn.Module):
    """log-mel [B, n_mels, T] (100 frames/s) -> CTC logits and hidden layers at 25 frames/s."""

    def __init__(self, cfg: RecogniserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.subsample = Subsample(cfg.n_mels, cfg.dim)
        self.position = ConvPosition(cfg.dim)
        self.layers = nn.ModuleList(
            [encoder_layer(cfg.dim, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers)]
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.slots * cfg.vocab_size)

    def hidden(
        self, mel: torch.Tensor, lengths: torch.Tensor, upto: int | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Layer outputs [B, T/4, dim] (index 0: the convolutional front end), and their lengths.

        ``upto`` stops after that many transformer layers (units need only the first few).
        mel is raw log-mel; it is normalised here.
        """
        x = self.subsample(normalise(mel, lengths)).transpose(1, 2)
        n = subsampled(lengths)
        pad = ~lengths_mask(n, x.shape[1])
        x = self.position(x)
        outs = [x]
        for layer in self.layers[: self.cfg.layers if upto is None else upto]:
            x = layer(x, src_key_padding_mask=pad)
            outs.append(x)
        return outs, n

    def forward(
        self, mel: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, n_mels, T], lengths [B] -> CTC logits [B, slots * T/4, V] and slot lengths [B]."""
        outs, n = self.hidden(mel, lengths)
        logits = self.head(self.norm(outs[-1]))  # [B, T', slots * V]
        b, t, _ = logits.shape
        return logits.reshape(b, t * self.cfg.slots, -1), n * self.cfg.slots

    def ctc_loss(
        self, mel: torch.Tensor, lengths: torch.Tensor, labels: list[list[int]]
    ) -> torch.Tensor:
        """Mean CTC loss per label of a batch (labels: one list of ids per item)."""
        logits, n = self(mel, lengths)
        logp = logits.log_softmax(-1).transpose(0, 1)  # [S, B, V]
        target = torch.tensor([i for row in labels for i in row], dtype=torch.long)
        target_len = torch.tensor([len(row) for row in labels], dtype=torch.long)
        return F.ctc_loss(
            logp, target, n, target_len, blank=0, reduction="mean", zero_infinity=True
        )


# ---------------------------------------------------------------------- units
def kmeans(
    x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Lloyd's k-means of x [N, D] -> centroids [k, D] (k-means++ seeding on a sample).

    An emptied cluster is moved to the point farthest from its centroid, so all k stay in use.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least {k} vectors, got {n}")
    g = generator
    seed_pool = x[torch.randperm(n, generator=g)[: min(n, 20 * k)]]
    cent = [seed_pool[torch.randint(len(seed_pool), (1,), generator=g)]]
    d2 = torch.cdist(seed_pool, cent[0]).squeeze(1) ** 2
    for _ in range(1, k):
        i = torch.multinomial(d2 + 1e-12, 1, generator=g)
        cent.append(seed_pool[i])
        d2 = torch.minimum(d2, torch.cdist(seed_pool, cent[-1]).squeeze(1) ** 2)
    c = torch.cat(cent)
    for _ in range(iters):
        dist = torch.cdist(x, c)
        assign = dist.argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1.0)[:, None])
        if empty.any():
            far = dist.gather(1, assign[:, None]).squeeze(1).topk(int(empty.sum())).indices
            c[empty] = x[far]
    return c


def assign_units(h: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """h [..., D], centroids [K, D] -> nearest centroid ids [...] (int64)."""
    flat = h.reshape(-1, h.shape[-1])
    d = (flat**2).sum(-1, keepdim=True) - 2 * flat @ centroids.T + (centroids**2).sum(-1)[None]
    return d.argmin(-1).reshape(h.shape[:-1])


def unit_frames(num_samples: int, hop_length: int = 160) -> int:
    """Units for a waveform of ``num_samples`` samples (4 mel frames per unit, rounded up)."""
    return math.ceil((int(num_samples) // hop_length) / 4)
