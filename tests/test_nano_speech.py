"""Nano speech units: tiny model shapes, the adapter through the registry, the trainer's stages."""

from __future__ import annotations

import argparse
import json

import pytest
import soundfile as sf
import torch

from anygpt.modalities.base import Codes, ModalityError
from anygpt.models.nano_speech import ctc_greedy, kmeans, text_to_labels
from anygpt.models.nano_speech_codec import NanoSpeech, tiny_config


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _wave(seconds: float, seed: int, f0: float = 150.0) -> torch.Tensor:
    """A buzzy vowel-like signal with a moving formant (enough structure for the networks)."""
    t = torch.arange(int(16000 * seconds)) / 16000
    g = torch.Generator().manual_seed(seed)
    buzz = torch.sign(torch.sin(2 * torch.pi * f0 * t)) * 0.2
    mod = torch.sin(2 * torch.pi * (300 + 200 * torch.rand((), generator=g)) * t)
    return (buzz * (0.6 + 0.4 * mod) + 0.01 * torch.randn(len(t), generator=g)).float()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from anygpt.modalities.registry import BuildContext, families

    fam = families()["nano-units"]
    assert fam.modality == "speech"
    assert fam.tokens.prefix == "🗣️" and fam.tokens.start_tag == "<sosp>"
    assert fam.tokens.end_tag == "<eosp>" and fam.tokens.codebook_size == 256
    root = tmp_path_factory.mktemp("bundle")
    entry = fam.write_tiny(root, torch.Generator().manual_seed(0))
    assert entry.type == "nano-units" and entry.tokens.codebook_size == 16
    files = {k: root / v for k, v in entry.files.items()}
    return fam.build(BuildContext("speech", files, entry.options, torch.device("cpu")))


def test_adapter_contract_shapes(adapter):
    assert adapter.media_kind == "audio" and adapter.sample_rate == 16000
    assert adapter.frame_rate == 25 and adapter.num_codebooks == 1
    assert adapter.codebook_sizes == (16,)
    codes = adapter.encode([_wave(1.0, 0), _wave(0.5, 1), _wave(1.0, 2)])
    assert codes.codes.shape == (3, 1, 25) and codes.lengths.tolist() == [25, 13, 25]
    assert int(codes.codes.max()) < 16
    waves = adapter.decode(codes, generator=torch.Generator().manual_seed(0))
    assert [w.shape[0] for w in waves] == [25 * 640, 13 * 640, 25 * 640]
    assert all(torch.isfinite(w).all() for w in waves)
    # equal inputs give equal units whatever else shares the batch
    alone = adapter.encode([_wave(0.5, 1)])
    assert torch.equal(alone.codes[0, :, :13], codes.codes[1, :, :13])


def test_voice_prompt_changes_the_output_and_generator_fixes_it(adapter):
    codes = adapter.encode([_wave(0.8, 3)])

    def say(prompt):
        return adapter.decode(
            codes, voice_prompt=prompt, generator=torch.Generator().manual_seed(1)
        )[0]

    plain, again = say(None), say(None)
    assert torch.equal(plain, again)
    low, high = say(_wave(1.0, 4, f0=100.0)), say(_wave(1.0, 5, f0=260.0))
    assert not torch.allclose(low, plain) and not torch.allclose(low, high)


def test_files_and_bad_input_are_one_line_errors(adapter, media_dir, tmp_path):
    for name in ("empty.wav", "corrupt.wav", "text.wav", "missing.wav"):
        with pytest.raises(ModalityError):
            adapter.load(media_dir / name)
    stereo = adapter.load(media_dir / "stereo48k.wav")
    assert stereo.dim() == 1 and abs(stereo.shape[0] - 16000) < 10
    assert adapter.load_voice_prompt(media_dir / "speech.wav").dim() == 1
    with pytest.raises(ModalityError, match="too short"):
        adapter.encode([torch.zeros(100)])
    with pytest.raises(ModalityError):
        adapter.encode([])
    with pytest.raises(ModalityError, match="out of range"):
        adapter.decode(Codes(torch.full((1, 1, 5), 99), torch.tensor([5])))
    with pytest.raises(ModalityError, match="empty"):
        adapter.decode(Codes(torch.zeros(1, 1, 5, dtype=torch.long), torch.tensor([0])))
    out = tmp_path / "x.wav"
    adapter.save(torch.zeros(1600), out)
    assert sf.info(str(out)).samplerate == 16000


