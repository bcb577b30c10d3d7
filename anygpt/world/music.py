"""The nano world's music: short synthesized melodies with four audible attributes.

A :class:`Melody` is one 3 s clip (16 kHz mono) of one instrument playing one note per beat:

* tempo: ``slow`` (70-90 bpm, about 4 notes) or ``fast`` (150-180 bpm, about 8 notes);
* mood: ``happy`` melodies use only the tones of a major triad (root, major third, fifth),
  ``sad`` ones those of a minor triad (root, minor third, fifth), so the mode is never ambiguous;
  the melody starts and ends on the root and plays the third at least once;
* instrument: ``piano`` (struck, slightly inharmonic partials with a fast exponential decay),
  ``organ`` (steady harmonics, flat envelope, abrupt ends) or ``flute`` (near-sine with a swelling
  attack, vibrato, tremolo and breath noise): each differs in spectrum and in envelope;
* register: ``low`` (every note in C3-B3, MIDI 48-59) or ``high`` (C5-C6, MIDI 72-84).

The key (root pitch class), the exact tempo, the contour, small timbre variations and the noise
come from the random generator, so two melodies with the same caption still differ.  Rendering is
deterministic: everything random that :func:`render` uses is derived from ``Melody.seed``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from anygpt.world.vocab import INSTRUMENTS, MOODS, MUSIC_RATE, MUSIC_SECONDS, REGISTERS, TEMPOS

NUM_SAMPLES = int(round(MUSIC_RATE * MUSIC_SECONDS))  # 48000
PEAK = 0.9  # every clip is peak-normalised to this

BPM_RANGE = {"slow": (70.0, 90.0), "fast": (150.0, 180.0)}
MIDI_RANGE = {"low": (48, 59), "high": (72, 84)}  # C3-B3, C5-C6 (inclusive)
TRIAD = {"happy": (0, 4, 7), "sad": (0, 3, 7)}  # semitones above the root
ATTRIBUTES = ("tempo", "mood", "instrument", "register")
VALUES = {"tempo": TEMPOS, "mood": MOODS, "instrument": INSTRUMENTS, "register": REGISTERS}
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass
class Melody:
    """One clip of the world's music.

    Attributes:
        tempo, mood, instrument, register: the four attributes (words of :mod:`anygpt.world.vocab`).
        key: root pitch class, 0 (C) .. 11 (B).
        bpm: beats per minute; one note starts on every beat.
        notes: MIDI pitches, one per beat; the last one is held to the end of the clip.
        start_s: silence before the first note (seconds).
        seed: seeds the timbre variations and noise of :func:`render`.
    """

    tempo: str
    mood: str
    instrument: str
    register: str
    key: int
    bpm: float
    notes: list[int] = field(default_factory=list)
    start_s: float = 0.0
    seed: int = 0

    def attributes(self) -> dict[str, str]:
        """The four attributes as ``{"tempo": ..., "mood": ..., "instrument": ..., "register": ...}``."""
        return {a: getattr(self, a) for a in ATTRIBUTES}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Melody:
        m = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        m.notes = [int(n) for n in m.notes]
        return m


# ---------------------------------------------------------------------------------- drawing
def random_melody(
    rng: random.Random,
    *,
    tempo: str | None = None,
    mood: str | None = None,
    instrument: str | None = None,
    register: str | None = None,
) -> Melody:
    """A random melody; attributes not given are drawn uniformly."""
    tempo = tempo or rng.choice(TEMPOS)
    mood = mood or rng.choice(MOODS)
    instrument = instrument or rng.choice(INSTRUMENTS)
    register = register or rng.choice(REGISTERS)
    for attr, value in zip(ATTRIBUTES, (tempo, mood, instrument, register)):
        if value not in VALUES[attr]:
            raise ValueError(f"unknown {attr} {value!r} (one of {', '.join(VALUES[attr])})")
    key = rng.randrange(12)
    bpm = round(rng.uniform(*BPM_RANGE[tempo]), 1)
    start_s = round(rng.uniform(0.0, 0.12), 3)
    beats = max(2, math.ceil((MUSIC_SECONDS - start_s - 0.25) * bpm / 60.0))
    notes = _contour(rng, _triad_notes(key, mood, register), key, beats)
    return Melody(tempo, mood, instrument, register, key, bpm, notes, start_s, rng.getrandbits(31))


def _triad_notes(key: int, mood: str, register: str) -> list[int]:
    """MIDI notes of the key's triad inside the register, low to high."""
    lo, hi = MIDI_RANGE[register]
    pcs = {(key + s) % 12 for s in TRIAD[mood]}
    return [n for n in range(lo, hi + 1) if n % 12 in pcs]


