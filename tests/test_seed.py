"""SEED image tokenizer: key layout, golden fixtures, loading, preprocessing, image files."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from anygpt.checkpoint import CheckpointError, load_manifest, load_strict
from anygpt.imageio import ImageError, open_image
from anygpt.models.seed import (
    CLIP_MEAN,
    CLIP_STD,
    SEED_OFFICIAL,
    SEED_TINY,
    VIT_PREFIX,
    SeedConfig,
    build_seed,
    fit_codes,
    load_seed,
    load_seed_dir,
    preprocess_images,
    save_seed,
)

ASSETS = Path(__file__).parent / "assets"
FIXTURE = ASSETS / "upstream"
ATOL = 1e-5


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "seed.weights.safetensors"))


@pytest.fixture(scope="module")
def io_tensors() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "seed.io.safetensors"))


@pytest.fixture(scope="module")
def sidecar() -> dict:
    return json.loads((FIXTURE / "seed.json").read_text())


@pytest.fixture(scope="module")
def tiny(weights):
    model = build_seed(SEED_TINY)
    load_strict(model, weights, what="SEED fixture")
    return model


def _split(weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Whole-model state -> (seed_quantizer-like part, eva_vit_g-like part without prefix)."""
    quant = {k: v for k, v in weights.items() if not k.startswith(VIT_PREFIX)}
    vit = {k[len(VIT_PREFIX) :]: v for k, v in weights.items() if k.startswith(VIT_PREFIX)}
    return quant, vit


# --- key layout ------------------------------------------------------------------------------


def _manifest_with_dtypes(path: Path) -> dict[str, tuple[list[int], str]]:
    entries = json.loads(path.read_text())["keys"]
    return {name: (list(shape), dtype) for name, shape, dtype, *_ in entries}


