"""The world's sentences: questions answered only when the scene is unambiguous, the sentence set."""

from __future__ import annotations

import random

import pytest

from anygpt.world import images, music, vocab
from anygpt.world import text as wt


def obj(size, colour, shape):
    return images.Obj(shape=shape, colour=colour, size=size, cx=32.0, cy=32.0, scale=0.3)


def scene(*objs, relation=None):
    return images.Scene(list(objs), relation)


RED_CIRCLE_LEFT_OF_BLUE_STAR = scene(
    obj("big", "red", "circle"), obj("small", "blue", "star"), relation="to the left of"
)


def test_the_briefs_examples():
    s = RED_CIRCLE_LEFT_OF_BLUE_STAR
    assert wt.answer(s, "what colour is the circle") == "the circle is red"
    assert wt.answer(s, "what shape is the blue object") == "it is a star"
    assert wt.answer(s, "is the star big or small") == "the star is small"
    assert wt.answer(s, "how many objects are there") == "there are two objects"
    assert (
        wt.answer(s, "where is the red circle") == "the red circle is to the left of the blue star"
    )
    # the second object's relation is the mirror of the first's
    assert (
        wt.answer(s, "where is the blue star") == "the blue star is to the right of the red circle"
    )
    one = scene(obj("small", "green", "square"))
    assert wt.answer(one, "what shape is the green object") == "it is a square"
    assert wt.answer(one, "how many objects are there") == "there is one object"
    assert wt.answer(one, "where is the green square") is None  # nothing to relate it to
    assert wt.answer(s, "what colour is the square") is None  # no square


def test_ambiguous_questions_are_never_asked():
    two_circles = scene(
        obj("big", "red", "circle"), obj("small", "blue", "circle"), relation="above"
    )
    qs = {q.question for q in wt.scene_questions(two_circles)}
    assert "what colour is the circle" not in qs and "is the circle big or small" not in qs
    assert {"what shape is the red object", "where is the blue circle"} <= qs
    assert wt.answer(two_circles, "where is the blue circle") == (
        "the blue circle is below the red circle"
    )
    same_colour = scene(obj("big", "red", "circle"), obj("small", "red", "star"), relation="below")
    qs = {q.question for q in wt.scene_questions(same_colour)}
    assert "what shape is the red object" not in qs
    assert "what colour is the star" in qs
    twins = scene(obj("big", "red", "star"), obj("small", "red", "star"), relation="above")
    kinds = {q.kind for q in wt.scene_questions(twins)}
    assert kinds == {"count"}  # neither shape nor colour nor position singles one out


def test_random_questions_match_their_scenes():
    rng = random.Random(0)
    kinds = set()
    for _ in range(300):
        s = images.random_scene(rng)
        qa = wt.random_question(s, rng)
        kinds.add(qa.kind)
        assert wt.answer(s, qa.question) == qa.answer
        words = qa.answer.split()
        if qa.kind == "colour":  # "the SHAPE is COLOUR"
            (o,) = [o for o in s.objects if o.shape == words[1]]
            assert words[-1] == o.colour
        elif qa.kind == "size":
            (o,) = [o for o in s.objects if o.shape == words[1]]
            assert words[-1] == o.size
        elif qa.kind == "shape":  # asked about a colour
            colour = qa.question.split()[-2]
            (o,) = [o for o in s.objects if o.colour == colour]
            assert words[-1] == o.shape
        elif qa.kind == "count":
            assert words[2] == wt.NUMBER_WORDS[len(s.objects)]
        else:  # "the C1 S1 is RELATION the C2 S2"
            c1, s1 = words[1], words[2]
            rel = " ".join(words[4:-3])
            first = next(o for o in s.objects if (o.colour, o.shape) == (c1, s1))
            other = next(o for o in s.objects if o is not first)
            assert (words[-2], words[-1]) == (other.colour, other.shape)
            assert rel == (s.relation if first is s.objects[0] else wt.MIRROR[s.relation])
    assert kinds == set(wt.QUESTION_KINDS)


