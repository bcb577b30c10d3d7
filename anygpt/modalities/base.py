"""The contract every modality tokenizer follows.

A modality tokenizer turns a batch of media into discrete codes ``[B, K, T]`` with per-item lengths,
and codes back into media.  It reports its sample rate, frame rate, number of codebooks and their
sizes.  Heavy models load on first use, never when the object is built, so a bundle with many
modalities costs nothing until one is needed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class ModalityError(ValueError):
    """Input media or codes that a modality tokenizer cannot use (one line, names the problem)."""


@dataclass
class Codes:
    """A padded batch of codes.

    Attributes:
        codes: [B, K, T] int64, padded with zeros past each item's length.
        lengths: [B] int64, frames per item.
    """

    codes: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self) -> None:
        if self.codes.dim() != 3:
            raise ValueError(f"codes must be [B, K, T], got {list(self.codes.shape)}")
        if self.lengths.shape != (self.codes.shape[0],):
            raise ValueError("lengths must be [B]")

    @classmethod
    def from_list(cls, items: Sequence[torch.Tensor]) -> Codes:
        """Pad a list of [K, T_i] tensors into one batch."""
        if not items:
            raise ValueError("empty batch")
        k = items[0].shape[0]
        t = max(int(c.shape[1]) for c in items)
        out = torch.zeros(len(items), k, t, dtype=torch.long)
        for i, c in enumerate(items):
            if c.shape[0] != k:
                raise ValueError("all items must have the same number of codebooks")
            out[i, :, : c.shape[1]] = c
        lengths = torch.tensor([int(c.shape[1]) for c in items], dtype=torch.long)
        return cls(out, lengths)

    def unbatch(self) -> list[torch.Tensor]:
        """The items as [K, T_i] tensors."""
        return [self.codes[i, :, : int(n)] for i, n in enumerate(self.lengths)]

    def __len__(self) -> int:
        return self.codes.shape[0]


class ModalityTokenizer(abc.ABC):
    """Media <-> codes for one modality.

    Subclasses set ``name`` and ``media_kind`` and implement the abstract members.  ``encode``
    takes what ``load`` returns (waveforms at ``sample_rate`` for audio, PIL images for images).
    """

    name: str = ""
    media_kind: str = "audio"  # "audio" or "image"
    file_suffix: str = ".wav"
    # How multi-channel audio becomes mono: "mean" averages, "first" keeps channel 0.  One policy
    # per tokenizer, used by ``load`` and by ``anygpt tokenize`` alike.
    channels: str = "mean"

    # ------------------------------------------------------------------ properties
    @property
    @abc.abstractmethod
    def sample_rate(self) -> int | None:
        """Samples per second of the media (``None`` for images)."""

    @property
    @abc.abstractmethod
    def frame_rate(self) -> float:
        """Code frames per second (for images: codes per image)."""

    @property
    @abc.abstractmethod
    def num_codebooks(self) -> int:
        """Codebooks per frame that ``encode`` returns."""

    @property
    @abc.abstractmethod
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per codebook."""

    # ------------------------------------------------------------------ media
    @abc.abstractmethod
    def load(self, path: str | Path) -> Any:
        """Read one media file into what ``encode`` takes; raises :class:`ModalityError`."""

    @abc.abstractmethod
    def encode(self, media: Sequence[Any]) -> Codes:
        """A batch of media -> codes [B, K, T] with lengths."""

    @abc.abstractmethod
    def decode(self, codes: Codes, **options: Any) -> list[Any]:
        """Codes -> one media item per batch entry."""

    @abc.abstractmethod
    def save(self, media: Any, path: str | Path) -> None:
        """Write one decoded media item to ``path`` (with ``file_suffix``)."""

    def unload(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Free loaded models (they load again on next use)."""


def group_by_length(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped by equal length, so padding never changes a result.

    Codecs with bidirectional LSTMs or reflect padding give different codes for a padded input, so
    only equal-length items share a forward pass.
    """
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    return list(groups.values())


def run_grouped(
    items: Sequence[Any], lengths: Sequence[int], fn: Callable[[list[Any]], list[Any]]
) -> list[Any]:
    """Apply ``fn`` to equal-length groups of ``items`` and return results in input order."""
    out: list[Any] = [None] * len(items)
    for idx in group_by_length(lengths):
        for i, r in zip(idx, fn([items[i] for i in idx]), strict=True):
            out[i] = r
    return out


def synthetic_waves(sample_rate: int, gen: torch.Generator, n: int = 6, seconds: float = 0.5):
    """Varied test signals for fitting tiny codebooks: [n, 1, T] float32 in [-1, 1].

    Each is a tone of its own pitch (80 Hz to a third of the rate), loudness and tremolo, with
    a little noise; the later ones are noise bursts, so quiet and noisy frames are covered too.
    """
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    waves = []
    top = sample_rate / 3
    for i in range(n):
        u = torch.rand(4, generator=gen)
        pitch = 80 * (top / 80) ** (i / max(n - 1, 1))
        tone = torch.sin(2 * torch.pi * pitch * (1 + 0.05 * u[0]) * t)
        tremolo = 1 + 0.5 * torch.sin(2 * torch.pi * (1 + 6 * u[1]) * t)
        noise = torch.randn(t.shape, generator=gen)
        wave = (0.2 + 0.6 * u[2]) * tone * tremolo + 0.05 * noise
        if i >= n - 2:  # noise bursts
            wave = noise * (0.1 + 0.5 * u[3]) * (torch.sin(2 * torch.pi * 3 * t) > 0)
        waves.append(wave.clamp(-1, 1))
    return torch.stack(waves).unsqueeze(1)


class _Captured(Exception):
    """Stops an encoder pass once the codebook being fitted has seen its input."""


@torch.no_grad()
def fill_codebooks_from_data(module: torch.nn.Module, run, gen: torch.Generator) -> int:
    """Set a tiny test model's codebooks to vectors its own encoder produces for varied inputs.

    Random codebooks far from the encoder's outputs give one code for every input, so no test
    could tell inputs apart. ``run()`` encodes some inputs (e.g. :func:`synthetic_waves`).
    Codebook modules are those with an ``embed`` buffer [K, D] and a ``quantize(x [N, D])``
    method (the RVQ layers of SpeechTokenizer and EnCodec); they are filled in module order, so
    each residual layer is fitted to what the layers before it leave. Returns how many.
    """
    books = [
        m
        for m in module.modules()
        if isinstance(getattr(m, "embed", None), torch.Tensor) and hasattr(m, "quantize")
    ]
    for book in books:
        seen: list[torch.Tensor] = []

        def spy(x, *args, _seen=seen, **kw):
            _seen.append(x.detach().reshape(-1, x.shape[-1]).float())
            raise _Captured  # the layers after this one are not needed yet

        book.quantize = spy
        try:
            run()
        except _Captured:
            pass
        finally:
            del book.quantize  # the class's method again
        feats = torch.cat(seen)
        size = book.embed.reshape(-1, feats.shape[-1]).shape[0]
        pick = torch.randint(0, feats.shape[0], (size,), generator=gen)
        spread = feats.std(dim=0, keepdim=True) * 0.05
        embed = feats[pick] + torch.randn(size, feats.shape[-1], generator=gen) * spread
        book.embed.copy_(embed.reshape(book.embed.shape))
        if isinstance(getattr(book, "embed_avg", None), torch.Tensor):
            book.embed_avg.copy_(book.embed)
    return len(books)


def fill_codebooks_randomly(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random codebooks for a tiny test model.

    New RVQ codebooks are all zeros, which gives one code for everything; random ones make
    different inputs give different codes.
    """
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name.endswith(".embed") or name.endswith("embed_avg"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.5)
            elif name.endswith("inited") or name.endswith("cluster_size"):
                buf.fill_(1)
