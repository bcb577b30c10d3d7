"""The nano world's voices: English speech from espeak-ng, as 16 kHz mono float32 waveforms.

A voice is an espeak-ng language voice, optionally with a variant: ``"en-us"``, ``"en-gb+m3"``,
``"en-gb-scotland+f2"``.  The rate is in words per minute (espeak-ng's ``-s``).  Some voices and
rates are only used in the held-out split, so that a model trained on the world can be measured on
voices it never heard.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess

import numpy as np

from anygpt.world.vocab import SPEECH_RATE

# A voice is an accent (espeak-ng language voice) with a speaker (variant).  Every accent is heard
# in training; held-out voices are unseen speakers, and accent-speaker pairs never heard together.
# "en" is British English; espeak-ng ignores variants written as "en-gb+VARIANT", so "en" it is.
_ACCENTS = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-029",
    "en-gb-x-gbcwmd",
)
_VARIANTS_TRAIN = ("", "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3")
_VARIANTS_HELDOUT = ("m6", "m7", "f4")


def _voice(accent: str, variant: str) -> str:
    return f"{accent}+{variant}" if variant else accent


# One seen speaker per accent is held out with that accent (a different speaker each time).
_PAIRS_HELDOUT = tuple(
    _voice(a, _VARIANTS_TRAIN[(2 * i + 1) % len(_VARIANTS_TRAIN)]) for i, a in enumerate(_ACCENTS)
)
# 64 voices: 8 accents x 9 speakers, less the held-out pairs.
VOICES_TRAIN: tuple[str, ...] = tuple(
    v for a in _ACCENTS for v in (_voice(a, s) for s in _VARIANTS_TRAIN) if v not in _PAIRS_HELDOUT
)
# 12 voices: the 8 held-out pairs, and 4 unseen speakers.
VOICES_HELDOUT: tuple[str, ...] = _PAIRS_HELDOUT + (
    "en-us+m6",
    "en+f4",
    "en-029+m7",
    "en-gb-scotland+f4",
)
RATES_TRAIN: tuple[int, ...] = (130, 145, 160, 175, 190)  # words per minute
RATES_HELDOUT: tuple[int, ...] = (138, 168, 183)

DEFAULT_VOICE = "en-us"
TRIM_MARGIN_S = 0.05  # silence kept before the first and after the last sound
_SILENCE_DB = -40.0  # frames this far below the loudest frame count as silence


class SpeechSynthesisError(RuntimeError):
    """espeak-ng is missing, refused a voice, or produced no audio (one line)."""


def espeak_binary() -> str:
    """Path of the espeak-ng program; raises :class:`SpeechSynthesisError` when absent."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise SpeechSynthesisError(
            "espeak-ng is not installed; install the Debian package 'espeak-ng' "
            "(apt-get install espeak-ng)"
        )
    return path


@functools.lru_cache(maxsize=1)
def _known_voices() -> tuple[frozenset[str], frozenset[str]]:
    """(language voice names, variant names) that this espeak-ng installation has."""
    exe = espeak_binary()

    def table(arg: str) -> list[list[str]]:
        out = subprocess.run([exe, arg], capture_output=True, text=True, check=False).stdout
        return [line.split() for line in out.splitlines()[1:] if line.strip()]

    languages = set()
    for row in table("--voices"):
        # Columns: priority, language, age/gender, name, file, then "(other-language priority)".
        languages.update(row[1:2])
        languages.update(c[1:] for c in row[5:] if c.startswith("("))
    variants = set()
    for row in table("--voices=variant"):
        # The file column is "!v/NAME"; espeak-ng's "+NAME" refers to that file name.
        files = [c for c in row if c.startswith("!v/")]
        if files:
            variants.add(files[0][3:])
    return frozenset(languages), frozenset(variants)


def check_voice(voice: str) -> None:
    """Raise ``ValueError`` unless espeak-ng has this ``accent[+variant]`` voice.

    espeak-ng silently falls back to the plain accent for an unknown variant, so it is checked
    here against the installed variant files.
    """
    languages, variants = _known_voices()
    accent, _, variant = voice.partition("+")
    if accent not in languages:
        raise ValueError(f"unknown espeak-ng voice '{accent}' (see 'espeak-ng --voices')")
    if variant and accent == "en-gb":
        raise ValueError(
            f"espeak-ng ignores variants of 'en-gb'; write 'en+{variant}' (British English)"
        )
    if variant and variant not in variants:
        raise ValueError(
            f"unknown espeak-ng variant '{variant}' in voice '{voice}' "
            "(see 'espeak-ng --voices=variant')"
        )


def trim_silence(wav: np.ndarray, sr: int, margin_s: float = TRIM_MARGIN_S) -> np.ndarray:
    """Cut leading and trailing silence and keep exactly ``margin_s`` seconds on each side.

    Where the audio has less silence than the margin (espeak-ng starts some words at once), zeros
    are added, so every utterance starts and ends the same way.

    Args:
        wav: [T] float32.

    Returns:
        [T'] float32 (empty when the input is all silence).
    """
    hop = max(1, sr // 100)  # 10 ms frames
    n = -(-len(wav) // hop)
    if n == 0:
        return wav
    padded = np.zeros(n * hop, dtype=np.float32)
    padded[: len(wav)] = wav
    energy = (padded.reshape(n, hop) ** 2).mean(axis=1)
    peak = float(energy.max())
    if peak <= 0.0:
        return wav[:0]
    loud = np.nonzero(10.0 * np.log10(energy / peak + 1e-12) > _SILENCE_DB)[0]
    start, stop = int(loud[0]) * hop, min(len(wav), (int(loud[-1]) + 1) * hop)
    margin = np.zeros(int(round(margin_s * sr)), dtype=np.float32)
    return np.concatenate([margin, wav[start:stop].astype(np.float32), margin])


def speak(text: str, voice: str, rate: int, pitch: int | None = None) -> np.ndarray:
    """Say ``text`` in an espeak-ng voice.

    Args:
        text: English words (the world's vocabulary; anything espeak-ng reads works).
        voice: ``accent[+variant]``, e.g. ``"en-gb+m3"``.
        rate: words per minute (espeak-ng accepts 80-450).
        pitch: espeak-ng pitch 0-99 (``None``: the voice's own).

    Returns:
        waveform [T] float32 at 16 kHz mono, silence trimmed to a short margin.
    """
    import soundfile as sf

    from anygpt.audio import resample

    if not text.strip():
        raise ValueError("nothing to say: the text is empty")
    if not 80 <= int(rate) <= 450:
        raise ValueError(f"rate must be 80-450 words per minute, got {rate}")
    if pitch is not None and not 0 <= int(pitch) <= 99:
        raise ValueError(f"pitch must be 0-99, got {pitch}")
    check_voice(voice)
    cmd = [espeak_binary(), "--stdout", "-v", voice, "-s", str(int(rate))]
    if pitch is not None:
        cmd += ["-p", str(int(pitch))]
    # Text goes through stdin so that words starting with '-' are never read as options.
    proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SpeechSynthesisError(
            f"espeak-ng failed for voice '{voice}': {msg[0] if msg else 'no audio written'}"
        )
    data, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    wav = resample(data.mean(axis=1), sr, SPEECH_RATE)
    wav = trim_silence(wav, SPEECH_RATE)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak > 0.99:  # some voices overshoot full scale after resampling
        wav = wav * (0.99 / peak)
    if wav.size == 0:
        raise SpeechSynthesisError(f"espeak-ng produced only silence for {text!r}")
    return np.ascontiguousarray(wav, dtype=np.float32)
