"""World speech: espeak-ng voices at 16 kHz, voice checks, silence trimming."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from anygpt.world import speech

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng absent")


@needs_espeak
def test_speak_gives_16khz_float_audio_of_plausible_length():
    text = "a big red circle to the left of a small blue star"  # 11 words
    wav = speech.speak(text, "en-us", 160)
    assert wav.dtype == np.float32 and wav.ndim == 1
    seconds = len(wav) / 16000
    # 11 words at 160 words a minute is about 4 s; espeak-ng is a little faster than its -s.
    assert 2.0 < seconds < 6.0
    assert 0.05 < np.abs(wav).max() <= 0.99
    # exactly 50 ms of silence each side, sound right after it
    assert np.abs(wav[:800]).max() == 0 and np.abs(wav[-800:]).max() == 0
    assert np.abs(wav[800:2400]).max() > 0.01 and np.abs(wav[-2400:-800]).max() > 0.001
    slow, fast = speech.speak(text, "en-us", 130), speech.speak(text, "en-us", 190)
    assert len(slow) > 1.2 * len(fast)


@needs_espeak
def test_voices_differ_and_splits_do_not_overlap():
    assert not set(speech.VOICES_TRAIN) & set(speech.VOICES_HELDOUT)
    assert not set(speech.RATES_TRAIN) & set(speech.RATES_HELDOUT)
    picks = ["en-us", "en-us+f2", "en+m3", "en-029", "en-gb-x-gbcwmd+f2"]
    waves = [speech.speak("hello there", v, 160).tobytes() for v in picks]
    assert len(set(waves)) == len(picks)
    for v in speech.VOICES_TRAIN + speech.VOICES_HELDOUT:
        speech.check_voice(v)


@needs_espeak
@pytest.mark.parametrize(
    "voice, words",
    [
        ("nonsense", "unknown espeak-ng voice"),
        ("en-us+zz", "variant 'zz'"),
        ("en-gb+m3", r"en\+m3"),
    ],
)
def test_bad_voice_is_a_clear_error(voice, words):
    with pytest.raises(ValueError, match=words):
        speech.speak("hello", voice, 160)


@needs_espeak
def test_bad_rate_pitch_and_text():
    with pytest.raises(ValueError, match="rate"):
        speech.speak("hello", "en-us", 5)
    with pytest.raises(ValueError, match="pitch"):
        speech.speak("hello", "en-us", 160, pitch=120)
    with pytest.raises(ValueError, match="empty"):
        speech.speak("  ", "en-us", 160)
    low = speech.speak("hello there", "en-us", 160, pitch=10)
    high = speech.speak("hello there", "en-us", 160, pitch=90)
    assert low.tobytes() != high.tobytes()


def test_missing_espeak_names_the_package(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(speech.SpeechSynthesisError, match="Debian package 'espeak-ng'"):
        speech.espeak_binary()


def test_trim_silence_keeps_a_margin():
    sr = 16000
    wav = np.zeros(sr * 2, np.float32)
    wav[sr // 2 : sr] = 0.5 * np.sin(np.arange(sr // 2) * 0.1)
    out = speech.trim_silence(wav, sr, margin_s=0.05)
    assert abs(len(out) - (sr // 2 + 2 * 800)) <= 160
    assert np.abs(out[:800]).max() == 0 and np.abs(out[800:960]).max() > 0
    assert speech.trim_silence(np.zeros(sr, np.float32), sr).size == 0
