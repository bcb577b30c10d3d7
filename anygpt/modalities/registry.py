"""The registry of modality tokenizer families.

A *family* is one kind of modality tokenizer (SpeechTokenizer, EnCodec, SEED, speech units, ...):
the ``"type"`` of a modality entry in ``bundle.json``.  Each family lives in one module of
:mod:`anygpt.modalities`, which ends with a call to :func:`register`; the registry imports every
module of the package the first time families are listed, so adding a family is adding one file.
Bundles, the engine, training and the debug bundles ask this registry (and the bundle's own
entries) which modalities exist; nothing else keeps a list of them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anygpt.layout import ModalityTokens

if TYPE_CHECKING:
    from anygpt.modalities.base import ModalityTokenizer


@dataclass
class ModalityEntry:
    """One modality of a bundle: its family (``type``), files (relative to the bundle), tokens."""

    type: str
    tokens: ModalityTokens
    files: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "tokens": self.tokens.to_dict(),
            "files": dict(self.files),
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModalityEntry:
        return cls(
            d["type"],
            ModalityTokens.from_dict(d["tokens"]),
            dict(d.get("files", {})),
            dict(d.get("options", {})),
        )


@dataclass(frozen=True)
class BuildContext:
    """What a family's ``build`` gets: the entry, resolved against its bundle."""

    name: str  # the modality's name in the bundle ("speech", "image", "music", ...)
    files: dict[str, Path]
    options: dict[str, Any]
    device: torch.device
    decoding_dir: Path | None = None


# A tiny-model writer: (bundle root, generator, tokenizer definition or None) -> the entry it wrote.
TinyWriter = Callable[..., ModalityEntry]


@dataclass(frozen=True)
class Family:
    """A modality tokenizer family.

    Attributes:
        type: the ``type`` of a bundle entry that selects this family.
        modality: the modality it serves by default.
        build: entry -> adapter; must not read weights (they load on first use).
        tokens: the default LLM token format, when the family has one.
        weights_file: the file key that a command line's ``--*-tokenizer-path`` flag replaces.
        write_tiny: writes a tiny random model under a bundle root and returns its entry (files
            relative to that root); called as ``write_tiny(root, generator)``, or with a third
            argument, the tokenizer definition (``tokenizers/*.json``) to imitate, when given.
    """

    type: str
    modality: str
    build: Callable[[BuildContext], ModalityTokenizer]
    tokens: ModalityTokens | None = None
    write_tiny: TinyWriter | None = None
    weights_file: str = "model"


_FAMILIES: dict[str, Family] = {}
_DISCOVERED = False


def register(family: Family) -> Family:
    """Add a family (a module of :mod:`anygpt.modalities` calls this at import time)."""
    old = _FAMILIES.get(family.type)
    if old is not None and old.build is not family.build:
        raise ValueError(f"modality family '{family.type}' is registered twice")
    _FAMILIES[family.type] = family
    return family


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import anygpt.modalities as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def families() -> dict[str, Family]:
    """Every registered family, by type."""
    _discover()
    return dict(_FAMILIES)


def family(type_name: str) -> Family:
    """The family of a bundle entry's ``type``; a one-line error names the known ones."""
    from anygpt.modalities.base import ModalityError

    known = families()
    if type_name not in known:
        raise ModalityError(
            f"unknown modality tokenizer type '{type_name}' (known: {', '.join(sorted(known))})"
        )
    return known[type_name]


def build(name: str, entry: ModalityEntry, ctx_files: dict[str, Path], **kw: Any):
    """The adapter of one bundle entry (no weights are read here)."""
    ctx = BuildContext(name, ctx_files, dict(entry.options), **kw)
    return family(entry.type).build(ctx)


def check_declared(adapter: ModalityTokenizer, entry: ModalityEntry, name: str) -> None:
    """Raise when an adapter's codebooks disagree with the bundle's token definition.

    Called when the adapter's model has been loaded (its declared sizes may come from weights).
    The LLM sees ``tokens.num_codebooks`` codebooks of ``tokens.codebook_size`` codes, so the
    adapter must produce at least that many codebooks, none larger than the token block.
    """
    from anygpt.modalities.base import ModalityError

    t = entry.tokens
    sizes = tuple(int(s) for s in adapter.codebook_sizes)
    if adapter.num_codebooks < t.num_codebooks:
        raise ModalityError(
            f"'{name}': the bundle's tokens expect {t.num_codebooks} codebooks but the "
            f"{entry.type} tokenizer gives {adapter.num_codebooks}"
        )
    if any(s > t.codebook_size for s in sizes[: t.num_codebooks]):
        raise ModalityError(
            f"'{name}': the {entry.type} tokenizer has codebooks of {max(sizes)} codes but the "
            f"bundle's tokens hold {t.codebook_size} per codebook"
        )
    if t.fixed_length and adapter.media_kind == "image" and adapter.frame_rate != t.fixed_length:
        raise ModalityError(
            f"'{name}': the {entry.type} tokenizer gives {adapter.frame_rate:g} codes per image "
            f"but the bundle's tokens expect {t.fixed_length}"
        )
