"""The nano world's moving-shape clips and background sounds, and how silence is trained."""

from __future__ import annotations

import random

import numpy as np
import pytest

from anygpt.world import clips, vocab
from anygpt.world import text as wt


def centre(im) -> tuple[float, float]:
    a = np.asarray(im).astype(int)
    bg = a[0, 0]
    ys, xs = np.nonzero(np.abs(a - bg).sum(-1) > 60)
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("seed", range(12))
def test_clips_move_the_way_their_caption_says(seed):
    m = clips.random_motion(random.Random(seed))
    frames = clips.frames(m)
    assert len(frames) == clips.CLIP_FRAMES and frames[0].size == (64, 64)
    (x0, y0), (x1, y1) = centre(frames[0]), centre(frames[-1])
    dx, dy = x1 - x0, y1 - y0
    expected = {"to the left": -dx, "to the right": dx, "up": -dy, "down": dy}[m.direction]
    assert expected > 5 and expected > 3 * min(abs(dx), abs(dy)) - 1e-6
    cap = clips.caption(m)
    assert cap == f"the {m.size} {m.colour} {m.shape} moves {m.direction}"
    assert clips.parse_direction(cap) == m.direction


def test_parse_direction():
    assert clips.parse_direction("the star moves up") == "up"
    assert clips.parse_direction("the big red circle moves to the left") == "to the left"
    assert clips.parse_direction("it stays still") is None
    assert clips.parse_direction("") is None


def test_every_clip_is_described_and_asked_about_once():
    from anygpt.world.dialogues import VideoItem, clip_dialogues

    rng = random.Random(3)
    motions = [clips.random_motion(rng) for _ in range(6)]
    items = [VideoItem(f"videos/{i:06d}.mp4", m, clips.caption(m)) for i, m in enumerate(motions)]
    rows = clip_dialogues(items, random.Random(0), "train")
    assert rows == clip_dialogues(items, random.Random(0), "train")
    assert [r["kind"] for r in rows] == ["video_caption", "video_qa"] * 6
    assert len({r["id"] for r in rows}) == 12
    for i, item in enumerate(items):
        caption, qa = rows[2 * i], rows[2 * i + 1]
        assert caption["conversation"][0]["message"].startswith(f"{{video:{item.path}}}")
        assert caption["conversation"][1]["message"] == item.caption
        assert caption["turns"][0]["question"] == clips.DESCRIBE_VIDEO[i % 2]
        assert qa["turns"][0]["video"] == item.path
        answer = qa["conversation"][1]["message"]
        assert answer == qa["turns"][0]["answer"] and item.motion.shape in answer
        if "moves" in answer:
            assert clips.parse_direction(answer) == item.motion.direction


def test_chatter_never_speaks_of_the_world():
    """Background lines share no content word with what the assistant is asked about."""
    world = set(vocab.SHAPES + vocab.COLOURS + vocab.SIZES + vocab.TEMPOS + vocab.MOODS)
    world |= set(vocab.INSTRUMENTS + vocab.REGISTERS) | {"draw", "play", "picture", "music"}
    rng = random.Random(0)
    lines = {clips.chatter(rng) for _ in range(400)}
    assert len(lines) > 200
    for line in lines:
        assert not set(line.split()) & world, line
    assert not set(wt.all_questions()) & lines


@pytest.mark.parametrize("kind", clips.NOISES)
def test_noises_are_finite_and_bounded(kind):
    babble = [np.full(8000, 0.2, np.float32), np.full(12000, -0.1, np.float32)]
    wave = clips.noise(kind, 1.5, seed=3, babble=babble)
    assert wave.dtype == np.float32 and wave.shape == (24000,)
    assert np.isfinite(wave).all() and 0.29 <= np.abs(wave).max() <= 0.61
    assert np.array_equal(wave, clips.noise(kind, 1.5, seed=3, babble=babble))


def test_silence_is_trained_as_an_empty_reply(fixture_tokenizer):
    """A background turn's reply is empty; its loss falls on the turn end, so silence is learnt."""
    from anygpt.prompts import MMGPT_TEMPLATE
    from anygpt.train.sft_data import encode_with_loss, render_with_spans

    tok = fixture_tokenizer
    text, spans = render_with_spans(MMGPT_TEMPLATE, [("user", "hi"), ("assistant", "")])
    ids, loss = encode_with_loss(tok, text, spans)
    learnt = [tok.decode([i], skip_special=False) for i, w in zip(ids, loss, strict=True) if w]
    assert "<eos>" in learnt and all(t.strip() in ("", "<eos>", "</s>") for t in learnt)


def test_an_empty_reply_is_reported_as_staying_silent(debug_bundle, monkeypatch):
    import anygpt

    engine = anygpt.load(debug_bundle, device="cpu", seed=0)
    monkeypatch.setattr(engine, "generate_ids", lambda prompts, *a, **k: [[] for _ in prompts])
    chat = engine.chat()
    out = chat.turn("is anyone there")
    assert out.ok and out.text == "" and not out.media
    assert any("stayed silent" in n for n in out.notes)
    assert chat.conversation.messages[-1] == ("assistant", "")
