"""The world's pictures: one or two flat shapes on a plain grey background, 64x64 RGB.

A :class:`Scene` holds everything a picture shows, so a picture can be drawn again exactly
(:func:`render`), described in the world's words (:func:`caption`) and read back from a caption
(:func:`parse_caption`).  Captions name the objects in the scene's order; with two objects the
relation is that of the first to the second: "a small blue square to the left of a big yellow star".

The same picture can be said two ways ("A to the left of B" is "B to the right of A"), so judges
compare :func:`canonical` descriptions: left object first for a side-by-side pair, top object first
for a stacked pair.
"""

from __future__ import annotations

import colorsys
import random
import re
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from PIL import Image, ImageDraw

from anygpt.world.vocab import COLOURS, IMAGE_SIZE, RELATIONS, SHAPES, SIZES

# Fraction of the picture's side that an object's bounding box spans.
SCALE_RANGE = {"small": (0.15, 0.25), "big": (0.40, 0.60)}
# Base colours, far apart in hue or lightness so that slight jitter never confuses two of them.
RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 50, 200),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
GREY_RANGE = (32, 224)  # background grey levels
WHITE_MAX_GREY = 160  # white objects only on darker greys ...
BLACK_MIN_GREY = 96  # ... and black ones only on lighter greys, so both stay visible
HUE_JITTER = 0.02  # of the hue circle
LIGHT_JITTER = 0.06  # relative change of the colour's value (HSV)
SUPERSAMPLE = 4  # drawn at 4x and reduced: anti-aliased edges
STAR_INNER = 0.45  # inner radius of the five-pointed star, relative to its outer radius
MARGIN = 1.0  # pixels kept free at the picture's border

# Relation of the first object to the second -> (axis, sign): the first object's coordinate on
# that axis minus the second's has this sign (y grows downwards).
_GEOMETRY = {
    "to the left of": ("x", -1),
    "to the right of": ("x", 1),
    "above": ("y", -1),
    "below": ("y", 1),
}
_CANONICAL = {"to the left of": "to the left of", "to the right of": "to the left of"}
_CANONICAL.update({"above": "above", "below": "above"})


@dataclass
class Obj:
    """One shape in a picture.

    ``cx``/``cy`` are its centre in pixels (y down), ``scale`` its bounding box side as a fraction
    of the picture's side; ``hue_jitter`` and ``light_jitter`` perturb its colour slightly.
    """

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    scale: float
    hue_jitter: float = 0.0
    light_jitter: float = 0.0

    @property
    def radius(self) -> float:
        """Half the bounding box side, in pixels."""
        return self.scale * IMAGE_SIZE / 2

    def words(self) -> tuple[str, str, str]:
        return (self.size, self.colour, self.shape)


@dataclass
class Scene:
    """A picture: its objects in caption order, the first's relation to the second, the grey."""

    objects: list[Obj] = field(default_factory=list)
    relation: str | None = None
    background: int = 128

    def to_dict(self) -> dict:
        """Plain JSON-ready metadata; :meth:`from_dict` of it draws the same picture."""
        objs = [asdict(o) for o in self.objects]
        return {"objects": objs, "relation": self.relation, "background": int(self.background)}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            [Obj(**o) for o in d["objects"]], d.get("relation"), int(d.get("background", 128))
        )


class Description(NamedTuple):
    """What a caption says: ``objects`` as (size, colour, shape) in caption order, and relation."""

    objects: list[tuple[str, str, str]]
    relation: str | None


# ---------------------------------------------------------------------------------- sampling
def random_scene(rng: random.Random, n_objects: int | None = None) -> Scene:
    """A random scene of one or two objects (``n_objects`` None: either, equally likely).

    Two objects get a relation from :data:`RELATIONS` and positions that make it plainly true: the
    displacement along the relation's axis exceeds both half-sizes plus a pixel (their boxes never
    overlap) and is at least twice the displacement across it.
    """
    n = rng.choice((1, 2)) if n_objects is None else n_objects
    if n not in (1, 2):
        raise ValueError(f"a scene has one or two objects, not {n}")
    objs = [_random_object(rng) for _ in range(n)]
    relation = None
    if n == 1:
        o = objs[0]
        o.cx, o.cy = _uniform_centre(rng, o.radius), _uniform_centre(rng, o.radius)
    else:
        relation = rng.choice(RELATIONS)
        _place_pair(rng, objs[0], objs[1], relation)
    for o in objs:  # rounded here, so that metadata (to_dict) redraws the very same picture
        o.cx, o.cy, o.scale = round(o.cx, 2), round(o.cy, 2), round(o.scale, 4)
        o.hue_jitter, o.light_jitter = round(o.hue_jitter, 4), round(o.light_jitter, 4)
    return Scene(objs, relation, _background(rng, objs))


