"""Streaming voice activity detection: feed 16 kHz audio in any chunk sizes, get speech events.

The default detector is Silero VAD (the ``silero-vad`` package, a small TorchScript network shipped
inside the wheel, so nothing is downloaded); :class:`EnergyDetector` is a plain RMS fallback for
machines without it.  Both score frames of 512 samples (32 ms); :class:`StreamingVAD` turns those
per-frame speech probabilities into ``speech_started`` / ``speech_stopped`` events:

* speech starts only after ``min_speech_ms`` of consecutive speech frames, so a short noise burst
  (a cough, a click, a door) never starts a turn or interrupts a reply; the event's time is the
  first frame of the run;
* speech stops after ``min_silence_ms`` of non-speech frames (hysteresis: a frame counts as
  silence below ``threshold - 0.15``), stamped at the first silent frame;
* an utterance longer than ``max_utterance_s`` is ended by force (``forced=True``), so an audio
  stream that never falls silent still yields turns.

Times are seconds of stream time (samples fed / 16000), not wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16000
FRAME = 512  # samples per scored frame (Silero's window at 16 kHz)


@dataclass(frozen=True)
class VADEvent:
    """``kind`` is ``speech_started`` or ``speech_stopped``; ``time`` in seconds of stream time."""

    kind: str
    time: float
    forced: bool = False


class SileroDetector:
    """Silero VAD: speech probability of each 512-sample frame; keeps its recurrent state."""

    def __init__(self) -> None:
        try:
            from silero_vad import load_silero_vad
        except ImportError as exc:
            raise RuntimeError(
                "silero-vad is not installed (pip install silero-vad), or use the energy detector"
            ) from exc
        self.model = load_silero_vad()

    def reset(self) -> None:
        self.model.reset_states()

    @torch.no_grad()
    def __call__(self, frame: np.ndarray) -> float:
        """``frame``: float32 [512] in [-1, 1] -> probability of speech."""
        return float(self.model(torch.from_numpy(frame), SAMPLE_RATE).item())


class EnergyDetector:
    """RMS level against ``threshold_db`` (dBFS): 1.0 above it, 0.0 below (a fallback only)."""

    def __init__(self, threshold_db: float = -35.0) -> None:
        self.threshold_db = threshold_db

    def reset(self) -> None:
        pass

    def __call__(self, frame: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)) + 1e-12))
        return 1.0 if 20 * np.log10(rms) > self.threshold_db else 0.0


def make_detector(kind: str = "silero"):
    if kind == "silero":
        return SileroDetector()
    if kind == "energy":
        return EnergyDetector()
    raise ValueError(f"unknown VAD '{kind}' (silero, energy)")


class StreamingVAD:
    """Speech start/stop events over a 16 kHz stream fed in chunks of any size.

    Args:
        threshold: speech probability at which a frame counts as speech.
        min_speech_ms: consecutive speech needed before ``speech_started``.
        min_silence_ms: consecutive silence needed before ``speech_stopped``.
        max_utterance_s: longest utterance before a forced ``speech_stopped`` (None: no limit).
        detector: ``"silero"`` (default), ``"energy"`` or a callable ``frame [512] -> prob``.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        min_speech_ms: float = 250.0,
        min_silence_ms: float = 500.0,
        max_utterance_s: float | None = 20.0,
        detector="silero",
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must be between 0 and 1")
        self.threshold = threshold
        self.off_threshold = max(threshold - 0.15, 0.01)
        frame_ms = 1000.0 * FRAME / SAMPLE_RATE
        self.min_speech_frames = max(1, round(min_speech_ms / frame_ms))
        self.min_silence_frames = max(1, round(min_silence_ms / frame_ms))
        self.max_frames = (
            None if max_utterance_s is None else round(max_utterance_s * 1000 / frame_ms)
        )
        self.detector = make_detector(detector) if isinstance(detector, str) else detector
        self.reset()

    def reset(self) -> None:
        reset = getattr(self.detector, "reset", None)
        if reset is not None:
            reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames = 0  # frames scored so far
        self.speaking = False
        self._run = 0  # consecutive frames of the state-changing kind
        self._run_start = 0  # frame index where that run began
        self._utterance_start = 0

    @property
    def time(self) -> float:
        """Stream time scored so far, seconds."""
        return self.frames * FRAME / SAMPLE_RATE

    def feed(self, chunk: np.ndarray) -> list[VADEvent]:
        """Score ``chunk`` (float32 [N] at 16 kHz; a remainder waits for the next chunk)."""
        audio = np.concatenate([self._pending, np.asarray(chunk, dtype=np.float32).reshape(-1)])
        events: list[VADEvent] = []
        n = audio.shape[0] // FRAME
        for k in range(n):
            events += self._step(self.detector(audio[k * FRAME : (k + 1) * FRAME]))
        self._pending = audio[n * FRAME :]
        return events

    def flush(self) -> list[VADEvent]:
        """End of the stream: an utterance still open is stopped now."""
        if self.speaking:
            self.speaking = False
            return [VADEvent("speech_stopped", self.time, forced=True)]
        return []

    def _step(self, prob: float) -> list[VADEvent]:
        t = self.frames
        self.frames += 1
        sec = FRAME / SAMPLE_RATE
        if not self.speaking:
            if prob >= self.threshold:
                if self._run == 0:
                    self._run_start = t
                self._run += 1
                if self._run >= self.min_speech_frames:
                    self.speaking, self._run = True, 0
                    self._utterance_start = self._run_start
                    return [VADEvent("speech_started", self._run_start * sec)]
            else:
                self._run = 0
            return []
        if prob < self.off_threshold:
            if self._run == 0:
                self._run_start = t
            self._run += 1
            if self._run >= self.min_silence_frames:
                self.speaking, self._run = False, 0
                return [VADEvent("speech_stopped", self._run_start * sec)]
        else:
            self._run = 0
        if self.max_frames is not None and self.frames - self._utterance_start >= self.max_frames:
            # the next speech frame may start a new utterance at once
            self.speaking, self._run = False, 0
            return [VADEvent("speech_stopped", self.time, forced=True)]
        return []
