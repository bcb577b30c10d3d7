"""The shared runtime: modality registry, an engine that returns media, the Python API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch


def test_every_family_registers_itself_and_bundles_build_through_the_registry(debug_bundle):
    from anygpt.bundle import Bundle
    from anygpt.modalities.registry import families

    known = families()
    assert {"speechtokenizer", "units", "encodec", "seed"} <= set(known)
    bundle = Bundle(debug_bundle, device="cpu")
    for name, entry in bundle.config.modalities.items():
        adapter = bundle.modality(name)
        assert type(adapter).__module__ == known[entry.type].build.__module__


def test_unknown_family_type_is_one_clear_error(debug_bundle, tmp_path):
    from anygpt.bundle import Bundle
    from anygpt.modalities.base import ModalityError

    copy = tmp_path / "b"
    shutil.copytree(debug_bundle, copy)
    cfg = json.loads((copy / "bundle.json").read_text())
    cfg["modalities"]["music"]["type"] = "no-such-codec"
    (copy / "bundle.json").write_text(json.dumps(cfg))
    with pytest.raises(ModalityError, match="unknown modality tokenizer type 'no-such-codec'"):
        Bundle(copy, device="cpu").modality("music")


def test_declared_codebooks_are_checked_against_the_bundle_tokens(debug_bundle, tmp_path):
    from anygpt.bundle import Bundle
    from anygpt.modalities.base import ModalityError

    copy = tmp_path / "b"
    shutil.copytree(debug_bundle, copy)
    cfg = json.loads((copy / "bundle.json").read_text())
    cfg["modalities"]["music"]["tokens"]["codebook_size"] = 16  # the codec has 2048 codes
    (copy / "bundle.json").write_text(json.dumps(cfg))
    bundle = Bundle(copy, device="cpu")
    bundle.modality("music")  # building reads nothing
    with pytest.raises(ModalityError, match="codebooks of 2048 codes"):
        bundle.modality("music", checked=True)


def test_engine_returns_media_objects_and_writes_nothing(debug_bundle, tmp_path, monkeypatch):
    import anygpt

    monkeypatch.chdir(tmp_path)
    steps = []
    model = anygpt.load(
        debug_bundle, device="cpu", seed=3, max_new_tokens=12, on_token=steps.append
    )
    speech, image = model.base("text|speech|hello", "text|image|a red circle")
    assert speech.ok and image.ok and not speech.files
    wave = speech.media[0].numpy()
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.size > 0
    assert speech.media[0].sample_rate == 16000
    pixels = image.media[0].numpy()
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    assert steps and steps[-1].dim() == 2  # the per-token hook saw [B, t] ids
    assert list(tmp_path.iterdir()) == []  # the engine itself wrote no file
    from anygpt.runtime.media import FileSink

    (path,) = FileSink(tmp_path / "out").write(speech)
    assert sf.info(str(path)).samplerate == 16000 and speech.files == [path]


def test_chat_turn_through_the_python_api(debug_bundle):
    import anygpt

    chat = anygpt.load(debug_bundle, device="cpu", seed=0, max_new_tokens=6).chat()
    reply = chat.turn("interleaved|hello")
    assert reply.ok and reply.text is not None
    assert [r for r, _ in chat.conversation.messages] == ["user", "assistant"]


def test_anygpt_template_replies_stop_at_eom(debug_bundle, tmp_path, monkeypatch):
    """``<eom>`` is plain text in AnyGPT's template: generation must be told to stop on it."""
    from anygpt.bundle import Bundle
    from anygpt.runtime import engine as engine_module
    from anygpt.runtime.engine import Engine

    copy = tmp_path / "b"
    shutil.copytree(debug_bundle, copy)
    cfg = json.loads((copy / "bundle.json").read_text())
    cfg["chat_template"] = "anygpt"
    (copy / "bundle.json").write_text(json.dumps(cfg))
    bundle = Bundle(copy, device="cpu")
    seen = {}

    def fake_generate(model, layout, prompts, decoding, **kw):
        seen.update(kw)
        return [bundle.tokenizer.encode("fine thanks<eom>", add_bos=False)]

    monkeypatch.setattr(engine_module, "generate", fake_generate)
    session = Engine(bundle, seed=0).chat()
    out = session.turn("interleaved|how are you")
    assert tuple(seen["stop_texts"]) == ("<eom>",)
    assert out.text == "fine thanks"
    rendered = session.conversation.render()
    assert rendered.count("<eom>") == 1 and rendered.rstrip().endswith("fine thanks<eom>")


def test_image_tokenizer_path_flag_is_honoured(debug_bundle, tmp_path):
    missing = tmp_path / "my_seed_quantizer.pt"
    r = subprocess.run(
        [sys.executable, "-m", "anygpt", "base", "--model", str(debug_bundle), "--device", "cpu",
         "--image-tokenizer-path", str(missing), "--output-dir", str(tmp_path / "o"),
         "--max-new-tokens", "4", "text|image|a cat"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1
    assert "my_seed_quantizer.pt" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("policy", ["first", "mean"])
def test_tokenize_and_inference_share_the_channel_policy(debug_bundle, tmp_path, policy):
    from anygpt.bundle import Bundle
    from anygpt.train.tokenize_media import _waveform

    tok = Bundle(debug_bundle, device="cpu").modality("speech")
    tok.channels = policy
    rng = np.random.default_rng(0)
    stereo = (0.3 * rng.standard_normal((16000, 2))).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 16000, subtype="FLOAT")
    from_file = tok.load(tmp_path / "s.wav")
    from_rows = _waveform(tok, "speech", stereo, 16000, None)
    assert torch.allclose(from_file, from_rows, atol=1e-6)


def test_concurrent_first_runs_heal_a_broken_default_model(tmp_path):
    """Two runs at once on a fresh tree with a half-built default folder both succeed."""
    import os

    root = Path(__file__).resolve().parent.parent
    home = tmp_path / "home"
    for d in ("config", "tokenizers"):
        shutil.copytree(root / d, home / d)
    (home / "models" / "anygpt-nano").mkdir(parents=True)
    (home / "models" / "anygpt-nano" / "leftover").write_text("half written")
    env = {**os.environ, "ANYGPT_HOME": str(home)}
    env.pop("ANYGPT_MODEL", None)
    cmd = [sys.executable, "-m", "anygpt", "base", "--device", "cpu", "--max-new-tokens", "4",
           "--output-dir", str(tmp_path / "out"), "text|speech|hi"]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), [e.decode()[-500:] for _, e, _ in results]
    assert (home / "models" / "anygpt-nano" / "bundle.json").is_file()
    assert not (home / "models" / "anygpt-nano" / "leftover").exists()
    assert [p.name for p in (home / "models").iterdir()] == ["anygpt-nano"]
