"""The music codec trainer (EnCodec architecture), its codebook learning, and the adapter path."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from anygpt.train.encodec_vq import EmaResidualQuantizer
from anygpt.train.music_codec import MusicCodecConfig, encodec_config, train_music_codec
from anygpt.world import music as M


def _tiny(tmp_path, data, **kw) -> MusicCodecConfig:
    base = dict(
        num_filters=4,
        hidden_size=16,
        upsampling_ratios=[4, 4],  # hop 16: 1000 frames/s, tiny and quick
        codebook_size=32,
        num_codebooks=2,
        batch_size=4,
        crop_s=0.064,
        lr=3e-3,
        warmup=5,
        init_clips=8,
        checkpoint_every=1000,
        log_every=5,
        eval_clips=4,
        eval_s=0.256,
    )
    base.update(kw)
    return MusicCodecConfig(str(data), str(tmp_path / "codec"), **base)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A folder of six world melodies and a manifest naming them."""
    d = tmp_path_factory.mktemp("music")
    rng = random.Random(0)
    rows = []
    for i in range(6):
        m = M.random_melody(rng)
        sf.write(d / f"{i}.wav", M.render(m), M.MUSIC_RATE)
        rows.append({"audio": f"{i}.wav", "caption": M.caption(m)})
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    torch.manual_seed(0)
    cfg = _tiny(tmp_path_factory.mktemp("run"), clips / "manifest.jsonl", steps=60)
    cfg.heldout = str(clips)
    return cfg, train_music_codec(cfg)


def test_default_size_gives_150_codes_per_clip():
    cfg = MusicCodecConfig("", "")
    ecfg = encodec_config(cfg)
    assert (cfg.hop, cfg.frame_rate, ecfg.num_quantizers) == (640, 25.0, 2)
    assert int(M.MUSIC_SECONDS * cfg.frame_rate) * cfg.num_codebooks == 150
    with pytest.raises(ValueError):
        encodec_config(MusicCodecConfig("", "", upsampling_ratios=[8, 6, 4, 4]))  # 768 ∤ 16000


def test_training_lowers_the_loss_and_writes_the_folder(trained):
    cfg, summary = trained
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:2]), losses
    out = summary["heldout"]
    assert out["clips"] == 4 and out["codes_per_clip"] == 2 * 256
    assert min(out["codes_used"]) > 1, "codebooks are in use, not collapsed to one code"
    folder = Path(cfg.out)
    assert {"config.json", "model.safetensors", "tokens.json", "train_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    tokens = json.loads((folder / "tokens.json").read_text(encoding="utf-8"))
    assert tokens == {
        "name": "music",
        "prefix": "🎶",
        "start_tag": "<somu>",
        "end_tag": "<eomu>",
        "codebook_size": 32,
        "num_codebooks": 2,
        "fixed_length": None,
    }


def test_resume_continues_from_the_checkpoint(clips, tmp_path):
    cfg = _tiny(tmp_path, clips, steps=6, checkpoint_every=3)
    train_music_codec(cfg)
    cfg.steps = 9
    summary = train_music_codec(cfg)
    assert summary["step"] == 9 and (tmp_path / "codec" / "checkpoint" / "state.pt").is_file()


def test_decoder_finetuning_keeps_the_codes_and_trains_the_decoder(trained, clips, tmp_path):
    from transformers import EncodecModel

    src_cfg, _ = trained
    # the model fields are taken from the trained folder, whatever the defaults say
    cfg = MusicCodecConfig(
        str(clips), str(tmp_path / "ft"), finetune_decoder=src_cfg.out, steps=30,
        batch_size=4, crop_s=0.064, lr=3e-3, warmup=2, log_every=5, checkpoint_every=1000,
    )  # fmt: skip
    summary = train_music_codec(cfg)
    assert (cfg.hidden_size, cfg.codebook_size, cfg.upsampling_ratios) == (16, 32, [4, 4])
    before = EncodecModel.from_pretrained(src_cfg.out).eval()
    after = EncodecModel.from_pretrained(cfg.out).eval()
    x = torch.from_numpy(sf.read(clips / "0.wav", dtype="float32")[0][:4096]).view(1, 1, -1)
    bw = before.config.target_bandwidths[0]
    with torch.no_grad():
        codes_before = before.encode(x, bandwidth=bw).audio_codes
        codes_after = after.encode(x, bandwidth=bw).audio_codes
    assert torch.equal(codes_before, codes_after)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(before.decoder.parameters(), after.decoder.parameters(), strict=True)
    ]
    assert all(changed), "every decoder weight trained"
    losses = [h["loss"] for h in summary["history"]]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    with pytest.raises(FileNotFoundError, match="not a codec folder"):
        train_music_codec(
            MusicCodecConfig(str(clips), str(tmp_path / "x"), finetune_decoder=str(clips))
        )


