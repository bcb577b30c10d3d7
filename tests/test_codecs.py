"""SpeechTokenizer and EnCodec adapters: manifests of the released files, and the contract."""

import json
from pathlib import Path

import pytest
import torch

from anygpt.checkpoint import load_manifest, state_manifest
from anygpt.modalities.base import Codes, ModalityError
from anygpt.modalities.speech import build_speechtokenizer, official_speechtokenizer_config

MANIFESTS = Path(__file__).parent / "assets" / "manifests"


@pytest.mark.parametrize(
    "activation,manifest", [("Snake", "speechtokenizer_snake"), ("ELU", "speechtokenizer")]
)
def test_speechtokenizer_official_size_matches_manifest(activation, manifest):
    with torch.device("meta"):
        model = build_speechtokenizer(official_speechtokenizer_config(activation))
    assert state_manifest(model) == load_manifest(MANIFESTS / f"{manifest}.json")


def _hf_weight_norm_names(manifest: dict) -> dict:
    """transformers 5 names weight-normed convs parametrizations.weight.original0/1."""
    out = {}
    for k, v in manifest.items():
        k = k.replace("parametrizations.weight.original0", "weight_g")
        out[k.replace("parametrizations.weight.original1", "weight_v")] = v
    return out


def test_encodec_32khz_official_size_matches_manifest():
    from transformers import EncodecConfig, EncodecModel

    data = json.loads((MANIFESTS / "encodec_32khz.json").read_text())
    cfg = EncodecConfig(**data["config"])
    with torch.device("meta"):
        model = EncodecModel(cfg)
    assert _hf_weight_norm_names(state_manifest(model)) == load_manifest(
        MANIFESTS / "encodec_32khz.json"
    )


def test_encodec_old_weight_norm_names_load_strictly(tmp_path):
    """Files written by transformers 4.x (weight_g / weight_v) load into today's model."""
    from transformers import EncodecConfig, EncodecModel

    cfg = EncodecConfig(
        num_filters=4,
        hidden_size=8,
        codebook_dim=8,
        codebook_size=16,
        num_lstm_layers=1,
        upsampling_ratios=[2, 2],
        target_bandwidths=[1.5],
    )
    model = EncodecModel(cfg)
    old = {}
    for k, v in model.state_dict().items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        )
        old[k] = v.clone()
    fresh = EncodecModel(cfg)
    fresh.load_state_dict(old, strict=True)
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        assert torch.allclose(model.encoder(x), fresh.encoder(x))


@pytest.fixture(scope="module")
def speech(debug_bundle):
    from anygpt.bundle import Bundle

    return Bundle(debug_bundle, device="cpu").modality("speech")


def test_speech_contract(speech, media_dir):
    assert (speech.sample_rate, speech.frame_rate, speech.num_codebooks, speech.codebook_sizes) == (
        16000,
        50.0,
        1,
        (1024,),
    )
    wav = speech.load(media_dir / "speech.wav")
    assert wav.dim() == 1 and abs(wav.shape[0] - int(1.2 * 16000)) <= 1
    codes = speech.encode([wav, wav[:8000]])
    assert codes.codes.shape == (2, 1, 60) and codes.lengths.tolist() == [60, 25]
    single = speech.encode([wav[:8000]])
    assert torch.equal(codes.unbatch()[1], single.unbatch()[0]), "padding never changes codes"
    out = speech.decode(
        Codes.from_list([codes.unbatch()[1]]), generator=torch.Generator().manual_seed(0)
    )
    assert out[0].shape == (25 * 320,)


def test_speech_voice_prompt_and_first_channel(speech, media_dir):
    stereo = speech.load(media_dir / "stereo48k.wav")
    assert stereo.shape == (16000,)
    prompt = speech.load_voice_prompt(media_dir / "stereo48k.wav")
    semantic = speech.encode([speech.load(media_dir / "speech.wav")])
    a = speech.decode(semantic, voice_prompt=prompt, generator=torch.Generator().manual_seed(1))
    b = speech.decode(semantic, voice_prompt=prompt, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and a[0].shape == (60 * 320,)


def test_speech_rejects_empty_codes(speech):
    with pytest.raises(ModalityError, match="no speech codes"):
        speech.decode(Codes(torch.zeros(1, 1, 0, dtype=torch.long), torch.tensor([0])))


@pytest.mark.parametrize(
    "name,rate,hop,size", [("music", 32000, 640, 2048), ("audio", 24000, 320, 1024)]
)
def test_encodec_contract(debug_bundle, media_dir, name, rate, hop, size):
    from anygpt.bundle import Bundle

    mod = Bundle(debug_bundle, device="cpu").modality(name)
    assert (mod.sample_rate, mod.frame_rate, mod.num_codebooks, mod.codebook_sizes) == (
        rate,
        rate / hop,
        4,
        (size,) * 4,
    )
    wav = mod.load(media_dir / "music.wav", window_s=1.0)
    assert wav.shape == (rate,)
    codes = mod.encode([wav, wav[: rate // 2]])
    assert codes.codes.shape[:2] == (2, 4) and int(codes.codes.max()) < size
    assert codes.lengths.tolist() == [-(-rate // hop), -(-(rate // 2) // hop)]
    assert len(set(codes.codes[0].flatten().tolist())) > 1, "random codebooks give varied codes"
    audio = mod.decode(codes)
    assert [a.shape[0] for a in audio] == [int(n) * hop for n in codes.lengths]
