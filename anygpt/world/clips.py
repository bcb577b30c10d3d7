"""Moving-shape clips and background sounds of the nano world.

**Clips** (``videos/NNNNNN.mp4``, 64x64, :data:`CLIP_FRAMES` frames at :data:`CLIP_FPS` fps, H.264):
one shape of the picture vocabulary slides in a straight line across a plain grey background, in
one of :data:`MOTIONS` ("to the left", "to the right", "up", "down"), over at least
:data:`MIN_TRAVEL` of the room it has.  Captions say "the big red circle moves to the left".

**Background sounds** (``background/NNNNNN.wav``): what a listening assistant hears but must not
answer.  Either people talking to each other (:func:`chatter`: sentences about errands, meals and
plans, never about the world's pictures or music, said in the split's voices) or noise (white,
pink, brown, mains hum, or two chatter lines at once: babble).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np

from anygpt.world import images
from anygpt.world.vocab import IMAGE_SIZE, SPEECH_RATE

CLIP_FRAMES = 8
CLIP_FPS = 4
MOTIONS = ("to the left", "to the right", "up", "down")
_AXIS = {"to the left": ("x", -1), "to the right": ("x", 1), "up": ("y", -1), "down": ("y", 1)}
MIN_TRAVEL = 0.6  # of the free room along the axis

DESCRIBE_VIDEO = ("describe the video", "what happens in the video")
NOISES = ("white", "pink", "brown", "hum", "babble")


@dataclass
class Motion:
    """One clip: the object (as in a picture), where it starts and ends, the grey."""

    shape: str
    colour: str
    size: str
    scale: float
    direction: str
    start: tuple[float, float]
    end: tuple[float, float]
    background: int

    def to_dict(self) -> dict:
        return asdict(self)


def random_motion(rng: random.Random) -> Motion:
    scene = images.random_scene(rng, 1)
    o = scene.objects[0]
    direction = rng.choice(MOTIONS)
    axis, sign = _AXIS[direction]
    r = o.radius
    lo, hi = r + images.MARGIN, IMAGE_SIZE - r - images.MARGIN
    travel = rng.uniform(MIN_TRAVEL, 1.0) * (hi - lo)
    a = rng.uniform(lo, hi - travel)
    first, last = (a, a + travel) if sign > 0 else (a + travel, a)
    across = rng.uniform(lo, hi)
    start = (first, across) if axis == "x" else (across, first)
    end = (last, across) if axis == "x" else (across, last)
    start = (round(start[0], 2), round(start[1], 2))
    end = (round(end[0], 2), round(end[1], 2))
    return Motion(o.shape, o.colour, o.size, o.scale, direction, start, end, scene.background)


def caption(m: Motion) -> str:
    return f"the {m.size} {m.colour} {m.shape} moves {m.direction}"


def parse_direction(text: str) -> str | None:
    """The motion a sentence names (the last one it names), or ``None``."""
    found = [(text.rfind(d), d) for d in MOTIONS if f"moves {d}" in text or text.endswith(d)]
    return max(found)[1] if found else None


def frames(m: Motion) -> list:
    """The clip's frames, RGB PIL images."""
    out = []
    for i in range(CLIP_FRAMES):
        f = i / (CLIP_FRAMES - 1)
        cx = m.start[0] + f * (m.end[0] - m.start[0])
        cy = m.start[1] + f * (m.end[1] - m.start[1])
        obj = images.Obj(m.shape, m.colour, m.size, cx, cy, m.scale)
        out.append(images.render(images.Scene([obj], None, m.background)))
    return out


def video_qa(m: Motion, rng: random.Random) -> tuple[str, str]:
    """A question about the clip and its answer."""
    if rng.random() < 0.7:
        q = rng.choice((f"where does the {m.shape} move", f"which way does the {m.shape} move"))
        return q, f"the {m.shape} moves {m.direction}"
    return "what is moving", f"the {m.size} {m.colour} {m.shape}"


# ---------------------------------------------------------------------- background
NAMES = ("tom", "anna", "sam", "lisa", "ben", "kate", "max", "emma", "jack", "mia")
PLACES = ("the station", "the office", "the shop", "the park", "school", "the gym", "the bank")
TIMES = ("tonight", "tomorrow", "at noon", "later", "on monday", "next week", "after lunch")
ERRANDS = ("buy some bread", "call your mother", "pick up the kids", "fix the car",
           "water the plants", "cook dinner", "walk the dog", "pay the bills")  # fmt: skip
CHATTER = (
    "{name} can you {errand} {time}",
    "i will meet you at {place} {time}",
    "did you remember to {errand}",
    "the bus to {place} is late again",
    "we need to {errand} before we go to {place}",
    "{name} is waiting for us at {place}",
    "i think {name} wants to {errand} {time}",
    "are you coming to {place} {time}",
    "let us {errand} and then go to {place}",
    "tell {name} i will be home {time}",
)


def chatter(rng: random.Random) -> str:
    """A line of people talking to each other."""
    return rng.choice(CHATTER).format(
        name=rng.choice(NAMES),
        place=rng.choice(PLACES),
        time=rng.choice(TIMES),
        errand=rng.choice(ERRANDS),
    )


def noise(kind: str, seconds: float, seed: int, babble: list[np.ndarray] | None = None):
    """A background noise, float32 [T] at 16 kHz, peak about 0.3 to 0.6."""
    gen = np.random.default_rng(seed)
    n = int(seconds * SPEECH_RATE)
    if kind == "babble":
        parts = [b[:n] for b in (babble or []) if b.size]
        wave = np.zeros(n, np.float32)
        for p in parts:
            wave[: p.shape[0]] += p
    elif kind == "hum":
        t = np.arange(n) / SPEECH_RATE
        f0 = gen.choice((50.0, 60.0))
        wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3, 4))
    else:
        white = gen.standard_normal(n)
        if kind == "white":
            wave = white
        else:  # pink (1/f) or brown (1/f^2) by shaping the spectrum
            spec = np.fft.rfft(white)
            f = np.maximum(np.fft.rfftfreq(n, 1 / SPEECH_RATE), 1.0)
            spec /= np.sqrt(f) if kind == "pink" else f
            wave = np.fft.irfft(spec, n)
    wave = np.asarray(wave, dtype=np.float64)
    peak = float(np.abs(wave).max()) or 1.0
    return (wave / peak * gen.uniform(0.3, 0.6)).astype(np.float32)
