"""Reconstruction losses for audio codecs: multi-resolution log-mel, log-STFT and convergence.

Everything is plain torch (``torch.stft`` and a triangular mel filter bank built here), so no
audio library is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] (float32, each filter peaks at 1)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(fmin)), float(hz_to_mel(fmax)), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class MultiResolutionSpectralLoss(nn.Module):
    """Log-mel L1, log-magnitude L1 and spectral convergence, averaged over STFT sizes.

    The log-magnitude term weighs every linear-frequency bin alike: mel bands above 1 kHz are
    wider than a semitone, so the mel term alone barely notices a high note played out of tune.

    Args:
        sample_rate: of the waveforms.
        n_ffts: STFT sizes (hop = n_fft / 4, Hann window); small sizes judge onsets, large ones pitch.
        n_mels: mel bands per size (same length as ``n_ffts``).
        eps: floor added before the log, relative to a full-scale sine (1e-3: -60 dB).  Tonal
            music leaves most of the spectrogram near silence; a tiny floor would make matching
            that silence the whole loss and teach the decoder to stay quiet.

    ``forward(y, x)`` takes the reconstruction and the target, [B, 1, T] or [B, T], and returns
    ``{"mel": ..., "sc": ..., "logmag": ...}`` (scalars, averaged over sizes).
    """

    def __init__(
        self,
        sample_rate: int,
        n_ffts: Sequence[int] = (256, 512, 1024, 2048),
        n_mels: Sequence[int] = (32, 64, 96, 128),
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if len(n_ffts) != len(n_mels):
            raise ValueError("n_ffts and n_mels must have the same length")
        self.n_ffts = tuple(int(n) for n in n_ffts)
        self.eps = eps
        for n_fft, m in zip(self.n_ffts, n_mels):
            self.register_buffer(f"fb{n_fft}", mel_filterbank(sample_rate, n_fft, int(m)), False)
            self.register_buffer(f"win{n_fft}", torch.hann_window(n_fft), False)

    def magnitude(self, x: torch.Tensor, n_fft: int) -> torch.Tensor:
        """|STFT| [B, F, frames] of [B, T], scaled so a full-scale sine peaks at 1."""
        win = getattr(self, f"win{n_fft}")
        spec = torch.stft(x, n_fft, n_fft // 4, window=win, center=True, return_complex=True)
        # divided by half the window sum: a full-scale sine peaks at 1 whatever the size
        return spec.abs() * (2.0 / win.sum())

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y, x = y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1])
        mel = y.new_zeros(())
        sc = y.new_zeros(())
        logmag = y.new_zeros(())
        # sizes whose centre padding would exceed the clip are skipped (short test crops)
        sizes = [n for n in self.n_ffts if n // 2 < x.shape[-1]] or [min(self.n_ffts)]
        for n_fft in sizes:
            my, mx = self.magnitude(y, n_fft), self.magnitude(x, n_fft)
            fb = getattr(self, f"fb{n_fft}")
            mel = mel + (torch.log(fb @ my + self.eps) - torch.log(fb @ mx + self.eps)).abs().mean()
            logmag = logmag + (torch.log(my + self.eps) - torch.log(mx + self.eps)).abs().mean()
            sc = sc + torch.linalg.norm(my - mx) / torch.linalg.norm(mx).clamp_min(1e-6)
        n = len(sizes)
        return {"mel": mel / n, "sc": sc / n, "logmag": logmag / n}


def si_snr_db(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR (dB) per item of [B, T] waveforms: how close the waveform shape is."""
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    proj = (y * x).sum(-1, keepdim=True) / (x.pow(2).sum(-1, keepdim=True) + 1e-8) * x
    noise = y - proj
    return 10 * torch.log10(proj.pow(2).sum(-1) / (noise.pow(2).sum(-1) + 1e-8) + 1e-8)