def _random_object(rng: random.Random) -> Obj:
    size = rng.choice(SIZES)
    lo, hi = SCALE_RANGE[size]
    return Obj(
        shape=rng.choice(SHAPES),
        colour=rng.choice(COLOURS),
        size=size,
        cx=0.0,
        cy=0.0,
        scale=rng.uniform(lo, hi),
        hue_jitter=rng.uniform(-HUE_JITTER, HUE_JITTER),
        light_jitter=rng.uniform(-LIGHT_JITTER, LIGHT_JITTER),
    )


def _uniform_centre(rng: random.Random, r: float) -> float:
    return rng.uniform(r + MARGIN, IMAGE_SIZE - r - MARGIN)


def _place_pair(rng: random.Random, a: Obj, b: Obj, relation: str) -> None:
    axis, sign = _GEOMETRY[relation]
    side = IMAGE_SIZE - 2 * MARGIN
    # Both must fit side by side with a pixel between them: two big ones shrink towards 40 %.
    while 2 * (a.radius + b.radius) + 1.0 > side:
        for o in (a, b):
            lo = SCALE_RANGE[o.size][0]
            o.scale = lo + (o.scale - lo) * 0.8
    # Along the axis: the gap between centres, then where the pair sits.
    low, high = (a, b) if sign < 0 else (b, a)  # low: smaller coordinate (left or top)
    d_min = a.radius + b.radius + 1.0
    d_max = side - a.radius - b.radius
    d = rng.uniform(d_min, d_max)
    c_low = rng.uniform(low.radius + MARGIN, IMAGE_SIZE - MARGIN - high.radius - d)
    along = {id(low): c_low, id(high): c_low + d}
    # Across it: at most half the gap apart, so the relation's axis is never in doubt.
    p_a = _uniform_centre(rng, a.radius)
    lo_b = max(b.radius + MARGIN, p_a - 0.5 * d)
    hi_b = min(IMAGE_SIZE - b.radius - MARGIN, p_a + 0.5 * d)
    p_b = rng.uniform(lo_b, hi_b) if lo_b < hi_b else min(max(p_a, lo_b), hi_b)
    for o, across in ((a, p_a), (b, p_b)):
        if axis == "x":
            o.cx, o.cy = along[id(o)], across
        else:
            o.cx, o.cy = across, along[id(o)]


def _background(rng: random.Random, objs: list[Obj]) -> int:
    lo, hi = GREY_RANGE
    if any(o.colour == "white" for o in objs):
        hi = min(hi, WHITE_MAX_GREY)
    if any(o.colour == "black" for o in objs):
        lo = max(lo, BLACK_MIN_GREY)
    return rng.randint(lo, hi)


