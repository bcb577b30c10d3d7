"""Where the project's data folders are (``config/``, ``tokenizers/``, ``models/``).

In a checkout (and an editable install) they are the folders at the top of the tree.  A built
wheel carries a copy of them under ``anygpt/_data/`` (see ``setup.py``), which is used when present,
so an installed package never looks for them next to site-packages.  ``ANYGPT_HOME`` points at
another tree holding those folders.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_ENV = "ANYGPT_MODEL"
PACKAGED = Path(__file__).resolve().parent / "_data"


def project_root() -> Path:
    env = os.environ.get("ANYGPT_HOME")
    if env:
        return Path(env)
    if PACKAGED.is_dir():
        return PACKAGED
    return Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    return project_root() / "config"


def tokenizers_dir() -> Path:
    return project_root() / "tokenizers"


def models_dir() -> Path:
    return project_root() / "models"


def default_nano_path() -> Path:
    return models_dir() / "anygpt-nano"


def default_model() -> Path:
    """The bundle used when ``--model`` is not given: ``$ANYGPT_MODEL`` or the shipped nano bundle."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    return Path(env) if env else default_nano_path()