def _layout(state: dict[str, torch.Tensor]) -> dict[str, tuple[list[int], str]]:
    return {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


def test_official_quantizer_keys_match_manifest():
    with torch.device("meta"):
        model = build_seed(SEED_OFFICIAL)
    manifest = _manifest_with_dtypes(ASSETS / "manifests" / "seed_quantizer.json")
    ours = _layout(model.quantizer_state_dict())
    assert ours == manifest
    assert list(ours) == list(manifest)  # same order too
    assert len(ours) == 370


def test_official_vit_keys_match_manifest():
    with torch.device("meta"):
        model = build_seed(SEED_OFFICIAL)
    manifest = load_manifest(ASSETS / "manifests" / "seed_eva_vit_g.json")
    vit = {k: list(v.shape) for k, v in model.vit_state_dict().items()}
    assert vit == manifest
    assert list(vit) == list(manifest)
    whole = model.state_dict()
    assert sum(k.startswith(VIT_PREFIX) for k in whole) == 511
    assert len(whole) == 881


def test_official_parameter_count():
    with torch.device("meta"):
        model = build_seed(SEED_OFFICIAL)
    q = json.loads((ASSETS / "manifests" / "seed_quantizer.json").read_text())["num_params"]
    v = json.loads((ASSETS / "manifests" / "seed_eva_vit_g.json").read_text())["num_params"]
    assert sum(p.numel() for p in model.parameters()) == q + v


def test_tiny_config_matches_fixture_config(sidecar):
    c = sidecar["config"]
    top, vit, bert = c["Blip2QformerQuantizer"], c["eva_vit"], c["qformer_bert_config"]
    cfg = SEED_TINY
    assert cfg.image_size == top["img_size"]
    assert cfg.num_queries == top["num_query_token"]
    assert cfg.cross_attention_freq == top["cross_attention_freq"]
    assert cfg.codebook_dim == top["codebook_embed_dim"]
    assert cfg.codebook_size == top["n_embed"]
    assert cfg.decode_depth == top["decode_depth"]
    assert cfg.image_feature_dim == top["image_features_dim"]
    assert (cfg.patch_size, cfg.vit_width, cfg.vit_depth, cfg.vit_heads) == (
        vit["patch_size"],
        vit["embed_dim"],
        vit["depth"],
        vit["num_heads"],
    )
    assert cfg.vit_mlp_hidden == int(vit["embed_dim"] * vit["mlp_ratio"])
    assert cfg.vit_ln_eps == vit["norm_layer_eps"]
    assert (cfg.qformer_hidden, cfg.qformer_layers, cfg.qformer_heads, cfg.qformer_ffn) == (
        bert["hidden_size"],
        bert["num_hidden_layers"],
        bert["num_attention_heads"],
        bert["intermediate_size"],
    )
    assert cfg.qformer_ln_eps == bert["layer_norm_eps"]
    assert cfg.qformer_max_positions == bert["max_position_embeddings"]


def test_tiny_keys_match_fixture_weights(weights, sidecar):
    model = build_seed(SEED_TINY)
    ours = _layout(model.state_dict())
    theirs = {name: (shape, dtype) for name, shape, dtype in sidecar["weights"]["keys"]}
    assert ours == theirs
    assert ours == _layout(weights)


def test_config_round_trip():
    for cfg in (SEED_OFFICIAL, SEED_TINY):
        d = cfg.to_dict()
        json.dumps(d)  # serialisable
        assert SeedConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        SeedConfig.from_dict({"vit_widht": 3})
    with pytest.raises(ValueError, match="multiple"):
        SeedConfig(image_size=225)


# --- golden fixtures ---------------------------------------------------------------------------


def _compare(record: dict, io_tensors: dict, case: str, skip: tuple[str, ...] = ()) -> int:
    checked = 0
    for key, ref in io_tensors.items():
        c, name = key.split(".", 1)
        if c != case or name in skip:
            continue
        assert name in record, f"{key} not recorded"
        got = record[name]
        assert got.shape == ref.shape, key
        if ref.dtype == torch.int64:
            assert torch.equal(got, ref), key
        else:
            torch.testing.assert_close(got, ref, atol=ATOL, rtol=0, msg=key)
        checked += 1
    return checked


def test_encode_matches_fixture(tiny, io_tensors):
    record: dict[str, torch.Tensor] = {}
    codes = tiny.encode(io_tensors["encode.image"], intermediates=record)
    assert codes.dtype == torch.int64 and codes.shape == (2, 32)
    assert torch.equal(codes, io_tensors["encode.codes"])
    n = _compare(record, io_tensors, "encode", skip=("image",))
    assert n == 14  # every stored encode tensor but the input image was compared


def test_encode_without_intermediates_gives_same_codes(tiny, io_tensors):
    codes = tiny.encode(io_tensors["encode.image"])
    assert torch.equal(codes, io_tensors["encode.codes"])
    one = tiny.encode(io_tensors["encode.image"][1:])
    assert torch.equal(one[0], codes[1])  # batch items are independent


@pytest.mark.parametrize("case", ["decode", "decode_random"])
def test_decode_matches_fixture(tiny, io_tensors, case):
    codes = io_tensors["encode.codes" if case == "decode" else "decode_random.codes"]
    record: dict[str, torch.Tensor] = {}
    embed = tiny.decode_embedding(codes, intermediates=record)
    assert embed.shape == (codes.shape[0], SEED_TINY.image_feature_dim)
    torch.testing.assert_close(embed, io_tensors[f"{case}.image_embed"], atol=ATOL, rtol=0)
    n = _compare(record, io_tensors, case, skip=("codes",))
    assert n == 7


def test_qformer_self_attention_is_causal(weights, io_tensors):
    model = build_seed(SEED_TINY)
    load_strict(model, weights, what="SEED fixture")
    image = io_tensors["encode.image"][:1]
    ref: dict[str, torch.Tensor] = {}
    model.encode(image, intermediates=ref)
    with torch.no_grad():
        # change query 20 only (not by a constant: the embedding LayerNorm would remove it)
        model.query_tokens[:, 20] += torch.linspace(-1.0, 1.0, SEED_TINY.qformer_hidden)
    rec: dict[str, torch.Tensor] = {}
    model.encode(image, intermediates=rec)
    before, after = ref["qformer_out"][0], rec["qformer_out"][0]
    torch.testing.assert_close(after[:20], before[:20], atol=1e-6, rtol=0)
    assert (after[20:] - before[20:]).abs().amax(dim=-1).min() > 1e-4


# --- loading -----------------------------------------------------------------------------------


def _write_split(tmp_path: Path, weights, *, extra: int = 3, fmt: str = "pt"):
    quant, vit = _split(weights)
    quant = dict(quant)
    for i in range(extra):  # training-time tensors the inference model does not have
        quant[f"Qformer.bert.encoder.layer.{i}.output.dense.weight"] = torch.randn(4, 4)
    quant["Qformer.cls.predictions.bias"] = torch.zeros(7)
    qpath, vpath = tmp_path / f"seed_quantizer.{fmt}", tmp_path / f"eva_vit_g.{fmt}"
    if fmt == "pt":
        torch.save(quant, qpath)
        torch.save(vit, vpath)
    else:
        save_file(quant, str(qpath))
        save_file(vit, str(vpath))
    return qpath, vpath, sorted(set(quant) - set(weights))


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_load_seed_filters_and_reports_extra_tensors(tmp_path, weights, io_tensors, fmt, caplog):
    qpath, vpath, extras = _write_split(tmp_path, weights, fmt=fmt)
    with caplog.at_level("INFO", logger="anygpt.models.seed"):
        model, report = load_seed(qpath, vpath, cfg=SEED_TINY)
    assert report.dropped_quantizer_keys == extras and len(extras) == 4
    assert report.dropped_vit_keys == []
    assert report.loaded == len(weights)
    assert "ignored 4 tensors" in caplog.text
    assert not model.training
    assert torch.equal(model.encode(io_tensors["encode.image"]), io_tensors["encode.codes"])


def test_load_seed_reports_extra_vit_tensors(tmp_path, weights):
    quant, vit = _split(weights)
    vit["norm.weight"] = torch.ones(48)  # e.g. a final norm SEED does not use
    save_file(quant, str(tmp_path / "q.safetensors"))
    save_file(vit, str(tmp_path / "v.safetensors"))
    _, report = load_seed(tmp_path / "q.safetensors", tmp_path / "v.safetensors", cfg=SEED_TINY)
    assert report.dropped_vit_keys == ["norm.weight"]


def test_load_seed_missing_key_fails_loudly(tmp_path, weights):
    quant, vit = _split(weights)
    del quant["blocks_image.1.mlp.fc2.bias"]
    save_file(quant, str(tmp_path / "q.safetensors"))
    save_file(vit, str(tmp_path / "v.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks_image\.1\.mlp\.fc2\.bias"):
        load_seed(tmp_path / "q.safetensors", tmp_path / "v.safetensors", cfg=SEED_TINY)


def test_load_seed_without_vit_file_explains(tmp_path, weights):
    quant, _ = _split(weights)
    save_file(quant, str(tmp_path / "q.safetensors"))
    with pytest.raises(CheckpointError, match="eva_vit_g.pth"):
        load_seed(tmp_path / "q.safetensors", None, cfg=SEED_TINY)


def test_load_seed_shape_mismatch_fails(tmp_path, weights):
    quant, vit = _split(weights)
    quant["quantize.embedding.weight"] = torch.zeros(64, 32)
    save_file(quant, str(tmp_path / "q.safetensors"))
    save_file(vit, str(tmp_path / "v.safetensors"))
    with pytest.raises(CheckpointError, match="quantize.embedding.weight"):
        load_seed(tmp_path / "q.safetensors", tmp_path / "v.safetensors", cfg=SEED_TINY)


def test_load_seed_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_seed(tmp_path / "nope.pt", tmp_path / "nope_vit.pth", cfg=SEED_TINY)


def test_load_seed_half_precision(tmp_path, weights, io_tensors):
    qpath, vpath, _ = _write_split(tmp_path, weights, fmt="safetensors")
    model, _ = load_seed(qpath, vpath, cfg=SEED_TINY, dtype=torch.bfloat16)
    assert model.query_tokens.dtype == torch.bfloat16
    assert model.Qformer.bert.embeddings.position_ids.dtype == torch.int64
    codes = model.encode(io_tensors["encode.image"])
    assert codes.shape == (2, 32) and codes.dtype == torch.int64
    # bf16 may flip near-tied codes, but most must agree with the float32 reference
    assert (codes == io_tensors["encode.codes"]).float().mean() > 0.5
    embed = model.decode_embedding(io_tensors["encode.codes"]).float()
    ref = io_tensors["decode.image_embed"]
    assert (embed - ref).abs().max() < 0.05 * ref.abs().max()


def test_save_and_load_dir_round_trip(tmp_path, tiny, io_tensors):
    save_seed(tiny, tmp_path / "seed")
    assert (tmp_path / "seed" / "config.json").is_file()
    assert json.loads((tmp_path / "seed" / "config.json").read_text()) == SEED_TINY.to_dict()
    again = load_seed_dir(tmp_path / "seed")
    assert again.cfg == SEED_TINY
    for k, v in tiny.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    codes = io_tensors["decode_random.codes"]
    torch.testing.assert_close(
        again.decode_embedding(codes), tiny.decode_embedding(codes), atol=1e-6, rtol=0
    )


def test_load_seed_dir_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_seed_dir(tmp_path)


# --- input validation --------------------------------------------------------------------------


def test_encode_rejects_wrong_image_size(tiny):
    with pytest.raises(ValueError, match=r"\[B,3,56,56\]"):
        tiny.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError):
        tiny.encode(torch.zeros(3, 56, 56))


@pytest.mark.parametrize(
    "codes, error, match",
    [
        (torch.zeros(1, 31, dtype=torch.long), ValueError, "exactly 32"),
        (torch.zeros(1, 33, dtype=torch.long), ValueError, "exactly 32"),
        (torch.zeros(1, 1, dtype=torch.long), ValueError, "exactly 32"),  # no broadcasting
        (torch.zeros(32, dtype=torch.long), ValueError, "batch dimension"),
        (torch.full((1, 32), 128), ValueError, r"\[0, 128\)"),
        (torch.full((1, 32), -1), ValueError, r"\[0, 128\)"),
        (torch.zeros(1, 32), TypeError, "integers"),
    ],
)
def test_decode_rejects_bad_codes(tiny, codes, error, match):
    with pytest.raises(error, match=match):
        tiny.decode_embedding(codes)


def test_fit_codes_policy():
    codes, change = fit_codes(list(range(40)), 32)
    assert codes.tolist() == list(range(32)) and change == 8
    codes, change = fit_codes([5, 6, 7], 32)
    assert codes.tolist() == [5, 6, 7] + [7] * 29 and change == -29
    codes, change = fit_codes(torch.arange(32), 32)
    assert codes.tolist() == list(range(32)) and change == 0
    with pytest.raises(ValueError):
        fit_codes([], 32)


# --- preprocessing -----------------------------------------------------------------------------


def _random_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_preprocess_uniform_colour_exact_values():
    img = Image.new("RGB", (37, 91), (255, 128, 0))
    x = preprocess_images([img], 224)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    for c, v in enumerate((255, 128, 0)):
        expected = (v / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(x[0, c], torch.full((224, 224), expected), atol=1e-6, rtol=0)


def test_preprocess_stretches_without_crop():
    # left half red, right half blue on a wide image: a centre crop would lose the split
    arr = np.zeros((50, 400, 3), dtype=np.uint8)
    arr[:, :200, 0] = 255
    arr[:, 200:, 2] = 255
    x = preprocess_images([Image.fromarray(arr)], 56)
    red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    blue = (1.0 - CLIP_MEAN[2]) / CLIP_STD[2]
    torch.testing.assert_close(x[0, 0, :, :20], torch.full((56, 20), red), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[0, 2, :, -20:], torch.full((56, 20), blue), atol=1e-5, rtol=0)


def test_preprocess_matches_pil_bicubic_reference():
    img = _random_rgb(70, 45)
    x = preprocess_images([img, img.copy()], 56)
    ref = np.asarray(img.resize((56, 56), Image.BICUBIC), dtype=np.float64) / 255.0
    ref = (ref - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    torch.testing.assert_close(
        x[0], torch.from_numpy(ref).permute(2, 0, 1).float(), atol=1e-6, rtol=0
    )
    assert torch.equal(x[0], x[1])


def test_preprocess_ugly_images():
    rgb = _random_rgb(30, 40)
    ugly = [
        rgb.convert("CMYK"),
        rgb.convert("P"),
        rgb.convert("RGBA"),
        rgb.convert("LA"),
        rgb.convert("L"),
        rgb.convert("1"),
        rgb.convert("I"),
        rgb.convert("F"),
        Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)),  # 16-bit grey
        Image.new("RGB", (1, 1), (10, 200, 30)),
        Image.new("RGB", (20000, 20), (0, 0, 255)),
        Image.new("RGB", (20, 20000), (0, 255, 0)),
    ]
    x = preprocess_images(ugly, 56)
    assert x.shape == (len(ugly), 3, 56, 56) and torch.isfinite(x).all()
    # the grey conversions of the same picture agree
    torch.testing.assert_close(x[4], x[6], atol=1e-6, rtol=0)
    # RGBA/CMYK/palette keep the colours of the RGB original closely
    base = preprocess_images([rgb], 56)[0]
    torch.testing.assert_close(x[2], base, atol=1e-6, rtol=0)
    assert (x[0] - base).abs().max() < 0.05
    # a 16-bit grey 40000/65535 is scaled, not clipped to white
    grey = 40000 / 65535
    expected = (round(grey * 255) / 255 - CLIP_MEAN[0]) / CLIP_STD[0]
    torch.testing.assert_close(x[8, 0], torch.full((56, 56), expected), atol=1e-5, rtol=0)
    # the 1x1 image fills the whole frame
    assert x[9].std(dim=(1, 2)).max() < 1e-6


def test_preprocess_rejects_non_images():
    with pytest.raises(TypeError):
        preprocess_images([np.zeros((4, 4, 3))], 56)
    with pytest.raises(ValueError):
        preprocess_images([], 56)


def test_preprocess_then_encode_end_to_end(tiny):
    imgs = [_random_rgb(64, 48, s) for s in range(3)]
    codes = tiny.encode(preprocess_images(imgs, SEED_TINY.image_size))
    assert codes.shape == (3, 32)
    assert int(codes.min()) >= 0 and int(codes.max()) < SEED_TINY.codebook_size
    assert tiny.decode_embedding(codes).shape == (3, SEED_TINY.image_feature_dim)


# --- image files -------------------------------------------------------------------------------


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit grey) with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_open_image_reads_files_and_bytes(tmp_path):
    img = _random_rgb(20, 10)
    path = tmp_path / "a.png"
    img.save(path)
    got = open_image(path)
    assert got.size == (20, 10) and got.mode == "RGB"
    assert np.array_equal(np.asarray(got), np.asarray(img))
    assert np.array_equal(np.asarray(open_image(path.read_bytes())), np.asarray(img))
    assert np.array_equal(np.asarray(open_image(str(path))), np.asarray(img))


def test_open_image_first_frame_of_animation(tmp_path):
    frames = [Image.new("P", (8, 8), i) for i in (1, 2, 3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    got = open_image(path)
    assert got.size == (8, 8)
    assert preprocess_images([got], 56).shape == (1, 3, 56, 56)


def test_open_image_truncated(tmp_path):
    data = _png_bytes(_random_rgb(64, 64))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        open_image(path)
    jpg = io.BytesIO()
    _random_rgb(64, 64).save(jpg, format="JPEG")
    with pytest.raises(ImageError):
        open_image(jpg.getvalue()[:300])


def test_open_image_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not a picture")
    with pytest.raises(ImageError, match="not a recognised image"):
        open_image(path)
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "missing.jpg")


def test_open_image_decompression_bomb_is_refused():
    bomb = _png_header_only(60000, 60000)  # 3.6 G pixels claimed by a ~100 byte file
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="decompression bomb|too large"):
        open_image(bomb)
    with pytest.raises(ImageError, match="too large"):
        open_image(bomb, max_pixels=None)  # Pillow's own hard limit still applies
    with pytest.raises(ImageError, match="limit of 100"):
        open_image(_png_bytes(_random_rgb(20, 20)), max_pixels=100)
