"""OpenAI request parsing and response shapes, independent of the web framework.

Everything here validates before any model work: media is decoded from base64 and checked
(readable, within the audio-length limit) into temporary files that the engine's loaders read.
Problems raise :class:`APIError`, which the app turns into OpenAI's error JSON.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

AUDIO_FORMATS_IN = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg", "webm": ".webm"}
AUDIO_FORMATS_OUT = ("wav", "flac", "pcm16", "pcm")
IMAGE_MIME = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp"}
IMAGE_MIME.update({"image/gif": ".gif", "image/bmp": ".bmp"})


VIDEO_MIME = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov"}
VIDEO_MIME.update({"video/x-matroska": ".mkv", "video/x-msvideo": ".avi", "video/mpeg": ".mpg"})

TEMP_PREFIX = "anygpt-serve-"


def scrub(message: str) -> str:
    """A message without the server's temporary file names or Python object reprs."""
    message = re.sub(r"""[^\s'"]*""" + TEMP_PREFIX + r"""[^\s'"]*""", "the uploaded file", message)
    return re.sub(r" ?<_io\.\w+ object at 0x[0-9a-f]+>", "", message)


class APIError(Exception):
    """A request the server refuses: HTTP status and OpenAI's ``error`` object fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        message = scrub(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class Limits:
    """What one request may ask for; checked before any work is queued.

    Attributes:
        max_request_bytes: body size (413 above it).
        max_audio_seconds: length of each audio input (400 above it).
        max_concurrency: requests in flight at once (429 above it).
        max_tokens: largest ``max_tokens`` a request may ask for.
        max_n: largest ``n`` (choices per request).
        batch_window_s: how long the generation worker waits for more requests to batch.
        max_batch: most sequences generated together.
        media_root: folder that ``file://`` image URLs may point into (None: file URLs refused).
    """

    max_request_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 30.0
    max_concurrency: int = 64
    max_tokens: int = 4096
    max_n: int = 4
    batch_window_s: float = 0.01
    max_batch: int = 16
    media_root: Path | None = None


@dataclass
class TempFiles:
    """Temporary media files of one request, removed by :meth:`cleanup`."""

    paths: list[str] = field(default_factory=list)

    def write(self, data: bytes, suffix: str) -> str:
        fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix)
        self.paths.append(path)  # before writing: a failed write (disk full) is removed too
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def cleanup(self) -> None:
        for p in self.paths:
            try:
                os.unlink(p)
            except OSError:
                pass
        self.paths.clear()


def b64decode(data: Any, param: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise APIError(400, f"{param} must be a non-empty base64 string", param=param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"{param} is not valid base64 ({exc})", param=param) from exc


def check_audio(data: bytes, limits: Limits, param: str) -> float:
    """Duration in seconds of encoded audio; 400 when unreadable, empty or too long."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types for bad bytes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = re.sub(r"^Error opening <[^>]*>: ", "", reason)[:200]
        raise APIError(400, f"{param}: unreadable audio ({reason})", param=param) from exc
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if info.frames <= 0:
        raise APIError(400, f"{param}: the audio is empty", param=param)
    if seconds > limits.max_audio_seconds:
        raise APIError(
            400,
            f"{param}: the audio is {seconds:.1f} s long; this server accepts at most "
            f"{limits.max_audio_seconds:g} s",
            param=param,
            code="audio_too_long",
        )
    return seconds


