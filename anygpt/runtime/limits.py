"""How much input media fits a model's context, checked from file headers before any decoding.

A modality spends ``frame rate x codebooks`` tokens per second of audio (AnyGPT's speech 50/s,
music 200/s, general audio 300/s), so a 4096-token context holds about 13 s of general audio and
80 s of speech.  An input longer than that is refused from its header (nothing is read), naming
the limit and the crop flag; with a crop (``--max-seconds``) only that window is read.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

from anygpt.runtime.requests import RequestError

# Prompt tokens around a media span (instruction, tags, role markers) plus a short text reply.
RESERVED_TOKENS = 128


def tokens_per_second(tok: Any, codebooks: int) -> float | None:
    """Tokens one second of input costs, or ``None`` for media without a time axis."""
    if getattr(tok, "media_kind", None) != "audio":
        return None
    try:
        frames = float(tok.sample_rate) / float(tok.hop_length)
    except (AttributeError, TypeError, ZeroDivisionError):
        return None
    return frames * max(1, codebooks)


def crop_options(tok: Any, seconds: float | None) -> dict[str, float]:
    """The ``load`` keyword that reads only the first ``seconds`` (none when not cropping)."""
    if seconds is None:
        return {}
    params = inspect.signature(tok.load).parameters
    for name in ("max_seconds", "window_s"):
        if name in params:
            return {name: seconds}
    return {}


def own_window(tok: Any) -> float | None:
    """Seconds a tokenizer reads by default (EnCodec reads a window; speech reads everything)."""
    window = getattr(tok, "window_s", None)
    return float(window) if isinstance(window, (int, float)) and window > 0 else None


def check_input_length(bundle: Any, modality: str, path: str | Path, crop: float | None) -> None:
    """Refuse an audio input whose tokens cannot fit the context, from its header only.

    Raises :class:`RequestError` naming the file's length, the limit and the crop flag.
    """
    from anygpt.audio import probe_audio

    tok = bundle.modality(modality)
    spec = bundle.layout.spec(modality)
    rate = tokens_per_second(tok, spec.num_codebooks)
    if rate is None:
        return
    seconds = probe_audio(path)  # an unreadable file fails here, before any decoding
    used = min(x for x in (seconds, own_window(tok), crop) if x is not None)
    limit = (bundle.config.max_context - RESERVED_TOKENS) / rate
    if used > limit:
        fit = max(math.floor(limit * 10) / 10, 0.1)
        raise RequestError(
            f"{path} gives {used:.1f} s of {modality} = {int(used * rate)} tokens; this model's "
            f"context ({bundle.config.max_context} tokens, {rate:g} per second) takes at most "
            f"{limit:.1f} s: pass --max-seconds {fit:g} to use the first {fit:g} s"
        )
