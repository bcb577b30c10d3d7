"""Classifier-free guidance: the guided loop against the plain one, its mixing rule, and the
engine's use of it for text -> media requests (debug bundle's random LLM)."""

import dataclasses
import json

import pytest
import torch

from anygpt.bundle import Bundle
from anygpt.config import DecodingConfig
from anygpt.generation import generate
from anygpt.generation.guidance import guided_generate, mix
from anygpt.runtime.engine import Engine


@pytest.fixture(scope="module")
def bundle(debug_bundle):
    return Bundle(debug_bundle, device="cpu")


def _t2x(bundle, text: str, tag: str) -> list[int]:
    tok = bundle.tokenizer
    ids = tok.encode(f"[Human]: Make this. This is input: {text}<eoh> [MMGPT]:")
    return ids + tok.encode(": " + tag, add_bos=False)[2:]


def test_mix_is_conditional_at_scale_one_and_extrapolates_beyond():
    cond = torch.tensor([[2.0, 1.0, 0.0, float("-inf")]])
    uncond = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    assert torch.allclose(mix(cond, uncond, 1.0), cond.log_softmax(-1))
    guided = mix(cond, uncond, 3.0)
    assert guided[0, 3] == float("-inf"), "an id banned in the conditional stays banned"
    # id 0 is what the text adds (more likely with it than without): it gains the most
    assert guided[0].argmax() == 0
    gain = guided.log_softmax(-1) - cond.log_softmax(-1)
    assert gain[0, 0] > 0 > gain[0, 2]


def test_scale_one_greedy_equals_the_plain_loop(bundle):
    prompts = [_t2x(bundle, "a red circle", "<soim>"), _t2x(bundle, "slow sad piano", "<somu>")]
    twins = [_t2x(bundle, "", "<soim>"), _t2x(bundle, "", "<somu>")]
    cfg = DecodingConfig(do_sample=False, max_new_tokens=40)
    plain = generate(bundle.llm, bundle.layout, prompts, cfg, stop_ids=[2])
    guided = guided_generate(
        bundle.llm, bundle.layout, prompts, twins, cfg, scale=1.0, stop_ids=[2]
    )
    assert guided == plain
    assert sum(len(r) for r in plain) > 60


def test_guidance_changes_the_output_and_keeps_the_span_rules(bundle):
    lay = bundle.layout
    prompts = [_t2x(bundle, f"a {c} star", "<soim>") for c in ("red", "blue", "green")]
    twins = [_t2x(bundle, "", "<soim>")] * 3
    cfg = DecodingConfig(do_sample=False, max_new_tokens=80)
    plain = guided_generate(bundle.llm, lay, prompts, twins, cfg, scale=1.0, stop_ids=[2])
    strong = guided_generate(bundle.llm, lay, prompts, twins, cfg, scale=4.0, stop_ids=[2])
    assert strong != plain
    image_ids = set(lay.code_ids["image"].tolist())
    fixed = lay.spec("image").fixed_length
    for row in strong:
        # exactly the image's fixed number of codes, then its end tag
        assert all(t in image_ids for t in row[:fixed])
        assert row[fixed] == lay.end_ids["image"]


def test_twin_equal_to_the_prompt_cancels_guidance(bundle):
    prompt = _t2x(bundle, "a small white square", "<soim>")
    cfg = DecodingConfig(do_sample=False, max_new_tokens=30)
    kw = dict(stop_ids=[2])
    off = guided_generate(bundle.llm, bundle.layout, [prompt], [prompt], cfg, scale=1.0, **kw)
    on = guided_generate(bundle.llm, bundle.layout, [prompt], [prompt], cfg, scale=5.0, **kw)
    assert on == off


