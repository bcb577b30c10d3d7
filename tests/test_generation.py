"""Batched, constrained generation on the debug bundle's random LLM."""

import pytest
import torch

from anygpt.bundle import Bundle
from anygpt.config import DecodingConfig, load_decoding
from anygpt.generation import SpanConstraint, generate, left_pad


@pytest.fixture(scope="module")
def bundle(debug_bundle):
    return Bundle(debug_bundle, device="cpu")


def _prompt(bundle, start_tag):
    tok = bundle.tokenizer
    return tok.encode("[Human]: go<eoh> [MMGPT]:") + tok.encode(": " + start_tag, add_bos=False)[2:]


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("modality", ["music", "audio"])
def test_multicodebook_order_is_enforced(bundle, modality):
    lay = bundle.layout
    cfg = DecodingConfig(max_new_tokens=41, do_sample=True)
    out = generate(
        bundle.llm,
        lay,
        [_prompt(bundle, lay.spec(modality).start_tag)] * 2,
        cfg,
        stop_ids=[bundle.tokenizer.eos_id],
        seed=0,
    )
    size = lay.spec(modality).codebook_size
    for row in out:
        body = row[: row.index(lay.end_ids[modality])] if lay.end_ids[modality] in row else row
        values = lay._id_value[torch.tensor(body)]
        assert (values >= 0).all(), "only codes of the open modality inside the span"
        assert ((values // size) == torch.arange(len(body)) % 4).all(), "codebooks cycle 0,1,2,3"


def test_image_span_has_exactly_32_codes(bundle):
    if "image" not in bundle.layout.modalities:
        pytest.skip("no image modality in this bundle")
    lay = bundle.layout
    out = generate(
        bundle.llm,
        lay,
        [_prompt(bundle, "<soim>")],
        DecodingConfig(max_new_tokens=40),
        stop_ids=[bundle.tokenizer.eos_id],
        seed=1,
    )[0]
    assert out[32] == lay.end_ids["image"]
    assert (lay._id_modality[torch.tensor(out[:32])] == lay._names.index("image")).all()


def test_outside_spans_codes_are_banned(bundle):
    lay = bundle.layout
    proc = SpanConstraint(lay)
    ids = torch.tensor([bundle.tokenizer.encode("[Human]: hi<eoh> [MMGPT]:")])
    scores = proc(ids, torch.zeros(1, bundle.llm.config.vocab_size))
    assert torch.isinf(scores[0, lay.all_code_ids]).all()
    assert not torch.isinf(scores[0, lay.start_ids["speech"]])
    # inside a speech span: speech codes allowed, after one code the end tag too
    ids = torch.tensor([bundle.tokenizer.encode("x<sosp><🗣️3>")])
    scores = proc(ids, torch.zeros(1, bundle.llm.config.vocab_size))
    allowed = torch.nonzero(~torch.isinf(scores[0])).flatten()
    expected = torch.cat([lay.code_ids["speech"], torch.tensor([lay.end_ids["speech"]])])
    assert torch.equal(allowed.sort().values, expected.sort().values)


def test_seeded_generation_is_reproducible_and_batched_matches_shapes(bundle):
    lay = bundle.layout
    prompts = [
        bundle.tokenizer.encode("[Human]: hello there<eoh> [MMGPT]:"),
        bundle.tokenizer.encode("a"),
    ]
    cfg = load_decoding(None, chat=False).with_overrides(max_new_tokens=12)
    a = generate(bundle.llm, lay, prompts, cfg, stop_ids=[2], seed=5)
    b = generate(bundle.llm, lay, prompts, cfg, stop_ids=[2], seed=5)
    assert a == b and len(a) == 2


def test_greedy_batched_equals_one_by_one(bundle):
    lay = bundle.layout
    tok = bundle.tokenizer
    prompts = [
        tok.encode("[Human]: hello there, how are you<eoh> [MMGPT]:"),
        tok.encode("[Human]: hi<eoh> [MMGPT]:"),
    ]
    cfg = DecodingConfig(do_sample=False, max_new_tokens=8)
    batched = generate(bundle.llm, lay, prompts, cfg, stop_ids=[2])
    single = [generate(bundle.llm, lay, [p], cfg, stop_ids=[2])[0] for p in prompts]
    assert batched == single


def test_decoding_configs_keep_anygpt_values():
    text = load_decoding(None, chat=False)
    chat = load_decoding(None, chat=True)
    speech = load_decoding("speech", chat=False)
    music = load_decoding("music", chat=True)
    assert (text.max_new_tokens, text.do_sample) == (100, True)
    assert (chat.num_beams, chat.max_new_tokens, chat.vc_steps) == (5, 500, 3)
    assert (speech.max_new_tokens, speech.repetition_penalty, speech.vc_steps) == (1500, 1.05, 4)
    assert (music.top_k, music.max_new_tokens, music.repetition_penalty) == (200, 2000, 1.15)
    assert load_decoding("image", chat=False).max_new_tokens == 200
    assert speech.generation_kwargs()["min_new_tokens"] == 0  # inactive, as in AnyGPT


def test_text_stop_ends_rows_on_plain_text_markers(bundle):
    from anygpt.generation import TextStop

    tok = bundle.tokenizer
    prompt = tok.encode("[Human]: hi<eoh> [AnyGPT]:")
    done = tok.encode("[Human]: hi<eoh> [AnyGPT]: fine<eom>")
    stop = TextStop(tok, ["<eom>"], len(prompt))
    ids = torch.tensor([done, done[:-2] + [tok.encode("xy", add_bos=False)[-1]] * 2])
    assert stop(ids, None).tolist() == [True, False]


def test_seeded_base_runs_write_identical_outputs(debug_bundle, tmp_path):
    from anygpt.runtime.engine import Engine
    from anygpt.runtime.media import FileSink

    outs = []
    for run in range(2):
        engine = Engine(Bundle(debug_bundle, device="cpu"), seed=7, max_new_tokens=20)
        sink = FileSink(tmp_path / str(run))
        (o_speech, o_text) = engine.run_base(["text|speech|same seed", "text|speech|other"])[:2]
        assert o_speech.ok and o_text.ok
        outs.append([f.read_bytes() for o in (o_speech, o_text) for f in sink.write(o)])
    assert outs[0] == outs[1]
    other = Engine(Bundle(debug_bundle, device="cpu"), seed=8, max_new_tokens=20)
    first = other.run_base(["text|speech|same seed"])[0]
    assert [f.read_bytes() for f in FileSink(tmp_path / "x").write(first)] != outs[0][:1]
