"""The VQ image tokenizer: network, files, trainer and the ``vq-image`` modality adapter."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest
import torch

from anygpt.models.vq_image import (
    VQImageConfig,
    VQImageTokenizer,
    images_to_tensor,
    load_vq_image,
    save_vq_image,
    tensor_to_images,
)
from anygpt.world.images import random_scene, render

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = MODELS / "anygpt-nano" / "image"
JUDGE = MODELS / "nano-judges" / "image"
TINY = VQImageConfig(
    channels=(8, 16, 16), code_dim=8, codebook_size=32, dec_blocks=1, dec_blocks_16=0
)


def _pictures(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [render(random_scene(rng)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny() -> VQImageTokenizer:
    torch.manual_seed(0)
    m = VQImageTokenizer(TINY)
    m.train()
    m(images_to_tensor(_pictures(8)))  # seeds the codebook from encoder outputs
    return m.eval()


def test_shapes_and_ranges(tiny):
    x = images_to_tensor(_pictures(3))
    assert x.shape == (3, 3, 64, 64) and -1 <= x.min() and x.max() <= 1
    codes = tiny.encode(x)
    assert codes.shape == (3, 64) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < TINY.codebook_size
    y = tiny.decode(codes)
    assert y.shape == (3, 3, 64, 64) and y.abs().max() <= 1
    # decode is the same function the forward pass uses after quantisation
    assert torch.allclose(tiny(x).recon, y, atol=1e-5)
    with pytest.raises(ValueError):
        tiny.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError):
        tiny.decode(torch.full((1, 64), TINY.codebook_size))


def test_codes_are_raster_order(tiny):
    x = images_to_tensor(_pictures(1))
    codes = tiny.encode(x)
    flipped = tiny.encode(x.flip(-2))  # vertically flipped input: its rows come in reverse
    z = tiny.encoder(x.flip(-2))
    assert flipped.shape == codes.shape
    assert torch.equal(flipped.view(8, 8)[0], tiny.quantize(z)[1].view(8, 8)[0])


def test_save_load_round_trip(tiny, tmp_path):
    x = images_to_tensor(_pictures(4))
    for dtype in ("float32", "float16"):
        tiny.cfg.weights_dtype = dtype
        folder = save_vq_image(tiny, tmp_path / dtype)
        assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
        again = load_vq_image(folder)
        assert again.cfg == tiny.cfg
        codes = tiny.encode(x)
        if dtype == "float32":
            assert torch.equal(again.encode(x), codes)
            assert torch.equal(again.decode(codes), tiny.decode(codes))
        else:  # half-precision storage: the codebook is kept exact, pictures nearly
            assert torch.equal(again.codebook.embed, tiny.codebook.embed)
            assert (again.decode(codes) - tiny.decode(codes)).abs().max() < 0.02
    tiny.cfg.weights_dtype = "float16"


def test_pixel_conversion_round_trip():
    pics = _pictures(2)
    back = tensor_to_images(images_to_tensor(pics))
    assert [list(p.getdata()) for p in back] == [list(p.getdata()) for p in pics]


def test_codebook_restarts_dead_codes():
    torch.manual_seed(0)
    m = VQImageTokenizer(TINY).train()
    x = images_to_tensor(_pictures(4))
    m(x)
    with torch.no_grad():  # five codes far from everything: nobody chooses them
        m.codebook.embed[:5] = 1e3
        m.codebook.embed_sum[:5] = 1e3 * m.codebook.cluster_size[:5, None]
        m.codebook.cluster_size[:5] = 1e-4
    out = m(x)
    assert out.restarted >= 5
    with torch.no_grad():
        z = m.encoder(x).permute(0, 2, 3, 1).reshape(-1, TINY.code_dim)
    assert float(torch.cdist(m.codebook.embed[:5], z).min(1).values.max()) < 1.0


def test_training_steps_reduce_the_loss():
    from anygpt.train.vq_image import edge_mse

    torch.manual_seed(0)
    m = VQImageTokenizer(TINY).train()
    x = images_to_tensor(_pictures(16))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        o = m(x)
        loss = (o.recon - x).pow(2).mean() + 3 * edge_mse(o.recon, x) + 0.25 * o.commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_trainer_writes_a_loadable_tokenizer_and_resumes(tmp_path):
    from anygpt.train.vq_image import add_args, main

    data = tmp_path / "pics"
    data.mkdir()
    rows = []
    for i, p in enumerate(_pictures(24)):
        p.save(data / f"{i}.png")
        rows.append(json.dumps({"image": f"pics/{i}.png"}))
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    (data / "broken.png").write_bytes(b"not a picture")  # skipped, counted
    out = tmp_path / "tok"
    parser = argparse.ArgumentParser()
    add_args(parser)
    common = "--channels 8,16,16 --code-dim 8 --codebook-size 32 --dec-blocks 1 --dec-blocks-16 0"
    common += " --batch-size 8 --val-size 4 --log-every 5 --save-every 5"
    args = parser.parse_args(f"{tmp_path / 'm.jsonl'} --out {out} --steps 10 {common}".split())
    assert main(args) == 0
    info = json.loads((out / "training.json").read_text())
    assert info["step"] == 10 and 0 < info["heldout"]["codes_used"] <= 32
    m = load_vq_image(out)
    assert m.cfg.codebook_size == 32 and m.encode(images_to_tensor(_pictures(1))).shape == (1, 64)
    args = parser.parse_args(f"{data} --out {out} --steps 14 --resume {common}".split())
    assert main(args) == 0
    assert json.loads((out / "training.json").read_text())["step"] == 14
    bad = parser.parse_args(f"{tmp_path / 'none'} --out {out} --steps 1".split())
    assert main(bad) == 1


# ---------------------------------------------------------------------- adapter
@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from anygpt.modalities.registry import ModalityEntry, build, families

    fam = families()["vq-image"]
    assert fam.modality == "image" and fam.tokens.fixed_length == 64
    assert (fam.tokens.prefix, fam.tokens.start_tag, fam.tokens.end_tag) == (
        "👀",
        "<soim>",
        "<eoim>",
    )
    root = tmp_path_factory.mktemp("bundle")
    entry = fam.write_tiny(root, torch.Generator().manual_seed(0))
    assert isinstance(entry, ModalityEntry) and entry.files == {"model": "vq_image"}
    ad = build("image", entry, {k: root / v for k, v in entry.files.items()}, device="cpu")
    return ad, entry


def test_adapter_contract(adapter, media_dir, tmp_path):
    from anygpt.modalities.base import Codes
    from anygpt.modalities.registry import check_declared

    ad, entry = adapter
    assert ad._model is None  # nothing loaded by build
    assert ad.media_kind == "image" and ad.file_suffix == ".png" and ad.sample_rate is None
    assert ad.frame_rate == 64 and ad.num_codebooks == 1 and ad.codebook_sizes == (512,)
    assert ad._model is None  # properties read the config only
    pics = [ad.load(media_dir / "image.jpg"), ad.load(media_dir / "cmyk.jpg")]
    assert all(p.size == (64, 64) and p.mode == "RGB" for p in pics)
    codes = ad.encode(pics)
    assert isinstance(codes, Codes) and codes.codes.shape == (2, 1, 64)
    assert codes.lengths.tolist() == [64, 64]
    check_declared(ad, entry, "image")
    assert len(set(codes.codes.reshape(-1).tolist())) > 1
    out = ad.decode(codes)
    assert len(out) == 2 and out[0].size == (64, 64)
    assert ad.encode([out[0]]).codes.shape == (1, 1, 64)
    assert torch.equal(ad.encode(pics).codes, codes.codes)  # deterministic
    ad.save(out[0], tmp_path / "x.png")
    assert ad.load(tmp_path / "x.png").size == (64, 64)


def test_adapter_bad_input(adapter, media_dir, tmp_path):
    from anygpt.modalities.base import Codes, ModalityError

    ad, _ = adapter
    (tmp_path / "text.png").write_text("not an image")
    for bad in ("truncated.jpg", "corrupt.wav", "missing.png"):
        with pytest.raises(ModalityError):
            ad.load(media_dir / bad)
    with pytest.raises(ModalityError):
        ad.load(tmp_path / "text.png")
    with pytest.raises(ModalityError):
        ad.encode([])
    with pytest.raises(ModalityError):
        ad.encode([torch.zeros(3, 64, 64)])
    with pytest.raises(ModalityError, match="exactly 64"):
        ad.decode(Codes(torch.zeros(1, 1, 10, dtype=torch.long), torch.tensor([10])))
    with pytest.raises(ModalityError, match="lie in"):
        ad.decode(Codes(torch.full((1, 1, 64), 9999), torch.tensor([64])))
    with pytest.raises(ModalityError, match="1 codebook"):
        ad.decode(Codes(torch.zeros(1, 2, 64, dtype=torch.long), torch.tensor([64])))


@pytest.mark.skipif(
    not (SHIPPED / "model.safetensors").is_file() or not (JUDGE / "model.safetensors").is_file(),
    reason="no shipped image tokenizer or judge",
)
def test_shipped_tokenizer_keeps_what_the_judge_reads():
    from anygpt.eval.image_judge import ImageJudge, accuracy
    from anygpt.modalities.vq_image import VQImageModality
    from anygpt.world.images import caption

    ad = VQImageModality(SHIPPED)
    rng = random.Random(31337)
    scenes = [random_scene(rng) for _ in range(100)]
    pics = [render(s) for s in scenes]
    back = ad.decode(ad.encode(pics))
    x, y = images_to_tensor(pics), images_to_tensor(back)
    psnr = -10 * torch.log10(((x - y) / 2).pow(2).mean())
    assert psnr > 27, float(psnr)
    acc = accuracy(ImageJudge.load(JUDGE), back, [caption(s) for s in scenes])
    assert acc["count"] >= 0.9 and acc["colour"] >= 0.9 and acc["objects"] >= 0.75, acc
