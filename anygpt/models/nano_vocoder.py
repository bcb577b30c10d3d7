"""Nano unit vocoder: speech units + a voice -> log-mel -> waveform.

A speaker encoder pools a voice prompt's log-mel into one vector.  The vocoder embeds the units
(25 frames/s), adds the voice, runs a few transformer layers (context for durations and
intonation) and writes 4 log-mel frames per step (100 frames/s), which a small convolutional
post-net refines.  Griffin-Lim turns the log-mel into a waveform (no learned waveform model: small, and good
enough for synthetic voices).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anygpt.models.nano_speech import (
    ConvPosition,
    FeatureConfig,
    _from_dict,
    encoder_layer,
    lengths_mask,
    mel_filterbank,
)


@dataclass
class VocoderConfig:
    """Sizes of the speaker encoder and the unit vocoder."""

    n_units: int = 256
    n_mels: int = 80
    dim: int = 192  # 25 frames/s transformer width
    layers: int = 3
    heads: int = 4
    ff: int = 512
    postnet_dim: int = 96  # 100 frames/s post-net width
    speaker_dim: int = 64
    speaker_channels: int = 96
    dropout: float = 0.1
    upsample: int = 4

    to_dict = asdict
    from_dict = classmethod(_from_dict)


def level(mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Remove each utterance's overall log level (loudness) but keep its spectral shape.

    mel [B, M, T] -> [B, M, T] (zeros past each length).
    """
    m = lengths_mask(lengths, mel.shape[-1])[:, None].float()
    mean = (mel * m).sum((1, 2), keepdim=True) / (m.sum((1, 2), keepdim=True) * mel.shape[1])
    return (mel - mean) / 4.0 * m


class SpeakerEncoder(nn.Module):
    """log-mel of a voice prompt [B, M, T] -> voice vector [B, speaker_dim].

    Dilated convolutions, then the mean and standard deviation over time (any prompt length).
    """

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        c = cfg.speaker_channels
        self.convs = nn.ModuleList(
            [
                nn.Conv1d(cfg.n_mels, c, 5, padding=2),
                nn.Conv1d(c, c, 3, padding=2, dilation=2),
                nn.Conv1d(c, c, 3, padding=3, dilation=3),
            ]
        )
        self.proj = nn.Linear(2 * c, cfg.speaker_dim)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = level(mel, lengths)
        for conv in self.convs:
            x = F.gelu(conv(x))
        m = lengths_mask(lengths, x.shape[-1])[:, None].float()
        n = m.sum(-1).clamp(min=1.0)
        mean = (x * m).sum(-1) / n
        std = torch.sqrt((((x - mean[..., None]) * m) ** 2).sum(-1) / n + 1e-4)
        return self.proj(torch.cat([mean, std], dim=-1))


class UnitVocoder(nn.Module):
    """units [B, T] + voice [B, speaker_dim] -> log-mel [B, n_mels, upsample * T]."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.n_units, cfg.dim)
        self.voice_in = nn.Linear(cfg.speaker_dim, cfg.dim)
        self.position = ConvPosition(cfg.dim)
        self.layers = nn.ModuleList(
            [encoder_layer(cfg.dim, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers)]
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.upsample * cfg.n_mels)
        nn.init.constant_(self.out.bias, -5.0)  # about the mean log-mel of speech
        self.post1 = nn.Conv1d(cfg.n_mels, cfg.postnet_dim, 5, padding=2)
        self.post2 = nn.Conv1d(cfg.postnet_dim, cfg.n_mels, 5, padding=2)
        # The voice used when no prompt is given (set by training: the mean of a default voice).
        self.register_buffer("default_voice", torch.zeros(cfg.speaker_dim))

    def forward(
        self, units: torch.Tensor, lengths: torch.Tensor, voice: torch.Tensor
    ) -> torch.Tensor:
        """units [B, T] int64, lengths [B], voice [B, speaker_dim] -> log-mel [B, M, 4T]."""
        x = self.embed(units) + self.voice_in(voice)[:, None]
        pad = ~lengths_mask(lengths, units.shape[1])
        x = self.position(x)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        b, t, _ = x.shape
        mel = self.out(self.norm(x)).reshape(b, t * self.cfg.upsample, -1).transpose(1, 2)
        # The post-net smooths across the 4-frame groups and sharpens the spectrum.
        return mel + self.post2(F.gelu(self.post1(mel)))


def masked_l1(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over valid frames: pred/target [B, M, T], lengths [B] (frames)."""
    t = min(pred.shape[-1], target.shape[-1])
    m = lengths_mask(lengths.clamp(max=t), t)[:, None].float()
    return ((pred[..., :t] - target[..., :t]).abs() * m).sum() / (m.sum() * pred.shape[1])


class GriffinLim(nn.Module):
    """log-mel [B, M, T] -> waveform [B, T * hop] by fast Griffin-Lim (with momentum).

    The mel is mapped back to a linear magnitude with the filterbank's pseudo-inverse.
    """

    def __init__(self, cfg: FeatureConfig, iters: int = 48, momentum: float = 0.99) -> None:
        super().__init__()
        self.cfg = cfg
        self.iters = iters
        self.momentum = momentum
        fb = mel_filterbank(cfg)
        self.register_buffer("inverse", torch.linalg.pinv(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def forward(
        self, logmel: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        c = self.cfg
        mag = torch.clamp(self.inverse @ torch.exp(logmel.float()), min=0.0)  # [B, F, T]
        length = logmel.shape[-1] * c.hop_length

        def istft(spec: torch.Tensor) -> torch.Tensor:
            return torch.istft(spec, c.n_fft, c.hop_length, c.n_fft, self.window, length=length)

        def stft(wav: torch.Tensor) -> torch.Tensor:
            spec = torch.stft(wav, c.n_fft, c.hop_length, c.n_fft, self.window, return_complex=True)
            return spec[..., : mag.shape[-1]]

        phase = torch.rand(mag.shape, generator=generator, device=mag.device) * (2 * math.pi)
        angles = torch.polar(torch.ones_like(mag), phase)
        prev = torch.zeros_like(angles)
        for _ in range(self.iters):
            rebuilt = stft(istft(mag * angles))
            angles = rebuilt - (self.momentum / (1 + self.momentum)) * prev
            angles = angles / (angles.abs() + 1e-8)
            prev = rebuilt
        return istft(mag * angles)
