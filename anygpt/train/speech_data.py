"""Transcribed speech for the nano speech trainers: a JSON-lines manifest read into log-mels.

Each manifest line is an object with ``"text"`` (the words said) and ``"speech"`` (an audio file,
relative to the manifest's folder); an optional speaker column (``"voice"`` in the nano world)
lets the vocoder learn voices from other utterances of the same speaker.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from anygpt.models.nano_speech import LogMel, text_to_labels


class ManifestError(ValueError):
    """A manifest that cannot be used (one line)."""


@dataclass
class SpeechSet:
    """Utterances as log-mels.

    Attributes:
        mels: one [M, T_i] float16 tensor per utterance.
        texts: the transcripts.
        labels: CTC labels of each transcript.
        speakers: speaker index of each utterance (-1: unknown).
        speaker_names: index -> name.
    """

    mels: list[torch.Tensor]
    texts: list[str]
    labels: list[list[int]]
    speakers: list[int]
    speaker_names: list[str]

    def __len__(self) -> int:
        return len(self.mels)

    def frames(self, i: int) -> int:
        return int(self.mels[i].shape[-1])


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines manifest, with ``speech`` resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{n}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "text" not in row or "speech" not in row:
            raise ManifestError(f"{path}:{n}: each line needs 'text' and 'speech'")
        row = dict(row)
        row["speech"] = str(path.parent / row["speech"])
        rows.append(row)
    if not rows:
        raise ManifestError(f"manifest {path} has no rows")
    return rows


def load_speech_set(
    rows: list[dict],
    logmel: LogMel,
    *,
    speaker_column: str | None = "voice",
    speaker_names: list[str] | None = None,
    max_seconds: float = 10.0,
    alphabet: str | None = None,
    progress: bool = True,
) -> SpeechSet:
    """Read every row's audio (16 kHz mono, channels averaged) and compute its log-mel.

    Rows longer than ``max_seconds`` or with no usable characters are skipped.  Speakers missing
    from ``speaker_names`` (when given) get index -1.
    """
    from anygpt.audio import AudioError, load_audio

    sr = logmel.cfg.sample_rate
    names = list(speaker_names) if speaker_names is not None else None
    if names is None and speaker_column:
        names = sorted({str(r[speaker_column]) for r in rows if speaker_column in r})
    index = {s: i for i, s in enumerate(names or [])}
    out = SpeechSet([], [], [], [], names or [])
    for row in tqdm(rows, desc="reading speech", disable=not progress, mininterval=5):
        labels = (
            text_to_labels(row["text"])
            if alphabet is None
            else text_to_labels(row["text"], alphabet)
        )
        if not labels:
            continue
        try:
            wav = load_audio(row["speech"], sr, channels="mean", min_samples=4 * logmel.cfg.n_fft)
        except AudioError as exc:
            raise ManifestError(str(exc)) from exc
        if wav.shape[0] > max_seconds * sr:
            continue
        with torch.no_grad():
            mel = logmel(wav[None])[0]
        out.mels.append(mel.to(torch.float16))
        out.texts.append(" ".join(row["text"].lower().split()))
        out.labels.append(labels)
        speaker = str(row.get(speaker_column)) if speaker_column and speaker_column in row else None
        out.speakers.append(index.get(speaker, -1) if speaker is not None else -1)
    if not out.mels:
        raise ManifestError("no usable utterances in the manifest")
    return out


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices in batches of similar length (little padding), batches in random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def pad_mels(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, T_i] tensors -> [B, M, T_max] float32 (padded with the floor value) and lengths [B]."""
    t = max(int(m.shape[-1]) for m in mels)
    floor = min(float(m.min()) for m in mels)
    out = torch.full((len(mels), mels[0].shape[0], t), floor)
    for i, m in enumerate(mels):
        out[i, :, : m.shape[-1]] = m.float()
    return out, torch.tensor([int(m.shape[-1]) for m in mels])


def warp_frequency(mel: torch.Tensor, factor: float) -> torch.Tensor:
    """Stretch the mel axis by ``factor`` (a cheap vocal-tract-length change): [B, M, T]."""
    m = mel.shape[1]
    pos = torch.clamp(torch.arange(m, dtype=torch.float32) / factor, 0, m - 1)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=m - 1)
    w = (pos - lo)[None, :, None]
    return mel[:, lo] * (1 - w) + mel[:, hi] * w


def spec_augment(
    mel: torch.Tensor, lengths: torch.Tensor, g: torch.Generator, floor: float
) -> torch.Tensor:
    """Frequency warp, two frequency masks and two time masks per item: [B, M, T] -> same."""
    b, m, t = mel.shape
    out = mel.clone()
    for i in range(b):
        factor = 0.88 + 0.24 * float(torch.rand((), generator=g))
        out[i : i + 1] = warp_frequency(out[i : i + 1], factor)
        for _ in range(2):
            w = int(torch.randint(0, max(2, m // 8), (), generator=g))
            f0 = int(torch.randint(0, max(1, m - w), (), generator=g))
            out[i, f0 : f0 + w] = floor
            n = int(lengths[i])
            w = int(torch.randint(0, max(2, min(12, n // 10)), (), generator=g))
            t0 = int(torch.randint(0, max(1, n - w), (), generator=g))
            out[i, :, t0 : t0 + w] = floor
    return out
