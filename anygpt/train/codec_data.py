"""Audio for codec training: a folder of audio files or a JSON-lines manifest, cut into crops."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from anygpt.audio import AudioError, load_audio

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


class AudioDataError(ValueError):
    """Training audio that cannot be listed or read (one line)."""


AUDIO_COLUMNS = ("audio", "music", "wav", "path", "file")  # tried in order when none is named


def list_audio(
    data: str | Path, column: str | None = None, media_root: str | Path | None = None
) -> list[Path]:
    """Audio files named by ``data``.

    ``data`` is a folder (searched recursively for audio files) or a ``.jsonl`` manifest whose
    rows hold a path in ``column`` (default: the first of :data:`AUDIO_COLUMNS` that a row has);
    relative paths are resolved against ``media_root``, or the manifest's folder.
    """
    data = Path(data)
    if data.is_dir():
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise AudioDataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {data}")
        return files
    if not data.is_file():
        raise AudioDataError(f"training data not found: {data}")
    root = Path(media_root) if media_root else data.parent
    files = []
    with open(data, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AudioDataError(f"{data}:{n}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise AudioDataError(f"{data}:{n}: not a JSON object")
            key = column or next((c for c in AUDIO_COLUMNS if c in row), AUDIO_COLUMNS[0])
            if key not in row:
                raise AudioDataError(f"{data}:{n}: no '{key}' column")
            p = Path(row[key])
            files.append(p if p.is_absolute() else root / p)
    if not files:
        raise AudioDataError(f"manifest {data} names no audio")
    return files


class CropSampler:
    """Random fixed-length crops of a list of audio files, read on demand.

    Args:
        files: audio files (any rate; resampled to ``sample_rate``, mono by channel mean).
        sample_rate: of the crops.
        crop: samples per crop; shorter files are zero-padded at the end.
        seed: the crop sequence is a function of the seed.
    """

    def __init__(self, files: list[Path], sample_rate: int, crop: int, seed: int = 0) -> None:
        import soundfile as sf

        self.files, self.durations = [], []
        for p in files:
            try:
                info = sf.info(str(p))
            except Exception:  # noqa: BLE001 - unreadable files are skipped and counted
                continue
            if info.frames > 0:
                self.files.append(p)
                self.durations.append(info.frames / info.samplerate)
        self.skipped = len(files) - len(self.files)
        if not self.files:
            raise AudioDataError("none of the training audio files could be read")
        self.sample_rate = sample_rate
        self.crop = crop
        self.rng = random.Random(seed)

    def read(self, i: int, offset_s: float) -> torch.Tensor:
        """Crop [crop] of file ``i`` from ``offset_s``."""
        try:
            wav = load_audio(
                self.files[i],
                self.sample_rate,
                offset_s=offset_s,
                duration_s=self.crop / self.sample_rate,
            )
        except AudioError as exc:
            raise AudioDataError(str(exc)) from exc
        wav = wav[: self.crop]
        return torch.nn.functional.pad(wav, (0, self.crop - wav.shape[0]))

    def batch(self, size: int) -> torch.Tensor:
        """[size, 1, crop] float32 crops of random files at random offsets."""
        out = []
        for _ in range(size):
            i = self.rng.randrange(len(self.files))
            span = max(0.0, self.durations[i] - self.crop / self.sample_rate)
            out.append(self.read(i, self.rng.uniform(0.0, span)))
        return torch.stack(out).unsqueeze(1)

    def fixed(self, count: int) -> torch.Tensor:
        """[count, 1, crop] crops from the start of the first ``count`` files (for evaluation)."""
        return torch.stack(
            [self.read(i, 0.0) for i in range(min(count, len(self.files)))]
        ).unsqueeze(1)
