"""Image decoding: unCLIP image embeddings -> pictures, with Stable Diffusion 2.1 unCLIP.

SEED (:mod:`anygpt.models.seed`) turns 32 image codes into a 1024-d CLIP ViT-H/14 image
embedding.  ``stabilityai/stable-diffusion-2-1-unclip`` turns that embedding into a 768x768
image through diffusers' ``StableUnCLIPImg2ImgPipeline``, called as AnyGPT calls it:
empty prompt, zero negative image embedding, guidance 10, 20 steps, noise level 0.

Unlike the original, every random draw is seeded (the initial latents and the noise that the
pipeline adds to the image embedding even at noise level 0), so the same embeddings and seed
give the same pictures.  The pipeline is read from a local folder only; nothing is downloaded.

diffusers and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from anygpt.checkpoint import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import StableUnCLIPImg2ImgPipeline

logger = logging.getLogger(__name__)

#: Hub name of the pipeline AnyGPT uses (for messages; it is never fetched from here).
UNCLIP_SOURCE = "stabilityai/stable-diffusion-2-1-unclip"

#: AnyGPT's call settings.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 10.0
DEFAULT_NOISE_LEVEL = 0


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA (as AnyGPT runs it), float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_unclip_pipeline(
    folder: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> StableUnCLIPImg2ImgPipeline:
    """Load ``StableUnCLIPImg2ImgPipeline`` from a local folder (``model_index.json`` inside).

    ``dtype`` defaults to :func:`default_dtype` (fp16 on GPU, fp32 on CPU; bfloat16 may be
    passed explicitly).  Raises :class:`CheckpointError` naming the folder if it is missing.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(
            f"unCLIP pipeline folder not found at '{folder}' (no model_index.json there). "
            f"Nothing is downloaded at run time: place a local copy of {UNCLIP_SOURCE} "
            "(diffusers layout) in that folder, or pass its location explicitly."
        )
    dtype = dtype or default_dtype(device)
    from diffusers import StableUnCLIPImg2ImgPipeline

    try:
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the unCLIP pipeline from '{folder}': {exc}") from exc
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embed_dim(pipe: Any) -> int:
    """Width of the image embeddings the pipeline accepts (1024 for SD 2.1 unCLIP)."""
    return int(pipe.image_normalizer.mean.shape[-1])


@torch.no_grad()
def draw(
    pipe: Any,
    image_embeds: Tensor,
    seed: int,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    noise_level: int = DEFAULT_NOISE_LEVEL,
    height: int | None = None,
    width: int | None = None,
    latents: Tensor | None = None,
) -> list[Any]:
    """Draw one picture per embedding; image_embeds [B,D] -> list of B PIL images.

    The initial latents [B,C,height/f,width/f] (f = VAE scale factor, C = UNet input
    channels) are drawn from a CPU ``torch.Generator`` seeded with ``seed``; the same generator
    then supplies the embedding noise and any scheduler noise, so results depend only on
    (embeddings, seed, settings) and not on the global RNG or the device's RNG.
    ``height``/``width`` default to the UNet's native size (768 for SD 2.1 unCLIP).  Given
    ``latents``, their spatial size sets the output size instead.
    """
    if image_embeds.ndim != 2:
        raise ValueError(f"image_embeds must be [B,D], got shape {list(image_embeds.shape)}")
    d = embed_dim(pipe)
    if image_embeds.shape[1] != d:
        raise ValueError(f"this pipeline takes {d}-d image embeddings, got {image_embeds.shape[1]}")
    if not 0 <= noise_level < pipe.image_noising_scheduler.config.num_train_timesteps:
        raise ValueError(f"noise_level {noise_level} out of range")
    batch = image_embeds.shape[0]
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    factor = pipe.vae_scale_factor
    generator = torch.Generator("cpu").manual_seed(int(seed))
    if latents is None:
        h = height or unet.config.sample_size * factor
        w = width or unet.config.sample_size * factor
        if h % factor or w % factor:
            raise ValueError(f"height and width must be multiples of {factor}, got {h}x{w}")
        shape = (batch, unet.config.in_channels, h // factor, w // factor)
        # drawn in float32 on the CPU so that fp16/bf16 and GPU runs start from the same noise
        latents = torch.randn(shape, generator=generator, dtype=torch.float32)
    elif latents.ndim != 4 or latents.shape[0] != batch:
        raise ValueError(f"latents must be [{batch},C,h,w], got {list(latents.shape)}")
    height, width = latents.shape[2] * factor, latents.shape[3] * factor
    out = pipe(
        prompt=[""] * batch,
        image_embeds=image_embeds.to(device=device, dtype=dtype),
        latents=latents.to(device=device, dtype=dtype),
        generator=generator,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        noise_level=noise_level,
        height=height,
        width=width,
        output_type="pil",
    )
    return list(out.images)


class UnclipDecoder:
    """Lazily loaded unCLIP pipeline: nothing is read until the first :meth:`draw`."""

    def __init__(
        self,
        folder: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(device)
        self._pipe: Any = None

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = load_unclip_pipeline(self.folder, self.device, self.dtype)
        return self._pipe

    def draw(self, image_embeds: Tensor, seed: int, **kwargs: Any) -> list[Any]:
        """See :func:`draw`."""
        return draw(self.pipe, image_embeds, seed, **kwargs)


# --------------------------------------------------------------------------------------------
# Tiny random pipeline for tests and debug bundles
# --------------------------------------------------------------------------------------------

_TOKENS = "abcdefghijklmnopqrstuvwxyz"


def _tiny_clip_tokenizer(max_length: int) -> Any:
    """A CLIP BPE tokenizer over lower-case letters, built in memory (no download)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _TOKENS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_tiny_unclip_pipeline(
    out_dir: str | Path, embed_dim: int = 32, seed: int = 0, sample_size: int = 16
) -> Path:
    """Write a tiny, randomly initialised ``StableUnCLIPImg2ImgPipeline`` folder.

    Same component types as SD 2.1 unCLIP (UNet with a projection class embedding of width
    ``2 * embed_dim``, AutoencoderKL with scale factor 2, CLIP text model and tokenizer, CLIP
    vision model, image normaliser, DDPM image-noising scheduler, DDIM v-prediction scheduler),
    at a size that draws a ``2 * sample_size`` square image in milliseconds on a CPU.
    Returns ``out_dir``.  The global RNG is left untouched.
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    out_dir = Path(out_dir)
    text_width, max_len = 32, 16
    tokenizer = _tiny_clip_tokenizer(max_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_width,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=max_len,
                projection_dim=text_width,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
                hidden_act="gelu",
            )
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=text_width,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
                projection_dim=embed_dim,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_width,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * embed_dim,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            sample_size=2 * sample_size,
        )
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=embed_dim)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=image_encoder.eval(),
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        unet=unet.eval(),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
            clip_sample=False,
        ),
        vae=vae.eval(),
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir
