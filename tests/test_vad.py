"""The streaming VAD on real speech (the nano bundle's demo question), silence and noise bursts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from anygpt.runtime.vad import StreamingVAD

pytest.importorskip("silero_vad")

QUESTION = Path(__file__).resolve().parents[1] / "models" / "anygpt-nano" / "demo" / "question.wav"
SR = 16000


def question() -> np.ndarray:
    wave, sr = sf.read(QUESTION, dtype="float32")
    assert sr == SR
    return wave if wave.ndim == 1 else wave[:, 0]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def run(vad: StreamingVAD, audio: np.ndarray, chunk: int = 1234) -> list:
    events = []
    for i in range(0, len(audio), chunk):
        events += vad.feed(audio[i : i + chunk])
    return events


def test_speech_between_silences_is_one_utterance_with_its_times():
    speech = question()
    events = run(StreamingVAD(), np.concatenate([silence(1.0), speech, silence(1.0)]))
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    start, stop = events[0].time, events[1].time
    assert 0.9 <= start <= 1.0 + 0.3
    assert 1.0 + len(speech) / SR - 0.4 <= stop <= 1.0 + len(speech) / SR + 0.7


def test_silence_gives_no_events():
    assert run(StreamingVAD(), silence(5.0)) == []


def test_bursts_shorter_than_the_min_speech_duration_start_nothing():
    rng = np.random.default_rng(0)
    speech = question()
    # three 130 ms bursts: white noise, and the loudest slices of real speech
    audio = [silence(0.5)]
    audio += [rng.normal(0, 0.3, int(0.13 * SR)).astype(np.float32), silence(0.6)]
    loud = int(np.argmax(np.convolve(np.abs(speech), np.ones(2080), "valid")))
    for _ in range(2):
        audio += [speech[loud : loud + int(0.13 * SR)], silence(0.6)]
    audio = np.concatenate(audio)
    assert run(StreamingVAD(min_speech_ms=250), audio) == []
    # the same bursts do start speech with a shorter minimum (so the check above can fail)
    short = run(StreamingVAD(min_speech_ms=32), audio)
    assert any(e.kind == "speech_started" for e in short)


def test_an_endless_utterance_is_cut_at_the_max_length():
    speech = question()
    endless = np.concatenate([speech] * 6)  # no pause long enough to stop
    events = run(StreamingVAD(max_utterance_s=3.0, min_silence_ms=800), endless)
    forced = [e for e in events if e.forced]
    assert forced and forced[0].time <= 3.0 + 1.5


def test_energy_fallback_and_bad_settings():
    loud = np.concatenate([silence(0.5), 0.3 * np.ones(SR, dtype=np.float32), silence(1.0)])
    events = run(StreamingVAD(detector="energy"), loud)
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    with pytest.raises(ValueError):
        StreamingVAD(threshold=1.5)
    with pytest.raises(ValueError):
        StreamingVAD(detector="nope")
