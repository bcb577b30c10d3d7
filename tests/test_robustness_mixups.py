"""The debug bundle's tiny tokenizers depend on their input, so tests can see inputs mixed up."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three different sounds and three different pictures, each a file."""
    d = tmp_path_factory.mktemp("mixups")
    t = np.arange(24000) / 24000
    rng = np.random.default_rng(1)
    sounds = [
        0.4 * np.sin(2 * np.pi * 150 * t),
        0.3 * np.sin(2 * np.pi * 1200 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2,
        0.2 * rng.standard_normal(t.size),
    ]
    for i, s in enumerate(sounds):
        sf.write(d / f"sound{i}.wav", s, 24000)
    from PIL import Image

    Image.new("RGB", (64, 64), (220, 30, 30)).save(d / "picture0.png")
    Image.new("RGB", (64, 64), (30, 30, 220)).save(d / "picture1.png")
    noise = (rng.random((64, 64, 3)) * 255).astype("uint8")
    Image.fromarray(noise).save(d / "picture2.png")
    return d


@pytest.mark.parametrize("modality", ["speech", "music", "audio", "image"])
def test_different_inputs_give_different_codes(debug_bundle, clips, modality):
    from anygpt.bundle import Bundle

    tok = Bundle(debug_bundle, device="cpu").modality(modality)
    stem = "picture" if modality == "image" else "sound"
    files = [clips / f"{stem}{i}.png" if modality == "image" else clips / f"{stem}{i}.wav"
             for i in range(3)]  # fmt: skip
    codes = [c[0].tolist() for c in tok.encode([tok.load(f) for f in files]).unbatch()]
    again = [c[0].tolist() for c in tok.encode([tok.load(f) for f in reversed(files)]).unbatch()]
    assert again[::-1] == codes  # the same input gives the same codes, wherever it sits
    assert len({tuple(c) for c in codes}) == 3, codes
    for c in codes:  # not one code repeated: the codebook spans what the encoder produces
        assert len(set(c)) > 1, c


def test_each_result_stays_tied_to_its_prompt(debug_bundle, clips, monkeypatch):
    """In a mixed batch, each request's reply comes from a prompt holding its own file's codes.

    The generator is replaced by one that answers with the code tokens of its prompt, so each
    reply names the input it was made from.
    """
    from anygpt.bundle import Bundle
    from anygpt.runtime.engine import Engine

    bundle = Bundle(debug_bundle, device="cpu")
    code_ids = set(bundle.layout.all_code_ids.tolist())

    def echo_codes(self, prompts, cfg, **kw):
        return [[t for t in p if t in code_ids] for p in prompts]

    monkeypatch.setattr(Engine, "generate_ids", echo_codes)
    engine = Engine(bundle, seed=0, batch_size=4)
    requests = [("speech", clips / f"sound{i}.wav") for i in (2, 0, 1)]
    requests += [("image", clips / f"picture{i}.png") for i in (1, 2, 0)]
    requests.insert(2, ("music", clips / "sound1.wav"))
    outcomes = engine.run_base([f"{m}|text|{f}" for m, f in requests])

    def alone(modality, path) -> list[str]:
        tok = bundle.modality(modality)
        codes = tok.encode([tok.load(path)]).unbatch()[0]
        return re.findall(r"<[^>]+>", bundle.layout.segment_text(modality, codes))[1:-1]

    def agreement(a: list[str], b: list[str]) -> float:
        return sum(x == y for x, y in zip(a, b)) / max(len(a), len(b))

    expected = [alone(m, f) for m, f in requests]
    for i, outcome in enumerate(outcomes):
        assert outcome.request.endswith(str(requests[i][1]))
        got = re.findall(r"<[^>]+>", outcome.text)
        # a batch may flip a near-tie code or two; a swapped input would share almost none
        assert agreement(got, expected[i]) > 0.8, requests[i]
        for j, other in enumerate(expected):
            if j != i:
                assert agreement(got, other) < 0.5, (requests[i], requests[j])