def test_requests_are_prefixed_captions():
    s = RED_CIRCLE_LEFT_OF_BLUE_STAR
    assert wt.draw_request(images.caption(s)) == (
        "draw a big red circle to the left of a small blue star"
    )
    assert wt.draw_request("A big red circle.", "please draw") == "please draw a big red circle"
    m = music.random_melody(random.Random(1), tempo="slow", mood="happy", instrument="piano")
    m.register = "high"
    assert wt.music_request(music.caption(m)) == "play a slow happy piano melody in a high register"
    assert wt.music_request(music.caption(m), "compose").startswith("compose a slow happy piano")


def test_sentence_set_size_and_words():
    counts = wt.sentence_counts()
    assert counts == {
        "image_caption": 16448,  # 64 single objects + 64 * 4 * 64 pairs
        "question": 49,
        "answer": 4014,
        "draw_request": 16448 * len(wt.DRAW_PREFIXES),
        "describe": 4,
        "music_caption": 24,
        "music_request": 24 * len(wt.MUSIC_PREFIXES),
    }
    sentences = list(wt.all_sentences())
    assert len(sentences) == len(set(sentences)) == 69979
    template = set(
        " ".join(
            wt.DRAW_PREFIXES
            + wt.MUSIC_PREFIXES
            + wt.DESCRIBE_IMAGE
            + wt.DESCRIBE_MUSIC
            + wt.NUMBER_WORDS[1:3]
        ).split()
    )
    template |= set(
        "a the is are there object objects what colour shape big or small how many".split()
    )
    template |= set("where it to left right of above below melody in register".split())
    world = set(vocab.SHAPES + vocab.COLOURS + vocab.SIZES + vocab.TEMPOS + vocab.MOODS)
    world |= set(vocab.INSTRUMENTS + vocab.REGISTERS)
    assert set(wt.all_words()) <= world | template
    with pytest.raises(ValueError, match="unknown sentence kinds"):
        list(wt.all_sentences(("nonsense",)))


def test_everything_the_world_says_is_in_the_set():
    sentences = set(wt.all_sentences())
    rng = random.Random(3)
    for _ in range(200):
        s = images.random_scene(rng)
        cap = images.caption(s)
        assert wt.phrase(cap) in sentences
        assert wt.random_draw_request(cap, rng) in sentences
        for qa in wt.scene_questions(s):
            assert qa.question in sentences and qa.answer in sentences
        mcap = music.caption(music.random_melody(rng))
        assert wt.phrase(mcap) in sentences
        assert wt.random_music_request(mcap, rng) in sentences
    one_kind = set(wt.all_sentences(("question",)))
    assert len(one_kind) == 49 and one_kind < sentences


def test_jsgf_grammar_accepts_the_sentence_set():
    import re

    grammar = wt.jsgf()
    rules = dict(re.findall(r"^(?:public )?<(\w+)> = (.*);$", grammar, re.M))
    # JSGF -> regex: groups, and an optional part takes its leading space with it
    rules = {
        k: v.replace("(", "(?:").replace(" [", "(?: ").replace("]", ")?") for k, v in rules.items()
    }

    def expand(s: str) -> str:
        while "<" in s:
            s = re.sub(r"<(\w+)>", lambda m: "(?:" + rules[m.group(1)] + ")", s)
        return s

    pattern = re.compile(expand(rules["sentence"]).replace(" | ", "|"))
    sentences = list(wt.all_sentences())
    sample = random.Random(0).sample(sentences, 3000) + wt.all_questions() + wt.all_answers()[:60]
    assert all(pattern.fullmatch(s) for s in sample)
    for wrong in ("what colour is the circle red", "draw a red circle", "a big red circle above"):
        assert not pattern.fullmatch(wrong)
    only_questions = wt.jsgf(("question",))
    assert "how many objects are there" in only_questions and "<caption> |" not in only_questions
    from pocketsphinx import Decoder

    dec = Decoder(lm=None, loglevel="FATAL")
    dec.add_jsgf_string("world", grammar)  # pocketsphinx parses it