def check_image(data: bytes, param: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad bytes
        raise APIError(400, f"{param}: unreadable image ({exc})", param=param) from exc


def audio_input(part: dict, limits: Limits, files: TempFiles, param: str) -> str:
    """An ``input_audio`` content part -> a checked temporary file path."""
    spec = part.get("input_audio")
    if not isinstance(spec, dict):
        raise APIError(400, f"{param}.input_audio must be an object", param=param)
    fmt = str(spec.get("format") or "wav").lower()
    if fmt not in AUDIO_FORMATS_IN:
        raise APIError(
            400,
            f"{param}.input_audio.format '{fmt}' is not supported ({', '.join(AUDIO_FORMATS_IN)})",
            param=f"{param}.input_audio.format",
        )
    data = b64decode(spec.get("data"), f"{param}.input_audio.data")
    check_audio(data, limits, f"{param}.input_audio")
    return files.write(data, AUDIO_FORMATS_IN[fmt])


def image_input(part: dict, limits: Limits, files: TempFiles, param: str) -> str:
    """An ``image_url`` content part (data URL, or file URL under ``media_root``) -> a path."""
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise APIError(400, f"{param}.image_url.url must be a string", param=param)
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        mime = head[5:].split(";")[0].lower()
        if ";base64" not in head:
            raise APIError(400, f"{param}: only base64 data URLs are supported", param=param)
        data = b64decode(payload, f"{param}.image_url")
        check_image(data, param)
        return files.write(data, IMAGE_MIME.get(mime, ".png"))
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if limits.media_root is None:
            raise APIError(
                400,
                f"{param}: file URLs are disabled (start the server with --media-root DIR)",
                param=param,
            )
        path = Path(unquote(parsed.path)).resolve()
        root = limits.media_root.resolve()
        if root not in path.parents:
            raise APIError(400, f"{param}: {path} is outside the media root", param=param)
        if not path.is_file():
            raise APIError(400, f"{param}: no such file {path}", param=param)
        check_image(path.read_bytes(), param)
        return str(path)
    raise APIError(
        400, f"{param}: image URLs must be data: or file: URLs (nothing is downloaded)", param=param
    )


def video_input(part: dict, limits: Limits, files: TempFiles, param: str) -> str:
    """A ``video_url`` content part (base64 data URL, or file URL under ``media_root``) -> a path.

    The clip is probed here (container and video stream), so an unreadable one is a 400 before
    any work; only its sampled frames are decoded later.
    """
    from anygpt.video import VIDEO_SUFFIXES, VideoError, probe_video

    spec = part.get("video_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise APIError(400, f"{param}.video_url.url must be a string", param=param)
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        mime = head[5:].split(";")[0].lower()
        if ";base64" not in head:
            raise APIError(400, f"{param}: only base64 data URLs are supported", param=param)
        path = files.write(b64decode(payload, f"{param}.video_url"), VIDEO_MIME.get(mime, ".mp4"))
    elif urlparse(url).scheme == "file":
        if limits.media_root is None:
            raise APIError(
                400,
                f"{param}: file URLs are disabled (start the server with --media-root DIR)",
                param=param,
            )
        resolved = Path(unquote(urlparse(url).path)).resolve()
        if limits.media_root.resolve() not in resolved.parents:
            raise APIError(400, f"{param}: {resolved} is outside the media root", param=param)
        if not resolved.is_file() or not resolved.name.lower().endswith(VIDEO_SUFFIXES):
            raise APIError(400, f"{param}: no such video file {resolved}", param=param)
        path = str(resolved)
    else:
        raise APIError(
            400,
            f"{param}: video URLs must be data: or file: URLs (nothing is downloaded)",
            param=param,
        )
    try:
        probe_video(path)
    except VideoError as exc:
        raise APIError(400, f"{param}: {scrub(str(exc))}", param=param) from None
    return path


@dataclass
class ChatMessage:
    """One OpenAI message, its media as temporary file paths."""

    role: str
    text: str
    images: list[str] = field(default_factory=list)  # pictures and videos (told by suffix)
    speech: list[str] = field(default_factory=list)


def parse_messages(messages: Any, limits: Limits, files: TempFiles) -> list[ChatMessage]:
    """OpenAI ``messages`` -> user/assistant messages (system and developer lines are dropped:
    the chat template has its own system line)."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty array", param="messages")
    out: list[ChatMessage] = []
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{param} must be an object", param=param)
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"{param}.role '{role}' is not supported", param=f"{param}.role")
        content = m.get("content")
        msg = ChatMessage(role, "")
        if content is None and role == "assistant":
            audio = m.get("audio")
            content = (audio or {}).get("transcript", "") if isinstance(audio, dict) else ""
        if isinstance(content, str):
            msg.text = content
        elif isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                p = f"{param}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise APIError(400, f"{p}.text must be a string", param=p)
                    texts.append(part["text"])
                elif kind == "input_audio" and role == "user":
                    msg.speech.append(audio_input(part, limits, files, p))
                elif kind == "image_url" and role == "user":
                    msg.images.append(image_input(part, limits, files, p))
                elif kind == "video_url" and role == "user":
                    msg.images.append(video_input(part, limits, files, p))
                else:
                    raise APIError(
                        400, f"{p}: content part type '{kind}' is not supported", param=p
                    )
            msg.text = " ".join(t.strip() for t in texts if t.strip())
        else:
            raise APIError(400, f"{param}.content must be a string or an array", param=param)
        if role in ("user", "assistant"):
            out.append(msg)
    if not out or out[-1].role != "user":
        raise APIError(400, "the last message must come from the user", param="messages")
    return out


def number(body: dict, key: str, lo: float, hi: float, default: Any = None, integer=False):
    """A numeric field within ``[lo, hi]`` (``None`` when absent and no default)."""
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        bounds = f"[{int(lo)}, {int(hi)}]" if integer else f"[{lo:g}, {hi:g}]"
        raise APIError(400, f"{key} must be {kind} in {bounds}", param=key)
    return int(value) if integer else float(value)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def encode_audio(wave, sample_rate: int, fmt: str) -> bytes:
    """A float waveform [T] -> file bytes (``wav``/``flac``: 16-bit; ``pcm16``: raw little-endian)."""
    import numpy as np
    import soundfile as sf

    x = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if fmt in ("pcm16", "pcm"):
        return (x * 32767.0).astype("<i2").tobytes()
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def encode_image(image) -> str:
    """A PIL image -> base64 PNG."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
