"""Images through the nano VQ image tokenizer (``type: vq-image``): 64x64 RGB, 64 codes a picture.

The tokenizer (:mod:`anygpt.models.vq_image`, trained by ``anygpt train-tokenizer image``) maps a
picture to an 8x8 grid of codes in raster order and draws codes back directly (no diffusion, no
seed).  Any picture is accepted: it is made RGB and cut to its centre square, then resized.

Bundle entry files: ``model`` (a folder with ``config.json`` and ``model.safetensors``).
LLM tokens: ``<👀N>`` inside ``<soim> ... <eoim>``, 64 per picture.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anygpt.checkpoint import CheckpointError
from anygpt.layout import ModalityTokens
from anygpt.modalities.base import Codes, ModalityError, ModalityTokenizer
from anygpt.modalities.registry import BuildContext, Family, ModalityEntry, register

DEFAULT_CODEBOOK = 512
CODES_PER_IMAGE = 64


def vq_image_tokens(codebook_size: int = DEFAULT_CODEBOOK) -> ModalityTokens:
    """The LLM token format of nano images: 64 ``<👀N>`` inside ``<soim> ... <eoim>``."""
    return ModalityTokens("image", "👀", "<soim>", "<eoim>", codebook_size, 1, CODES_PER_IMAGE)


class VQImageModality(ModalityTokenizer):
    """Pictures (PIL) <-> codes ``[B, 1, 64]``.

    Args:
        model_dir: folder written by :func:`anygpt.models.vq_image.save_vq_image`.
    """

    name = "image"
    media_kind = "image"
    file_suffix = ".png"

    def __init__(self, model_dir: str | Path, *, device: str | torch.device = "cpu") -> None:
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self._cfg: Any = None
        self._model: Any = None

    # ------------------------------------------------------------------ lazy model
    @property
    def cfg(self) -> Any:
        """The tokenizer's config (read from ``config.json`` alone; no weights)."""
        if self._cfg is None:
            from anygpt.models.vq_image import CONFIG_FILE, VQImageConfig

            path = self.model_dir / CONFIG_FILE
            if not path.is_file():
                raise CheckpointError(
                    f"VQ image tokenizer folder '{self.model_dir}' not found or incomplete: it "
                    "must hold config.json and model.safetensors (anygpt train-tokenizer image "
                    "writes one)"
                )
            self._cfg = VQImageConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        return self._cfg

    @property
    def model(self) -> Any:
        if self._model is None:
            from anygpt.models.vq_image import load_vq_image

            self._model = load_vq_image(self.model_dir, self.device)
            self._cfg = self._model.cfg
        return self._model

    def unload(self) -> None:
        self._model = None

    # ------------------------------------------------------------------ contract properties
    @property
    def sample_rate(self) -> None:
        return None

    @property
    def frame_rate(self) -> float:
        return float(self.cfg.codes_per_image)

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (int(self.cfg.codebook_size),)

    # ------------------------------------------------------------------ media
    def load(self, path: str | Path, **_: Any) -> Any:
        """Any picture file -> RGB PIL image at the tokenizer's size (centre square)."""
        from anygpt.imageio import ImageError, open_image
        from anygpt.models.vq_image import prepare_image

        try:
            return prepare_image(open_image(path), self.cfg.image_size)
        except ImageError as exc:
            raise ModalityError(str(exc)) from exc

    def prepare(self, image: Any) -> Any:
        """An in-memory PIL image (a video frame) -> what ``encode`` takes, as ``load`` does."""
        from anygpt.models.vq_image import prepare_image

        return prepare_image(image, self.cfg.image_size)

    @torch.inference_mode()
    def encode(self, media: Sequence[Any]) -> Codes:
        """PIL images -> codes [B, 1, 64] (one batched pass)."""
        from PIL import Image

        from anygpt.models.vq_image import images_to_tensor

        if not media:
            raise ModalityError("no image to encode")
        for m in media:
            if not isinstance(m, Image.Image):
                raise ModalityError(f"an image must be a PIL image, not {type(m).__name__}")
            if m.width == 0 or m.height == 0:
                raise ModalityError("an image has no pixels")
        model = self.model
        pixels = images_to_tensor(list(media), self.cfg.image_size).to(self.device)
        codes = model.encode(pixels).cpu()  # [B, 64]
        return Codes(
            codes.unsqueeze(1), torch.full((len(media),), codes.shape[1], dtype=torch.long)
        )

    @torch.inference_mode()
    def decode(self, codes: Codes, **_: Any) -> list[Any]:
        """Codes [B, 1, 64] -> PIL RGB images (deterministic)."""
        from anygpt.models.vq_image import tensor_to_images

        n, k = self.cfg.codes_per_image, self.cfg.codebook_size
        if codes.codes.shape[1] != 1:
            raise ModalityError(f"image codes need 1 codebook, got {codes.codes.shape[1]}")
        if len(codes) == 0:
            raise ModalityError("no image codes to decode")
        bad = [int(x) for x in codes.lengths if int(x) != n]
        if bad:
            raise ModalityError(f"an image needs exactly {n} codes, got {bad[0]}")
        c = codes.codes[:, 0, :n]
        if int(c.min()) < 0 or int(c.max()) >= k:
            raise ModalityError(f"image codes must lie in [0, {k})")
        model = self.model
        return tensor_to_images(model.decode(c.to(self.device)).cpu())

    def save(self, media: Any, path: str | Path) -> None:
        media.convert("RGB").save(str(path), format="PNG")


# ---------------------------------------------------------------------- registry
def write_tiny_vq_image(
    root: Path, gen: torch.Generator | None = None, definition: dict | None = None
) -> ModalityEntry:
    """A tiny random VQ image tokenizer under ``root/vq_image`` (codebook spread so codes vary)."""
    from anygpt.models.vq_image import VQImageConfig, VQImageTokenizer, save_vq_image

    size = DEFAULT_CODEBOOK
    if definition and "tokens" in definition:
        size = int(definition["tokens"]["codebook_size"])
    cfg = VQImageConfig(
        channels=(8, 16, 16), code_dim=8, codebook_size=size, dec_blocks=1, dec_blocks_16=0
    )
    seed = 0 if gen is None else int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQImageTokenizer(cfg)
        with torch.no_grad():
            model.codebook.embed.normal_(0.0, 0.3)
            model.codebook.initted.fill_(True)
    save_vq_image(model, root / "vq_image")
    return ModalityEntry("vq-image", vq_image_tokens(size), {"model": "vq_image"})


def _build(ctx: BuildContext) -> VQImageModality:
    if "model" not in ctx.files:
        raise ModalityError(f"'{ctx.name}': a vq-image entry needs a 'model' folder")
    return VQImageModality(ctx.files["model"], device=ctx.device)


register(
    Family(
        type="vq-image",
        modality="image",
        build=_build,
        tokens=vq_image_tokens(),
        write_tiny=write_tiny_vq_image,
    )
)
