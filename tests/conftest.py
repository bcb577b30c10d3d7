"""Shared fixtures: a tiny debug bundle built once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="session")
def debug_bundle(tmp_path_factory) -> Path:
    from anygpt.debug_bundle import write_debug_bundle

    return write_debug_bundle(tmp_path_factory.mktemp("bundles") / "debug", seed=0)


@pytest.fixture(scope="session")
def fixture_tokenizer():
    from anygpt.text_tokenizer import TextTokenizer

    added = json.loads((ASSETS / "tokenization" / "added_tokens.json").read_text(encoding="utf-8"))
    return TextTokenizer(ASSETS / "tokenization" / "spm.model", {t: i for t, i in added})


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Small media files, good and bad."""
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    t = np.arange(int(22050 * 1.2)) / 22050
    sf.write(d / "speech.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 22050)
    sf.write(d / "stereo48k.wav", 0.2 * rng.standard_normal((48000, 2)), 48000)
    sf.write(d / "multi96k.wav", 0.1 * rng.standard_normal((96000 // 2, 8)), 96000)
    sf.write(d / "music.wav", 0.2 * rng.standard_normal(32000 * 2), 32000)
    sf.write(d / "empty.wav", np.zeros((0,)), 16000)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (d / "text.wav").write_text("this is not audio")
    from PIL import Image

    Image.fromarray((rng.random((40, 60, 3)) * 255).astype("uint8")).save(d / "image.jpg")
    Image.new("CMYK", (30, 20), (10, 200, 30, 0)).save(d / "cmyk.jpg")
    Image.new("P", (20000, 3)).save(d / "huge.png")  # 20000 px wide, palette mode
    (d / "truncated.jpg").write_bytes((d / "image.jpg").read_bytes()[:200])
    return d