# ---------------------------------------------------------------------------------- drawing
def object_rgb(o: Obj) -> tuple[int, int, int]:
    """The object's jittered colour."""
    r, g, b = (c / 255 for c in RGB[o.colour])
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + o.hue_jitter) % 1.0
    v = min(1.0, max(0.0, v * (1.0 + o.light_jitter)))
    return tuple(round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def shape_outline(o: Obj, k: float = 1.0) -> list[tuple[float, float]] | tuple[float, ...]:
    """Polygon points (triangle, star) or a box (circle, square), in pixels times ``k``."""
    import math

    cx, cy, r = o.cx * k, o.cy * k, o.radius * k
    if o.shape in ("circle", "square"):
        return (cx - r, cy - r, cx + r, cy + r)
    if o.shape == "triangle":  # upright, base and height both equal to the box side
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if o.shape == "star":  # five points, one straight up; centred on its box
        pts = []
        for j in range(10):
            rad = r if j % 2 == 0 else r * STAR_INNER
            ang = -math.pi / 2 + j * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        # The star's lowest points lie at r*cos(36 deg) below the centre: shift it to fill its box.
        dy = (r - r * math.cos(math.pi / 5)) / 2
        return [(x, y + dy) for x, y in pts]
    raise ValueError(f"unknown shape '{o.shape}'")


def render(scene: Scene) -> Image.Image:
    """The scene as a 64x64 RGB picture (drawn at 4x and box-filtered down; deterministic)."""
    k = SUPERSAMPLE
    side = IMAGE_SIZE * k
    g = int(scene.background)
    img = Image.new("RGB", (side, side), (g, g, g))
    draw = ImageDraw.Draw(img)
    # Later objects are drawn over earlier ones; placement keeps them apart anyway.
    for o in scene.objects:
        fill = object_rgb(o)
        outline = shape_outline(o, k)
        if o.shape == "circle":
            draw.ellipse(outline, fill=fill)
        elif o.shape == "square":
            draw.rectangle(outline, fill=fill)
        else:
            draw.polygon(outline, fill=fill)
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


# ---------------------------------------------------------------------------------- words
def describe(scene: Scene) -> Description:
    """The scene's :class:`Description` (what its caption says)."""
    return Description([o.words() for o in scene.objects], scene.relation)


def caption(scene: Scene) -> str:
    """The scene in the world's words, e.g. "a small blue square to the left of a big yellow star"."""
    return description_text(describe(scene))


def description_text(d: Description) -> str:
    """A :class:`Description` as a caption."""
    phrases = [f"a {s} {c} {sh}" for s, c, sh in d.objects]
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2 and d.relation in RELATIONS:
        return f"{phrases[0]} {d.relation} {phrases[1]}"
    raise ValueError("a caption names one object, or two with a relation")


_OBJ = rf"(?:a|an|the)\s+({'|'.join(SIZES)})\s+({'|'.join(COLOURS)})\s+({'|'.join(SHAPES)})"
_REL = "|".join(re.escape(r) for r in RELATIONS)
_PAIR_RE = re.compile(rf"{_OBJ}\s+({_REL})\s+{_OBJ}")
_ONE_RE = re.compile(_OBJ)


def parse_caption(text: str) -> Description:
    """Read a caption back: ``Description([(size, colour, shape), ...], relation)``.

    Case, punctuation and words around the caption are ignored (a model's reply may say "It shows
    a big red circle."); the first two-object phrase wins over a lone object.  Raises
    ``ValueError`` when no object phrase is found.
    """
    words = " ".join(re.sub(r"[^a-z]+", " ", text.lower()).split())
    m = _PAIR_RE.search(words)
    if m:
        g = m.groups()
        return Description([(g[0], g[1], g[2]), (g[4], g[5], g[6])], g[3])
    m = _ONE_RE.search(words)
    if m:
        return Description([m.groups()], None)  # type: ignore[list-item]
    raise ValueError(f"no object of the world in {text[:80]!r}")


def canonical(d: Description) -> Description:
    """The same picture said one way: left object first ("to the left of"), top first ("above")."""
    if len(d.objects) != 2 or d.relation is None:
        return Description(list(d.objects), None)
    if d.relation in ("to the right of", "below"):
        return Description([d.objects[1], d.objects[0]], _CANONICAL[d.relation])
    return Description(list(d.objects), d.relation)


def canonical_scene(scene: Scene) -> Description:
    """:func:`canonical` of the scene's own description."""
    return canonical(describe(scene))


def compare(pred: Description, truth: Description) -> dict:
    """How much of ``truth`` a description ``pred`` gets right, said either way round.

    Both are made :func:`canonical`; objects are paired in order when the counts and relations
    agree, else in the pairing that gets most attributes right.  Returns ``objects`` (in truth),
    ``objects_correct`` (all three words right), ``attributes`` (3 per object, plus the relation
    for two objects), ``attributes_correct`` and ``all_correct`` (same count, relation, objects).
    """
    p, t = canonical(pred), canonical(truth)
    n = len(t.objects)
    if len(p.objects) == n and p.relation == t.relation:
        pairs = list(zip(p.objects, t.objects))
    else:
        # Best pairing of predicted to true objects (one or two each: every pairing is tried).
        from itertools import permutations

        if len(p.objects) <= n:
            cands = [list(zip(p.objects, perm)) for perm in permutations(t.objects, len(p.objects))]
        else:
            cands = [list(zip(perm, t.objects)) for perm in permutations(p.objects, n)]
        pairs = max(cands, key=_attr_hits) if cands else []
    objects_correct = sum(a == b for a, b in pairs)
    relation_ok = n == 2 and p.relation == t.relation and len(p.objects) == 2
    attributes = 3 * n + (1 if n == 2 else 0)
    attributes_correct = _attr_hits(pairs) + int(relation_ok)
    all_correct = len(p.objects) == n and objects_correct == n and (n == 1 or relation_ok)
    return {
        "objects": n,
        "objects_correct": objects_correct,
        "attributes": attributes,
        "attributes_correct": attributes_correct,
        "all_correct": all_correct,
    }


def _attr_hits(pairs: list) -> int:
    return sum(x == y for a, b in pairs for x, y in zip(a, b))
