"""Speech decoded while the reply is generated: overlapping windows over the codes so far.

Any speech tokenizer whose ``decode(Codes [B, K, T])`` returns waveforms of ``hop * T`` samples works
(nano units + vocoder + Griffin-Lim, SpeechTokenizer with SoundStorm completion).  The code stream is
cut into chunks of ``chunk`` frames.  A chunk is decoded once ``lookahead`` frames past its end exist
(or the span has ended), inside a window that also holds ``left_context`` frames before it, so the
decoder (bidirectional attention, convolutions, SoundStorm's masked passes) sees context on both
sides.  Consecutive chunks overlap by ``crossfade`` samples, blended with a linear ramp.

Quality cost: :func:`mel_distance` between the streamed and the whole-utterance waveform of the same
codes (``scripts/bench_stream_speech.py`` measures it; the tests hold it within a stated bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from anygpt.modalities.base import Codes


@dataclass(frozen=True)
class Window:
    """One decode window, in code frames: decode ``[start, stop)``, emit ``[emit_from, emit_to)``."""

    start: int
    emit_from: int
    emit_to: int
    stop: int
    final: bool


@dataclass
class WindowedSpeech:
    """Plans decode windows over a growing code sequence and stitches their waveforms.

    Args:
        hop: waveform samples per code frame.
        chunk: frames emitted per window (the first window may emit ``first_chunk``).
        left_context: frames before a chunk that its window also decodes.
        lookahead: frames after a chunk that must exist before it is decoded.
        crossfade: samples blended between consecutive chunks (at most ``lookahead * hop``).
        first_chunk: frames of the first chunk (smaller: earlier first audio).
    """

    hop: int
    chunk: int = 20
    left_context: int = 20
    lookahead: int = 10
    crossfade: int = 0
    first_chunk: int | None = 10
    emitted: int = 0  # frames stitched so far (by ``accept``)
    planned: int = 0  # frames handed out in windows so far (by ``plan``)
    samples: int = 0  # samples stitched so far
    planned_all: bool = False  # the final window has been planned
    _tail: torch.Tensor | None = field(default=None, repr=False)
    _done: bool = False

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.left_context < 0 or self.lookahead < 0:
            raise ValueError("chunk must be >= 1; context and lookahead >= 0")
        if not self.crossfade:
            # one frame: longer blends of independently phased chunks measured worse
            self.crossfade = self.hop
        self.crossfade = min(self.crossfade, self.hop * self.lookahead)

    @property
    def done(self) -> bool:
        return self._done

    def plan(self, available: int, final: bool) -> list[Window]:
        """Windows that can be decoded now, given ``available`` frames (``final``: no more come).

        Planning and stitching may run on different threads: ``plan`` only moves ``planned``.
        """
        windows: list[Window] = []
        emitted = self.planned
        while not self.planned_all:
            size = self.first_chunk if (emitted == 0 and self.first_chunk) else self.chunk
            if available >= emitted + size + self.lookahead and not (
                final and available - emitted <= size
            ):
                to = emitted + size
                stop = to + self.lookahead
                windows.append(
                    Window(max(0, emitted - self.left_context), emitted, to, stop, False)
                )
                emitted = to
            elif final and available > emitted:
                windows.append(
                    Window(max(0, emitted - self.left_context), emitted, available, available, True)
                )
                emitted = available
                self.planned_all = True
                break
            else:
                break
        self.planned = emitted
        return windows

    def accept(self, window: Window, wave: torch.Tensor) -> torch.Tensor:
        """Stitch the decoded waveform [hop * (stop - start)] of ``window``; returns new samples [S]."""
        if window.emit_from != self.emitted:
            raise ValueError("windows must be accepted in order")
        wave = wave.reshape(-1).float()
        lo = (window.emit_from - window.start) * self.hop
        hi = (window.emit_to - window.start) * self.hop
        piece = wave[lo:hi].clone()
        if self._tail is not None:
            n = min(self._tail.shape[0], piece.shape[0])
            ramp = torch.linspace(0.0, 1.0, n + 2)[1:-1]
            piece[:n] = self._tail[:n] * (1 - ramp) + piece[:n] * ramp
        self._tail = None if window.final else wave[hi : hi + self.crossfade].clone()
        self.emitted = window.emit_to
        self.samples += piece.shape[0]
        self._done = window.final
        return piece


def decode_windows(
    tokenizer: Any, codes: torch.Tensor, windows: list[Window], **decode_kw: Any
) -> list[torch.Tensor]:
    """Decode windows of one code sequence [K, T] in one batched call -> waveforms in order."""
    items = [codes[:, w.start : w.stop] for w in windows]
    return tokenizer.decode(Codes.from_list(items), **decode_kw)


def stream_decode(
    tokenizer: Any, codes: torch.Tensor, step: int = 1, **options: Any
) -> tuple[torch.Tensor, list[int]]:
    """Decode codes [K, T] as a stream that grows ``step`` frames at a time.

    Returns the stitched waveform [S] and the number of frames that existed when each chunk
    could be decoded (the delay of each chunk, in frames).  ``options`` go to
    :class:`WindowedSpeech` except ``generator_seed`` and ``voice_prompt`` (for ``decode``).
    """
    seed = options.pop("generator_seed", None)
    voice = options.pop("voice_prompt", None)
    hop = round(tokenizer.sample_rate / tokenizer.frame_rate)
    state = WindowedSpeech(hop, **options)
    pieces, ready = [], []
    total = codes.shape[1]
    n = 0
    while not state.planned_all:
        n = min(total, n + step)
        windows = state.plan(n, final=n >= total)
        for w in windows:
            kw: dict[str, Any] = {"voice_prompt": voice}
            if seed is not None:
                kw["generator"] = torch.Generator().manual_seed(seed + w.emit_from)
            wave = decode_windows(tokenizer, codes, [w], **kw)[0]
            pieces.append(state.accept(w, wave))
            ready.append(n)
    return torch.cat(pieces), ready


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] (HTK mel scale)."""

    def to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    edges_mel = torch.linspace(0.0, to_mel(sample_rate / 2), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lower) / (centre - lower).clamp(min=1e-6)
    down = (upper - freqs) / (upper - centre).clamp(min=1e-6)
    return torch.clamp(torch.minimum(up, down), min=0.0)


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int = 64) -> torch.Tensor:
    """Natural-log mel spectrogram [n_mels, frames] of a waveform [T] (25 ms / 10 ms frames)."""
    n_fft = 1 << max(8, math.ceil(math.log2(0.025 * sample_rate)))
    hop = int(0.010 * sample_rate)
    spec = torch.stft(
        wave.float(), n_fft, hop, n_fft, torch.hann_window(n_fft), return_complex=True
    ).abs()
    return torch.log(mel_filterbank(sample_rate, n_fft, n_mels) @ spec + 1e-5)


def mel_distance(a: torch.Tensor, b: torch.Tensor, sample_rate: int) -> float:
    """Mean absolute log-mel difference between two waveforms [T] (the shorter length is used)."""
    n = min(a.shape[-1], b.shape[-1])
    ma, mb = log_mel(a[:n], sample_rate), log_mel(b[:n], sample_rate)
    return float((ma - mb).abs().mean())
