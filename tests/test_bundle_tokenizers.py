"""``anygpt bundle-tokenizers``: trained tokenizer files -> a bundle whose tokens fit them."""

from __future__ import annotations

import json

import pytest


def test_tokens_are_read_off_the_tokenizers_and_extend_vocab_takes_the_bundle(
    debug_bundle, tmp_path
):
    from anygpt.bundle import Bundle
    from anygpt.train.bundle_tokenizers import bundle_tokenizers

    out = bundle_tokenizers(
        tmp_path / "tok",
        [
            f"music=encodec:{debug_bundle / 'encodec_32khz'}",
            f"speech=speechtokenizer:config={debug_bundle / 'speechtokenizer' / 'config.json'},"
            f"checkpoint={debug_bundle / 'speechtokenizer' / 'ckpt.dev'}",
        ],
    )
    cfg = json.loads((out / "bundle.json").read_text())
    music = cfg["modalities"]["music"]
    assert music["tokens"]["codebook_size"] == 2048 and music["tokens"]["num_codebooks"] == 4
    assert music["tokens"]["start_tag"] == "<somu>" and music["files"] == {
        "model": "music/encodec_32khz"
    }
    assert cfg["modalities"]["speech"]["files"]["checkpoint"] == "speech/ckpt.dev"
    bundle = Bundle(out, device="cpu")
    assert bundle.modality("music", checked=True).num_codebooks == 4


def test_bad_specs_are_one_line_errors(tmp_path):
    from anygpt.train.bundle_tokenizers import bundle_tokenizers

    with pytest.raises(ValueError, match="expected MODALITY=TYPE"):
        bundle_tokenizers(tmp_path / "a", ["music"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bundle_tokenizers(tmp_path / "b", [f"music=encodec:{tmp_path / 'nope'}"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
