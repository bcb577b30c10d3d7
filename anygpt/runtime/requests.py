"""Requests in AnyGPT's pipe syntax: base-model lines and chat turns.

Parsing knows nothing about models: which modalities exist is passed in by the caller (the bundle's
own list), so a new modality family needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anygpt.audio import AudioError
from anygpt.checkpoint import CheckpointError
from anygpt.layout import LayoutError
from anygpt.modalities.base import ModalityError
from anygpt.prompts import T2X, X2T
from anygpt.text_tokenizer import TextTokenizerError
from anygpt.video import VIDEO_SUFFIXES

# Errors that concern one request: reported on one line, the rest of the batch goes on.
REQUEST_ERRORS = (
    ModalityError,
    AudioError,
    LayoutError,
    CheckpointError,
    TextTokenizerError,
    ValueError,
    FileNotFoundError,
    OSError,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class RequestError(ValueError):
    """A malformed request line."""


@dataclass
class BaseRequest:
    """One base-model instruction: ``source|target|content[|voice_prompt]``."""

    source: str
    target: str
    content: str
    voice_prompt: str | None = None

    @property
    def direction(self) -> str:
        return X2T if self.target == "text" else T2X


def split_fields(line: str) -> list[str]:
    """Split on ``|``; ``\\|`` stands for a literal bar inside a field."""
    parts, buf, i = [], [], 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] == "|":
            buf.append("|")
            i += 2
            continue
        if ch == "|":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut for an error message (a huge bad field is never echoed whole)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_base_line(line: str, modalities: list[str]) -> BaseRequest:
    """Parse ``source|target|content[|voice_prompt]`` (AnyGPT's base command-line syntax)."""
    fields = split_fields(line.strip())
    if len(fields) < 3:
        raise RequestError(
            "expected 'source|target|content', e.g. 'text|image|a cat' or 'speech|text|question.wav'"
        )
    source, target = fields[0].strip().lower(), fields[1].strip().lower()
    rest = fields[2:]
    voice = None
    if source == "text" and target == "speech" and len(rest) >= 2:
        if len(rest) > 2 or not rest[-1].strip().lower().endswith(AUDIO_SUFFIXES):
            raise RequestError(
                f"the voice prompt field '{clip(rest[-1].strip())}' is not an audio file "
                f"({', '.join(AUDIO_SUFFIXES)}); 'text|speech|TEXT[|VOICE.wav]' takes one more "
                "field at most (write \\| for a bar inside the text)"
            )
        voice = rest.pop().strip()
    content = "|".join(rest)
    known = ["text", *modalities]
    for name in (source, target):
        if name not in known:
            raise RequestError(
                f"unknown modality '{clip(name)}'; this model knows: {', '.join(known)}"
            )
    if (source == "text") == (target == "text"):
        raise RequestError(f"'{source}|{target}' is not supported: exactly one side must be text")
    if source != "text":
        content = content.strip()  # a path
    if not content.strip():
        raise RequestError("the content field is empty")
    if voice is not None and not voice:
        voice = None
    return BaseRequest(source, target, content, voice)


@dataclass
class ChatRequest:
    """One chat turn in AnyGPT's ``task|text|to_modality|voice|images|speech|music`` form.

    Video files (:data:`VIDEO_SUFFIXES`) given in the images field are ``videos``.
    """

    task: str
    text: str
    to_modality: str = ""
    voice_prompt: str = ""
    images: list[str] = field(default_factory=list)
    speech: list[str] = field(default_factory=list)
    music: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)


def _files(field_text: str) -> list[str]:
    return [p.strip() for p in field_text.split(",") if p.strip()]


def _check_kinds(field_name: str, files: list[str], kind: tuple, other: tuple) -> None:
    """Refuse a file of the other media kind in a field (fields swapped or shifted)."""
    for f in files:
        if f.lower().endswith(other) or (
            field_name == "voice prompt" and not f.lower().endswith(kind)
        ):
            raise RequestError(
                f"the {field_name} field holds '{clip(f)}', which is not "
                f"{'an audio' if kind is AUDIO_SUFFIXES else 'an image'} file; the fields are "
                "task|text|to_modality|voice|images|speech|music"
            )


def parse_chat_line(line: str, modalities: list[str] | None = None) -> ChatRequest:
    """Parse a chat line.  A line without ``|`` is plain text.

    Field order follows AnyGPT's chat code (voice prompt before images).  AnyGPT's README swaps
    those two; when the file types make it unambiguous (an image where the voice prompt should be),
    the README order is accepted too.
    """
    if "|" not in line:
        return ChatRequest("interleaved", line.strip())
    given = [x.strip() for x in split_fields(line)]
    if len(given) > 7:
        raise RequestError(
            f"a chat line has at most 7 fields (task|text|to_modality|voice|images|speech|music); "
            f"this one has {len(given)} (write \\| for a bar inside the text)"
        )
    task, text, to_mod, voice, images, speech, music = (given + [""] * 7)[:7]
    if voice.lower().endswith(IMAGE_SUFFIXES) and (
        not images or images.lower().endswith(AUDIO_SUFFIXES)
    ):
        voice, images = images, voice
    _check_kinds("voice prompt", [voice] if voice else [], AUDIO_SUFFIXES, IMAGE_SUFFIXES)
    _check_kinds("image", _files(images), IMAGE_SUFFIXES, AUDIO_SUFFIXES)
    _check_kinds("speech", _files(speech), AUDIO_SUFFIXES, IMAGE_SUFFIXES)
    _check_kinds("music", _files(music), AUDIO_SUFFIXES, IMAGE_SUFFIXES)
    known = ["text", *(modalities or [])]
    if to_mod and modalities is not None and to_mod.lower() not in known:
        raise RequestError(
            f"unknown output modality '{to_mod}'; this model knows: {', '.join(known)}"
        )
    visual = _files(images)
    return ChatRequest(
        task or "interleaved",
        text,
        to_mod.lower(),
        voice,
        [f for f in visual if not f.lower().endswith(VIDEO_SUFFIXES)],
        _files(speech),
        _files(music),
        [f for f in visual if f.lower().endswith(VIDEO_SUFFIXES)],
    )