def test_ema_codebooks_follow_the_data_and_dead_codes_restart():
    from transformers import EncodecModel

    torch.manual_seed(0)
    cfg = MusicCodecConfig("", "", num_filters=2, hidden_size=4, codebook_size=16)
    model = EncodecModel(encodec_config(cfg))
    vq = EmaResidualQuantizer(model.quantizer, 2, decay=0.5)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(8, 4, 20, generator=gen)
    vq.init_kmeans(z, generator=gen)
    first = model.quantizer.layers[0].codebook.embed.clone()
    assert not torch.equal(first, torch.zeros_like(first))
    before = vq(z + 5.0, train=False).commitment
    restarted = 0
    for _ in range(20):  # the data moves: codes must follow it
        out = vq(z + 5.0, train=True, generator=gen)
        restarted += out.restarted
    after = vq(z + 5.0, train=False).commitment
    assert after < 0.2 * before
    assert restarted > 0
    assert not torch.equal(model.quantizer.layers[0].codebook.embed, first)
    assert out.codes.shape == (2, 8, 20) and out.quantized.shape == z.shape
    # straight-through: the decoder's gradient reaches the encoder output
    zz = z.clone().requires_grad_(True)
    vq(zz, train=False).quantized.sum().backward()
    assert torch.allclose(zz.grad, torch.ones_like(zz))


def test_adapter_encodes_and_decodes_through_the_registry(trained, fixture_tokenizer):
    from anygpt.layout import ModalityTokens, TokenLayout
    from anygpt.modalities.base import Codes
    from anygpt.modalities.registry import ModalityEntry, build, check_declared

    cfg, _ = trained
    folder = Path(cfg.out)
    tokens = ModalityTokens.from_dict(json.loads((folder / "tokens.json").read_text("utf-8")))
    # no num_codebooks option: the adapter reads the count off the model's config
    entry = ModalityEntry("encodec", tokens, {"model": folder.name}, {})
    mod = build("music", entry, {"model": folder}, device=torch.device("cpu"))
    assert (mod.sample_rate, mod.frame_rate, mod.num_codebooks, mod.codebook_sizes) == (
        16000,
        1000.0,
        2,
        (32, 32),
    )
    check_declared(mod, entry, "music")
    wave = torch.from_numpy(M.render(M.random_melody(random.Random(9))))[:1600]
    codes = mod.encode([wave, wave[:800]])
    assert codes.codes.shape == (2, 2, 100) and codes.lengths.tolist() == [100, 50]
    assert int(codes.codes.max()) < 32
    audio = mod.decode(codes)
    assert [a.shape[0] for a in audio] == [1600, 800]

    # layout: the codes survive the trip through LLM token ids, frame by frame
    layout = TokenLayout([tokens], fixture_tokenizer)
    item = codes.unbatch()[0]
    ids = layout.segment_ids("music", item)
    assert len(ids) == 2 + 2 * 100
    back = layout.codes_from_ids("music", ids[1:-1])
    assert back.dropped_tokens == 0 and torch.equal(back.codes, item)
    again = mod.decode(Codes.from_list([back.codes]))[0]
    assert torch.allclose(again, audio[0], atol=1e-5)
