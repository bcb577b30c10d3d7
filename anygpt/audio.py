"""Reading, resampling and writing audio (soundfile + soxr; no torchaudio).

Every failure becomes an :class:`AudioError` with one line that names the file and the problem.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch

# Reading more than this is almost certainly a mistake (an hour of 96 kHz audio is 1.4 GB of floats).
MAX_SECONDS = 3600.0


class AudioError(ValueError):
    """An audio file cannot be used."""


def load_audio(
    path: str | Path,
    sample_rate: int,
    *,
    channels: str = "mean",
    offset_s: float = 0.0,
    duration_s: float | None = None,
    min_samples: int = 1,
) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform at ``sample_rate``.

    Args:
        channels: ``"first"`` keeps channel 0 (AnyGPT's rule for speech input), ``"mean"`` averages
            all channels.
        offset_s / duration_s: read only this window (seconds); a file shorter than the window is
            read whole.
        min_samples: fewer samples than this (after resampling) is an error.

    Returns:
        waveform [T] float32.
    """
    import soundfile as sf

    path = Path(path)
    info = _header(path)
    if info.frames / info.samplerate > MAX_SECONDS and duration_s is None:
        raise AudioError(
            f"audio file {path} is {info.frames / info.samplerate:.0f} s long; "
            f"the limit is {MAX_SECONDS:.0f} s"
        )
    start = int(round(max(offset_s, 0.0) * info.samplerate))
    if start >= info.frames:
        start = 0
    stop = info.frames
    if duration_s is not None:
        stop = min(info.frames, start + int(round(duration_s * info.samplerate)))
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001
        raise AudioError(f"cannot decode audio file {path}: {_short(exc)}") from exc
    if data.size == 0:
        raise AudioError(f"audio file {path} holds no samples")
    mono = data[:, 0] if channels == "first" else data.mean(axis=1)
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioError(
            f"audio file {path} holds {bad} NaN or infinite samples (a broken float file); "
            "nothing sensible can be heard from it"
        )
    wav = resample(mono, sr, sample_rate)
    if wav.shape[0] < min_samples:
        raise AudioError(
            f"audio file {path} is too short ({wav.shape[0]} samples at {sample_rate} Hz; "
            f"need at least {min_samples})"
        )
    return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))


def _header(path: Path):
    """The ``soundfile`` info of a readable, non-empty audio file; :class:`AudioError` if not."""
    import soundfile as sf

    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if not path.is_file():
        raise AudioError(
            f"'{path}' is a folder, not an audio file" if path.is_dir() else f"not a file: {path}"
        )
    if not os.access(path, os.R_OK):
        # soundfile would only say "System error"
        raise AudioError(f"cannot read audio file {path}: permission denied")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types
        raise AudioError(f"cannot read audio file {path}: {_short(exc)}") from exc
    if info.samplerate <= 0 or info.frames <= 0:
        raise AudioError(f"audio file {path} is empty")
    return info


def probe_audio(path: str | Path) -> float:
    """Check from its header that ``path`` is a readable, non-empty audio file; returns seconds.

    Nothing is decoded, so this is cheap enough to run on every input before any work.
    """
    info = _header(Path(path))
    return info.frames / info.samplerate


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a 1-D float array (soxr, high quality)."""
    if orig_sr == target_sr:
        return wav.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(wav.astype(np.float32, copy=False), orig_sr, target_sr, quality="HQ")


def save_wav(path: str | Path, wav: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write a mono waveform [T] (or [1, T]) as 16-bit PCM wav; clipped to [-1, 1]."""
    import soundfile as sf

    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    wav = np.clip(np.nan_to_num(wav), -1.0, 1.0)
    # encoded in memory, then written by Python: a full disk or a denied folder is an OSError
    # that names the cause (libsndfile would only say "System error")
    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, subtype="PCM_16", format="WAV")
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def num_frames(num_samples: int, hop: int) -> int:
    return math.ceil(num_samples / hop)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
