"""Video input: sampled frames as image tokens, interleaved by time with the soundtrack's speech.

Video is not a tokenizer family of its own: a clip is read by :mod:`anygpt.video`, each sampled
frame is encoded by the bundle's image tokenizer and each stretch of the soundtrack between two
frames by its speech tokenizer, and the segments are laid out by time inside the video tags::

    <sovi><soim>frame 1<eoim><sosp>speech of [0, b1)<eosp><soim>frame 2<eoim>...<eovi>

with ``b_i`` the midpoint between frames ``i`` and ``i+1`` (the last stretch runs to the clip's
end).  There is no whitespace inside the video segment.  A stretch shorter than the speech
tokenizer's smallest input or silent (RMS below :data:`SILENCE_RMS`) is left out, so a silent
soundtrack gives pictures only.  Video is an input: models read it, they do not generate it.

Settings (``bundle.json`` ``"video": {...}``, all optional): ``frames`` (uniform count, default
4), ``fps`` (a rate instead of a count), ``audio`` (use the soundtrack, default true),
``max_seconds`` (read at most this much of a clip, default 60).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from anygpt.modalities.base import ModalityError

VIDEO_START, VIDEO_END = "<sovi>", "<eovi>"
VIDEO_TAGS = (VIDEO_START, VIDEO_END)
SILENCE_RMS = 1e-3


@dataclass
class VideoOptions:
    """How clips are sampled for a bundle (saved in ``bundle.json`` as ``"video"``)."""

    frames: int = 4
    fps: float | None = None
    audio: bool = True
    max_seconds: float = 60.0

    @classmethod
    def from_dict(cls, d: dict | None) -> VideoOptions:
        d = d or {}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ModalityError(f"unknown video settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def video_problem(bundle: Any) -> str | None:
    """Why a bundle cannot read video, or ``None`` when it can."""
    tok = bundle.tokenizer
    missing = [t for t in VIDEO_TAGS if not tok.has_token(t)]
    if missing:
        return (
            f"this model's vocabulary has no video tags ({', '.join(missing)}); add them with "
            "'anygpt extend-vocab ... --video' and fine-tune on video data"
        )
    if "image" not in bundle.modality_names:
        return "this model has no image modality to encode video frames with"
    return None


class VideoEncoder:
    """Clips -> video segment strings, for one bundle (its image and speech tokenizers)."""

    def __init__(self, bundle: Any, options: VideoOptions | None = None) -> None:
        self.bundle = bundle
        self.options = options or VideoOptions()

    def _read(self, path: str | Path, max_seconds: float | None):
        from anygpt.video import VideoError, read_video

        o = self.options
        limit = o.max_seconds if max_seconds is None else min(o.max_seconds, max_seconds)
        speech = self.bundle.modality("speech") if self._uses_audio() else None
        try:
            return read_video(
                path,
                frames=o.frames,
                fps=o.fps,
                max_seconds=limit,
                audio_rate=speech.sample_rate if speech is not None else None,
            )
        except VideoError as exc:
            raise ModalityError(str(exc)) from exc

    def _uses_audio(self) -> bool:
        return self.options.audio and "speech" in self.bundle.modality_names

    def windows(self, clip) -> list[torch.Tensor | None]:
        """The soundtrack cut at the midpoints between frames: one waveform [T] (or None) per frame."""
        if clip.audio is None or not self._uses_audio():
            return [None] * len(clip.frames)
        speech = self.bundle.modality("speech")
        shortest = int(getattr(speech, "hop_length", 400))
        rate = clip.sample_rate
        times = clip.times
        bounds = [0.0]
        bounds += [(a + b) / 2 for a, b in zip(times, times[1:], strict=False)]
        bounds.append(clip.duration)
        out: list[torch.Tensor | None] = []
        wave = torch.from_numpy(clip.audio)
        for start, end in zip(bounds, bounds[1:], strict=False):
            piece = wave[int(start * rate) : int(end * rate)]
            loud = piece.numel() and float(piece.pow(2).mean().sqrt()) >= SILENCE_RMS
            out.append(piece if piece.numel() >= shortest and loud else None)
        return out

    def encode(self, paths: list[str | Path], max_seconds: float | None = None) -> list[str]:
        """Video files -> segment strings (all frames in one image batch, speech in one batch)."""
        problem = video_problem(self.bundle)
        if problem:
            raise ModalityError(problem)
        clips = [self._read(p, max_seconds) for p in paths]
        layout = self.bundle.layout
        image_tok = self.bundle.modality("image", checked=True)
        prepare = getattr(image_tok, "prepare", None)
        frames = [prepare(f) if prepare else f for c in clips for f in c.frames]
        image_codes = image_tok.encode(frames).unbatch()
        image_segs = [layout.segment_text("image", c) for c in image_codes]
        windows = [w for c in clips for w in self.windows(c)]
        speech_segs: list[str | None] = [None] * len(windows)
        present = [i for i, w in enumerate(windows) if w is not None]
        if present:
            speech_tok = self.bundle.modality("speech", checked=True)
            codes = speech_tok.encode([windows[i] for i in present]).unbatch()
            for i, c in zip(present, codes, strict=True):
                speech_segs[i] = layout.segment_text("speech", c)
        out, k = [], 0
        for c in clips:
            parts = [VIDEO_START]
            for _ in c.frames:
                parts.append(image_segs[k])
                if speech_segs[k] is not None:
                    parts.append(speech_segs[k])
                k += 1
            parts.append(VIDEO_END)
            out.append("".join(parts))
        return out
