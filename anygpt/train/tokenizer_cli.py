"""``anygpt train-tokenizer MODALITY`` and ``anygpt train-judge MODALITY``.

Each trainer module exposes ``add_args(parser)`` and ``main(args) -> int``; this file only maps a
modality to its trainer, importing it when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib

TOKENIZER_TRAINERS = {
    "image": ("anygpt.train.vq_image", "VQ image tokenizer (encoder, codebook, decoder)"),
    "speech": ("anygpt.train.speech_units", "speech units: recogniser, k-means, unit vocoder"),
    "music": ("anygpt.train.music_codec", "EnCodec-architecture music codec"),
}
JUDGE_TRAINERS = {
    "image": ("anygpt.eval.image_judge", "picture attribute classifier"),
    "music": ("anygpt.eval.music_judge", "music attribute classifier"),
    "speech": ("anygpt.eval.speech_judge", "speaker embedding for voice similarity"),
}


def _add_group(sub, name: str, help_text: str, trainers: dict[str, tuple[str, str]]) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    kinds = p.add_subparsers(dest="modality", metavar="MODALITY")
    kinds.required = True
    for modality, (module, what) in trainers.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:  # a trainer whose optional pieces are missing is left out
            continue
        if not hasattr(mod, "add_args"):
            continue
        k = kinds.add_parser(modality, help=what, description=(mod.__doc__ or what).strip())
        mod.add_args(k)
        k.set_defaults(handler=mod.main)


def register(sub: argparse._SubParsersAction) -> None:
    _add_group(
        sub, "train-tokenizer", "train a modality tokenizer on your own media", TOKENIZER_TRAINERS
    )
    _add_group(sub, "train-judge", "train an evaluation judge on world media", JUDGE_TRAINERS)
