"""Images through the SEED tokenizer (32 codes of 8192) and Stable Diffusion unCLIP.

Encoding: 224x224 bicubic stretch, CLIP normalisation, EVA ViT-g, causal Q-Former, VQ.
Decoding: codes -> 1024-d unCLIP image embedding -> ``StableUnCLIPImg2ImgPipeline`` (guidance 10,
20 steps, noise level 0, empty prompt), seeded so that a run can be repeated exactly.  The
diffusion pipeline loads only when an image must be drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anygpt.checkpoint import missing_file_error
from anygpt.layout import ModalityTokens
from anygpt.modalities.base import Codes, ModalityError, ModalityTokenizer
from anygpt.modalities.registry import BuildContext, Family, ModalityEntry, register


class SeedModality(ModalityTokenizer):
    """Images <-> codes ``[B, 1, 32]``.

    ``files``: ``quantizer`` (``seed_quantizer.pt``) + ``vit`` (``eva_vit_g.pth``), or ``model``
    (a folder written by :func:`anygpt.models.seed.save_seed`); ``unclip``: a local
    ``StableUnCLIPImg2ImgPipeline`` folder.  ``options``: ``steps``, ``guidance_scale``,
    ``noise_level`` override AnyGPT's drawing settings.
    """

    name = "image"
    media_kind = "image"
    file_suffix = ".jpg"

    def __init__(
        self,
        files: dict[str, Path],
        *,
        options: dict | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.files = files
        self.options = dict(options or {})
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self._model: Any = None
        self._decoder: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            from anygpt.models import seed

            if "model" in self.files:
                self._model = seed.load_seed_dir(self.files["model"], self.device, self.dtype)
            else:
                q, vit = self.files["quantizer"], self.files.get("vit")
                if not Path(q).is_file():
                    raise missing_file_error(
                        q, "SEED quantizer weights", "AILab-CVC/seed-tokenizer-2 seed_quantizer.pt"
                    )
                if vit is not None and not Path(vit).is_file():
                    raise missing_file_error(vit, "EVA ViT-g weights", "LAVIS BLIP2 eva_vit_g.pth")
                self._model, _ = seed.load_seed(q, vit, device=self.device, dtype=self.dtype)
            self._model.eval()
        return self._model

    @property
    def decoder(self) -> Any:
        if self._decoder is None:
            import logging

            from diffusers.utils import logging as df_logging

            from anygpt.models.unclip import UnclipDecoder

            if not logging.getLogger("anygpt").isEnabledFor(logging.INFO):
                df_logging.disable_progress_bar()  # no per-step bars unless --verbose

            folder = self.files.get("unclip")
            if folder is None or not Path(folder).is_dir():
                raise missing_file_error(
                    folder,
                    "Stable Diffusion unCLIP folder",
                    "stabilityai/stable-diffusion-2-1-unclip",
                )
            self._decoder = UnclipDecoder(folder, self.device)
        return self._decoder

    def unload(self) -> None:
        self._model = None
        self._decoder = None

    @property
    def sample_rate(self) -> None:
        return None

    @property
    def frame_rate(self) -> float:
        return float(self.model.codes_per_image)

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (int(self.model.codebook_size),)

    def load(self, path: str | Path, **_: Any) -> Any:
        from anygpt.imageio import ImageError, open_image

        try:
            return open_image(path)
        except ImageError as exc:
            raise ModalityError(str(exc)) from exc

    @torch.inference_mode()
    def encode(self, media: Sequence[Any]) -> Codes:
        """PIL images -> codes [B, 1, 32] (one batched forward pass)."""
        from anygpt.models.seed import preprocess_images

        if not media:
            raise ModalityError("no image to encode")
        model = self.model
        pixels = preprocess_images(list(media), model.image_size).to(self.device, self.dtype)
        codes = model.encode(pixels).cpu()  # [B, 32]
        return Codes(
            codes.unsqueeze(1), torch.full((len(media),), codes.shape[1], dtype=torch.long)
        )

    @torch.inference_mode()
    def embed(self, codes: Codes) -> torch.Tensor:
        """Codes [B, 1, 32] -> unCLIP image embeddings [B, 1024]."""
        return self.model.decode_embedding(codes.codes[:, 0, :].to(self.device))

    def decode(
        self,
        codes: Codes,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        **_: Any,
    ) -> list[Any]:
        """Codes [B, 1, 32] -> PIL images drawn by unCLIP (seeded)."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        kw = {
            k: self.options[k]
            for k in ("steps", "guidance_scale", "noise_level")
            if k in self.options
        }
        return self.decoder.draw(self.embed(codes).float(), seed, **kw)

    def save(self, media: Any, path: str | Path) -> None:
        media.convert("RGB").save(str(path), format="JPEG", quality=95)


def write_tiny_seed(
    root: Path, gen: torch.Generator | None = None, definition: dict | None = None
) -> ModalityEntry:
    """A tiny random SEED (AnyGPT's 8192-code vocabulary) plus a tiny unCLIP pipeline."""
    from anygpt.layout import ANYGPT_IMAGE
    from anygpt.models import seed as seed_mod
    from anygpt.models.unclip import build_tiny_unclip_pipeline

    tokens = ModalityTokens.from_dict(definition["tokens"]) if definition else ANYGPT_IMAGE
    cfg = seed_mod.SeedConfig.from_dict(
        {**seed_mod.SEED_TINY.to_dict(), "codebook_size": tokens.codebook_size}
    )
    seed = 0 if gen is None else int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    torch.manual_seed(seed)
    model = seed_mod.build_seed(cfg)
    with torch.no_grad():
        # codebook rows are the encoder's own outputs for varied pictures (flat colours with a
        # block of another colour), so different images get different codes
        size = cfg.image_size
        g = torch.Generator().manual_seed(seed)
        pictures = torch.rand(16, 3, 1, 1, generator=g).expand(-1, -1, size, size).clone()
        for i, (y, x) in enumerate(torch.randint(0, size // 2, (16, 2), generator=g).tolist()):
            pictures[i, :, y : y + size // 2, x : x + size // 2] = torch.rand(3, 1, 1, generator=g)
        seen: dict = {}
        model.encode((pictures - 0.45) / 0.27, intermediates=seen)
        feats = seen["pre_quant"].reshape(-1, seen["pre_quant"].shape[-1]).float()
        weight = model.quantize.embedding.weight
        pick = torch.randint(0, feats.shape[0], (weight.shape[0],), generator=g)
        noise = torch.randn(weight.shape, generator=g) * feats.std(dim=0, keepdim=True) * 0.05
        weight.copy_(feats[pick] + noise)
    seed_mod.save_seed(model, root / "seed")
    build_tiny_unclip_pipeline(root / "unclip", embed_dim=cfg.image_feature_dim, seed=seed)
    return ModalityEntry("seed", tokens, {"model": "seed", "unclip": "unclip"}, {"steps": 2})


def _build(ctx: BuildContext) -> SeedModality:
    return SeedModality(ctx.files, options=ctx.options, device=ctx.device)


register(Family("seed", "image", _build, write_tiny=write_tiny_seed, weights_file="quantizer"))
