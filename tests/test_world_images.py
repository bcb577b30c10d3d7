"""World pictures: scenes, drawing, captions and their parsing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from anygpt.world import images as wi
from anygpt.world.vocab import COLOURS, IMAGE_SIZE, RELATIONS, SHAPES, SIZES

WORDS = set(SHAPES) | set(COLOURS) | set(SIZES) | {"a"} | {w for r in RELATIONS for w in r.split()}


@pytest.fixture(scope="module")
def scenes() -> list[wi.Scene]:
    rng = random.Random(7)
    return [wi.random_scene(rng) for _ in range(400)]


def test_captions_use_only_vocabulary_and_match_scene(scenes):
    for s in scenes:
        text = wi.caption(s)
        assert set(text.split()) <= WORDS, text
        for o in s.objects:
            assert f"a {o.size} {o.colour} {o.shape}" in text
        if s.relation:
            assert f" {s.relation} " in text
    assert wi.caption(wi.Scene([wi.Obj("circle", "red", "big", 30, 30, 0.5)])) == "a big red circle"


def test_both_counts_and_every_relation_occur(scenes):
    assert {len(s.objects) for s in scenes} == {1, 2}
    assert {s.relation for s in scenes if len(s.objects) == 2} == set(RELATIONS)
    assert all(s.relation is None for s in scenes if len(s.objects) == 1)


def test_relations_hold_geometrically_and_objects_fit(scenes):
    for s in scenes:
        for o in s.objects:
            assert o.radius <= o.cx <= IMAGE_SIZE - o.radius
            assert o.radius <= o.cy <= IMAGE_SIZE - o.radius
        if len(s.objects) != 2:
            continue
        a, b = s.objects
        dx, dy = a.cx - b.cx, a.cy - b.cy
        along, across = {
            "to the left of": (-dx, dy),
            "to the right of": (dx, dy),
            "above": (-dy, dx),
            "below": (dy, dx),
        }[s.relation]
        assert along >= a.radius + b.radius, s  # boxes apart along the relation's axis
        assert abs(across) <= 0.5 * along + 0.02, s  # on that axis (centres: 0.01 px)


def test_sizes_in_range(scenes):
    for s in scenes:
        for o in s.objects:
            lo, hi = wi.SCALE_RANGE[o.size]
            assert lo - 1e-9 <= o.scale <= hi + 1e-9
    small = [o.scale for s in scenes for o in s.objects if o.size == "small"]
    big = [o.scale for s in scenes for o in s.objects if o.size == "big"]
    assert max(small) < 0.26 and min(big) > 0.39


def test_render_is_deterministic_and_visible(scenes):
    for s in scenes[:20]:
        a, b = wi.render(s), wi.render(s)
        assert a.size == (IMAGE_SIZE, IMAGE_SIZE) and a.mode == "RGB"
        arr = np.asarray(a).astype(int)
        assert np.array_equal(arr, np.asarray(b))
        again = wi.Scene.from_dict(s.to_dict())
        assert again.to_dict() == s.to_dict() and wi.caption(again) == wi.caption(s)
        assert np.array_equal(np.asarray(wi.render(again)), arr)
        bg = np.array([s.background] * 3)
        # The object's own colour is present and differs clearly from the grey.
        for o in s.objects:
            rgb = np.array(wi.object_rgb(o))
            assert np.abs(rgb - bg).max() >= 60
            assert (np.abs(arr - rgb).max(-1) <= 3).sum() >= 10


def test_object_pixels_at_the_right_place():
    s = wi.Scene([wi.Obj("square", "blue", "small", 10.0, 50.0, 0.2)], None, 128)
    arr = np.asarray(wi.render(s)).astype(int)
    assert arr[50, 10].tolist() == list(wi.object_rgb(s.objects[0]))
    assert arr[10, 50].tolist() == [128, 128, 128]


def test_parse_caption_round_trip(scenes):
    for s in scenes:
        d = wi.parse_caption(wi.caption(s))
        assert d == wi.describe(s)
    d = wi.parse_caption("It shows A big RED circle, above a small white star!")
    assert d.objects == [("big", "red", "circle"), ("small", "white", "star")]
    assert d.relation == "above"
    with pytest.raises(ValueError):
        wi.parse_caption("a large crimson blob")


def test_canonical_and_compare():
    d = wi.parse_caption("a small blue square to the right of a big yellow star")
    c = wi.canonical(d)
    assert c.relation == "to the left of"
    assert c.objects == [("big", "yellow", "star"), ("small", "blue", "square")]
    same = wi.parse_caption("a big yellow star to the left of a small blue square")
    r = wi.compare(same, d)
    assert r == {
        "objects": 2,
        "objects_correct": 2,
        "attributes": 7,
        "attributes_correct": 7,
        "all_correct": True,
    }
    wrong = wi.parse_caption("a big yellow star above a small red square")
    r = wi.compare(wrong, d)
    assert r["objects_correct"] == 1 and r["attributes_correct"] == 5 and not r["all_correct"]
    one = wi.parse_caption("a small blue square")
    r = wi.compare(one, d)
    assert r["objects_correct"] == 1 and not r["all_correct"]


def test_white_and_black_stay_off_similar_greys(scenes):
    for s in scenes:
        colours = {o.colour for o in s.objects}
        if "white" in colours:
            assert s.background <= wi.WHITE_MAX_GREY
        if "black" in colours:
            assert s.background >= wi.BLACK_MIN_GREY