def _contour(rng: random.Random, pool: list[int], key: int, beats: int) -> list[int]:
    """A walk over ``pool`` that starts and ends on a root, never repeats a note twice in a row,
    and plays the third at least once."""
    roots = [i for i, n in enumerate(pool) if n % 12 == key]
    third = [i for i, n in enumerate(pool) if (n - key) % 12 in (3, 4)]
    while True:
        idx = [rng.choice(roots)]
        for _ in range(beats - 2):
            step = rng.choice((-2, -1, -1, 1, 1, 2))
            nxt = min(max(idx[-1] + step, 0), len(pool) - 1)
            if nxt == idx[-1]:
                nxt = idx[-1] - step // abs(step)
            idx.append(nxt)
        idx.append(rng.choice(roots))
        if any(i in third for i in idx) and all(a != b for a, b in zip(idx, idx[1:])):
            return [pool[i] for i in idx]


# ---------------------------------------------------------------------------------- sound
def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


def render(melody: Melody) -> np.ndarray:
    """The melody as float32 audio [48000] (16 kHz, 3 s), peak-normalised to 0.9."""
    rs = np.random.default_rng(melody.seed)
    out = np.zeros(NUM_SAMPLES, dtype=np.float64)
    beat = 60.0 / melody.bpm
    voice = _VOICES[melody.instrument]
    params = voice.params(rs)
    for i, note in enumerate(melody.notes):
        onset = melody.start_s + i * beat
        last = i == len(melody.notes) - 1
        length = (MUSIC_SECONDS - onset) if last else beat
        start = int(round(onset * MUSIC_RATE))
        n = min(int(round(length * MUSIC_RATE)), NUM_SAMPLES - start)
        if n <= 0:
            break
        velocity = rs.uniform(0.75, 1.0)
        out[start : start + n] += velocity * voice.note(midi_hz(note), n, last, params, rs)
    peak = np.abs(out).max()
    return (out * (PEAK / peak)).astype(np.float32) if peak > 0 else out.astype(np.float32)


def _partials(f0: float, t: np.ndarray, ratios, amps, phases) -> np.ndarray:
    """Sum of sines at ``f0 * ratio`` below 7.6 kHz (nothing aliases at 16 kHz)."""
    y = np.zeros_like(t)
    for r, a, p in zip(ratios, amps, phases):
        if f0 * r < 7600.0:
            y += a * np.sin(2 * np.pi * f0 * r * t + p)
    return y


