"""The nano world's music: deterministic clips whose four attributes are audible."""

import random

import numpy as np
import pytest

from anygpt.world import music as M
from anygpt.world.vocab import INSTRUMENTS, MOODS, MUSIC_RATE, REGISTERS, TEMPOS


def _melodies(n: int, seed: int = 0, **fixed) -> list[M.Melody]:
    rng = random.Random(seed)
    return [M.random_melody(rng, **fixed) for _ in range(n)]


def test_render_is_deterministic_and_sized():
    a = M.random_melody(random.Random(5))
    b = M.random_melody(random.Random(5))
    assert a == b
    wa, wb = M.render(a), M.render(b)
    assert wa.shape == (48000,) and wa.dtype == np.float32
    assert np.array_equal(wa, wb)
    assert abs(float(np.abs(wa).max()) - 0.9) < 1e-4
    assert not np.array_equal(wa, M.render(M.random_melody(random.Random(6))))


def test_dict_round_trip():
    m = M.random_melody(random.Random(1))
    again = M.Melody.from_dict(m.to_dict())
    assert again == m and np.array_equal(M.render(again), M.render(m))


def test_captions_use_vocabulary_and_parse_back():
    vocab = set(TEMPOS + MOODS + INSTRUMENTS + REGISTERS) | {"a", "melody", "in", "register"}
    for m in _melodies(40):
        text = M.caption(m)
        assert set(text.split()) <= vocab
        assert M.parse_caption(text) == m.attributes()
    assert M.parse_caption("It is a FAST, sad flute melody!") == {
        "tempo": "fast",
        "mood": "sad",
        "instrument": "flute",
        "register": None,
    }


def test_every_attribute_value_is_drawn_and_fixed_values_hold():
    ms = _melodies(200, seed=2)
    for attr, values in M.VALUES.items():
        assert {getattr(m, attr) for m in ms} == set(values)
    assert all(m.instrument == "organ" for m in _melodies(5, instrument="organ"))
    with pytest.raises(ValueError):
        M.random_melody(random.Random(0), tempo="medium")


def test_notes_follow_mode_and_register():
    for m in _melodies(100, seed=3):
        lo, hi = M.MIDI_RANGE[m.register]
        assert all(lo <= n <= hi for n in m.notes)
        intervals = {(n - m.key) % 12 for n in m.notes}
        assert intervals <= set(M.TRIAD[m.mood])
        assert M.TRIAD[m.mood][1] in intervals, "the third is always played"
        assert m.notes[0] % 12 == m.key and m.notes[-1] % 12 == m.key
        assert all(a != b for a, b in zip(m.notes, m.notes[1:]))


def _onsets_per_second(wave: np.ndarray) -> float:
    """Energy onsets: the level (10 ms frames) rises 6 dB above its minimum of the last 60 ms;
    one onset per rise, at least 120 ms apart."""
    frames = wave[: wave.size // 160 * 160].reshape(-1, 160)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    db = np.maximum(db, db.max() - 50)
    count, last, above = 0, -100, False
    for i in range(6, len(db)):
        rising = db[i] - db[i - 6 : i].min() > 6
        if rising and not above and i - last > 12:
            count, last = count + 1, i
        above = rising
    return count / (len(wave) / MUSIC_RATE)


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_fast_has_more_onsets_than_slow(instrument):
    slow = [
        _onsets_per_second(M.render(m))
        for m in _melodies(6, 4, tempo="slow", instrument=instrument)
    ]
    fast = [
        _onsets_per_second(M.render(m))
        for m in _melodies(6, 4, tempo="fast", instrument=instrument)
    ]
    assert np.mean(fast) > 1.5 * np.mean(slow), (slow, fast)
    assert min(fast) > max(slow) * 0.9


def _lowest_strong_hz(wave: np.ndarray) -> float:
    """The lowest frequency with at least a quarter of the strongest bin's magnitude."""
    spec = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.argmax(spec >= 0.25 * spec.max()) * MUSIC_RATE / wave.size)


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_high_register_is_higher_than_low(instrument):
    low = [
        _lowest_strong_hz(M.render(m))
        for m in _melodies(6, 5, register="low", instrument=instrument)
    ]
    high = [
        _lowest_strong_hz(M.render(m))
        for m in _melodies(6, 5, register="high", instrument=instrument)
    ]
    assert max(low) < 260 and min(high) > 500, (low, high)


def test_instruments_differ_in_timbre():
    """Organ keeps its energy through a note, piano decays; flute is the most sine-like."""

    def sustain_and_brightness(m: M.Melody) -> tuple[float, float]:
        w = M.render(m)
        beat = int(60.0 / m.bpm * MUSIC_RATE)
        s = int(m.start_s * MUSIC_RATE)
        head = np.sqrt(np.mean(w[s + 400 : s + 1600] ** 2))
        tail = np.sqrt(np.mean(w[s + beat - 3200 : s + beat - 2000] ** 2))
        spec = np.abs(np.fft.rfft(w)) ** 2
        f0 = M.midi_hz(m.notes[0])
        harmonics = spec[int(1.5 * f0 * w.size / MUSIC_RATE) :].sum() / spec.sum()
        return tail / head, harmonics

    got = {
        inst: np.mean(
            [
                sustain_and_brightness(m)
                for m in _melodies(4, 6, instrument=inst, tempo="slow", register="low")
            ],
            axis=0,
        )
        for inst in INSTRUMENTS
    }
    assert got["organ"][0] > 0.8 > got["piano"][0]
    assert got["flute"][1] < got["organ"][1] and got["flute"][1] < got["piano"][1]
