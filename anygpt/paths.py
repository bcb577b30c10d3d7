"""Where the project's data folders are (``config/``, ``tokenizers/``, ``models/``).

The package is installed in editable mode from a checkout, so the folders sit beside it.
``ANYGPT_HOME`` points elsewhere when the checkout is not the working copy.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_ENV = "ANYGPT_MODEL"


def project_root() -> Path:
    env = os.environ.get("ANYGPT_HOME")
    return Path(env) if env else Path(__file__).resolve().parent.parent


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
