"""Output files: safe, unique names, written whole or not at all."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(text: str, max_len: int = 40) -> str:
    """A file-name-safe stem from user text (``/``, spaces, emoji and control characters removed)."""
    stem = _UNSAFE.sub("_", text.strip()).strip("._-")
    return stem[:max_len].rstrip("._-") or "output"


def unique_path(directory: str | Path, text: str, modality: str, suffix: str) -> Path:
    """``{dir}/{stem}-{modality}-{YYYYmmdd-HHMMSS}-{random}{suffix}``; never an existing file."""
    directory = Path(directory)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        path = directory / f"{safe_stem(text)}-{modality}-{stamp}-{secrets.token_hex(3)}{suffix}"
        if not path.exists():
            return path


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename into place; on any error nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
