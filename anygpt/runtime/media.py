"""Decoded media as objects, and sinks that put them somewhere.

The engine returns :class:`Media` items (a waveform with its sample rate, or an image) and writes
nothing; a command line hands them to a :class:`FileSink`, a server streams or encodes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anygpt.outputs import unique_path, write_atomic


@dataclass
class Media:
    """One decoded media item.

    Attributes:
        modality: the bundle modality it came from (``speech``, ``image``, ...).
        data: a float waveform tensor [T] in [-1, 1] (audio) or a ``PIL.Image`` (image).
        sample_rate: samples per second of audio, ``None`` for images.
        suffix: the file suffix its tokenizer writes (``.wav``, ``.png``, ``.jpg``).
        label: the text it was made from (names its file).
    """

    modality: str
    data: Any
    sample_rate: int | None
    suffix: str
    label: str = ""

    @property
    def is_audio(self) -> bool:
        return self.sample_rate is not None

    def numpy(self):
        """Audio as a float32 numpy array [T]; images as a uint8 array [H, W, 3]."""
        import numpy as np

        if self.is_audio:
            return self.data.detach().float().cpu().reshape(-1).numpy()
        return np.asarray(self.data.convert("RGB"))

    def save(self, path: str | Path) -> None:
        """Write the item to ``path`` (the format follows ``suffix``)."""
        if self.is_audio:
            from anygpt.audio import save_wav

            save_wav(path, self.data, self.sample_rate)
        elif self.suffix.lower() in (".jpg", ".jpeg"):
            self.data.convert("RGB").save(str(path), format="JPEG", quality=95)
        else:
            self.data.convert("RGB").save(str(path), format="PNG")


class FileSink:
    """Writes each media item of an outcome to a safe, unique file, whole or not at all."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)

    def write(self, outcome) -> list[Path]:
        """Save ``outcome.media`` and append the paths to ``outcome.files``; returns them."""
        paths = []
        for m in outcome.media:
            path = unique_path(self.output_dir, m.label or "output", m.modality, m.suffix)
            paths.append(write_atomic(path, m.save))
            outcome.files.append(paths[-1])  # listed at once: a later failure keeps it reported
        return paths
