"""Subcommands defined outside :mod:`anygpt.cli`, registered on the ``anygpt`` parser.

Each module keeps its own ``register(sub)``; only argparse runs when the parser is built, and a
handler imports what it needs when its subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib

# module -> the subcommands it adds
MODULES = {
    "anygpt.train.cli": "tokenize, extend-vocab, pretrain, sft",
    "anygpt.train.init_llm": "init-llm",
    "anygpt.train.grow_llm": "grow-llm",
    "anygpt.train.tokenize_chat": "tokenize-chat",
    "anygpt.train.bundle_tokenizers": "bundle-tokenizers",
    "anygpt.train.tokenizer_cli": "train-tokenizer, train-judge",
    "anygpt.world.build": "world",
    "anygpt.eval.nano": "eval",
    "anygpt.demo": "demo",
    "anygpt.check": "check",
    "anygpt.serve.cli": "serve",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands of every module in :data:`MODULES`."""
    for module in MODULES:
        importlib.import_module(module).register(sub)
