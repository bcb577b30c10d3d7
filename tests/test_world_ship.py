"""Shipping a trained bundle (self-contained, relative paths, demo inputs) and the text corpus."""

from __future__ import annotations

import json
import shutil

import pytest

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng absent")


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from anygpt.world.build import TINY_COUNTS, WorldConfig, build_world

    out = tmp_path_factory.mktemp("w") / "world"
    build_world(WorldConfig(out=str(out), seed=0, workers=1, progress=False, **TINY_COUNTS))
    return out


@needs_espeak
def test_shipped_bundle_is_self_contained_and_loads(debug_bundle, tiny_world, tmp_path):
    from anygpt.bundle import Bundle
    from anygpt.world.ship import ship

    out = ship(debug_bundle, tmp_path / "nano", tiny_world, "anygpt-nano")
    cfg = json.loads((out / "bundle.json").read_text())
    for entry in cfg["modalities"].values():
        assert all(not v.startswith("/") and (out / v).exists() for v in entry["files"].values())
    assert (
        cfg["decoding"] == "decoding" and (out / "decoding" / "text_generate_config.json").is_file()
    )
    assert {p.name for p in (out / "demo").iterdir()} >= {
        "picture.png",
        "question.wav",
        "melody.wav",
    }
    bundle = Bundle(out, device="cpu")
    assert bundle.decoding(None, chat=False).do_sample is False
    assert bundle.modality("music", checked=True).num_codebooks == 4


@needs_espeak
def test_corpus_has_world_sentences_and_prompt_wording(tiny_world):
    from anygpt.world.corpus import corpus_lines

    lines = corpus_lines(tiny_world / "train")
    captions = [
        json.loads(r)["text"]
        for r in (tiny_world / "train" / "image.jsonl").read_text().splitlines()
    ]
    assert set(captions) <= set(lines)
    assert any("MMGPT" in line for line in lines)
    assert not any("{image:" in line or "<-Res->" in line for line in lines)


def test_half_precision_llm_weights_halve_the_file_and_load_as_float32(debug_bundle, tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    from anygpt.bundle import Bundle
    from anygpt.world.ship import ship

    out = ship(debug_bundle, tmp_path / "half", None, "half", llm_dtype="float16")
    src = Bundle(debug_bundle, device="cpu").llm_dir / "model.safetensors"
    half = out / "llm" / "model.safetensors"
    assert half.stat().st_size < 0.6 * src.stat().st_size
    assert json.loads((out / "llm" / "config.json").read_text())["dtype"] == "float16"
    bundle = Bundle(out, device="cpu")
    model = bundle.llm
    assert next(model.parameters()).dtype == torch.float32
    ref = LlamaForCausalLM.from_pretrained(str(src.parent), dtype=torch.float32).eval()
    ids = torch.arange(20)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=2e-2)
