"""unCLIP decoding with a tiny random Stable UnCLIP pipeline (built locally, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anygpt.checkpoint import CheckpointError
from anygpt.models.seed import SEED_TINY, build_seed
from anygpt.models.unclip import (
    UnclipDecoder,
    build_tiny_unclip_pipeline,
    default_dtype,
    draw,
    embed_dim,
    load_unclip_pipeline,
)

EMBED = 32


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    return build_tiny_unclip_pipeline(tmp_path_factory.mktemp("unclip"), embed_dim=EMBED, seed=0)


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    return load_unclip_pipeline(pipe_dir)


def _embeds(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, EMBED, generator=torch.Generator().manual_seed(seed))


def _arr(img) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


def test_tiny_pipeline_folder_layout(pipe_dir):
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (pipe_dir / part).exists(), part
    assert (pipe_dir / "image_normalizer").is_dir()
    assert (pipe_dir / "image_noising_scheduler").is_dir()


def test_loaded_pipeline_settings(pipe):
    assert embed_dim(pipe) == EMBED
    assert pipe.unet.dtype == torch.float32  # CPU default
    assert pipe.unet.config.class_embed_type == "projection"


def test_draw_end_to_end(pipe):
    images = draw(pipe, _embeds(), seed=1, steps=2)
    assert len(images) == 1
    img = images[0]
    assert img.mode == "RGB" and img.size == (32, 32)
    assert _arr(img).std() > 0  # not a blank picture


def test_same_seed_same_image_and_global_rng_untouched(pipe):
    e = _embeds()
    state = torch.get_rng_state()
    a = draw(pipe, e, seed=7, steps=2)[0]
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(12345)  # the global RNG must not matter
    b = draw(pipe, e, seed=7, steps=2)[0]
    assert np.array_equal(_arr(a), _arr(b))


def test_different_seed_different_image(pipe):
    e = _embeds()
    a = draw(pipe, e, seed=7, steps=2)[0]
    b = draw(pipe, e, seed=8, steps=2)[0]
    assert np.abs(_arr(a) - _arr(b)).max() > 10


def test_embedding_changes_the_image(pipe):
    a = draw(pipe, _embeds(seed=0), seed=7, steps=2)[0]
    b = draw(pipe, _embeds(seed=1), seed=7, steps=2)[0]
    assert np.abs(_arr(a) - _arr(b)).max() > 0


def test_batch_and_explicit_latents(pipe):
    images = draw(pipe, _embeds(batch=2), seed=3, steps=2)
    assert len(images) == 2
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    small = draw(pipe, _embeds(), seed=3, steps=2, latents=latents)[0]
    assert small.size == (16, 16)  # size follows the latents (VAE factor 2)
    again = draw(pipe, _embeds(), seed=3, steps=2, latents=latents)[0]
    assert np.array_equal(_arr(small), _arr(again))


def test_draw_rejects_bad_embeddings(pipe):
    with pytest.raises(ValueError, match="32-d"):
        draw(pipe, torch.zeros(1, 16), seed=0, steps=2)
    with pytest.raises(ValueError, match=r"\[B,D\]"):
        draw(pipe, torch.zeros(EMBED), seed=0, steps=2)
    with pytest.raises(ValueError, match="noise_level"):
        draw(pipe, torch.zeros(1, EMBED), seed=0, steps=2, noise_level=5000)


def test_missing_folder_error_names_it(tmp_path):
    missing = tmp_path / "sd21-unclip"
    with pytest.raises(CheckpointError, match="sd21-unclip"):
        load_unclip_pipeline(missing)


def test_decoder_is_lazy(pipe_dir, tmp_path):
    lazy = UnclipDecoder(tmp_path / "does-not-exist")
    assert not lazy.loaded  # constructing reads nothing
    with pytest.raises(CheckpointError):
        lazy.draw(_embeds(), seed=0, steps=2)
    dec = UnclipDecoder(pipe_dir)
    assert not dec.loaded
    img = dec.draw(_embeds(), seed=1, steps=2)[0]
    assert dec.loaded and img.size == (32, 32)


def test_default_dtype():
    assert default_dtype("cpu") == torch.float32
    assert default_dtype("cuda") == torch.float16


def test_seed_codes_to_picture(pipe):
    torch.manual_seed(0)
    seed_model = build_seed(SEED_TINY)
    codes = torch.randint(0, SEED_TINY.codebook_size, (1, SEED_TINY.num_queries))
    embeds = seed_model.decode_embedding(codes)
    assert embeds.shape == (1, EMBED)
    img = draw(pipe, embeds, seed=0, steps=2)[0]
    assert img.size == (32, 32)


@pytest.mark.gpu
def test_draw_on_gpu_half_precision(pipe_dir):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = load_unclip_pipeline(pipe_dir, device="cuda")
    assert gpu.unet.dtype == torch.float16
    a = draw(gpu, _embeds(), seed=5, steps=2)[0]
    b = draw(gpu, _embeds(), seed=5, steps=2)[0]
    assert np.array_equal(_arr(a), _arr(b))