def _fade(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    a, r = min(attack, n), min(release, n)
    env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r:
        env[n - r :] *= np.linspace(1.0, 0.0, r)
    return env


class _Piano:
    """Struck string: slightly stretched partials, each decaying faster the higher it is."""

    def params(self, rs: np.random.Generator) -> dict:
        k = np.arange(1, 11)
        return {
            "amps": (1.0 / k**1.1) * rs.uniform(0.7, 1.0, k.size),
            "inharm": rs.uniform(2e-4, 6e-4),
            # seconds, decay of the fundamental: short enough that every note audibly dies away,
            # an envelope that survives even a dull recording or a coarse codec
            "tau": rs.uniform(0.25, 0.4),
        }

    def note(self, f0: float, n: int, last: bool, p: dict, rs: np.random.Generator) -> np.ndarray:
        t = np.arange(n) / MUSIC_RATE
        y = np.zeros(n)
        for k, a in enumerate(p["amps"], start=1):
            fk = f0 * k * math.sqrt(1.0 + p["inharm"] * k * k)
            if fk >= 7600.0:
                break
            tau = p["tau"] * (f0 / 260.0) ** -0.3 / (1.0 + 0.6 * (k - 1))
            y += a * np.exp(-t / tau) * np.sin(2 * np.pi * fk * t + rs.uniform(0, 2 * np.pi))
        return y * _fade(n, int(0.002 * MUSIC_RATE), int(0.02 * MUSIC_RATE))


class _Organ:
    """Pipe-organ-like: fixed drawbar harmonics, flat envelope, a short gap before the next note."""

    ratios = (1, 2, 3, 4, 6, 8)

    def params(self, rs: np.random.Generator) -> dict:
        base = np.array([1.0, 0.75, 0.55, 0.4, 0.28, 0.2])
        return {"amps": base * rs.uniform(0.85, 1.0, base.size)}

    def note(self, f0: float, n: int, last: bool, p: dict, rs: np.random.Generator) -> np.ndarray:
        sounding = n if last else int(0.85 * n)
        t = np.arange(sounding) / MUSIC_RATE
        phases = rs.uniform(0, 2 * np.pi, len(self.ratios))
        y = _partials(f0, t, self.ratios, p["amps"], phases)
        y *= _fade(sounding, int(0.012 * MUSIC_RATE), int(0.025 * MUSIC_RATE))
        return np.pad(y, (0, n - sounding))


class _Flute:
    """Near-sine with a swelling attack, delayed vibrato and tremolo, and breath noise.

    The swell and the tremolo (amplitude moving at the vibrato rate) are envelope cues, which stay
    audible when the upper partials and the noise are lost."""

    def params(self, rs: np.random.Generator) -> dict:
        return {
            "amps": np.array([1.0, rs.uniform(0.12, 0.22), rs.uniform(0.03, 0.08)]),
            "vib_hz": rs.uniform(4.5, 5.5),
            "vib_depth": rs.uniform(0.008, 0.012),  # relative frequency deviation (< 1/4 tone)
            "tremolo": rs.uniform(0.12, 0.2),  # relative amplitude deviation
            "breath": rs.uniform(0.05, 0.08),
        }

    def note(self, f0: float, n: int, last: bool, p: dict, rs: np.random.Generator) -> np.ndarray:
        sounding = n if last else int(0.88 * n)
        t = np.arange(sounding) / MUSIC_RATE
        lfo = np.clip(t / 0.15, 0.0, 1.0) * np.sin(2 * np.pi * p["vib_hz"] * t)
        vib = p["vib_depth"] * lfo
        phase = 2 * np.pi * np.cumsum(f0 * (1.0 + vib)) / MUSIC_RATE
        y = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(p["amps"]) if f0 * (k + 1) < 7600)
        # breath: white noise, first-differenced (tilted up), loudest during the attack
        noise = np.diff(rs.standard_normal(sounding + 1)) * 0.5
        chiff = 1.0 + 2.0 * np.exp(-t / 0.04)
        y = (y + p["breath"] * chiff * noise) * (1.0 + p["tremolo"] * lfo)
        y *= _fade(sounding, int(0.09 * MUSIC_RATE), int(0.04 * MUSIC_RATE))
        return np.pad(y, (0, n - sounding))


_VOICES = {"piano": _Piano(), "organ": _Organ(), "flute": _Flute()}


# ---------------------------------------------------------------------------------- words
def caption(melody: Melody) -> str:
    """The melody in the world's words: "a slow happy piano melody in a high register"."""
    return caption_of(melody.attributes())


def caption_of(attrs: dict[str, str]) -> str:
    """A caption from ``{"tempo", "mood", "instrument", "register"}``."""
    return (
        f"a {attrs['tempo']} {attrs['mood']} {attrs['instrument']} melody "
        f"in a {attrs['register']} register"
    )


_WORD_ATTR = {w: a for a, words in VALUES.items() for w in words}


def parse_caption(text: str) -> dict[str, str | None]:
    """Read the four attributes back from a caption (or any text using the world's words).

    Case, punctuation and surrounding words are ignored; for each attribute the first word of the
    vocabulary that appears wins, and an attribute that no word names is ``None``.
    """
    found: dict[str, str | None] = dict.fromkeys(ATTRIBUTES)
    for word in re.sub(r"[^a-z]+", " ", text.lower()).split():
        attr = _WORD_ATTR.get(word)
        if attr is not None and found[attr] is None:
            found[attr] = word
    return found


def describe_notes(melody: Melody) -> str:
    """Human-readable notes, e.g. "A3 C#3 E3 A3" (for debugging and data cards)."""
    return " ".join(f"{NOTE_NAMES[n % 12]}{n // 12 - 1}" for n in melody.notes)