def test_save_load_round_trip(tmp_path):
    model = NanoSpeech(tiny_config()).eval()
    with torch.no_grad():
        model.centroids.normal_()
    model.save(tmp_path)
    back = NanoSpeech.load(tmp_path / "nano_speech.safetensors", tmp_path / "nano_speech.json")
    wav = _wave(0.6, 7)[None]
    n = torch.tensor([wav.shape[1]])
    assert torch.equal(model.half().float().encode(wav, n)[0], back.encode(wav, n)[0])


def test_ctc_labels_and_greedy_decoding():
    labels = text_to_labels("A  big-red star")
    assert labels == text_to_labels("a bigred star")
    logits = torch.full((1, 8, 29), -9.0)
    for t, i in enumerate([1 + 2, 1 + 2, 0, 1 + 2, 0, 1, 1 + 1, 1 + 1]):  # "bb_b_ aa" -> "bb a"
        logits[0, t, i] = 0.0
    assert ctc_greedy(logits, torch.tensor([8])) == ["bb a"]


def test_kmeans_uses_every_cluster_and_finds_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 3, generator=g) * 10
    x = (centres[:, None] + 0.1 * torch.randn(4, 50, 3, generator=g)).reshape(-1, 3)
    c = kmeans(x, 4, iters=10, generator=g)
    assert torch.cdist(centres, c).min(1).values.max() < 0.5


def _manifest(tmp_path, n: int = 12) -> str:
    rows = []
    words = ["a red star", "a blue circle", "draw a square", "it is green"]
    for i in range(n):
        name = f"u{i}.wav"
        sf.write(tmp_path / name, _wave(0.9, i, f0=110.0 + 40 * (i % 3)).numpy(), 16000)
        rows.append({"text": words[i % 4], "speech": name, "voice": f"v{i % 3}"})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_few_training_steps_reduce_each_stage_loss(tmp_path):
    from anygpt.models.nano_speech import assign_units
    from anygpt.models.nano_vocoder import masked_l1
    from anygpt.train import speech_units as su
    from anygpt.train.speech_data import load_speech_set, pad_mels, read_manifest

    parser = argparse.ArgumentParser()
    su.add_args(parser)
    args = parser.parse_args(
        [
            _manifest(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--size",
            "tiny",
            "--units",
            "8",
            "--recogniser-steps",
            "40",
            "--vocoder-steps",
            "40",
            "--kmeans-iters",
            "8",
            "--batch-size",
            "6",
            "--lr",
            "3e-3",
            "--save-every",
            "1000",
        ]
    )
    torch.manual_seed(0)
    model = NanoSpeech(tiny_config(8))
    data = load_speech_set(read_manifest(args.manifest), model.logmel, progress=False)
    mel, n = pad_mels(data.mels)
    (tmp_path / "run").mkdir()

    def ctc() -> float:
        model.recogniser.eval()
        with torch.no_grad():
            return float(model.recogniser.ctc_loss(mel, n, data.labels))

    before = ctc()
    su.train_recogniser(model.recogniser, data, None, args, tmp_path / "run")
    assert ctc() < 0.8 * before

    vectors = torch.cat(su.unit_layer_vectors(model, data))

    def distortion(c: torch.Tensor) -> float:
        return float(torch.cdist(vectors, c).min(1).values.pow(2).mean())

    g = torch.Generator().manual_seed(0)
    one = kmeans(vectors, 8, iters=0, generator=g)
    units = su.train_units(model, data, args, tmp_path / "run")
    assert distortion(model.centroids) < distortion(one)
    assert all(len(u) == -(-d.shape[-1] // 4) for u, d in zip(units, data.mels))

    u = torch.stack([assign_units(v, model.centroids) for v in su.unit_layer_vectors(model, data)])

    def l1() -> float:
        model.eval()
        with torch.no_grad():
            voice = model.speaker(mel, n)
            un = torch.div(n + 3, 4, rounding_mode="floor")
            return float(masked_l1(model.vocoder(u, un, voice), mel, n))

    before = l1()
    su.train_vocoder(model, data, units, args, tmp_path / "run")
    assert l1() < 0.8 * before
    # a resumed run finds every stage done and writes the tokenizer
    assert su.main(args) == 0
    assert (tmp_path / "run" / "nano_speech.safetensors").is_file()