def test_a_seeded_row_samples_the_same_alone_or_in_a_batch(bundle):
    lay = bundle.layout
    prompts = [_t2x(bundle, "a big black triangle", "<soim>"), _t2x(bundle, "fast", "<somu>")]
    twins = [_t2x(bundle, "", "<soim>"), _t2x(bundle, "", "<somu>")]
    cfg = DecodingConfig(temperature=0.9, top_k=20, max_new_tokens=30)
    kw = dict(scale=2.5, stop_ids=[2], seed=11)
    together = guided_generate(bundle.llm, lay, prompts, twins, cfg, **kw)
    alone = guided_generate(bundle.llm, lay, prompts[:1], twins[:1], cfg, **kw)
    assert together[0] == alone[0]
    again = guided_generate(bundle.llm, lay, prompts, twins, cfg, **kw)
    assert again == together


def test_mismatched_twins_and_bad_scales_are_refused(bundle):
    cfg = DecodingConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match="twin"):
        guided_generate(bundle.llm, bundle.layout, [[1, 5]], [], cfg, scale=2.0, stop_ids=[2])
    for bad in (0.0, -1.0, 1e30, float("nan"), "3", None, True):
        with pytest.raises(ValueError, match="guidance_scale"):
            DecodingConfig(guidance_scale=bad)


def test_engine_guides_text_to_media_when_the_config_asks(debug_bundle, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "bundle"
    shutil.copytree(debug_bundle, root)
    meta = json.loads((root / "bundle.json").read_text())
    cfg = dataclasses.replace(Bundle(root).decoding("image", chat=False), guidance_scale=3.0)
    meta["decoding"] = "decoding"
    (root / "bundle.json").write_text(json.dumps(meta))
    (root / "decoding").mkdir(exist_ok=True)
    (root / "decoding" / "image_generate_config.json").write_text(json.dumps(cfg.to_dict()))
    bundle = Bundle(root, device="cpu")
    assert bundle.decoding("image", chat=False).guidance_scale == 3.0

    seen = []
    import anygpt.runtime.engine as engine_module

    real = engine_module.guided_generate

    def spy(model, layout, prompts, twins, cfg, **kw):
        seen.append((prompts, twins, kw["scale"]))
        return real(model, layout, prompts, twins, cfg, **kw)

    monkeypatch.setattr(engine_module, "guided_generate", spy)
    engine = Engine(bundle, seed=3, instruction="Draw it.")
    out = engine.base("text|image|a red circle", "image|text|" + str(root / "missing.png"))
    assert out[0].ok and out[0].media, out[0].error
    assert not out[1].ok, "a bad request beside a guided one fails alone"
    ((prompts, twins, scale),) = seen
    tok = bundle.tokenizer
    assert scale == 3.0
    assert "a red circle" in tok.decode(prompts[0]) and "a red circle" not in tok.decode(twins[0])
    assert tok.decode(twins[0]).endswith("<soim>")
    # the command-line override wins over the config; 1 turns guidance off
    seen.clear()
    Engine(bundle, seed=3, guidance_scale=1.0).base("text|image|a red circle")
    assert not seen
    # text outputs are never guided; another backend decodes unguided
    strong = Engine(bundle, guidance_scale=4.0)
    assert strong.decoding(None, chat=False).guidance_scale == 1.0
    assert strong.guided("image", strong.decoding("image", chat=False))
    assert not strong.guided("text", cfg)
    strong.backend = object()
    assert not strong.guided("image", strong.decoding("image", chat=False))


def test_a_malformed_guidance_setting_fails_only_its_own_requests(debug_bundle, tmp_path):
    import shutil

    root = tmp_path / "bundle"
    shutil.copytree(debug_bundle, root)
    meta = json.loads((root / "bundle.json").read_text())
    meta["decoding"] = "decoding"
    (root / "bundle.json").write_text(json.dumps(meta))
    (root / "decoding").mkdir(exist_ok=True)
    bad = {"temperature": 0.8, "guidance_scale": "strong"}
    (root / "decoding" / "image_generate_config.json").write_text(json.dumps(bad))
    engine = Engine(Bundle(root, device="cpu"), seed=1, max_new_tokens=8)
    image, music = engine.base("text|image|a red circle", "text|music|slow and sad")
    assert not image.ok and "guidance_scale" in image.error
    assert music.ok and music.media, music.error
