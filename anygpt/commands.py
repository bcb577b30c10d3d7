"""Further subcommands (data preparation and training) registered on the ``anygpt`` parser."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands defined outside :mod:`anygpt.cli`."""
    from anygpt.train.cli import register as register_training
    from anygpt.train.init_llm import register as register_init_llm

    register_training(sub)  # tokenize, extend-vocab, pretrain, sft
    register_init_llm(sub)  # init-llm
    from anygpt.train.tokenize_chat import register as register_tokenize_chat
    from anygpt.world.build import register as register_world

    register_tokenize_chat(sub)  # tokenize-chat
    register_world(sub)  # world
