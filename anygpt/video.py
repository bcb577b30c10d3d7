"""Reading video files: sampled frames and the soundtrack, never the whole file in memory.

Frames are sampled either as a fixed count spread uniformly over the clip (the centre of each of
``frames`` equal windows) or at a rate (``fps`` frames per second from the start), and at most
``max_seconds`` of the clip are read.  A long clip is read by seeking to each sampled time, so its
length costs nothing; a short one is decoded straight through, keeping only the sampled frames.
The soundtrack, when there is one, is decoded to mono float at the asked rate, also bounded by
``max_seconds``.

Files are read with PyAV (FFmpeg's libraries), so anything FFmpeg reads works: mp4, mkv, webm,
mov, avi, animated GIF.  A file it cannot read raises :class:`VideoError` with one line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg")
MAX_FRAMES = 64  # sampled frames per clip, whatever the rate asks
SEEK_ABOVE_S = 12.0  # clips longer than this are read by seeking to each sampled time


class VideoError(ValueError):
    """A video that cannot be read or sampled (one line, names the problem)."""


@dataclass
class VideoClip:
    """Sampled frames of a clip and its soundtrack.

    Attributes:
        frames: RGB PIL images, one per sampled time.
        times: the sampled times in seconds from the clip's start (``len(frames)`` floats).
        duration: seconds of the clip that were considered (``min(clip, max_seconds)``).
        audio: the soundtrack, float32 [T] mono at ``sample_rate``, or ``None`` (no audio stream,
            or none asked).
        sample_rate: rate of ``audio``.
    """

    frames: list = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    duration: float = 0.0
    audio: np.ndarray | None = None
    sample_rate: int | None = None


def sample_times(duration: float, frames: int | None, fps: float | None) -> list[float]:
    """Times to sample: ``frames`` window centres over ``duration``, or every ``1/fps`` s."""
    if duration <= 0:
        return [0.0]
    if fps is not None:
        if fps <= 0:
            raise VideoError(f"the frame rate must be positive, not {fps}")
        n = max(1, min(MAX_FRAMES, int(duration * fps + 1e-9)))
        return [i / fps for i in range(n)]
    n = frames if frames is not None else 4
    if not 1 <= n <= MAX_FRAMES:
        raise VideoError(f"frames must be between 1 and {MAX_FRAMES}, not {n}")
    return [(i + 0.5) * duration / n for i in range(n)]


def _open(path: str | Path):
    import av

    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{p}: no such video file")
    if p.stat().st_size == 0:
        raise VideoError(f"{p}: the file is empty")
    try:
        container = av.open(str(p))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{p}: not a readable video ({exc.__class__.__name__})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{p}: the file has no video stream")
    return container


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # microseconds
    return None


def probe_video(path: str | Path) -> tuple[float | None, bool]:
    """``(duration in seconds or None when the header does not say, has a soundtrack)``."""
    container = _open(path)
    try:
        return _duration(container, container.streams.video[0]), bool(container.streams.audio)
    finally:
        container.close()


def _frame_time(frame, stream) -> float | None:
    if frame.pts is None or stream.time_base is None:
        return frame.time
    return float(frame.pts * stream.time_base)


def _pick_sequential(container, stream, times: list[float], limit: float) -> list:
    """Decode from the start; the first frame at or after each sampled time (bounded by limit)."""
    picked: list = []
    last = None
    for frame in container.decode(stream):
        t = _frame_time(frame, stream) or 0.0
        if t > limit + 1e-6:
            break
        while len(picked) < len(times) and t + 1e-6 >= times[len(picked)]:
            picked.append(frame.to_image())
        last = frame
        if len(picked) == len(times):
            break
    if last is not None:  # times past the last frame (rounding, short clips) get the last one
        while len(picked) < len(times):
            picked.append(last.to_image())
    return picked


def _pick_seeking(container, stream, times: list[float]) -> list:
    """Seek to the key frame before each sampled time and decode up to it."""
    picked = []
    for t in times:
        container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            ft = _frame_time(frame, stream)
            if ft is None or ft + 1e-6 >= t:
                break
        if chosen is None:
            if not picked:
                raise VideoError("no frame could be decoded at the sampled times")
            picked.append(picked[-1])
        else:
            picked.append(chosen.to_image())
    return picked


def _read_audio(path: Path, rate: int, limit: float) -> np.ndarray | None:
    import av

    container = av.open(str(path))
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks, total, cap = [], 0, int(limit * rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1)
                chunks.append(chunk)
                total += chunk.shape[0]
            if total >= cap:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
        wave = np.concatenate(chunks).astype(np.float32)[:cap] if chunks else None
        if wave is None or wave.shape[0] == 0:
            return None
        return np.nan_to_num(np.clip(wave, -1.0, 1.0))
    finally:
        container.close()


def read_video(
    path: str | Path,
    *,
    frames: int | None = 4,
    fps: float | None = None,
    max_seconds: float = 60.0,
    audio_rate: int | None = 16000,
) -> VideoClip:
    """Sample a video file (see the module docstring).

    Args:
        frames: how many frames to sample uniformly (ignored when ``fps`` is given).
        fps: sample at this rate from the start instead (at most :data:`MAX_FRAMES` frames).
        max_seconds: read at most this much of the clip.
        audio_rate: decode the soundtrack at this rate (``None``: no audio).
    """
    import av

    if max_seconds <= 0:
        raise VideoError(f"max_seconds must be positive, not {max_seconds}")
    p = Path(path)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        known = _duration(container, stream)
        duration = min(known, max_seconds) if known else max_seconds
        times = sample_times(duration, frames, fps)
        try:
            if known is not None and known > SEEK_ABOVE_S:
                picked = _pick_seeking(container, stream, times)
            else:
                picked = _pick_sequential(container, stream, times, duration)
        except av.FFmpegError as exc:
            raise VideoError(f"{p}: the video could not be decoded ({exc})") from None
        if not picked:
            raise VideoError(f"{p}: the video has no decodable frames")
        if known is None:  # duration unknown from the header: what was decoded is the clip
            duration = max(times[len(picked) - 1], 1e-3)
        clip = VideoClip([im.convert("RGB") for im in picked], times[: len(picked)], duration)
    finally:
        container.close()
    if audio_rate:
        try:
            clip.audio = _read_audio(p, audio_rate, clip.duration)
        except av.FFmpegError:
            clip.audio = None  # a broken soundtrack leaves the pictures usable
        clip.sample_rate = audio_rate if clip.audio is not None else None
    return clip


def write_video(
    path: str | Path,
    frames: list,
    fps: float,
    crf: int = 12,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
) -> None:
    """Write RGB PIL frames as H.264 (yuv420p, even sizes), with an optional AAC soundtrack.

    ``audio``: float [T] mono in [-1, 1] at ``sample_rate``.  Used by worlds and tests.
    """
    import av

    p = Path(path)
    with av.open(str(p), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        w, h = frames[0].size
        w, h = w - w % 2, h - h % 2
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
        for i, im in enumerate(frames):
            frame = av.VideoFrame.from_image(im.convert("RGB").crop((0, 0, w, h)))
            # converted here and stamped: left to the encoder, the same frames came out
            # different byte-wise now and then
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1, 1).reshape(1, -1)
            step = 1024
            for start in range(0, samples.shape[1], step):
                chunk = np.ascontiguousarray(samples[:, start : start + step])
                af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                af.sample_rate = sample_rate
                af.pts = start
                for packet in sound.encode(af):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
