"""Every sentence of the nano world: questions with their answers, requests, descriptions.

All words come from :mod:`anygpt.world.vocab` plus the few fixed template words below.  Captions
are never written here: picture captions come from :func:`anygpt.world.images.caption` and melody
captions from :func:`anygpt.world.music.caption`, so a caption reads the same everywhere.  Every
sentence is lower case without punctuation (that is what the speech synthesizer reads and what a
closed-set recogniser matches).

Questions about a scene are only asked when the scene answers them unambiguously:

=========  ===================================  ============================================
kind       question                             answer
=========  ===================================  ============================================
colour     what colour is the circle            the circle is red   (one circle in the scene)
shape      what shape is the blue object        it is a square      (one blue object)
size       is the star big or small             the star is small   (one star)
count      how many objects are there           there are two objects
where      where is the red circle              the red circle is to the left of the blue star
=========  ===================================  ============================================

("where" needs two objects that differ in colour or shape; the second object's relation is the
mirror of the first's.)

Requests are a fixed prefix and a caption: ``draw a big red circle``, ``please compose a slow
happy piano melody in a high register``.

The sentence set (:func:`all_sentences`, a generator) is finite: 69,979 distinct sentences, namely
16,448 picture captions, 49 questions, 4,014 answers, 49,344 drawing requests, 4 describe prompts,
24 melody captions and 96 music requests (:func:`sentence_counts`).  :func:`all_words` lists its 60
words and :func:`jsgf` writes a compact JSGF grammar of it for a closed-set recogniser.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from anygpt.world.vocab import COLOURS, RELATIONS, SHAPES, SIZES

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")

DRAW_PREFIXES = ("draw", "please draw", "can you draw")
MUSIC_PREFIXES = ("play", "please play", "compose", "please compose")
DESCRIBE_IMAGE = ("describe the picture", "what is in the picture")
DESCRIBE_MUSIC = ("describe the music", "what kind of music is this")

# A fixed handful of the world's own drawing, music and speech requests, for checks that compare
# two ways of running one model (e.g. int8 against fp32): on prompts a nano model never saw, its
# top two tokens are often near-ties that any rounding flips, which says nothing about the change.
SAMPLE_REQUESTS = (
    "draw a big red circle",
    "draw a small blue square above a big yellow star",
    "play a slow sad organ melody in a low register",
    "say the circle is red",
    "draw a small green triangle",
    "play a fast happy flute melody in a high register",
    "draw a big white star to the left of a small black circle",
    "say what colour is the square",
    "draw a small purple star",
    "play a slow happy piano melody in a high register",
    "say the triangle is big",
    "draw a big orange square below a small white circle",
    "play a fast sad piano melody in a low register",
    "say there are two objects",
    "draw a small black triangle to the right of a big green star",
    "draw a big yellow circle",
    "play a slow sad flute melody in a high register",
    "say the star is purple",
    "draw a small red square",
    "play a fast happy organ melody in a low register",
)

QUESTION_KINDS = ("colour", "shape", "size", "count", "where")

MIRROR = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}
assert set(MIRROR) == set(RELATIONS)


@dataclass(frozen=True)
class QA:
    """One question about a scene and its short answer."""

    kind: str  # one of QUESTION_KINDS
    question: str
    answer: str


# ---------------------------------------------------------------------- helpers
def phrase(caption: str) -> str:
    """A caption as a sentence part: lower case, single spaces, no final full stop."""
    return " ".join(caption.strip().rstrip(".!?").lower().split())


def count_sentence(n: int) -> str:
    word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    return f"there is {word} object" if n == 1 else f"there are {word} objects"


def where_answer(
    colour: str, shape: str, relation: str, other_colour: str, other_shape: str
) -> str:
    return f"the {colour} {shape} is {relation} the {other_colour} {other_shape}"


def _choice(rng: random.Random, items: Sequence[Any]) -> Any:
    return items[rng.randrange(len(items))]


# ---------------------------------------------------------------------- questions
def scene_questions(scene: Any) -> list[QA]:
    """Every question the scene answers unambiguously, in a fixed order.

    ``scene`` has ``.objects`` (each with ``.shape``, ``.colour``, ``.size``) and ``.relation``
    (of the first object to the second; used only when there are exactly two objects).
    """
    objs = list(scene.objects)
    shapes = [o.shape for o in objs]
    colours = [o.colour for o in objs]
    out: list[QA] = []
    for o in objs:
        if shapes.count(o.shape) == 1:
            out.append(
                QA("colour", f"what colour is the {o.shape}", f"the {o.shape} is {o.colour}")
            )
    for o in objs:
        if colours.count(o.colour) == 1:
            out.append(QA("shape", f"what shape is the {o.colour} object", f"it is a {o.shape}"))
    for o in objs:
        if shapes.count(o.shape) == 1:
            out.append(QA("size", f"is the {o.shape} big or small", f"the {o.shape} is {o.size}"))
    if objs:
        out.append(QA("count", "how many objects are there", count_sentence(len(objs))))
    relation = getattr(scene, "relation", None)
    if len(objs) == 2 and relation in MIRROR:
        a, b = objs
        if (a.colour, a.shape) != (b.colour, b.shape):
            for x, rel, y in ((a, relation, b), (b, MIRROR[relation], a)):
                out.append(
                    QA(
                        "where",
                        f"where is the {x.colour} {x.shape}",
                        where_answer(x.colour, x.shape, rel, y.colour, y.shape),
                    )
                )
    return out


def random_question(scene: Any, rng: random.Random) -> QA:
    """A question about ``scene``: a kind uniformly among those it answers, then one of its kind.

    Drawing the kind first keeps "how many" from being rare and keeps the mix the same across
    scenes of different sizes.
    """
    qas = scene_questions(scene)
    if not qas:
        raise ValueError("the scene answers no question (it has no objects)")
    kinds = [k for k in QUESTION_KINDS if any(q.kind == k for q in qas)]
    kind = _choice(rng, kinds)
    return _choice(rng, [q for q in qas if q.kind == kind])


def answer(scene: Any, question: str) -> str | None:
    """The answer to ``question`` about ``scene``, or ``None`` if it does not answer it."""
    for qa in scene_questions(scene):
        if qa.question == question:
            return qa.answer
    return None


# ---------------------------------------------------------------------- requests
def draw_request(caption: str, prefix: str = "draw") -> str:
    """``draw a big red circle`` from an image caption."""
    return f"{prefix} {phrase(caption)}"


def music_request(caption: str, prefix: str = "play") -> str:
    """``play a slow happy piano melody in a high register`` from a melody caption."""
    return f"{prefix} {phrase(caption)}"


def random_draw_request(caption: str, rng: random.Random) -> str:
    return draw_request(caption, _choice(rng, DRAW_PREFIXES))


def random_music_request(caption: str, rng: random.Random) -> str:
    return music_request(caption, _choice(rng, MUSIC_PREFIXES))


# ---------------------------------------------------------------------- the sentence set
def all_questions(max_objects: int = 2) -> list[str]:
    """Every question any scene of up to ``max_objects`` objects can be asked."""
    out = [f"what colour is the {s}" for s in SHAPES]
    out += [f"what shape is the {c} object" for c in COLOURS]
    out += [f"is the {s} big or small" for s in SHAPES]
    out.append("how many objects are there")
    if max_objects >= 2:
        out += [f"where is the {c} {s}" for c, s in product(COLOURS, SHAPES)]
    return out


def all_answers(max_objects: int = 2) -> list[str]:
    """Every answer of :func:`scene_questions` for scenes of up to ``max_objects`` objects."""
    out = [f"the {s} is {c}" for s, c in product(SHAPES, COLOURS)]
    out += [f"it is a {s}" for s in SHAPES]
    out += [f"the {s} is {z}" for s, z in product(SHAPES, SIZES)]
    out += [count_sentence(n) for n in range(1, max_objects + 1)]
    if max_objects >= 2:
        pairs = list(product(COLOURS, SHAPES))
        for (c1, s1), rel, (c2, s2) in product(pairs, RELATIONS, pairs):
            if (c1, s1) != (c2, s2):
                out.append(where_answer(c1, s1, rel, c2, s2))
    return out


SENTENCE_KINDS = (
    "image_caption",
    "question",
    "answer",
    "draw_request",
    "describe",
    "music_caption",
    "music_request",
)


def all_sentences(
    kinds: Iterable[str] = SENTENCE_KINDS,
    *,
    image_captions: Callable[[], Iterable[str]] | None = None,
    music_captions: Callable[[], Iterable[str]] | None = None,
    max_objects: int = 2,
) -> Iterator[str]:
    """Every sentence of the given kinds, each once, in a fixed order (a generator).

    ``image_captions`` / ``music_captions`` give every caption the media modules can write; by
    default every attribute combination written by :func:`anygpt.world.images.description_text`
    and :func:`anygpt.world.music.caption_of`.
    Kinds: ``image_caption``, ``question``, ``answer``, ``draw_request``, ``describe`` (the fixed
    "describe the picture"-style prompts), ``music_caption``, ``music_request``.
    """
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(SENTENCE_KINDS))
    if unknown:
        raise ValueError(f"unknown sentence kinds {unknown}; choose from {SENTENCE_KINDS}")
    img = image_captions or (lambda: _image_captions(max_objects))
    mus = music_captions or _music_captions
    seen: set[str] = set()

    def fresh(items: Iterable[str]) -> Iterator[str]:
        for s in items:
            if s not in seen:
                seen.add(s)
                yield s

    for kind in SENTENCE_KINDS:
        if kind not in kinds:
            continue
        if kind == "image_caption":
            yield from fresh(phrase(c) for c in img())
        elif kind == "question":
            yield from fresh(all_questions(max_objects))
        elif kind == "answer":
            yield from fresh(all_answers(max_objects))
        elif kind == "draw_request":
            yield from fresh(draw_request(c, p) for c in img() for p in DRAW_PREFIXES)
        elif kind == "describe":
            yield from fresh(DESCRIBE_IMAGE + DESCRIBE_MUSIC)
        elif kind == "music_caption":
            yield from fresh(phrase(c) for c in mus())
        elif kind == "music_request":
            yield from fresh(music_request(c, p) for c in mus() for p in MUSIC_PREFIXES)


@functools.cache
def sentence_counts(max_objects: int = 2) -> dict[str, int]:
    """Number of sentences of each kind (kinds counted alone, so shared sentences count twice)."""
    return {k: sum(1 for _ in all_sentences((k,), max_objects=max_objects)) for k in SENTENCE_KINDS}


def _image_captions(max_objects: int) -> Iterator[str]:
    """Every picture caption: one object, then two objects with each relation."""
    from anygpt.world.images import Description, description_text

    objects = list(product(SIZES, COLOURS, SHAPES))
    for o in objects:
        yield description_text(Description([o], None))
    if max_objects >= 2:
        for a, rel, b in product(objects, RELATIONS, objects):
            yield description_text(Description([a, b], rel))


def _music_captions() -> Iterator[str]:
    """Every melody caption (one per attribute combination)."""
    from anygpt.world.music import ATTRIBUTES, VALUES, caption_of

    for values in product(*(VALUES[a] for a in ATTRIBUTES)):
        yield caption_of(dict(zip(ATTRIBUTES, values)))


@functools.cache
def all_words(max_objects: int = 2) -> tuple[str, ...]:
    """Every word of the sentence set, sorted (a recogniser's dictionary needs exactly these)."""
    return tuple(sorted({w for s in all_sentences(max_objects=max_objects) for w in s.split()}))


def jsgf(kinds: Iterable[str] = SENTENCE_KINDS, name: str = "world") -> str:
    """A JSGF grammar of the sentences of ``kinds`` (for a closed-set recogniser, e.g. pocketsphinx).

    Compositional, so it stays small; it accepts exactly :func:`all_sentences` of those kinds,
    except that a "where" answer may also relate an object to one of the same colour and shape.
    """
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(SENTENCE_KINDS))
    if unknown:
        raise ValueError(f"unknown sentence kinds {unknown}; choose from {SENTENCE_KINDS}")

    def alt(items: Iterable[str]) -> str:
        return "(" + " | ".join(items) + ")"

    from anygpt.world.music import ATTRIBUTES, VALUES

    rules = {
        "shape": alt(SHAPES),
        "colour": alt(COLOURS),
        "size": alt(SIZES),
        "relation": alt(RELATIONS),
        "object": "a <size> <colour> <shape>",
        "caption": "<object> [<relation> <object>]",
        "melody": " ".join(
            [
                f"a {alt(VALUES[a])}" if i == 0 else alt(VALUES[a])
                for i, a in enumerate(ATTRIBUTES[:3])
            ]
        )
        + f" melody in a {alt(VALUES[ATTRIBUTES[3]])} register",
    }
    top = {
        "image_caption": "<caption>",
        "question": alt(
            [
                "what colour is the <shape>",
                "what shape is the <colour> object",
                "is the <shape> big or small",
                "how many objects are there",
                "where is the <colour> <shape>",
            ]
        ),
        "answer": alt(
            [
                "the <shape> is (<colour> | <size>)",
                "it is a <shape>",
                "there is one object",
                "there are two objects",
                "the <colour> <shape> is <relation> the <colour> <shape>",
            ]
        ),
        "draw_request": f"{alt(DRAW_PREFIXES)} <caption>",
        "describe": alt(DESCRIBE_IMAGE + DESCRIBE_MUSIC),
        "music_caption": "<melody>",
        "music_request": f"{alt(MUSIC_PREFIXES)} <melody>",
    }
    lines = ["#JSGF V1.0;", f"grammar {name};"]
    lines += [f"<{k}> = {v};" for k, v in rules.items()]
    lines.append(f"public <sentence> = {alt(top[k] for k in kinds)};")
    return "\n".join(lines) + "\n"
