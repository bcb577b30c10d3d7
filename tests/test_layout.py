import pytest
import torch

from anygpt.layout import (
    ANYGPT_AUDIO,
    ANYGPT_IMAGE,
    ANYGPT_MODALITIES,
    ANYGPT_MUSIC,
    ANYGPT_SPEECH,
    LayoutError,
    TokenLayout,
    extended_vocabulary,
)


@pytest.fixture(scope="module")
def layout(fixture_tokenizer):
    # the fixture tokenizer has image, speech and music blocks (no audio)
    return TokenLayout([ANYGPT_IMAGE, ANYGPT_SPEECH, ANYGPT_MUSIC], fixture_tokenizer)


def test_token_strings_are_anygpts():
    assert ANYGPT_SPEECH.token(12) == "<\U0001f5e3\ufe0f12>"
    assert ANYGPT_SPEECH.prefix.encode() == b"\xf0\x9f\x97\xa3\xef\xb8\x8f"
    assert ANYGPT_IMAGE.token(0) == "<\U0001f4400>"
    assert ANYGPT_MUSIC.token(6150) == "<\U0001f3b66150>"
    assert (ANYGPT_AUDIO.start_tag, ANYGPT_AUDIO.end_tag, ANYGPT_AUDIO.vocab_size) == (
        "<soau>",
        "<eoau>",
        4096,
    )


def test_vocabulary_order_matches_fixture(fixture_tokenizer):
    expected = extended_vocabulary(ANYGPT_MODALITIES[:3])
    got = sorted(fixture_tokenizer.added, key=fixture_tokenizer.added.get)
    assert got == expected


def test_music_example_from_spec(layout):
    codes = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    text = layout.segment_text("music", codes)
    assert text == "<somu><🎶1><🎶2051><🎶4101><🎶6151><🎶2><🎶2052><🎶4102><🎶6152><eomu>"


@pytest.mark.parametrize(
    "name,k,size", [("speech", 1, 1024), ("image", 1, 8192), ("music", 4, 2048)]
)
def test_round_trip_ids(layout, name, k, size):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, size, (k, 37), generator=g)
    ids = layout.segment_ids(name, codes)
    assert ids[0] == layout.start_ids[name] and ids[-1] == layout.end_ids[name]
    seg = layout.find_segments(ids)
    assert len(seg) == 1 and seg[0].modality == name and seg[0].end == len(ids) - 1
    parsed = layout.codes_from_ids(name, seg[0].body)
    assert parsed.dropped_tokens == 0
    assert torch.equal(parsed.codes, codes)


def test_round_trip_text_and_ids_agree(layout):
    codes = torch.randint(0, 2048, (4, 9))
    text = layout.segment_text("music", codes)
    assert layout.tokenizer.encode(text, add_bos=False) == layout.segment_ids("music", codes)
    assert torch.equal(layout.codes_from_text("music", text).codes, codes)


def test_missing_music_token_drops_one_frame_not_all(layout):
    codes = torch.arange(4 * 6).reshape(4, 6) % 2048
    body = layout.segment_ids("music", codes)[1:-1]
    del body[4 * 2 + 1]  # lose codebook 1 of frame 2
    parsed = layout.codes_from_ids("music", body)
    assert parsed.codes.shape == (4, 5)
    assert torch.equal(parsed.codes, torch.cat([codes[:, :2], codes[:, 3:]], dim=1))
    assert parsed.dropped_tokens == 3


def test_foreign_tokens_in_span_are_dropped(layout):
    speech = layout.segment_ids("speech", torch.tensor([[5, 6]]))[1:-1]
    text = layout.tokenizer.encode("hello", add_bos=False)
    parsed = layout.codes_from_ids("speech", speech[:1] + text + speech[1:])
    assert parsed.codes.tolist() == [[5, 6]] and parsed.dropped_tokens == len(text)


def test_bad_codes_rejected(layout):
    with pytest.raises(LayoutError):
        layout.flatten("speech", torch.tensor([[1024]]))
    with pytest.raises(LayoutError):
        layout.flatten("music", torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(LayoutError, match="unknown modality"):
        layout.spec("smell")


def test_missing_tokens_reported(fixture_tokenizer):
    with pytest.raises(LayoutError, match="soau"):
        TokenLayout([ANYGPT_AUDIO], fixture_tokenizer)


def test_unclosed_and_interrupted_segments(layout):
    a = layout.segment_ids("speech", torch.tensor([[1, 2, 3]]))
    b = layout.segment_ids("image", torch.zeros(1, 32, dtype=torch.long))
    segs = layout.find_segments(a[:-1] + b)
    assert [(s.modality, s.end is None) for s in segs] == [("speech", True), ("image", False)]
    assert len(segs[0].body) == 3


def test_allowed_next_rules(layout):
    ids, end_ok = layout.allowed_next("music", 0)
    assert not end_ok and torch.equal(ids, layout.code_ids["music"][:2048])
    ids, end_ok = layout.allowed_next("music", 5)
    assert not end_ok and torch.equal(ids, layout.code_ids["music"][2048:4096])
    assert layout.allowed_next("music", 8)[1]
    assert layout.allowed_next("speech", 1)[1] and not layout.allowed_next("speech", 0)[1]
    ids, end_ok = layout.allowed_next("image", 31)
    assert not end_ok and len(ids) == 8192
    ids, end_ok = layout.allowed_next("image", 32)
    assert end_ok and len(ids) == 0
