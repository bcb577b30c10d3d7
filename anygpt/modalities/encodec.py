"""Music and general audio through EnCodec (transformers' ``EncodecModel``).

AnyGPT's music is ``facebook/encodec_32khz`` (4 codebooks of 2048, 50 frames/s); its "audio" is
``facebook/encodec_24khz`` with 4 codebooks of 1024 (75 frames/s, i.e. the 3 kbps setting).
Models load from a local Hugging Face folder only.  The ``encodec`` PyPI package is not used: it
has no 32 kHz model, imports torchaudio and is licensed for non-commercial use only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anygpt.audio import AudioError, load_audio, save_wav
from anygpt.checkpoint import CheckpointError
from anygpt.layout import ModalityTokens
from anygpt.modalities.base import (
    Codes,
    ModalityError,
    ModalityTokenizer,
    fill_codebooks_from_data,
    fill_codebooks_randomly,
    run_grouped,
    synthetic_waves,
)
from anygpt.modalities.registry import BuildContext, Family, ModalityEntry, register


class EncodecModality(ModalityTokenizer):
    """Audio <-> codes ``[B, K, T]`` through EnCodec.

    Args:
        name: modality name (``music`` or ``audio``).
        model_dir: local Hugging Face ``EncodecModel`` folder.
        num_codebooks: codebooks to use (sets the bandwidth); ``None``: every codebook the
            model's highest bandwidth gives (4 for AnyGPT's 32 kHz model, 2 for the nano one).
        window_s: seconds read from an input file (AnyGPT: 20 in the base CLI, 5 in chat).
        offset_s: where that window starts (AnyGPT picked a random offset; here it is fixed).
    """

    media_kind = "audio"
    file_suffix = ".wav"

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        *,
        num_codebooks: int | None = None,
        window_s: float | None = 20.0,
        offset_s: float = 0.0,
        device: str | torch.device = "cpu",
        source: str | None = None,
    ) -> None:
        self.name = name
        self.model_dir = Path(model_dir)
        self._num_codebooks = num_codebooks
        self.window_s = window_s
        self.offset_s = offset_s
        self.device = torch.device(device)
        self.source = source
        self._model: Any = None
        self._config: Any = None

    # ------------------------------------------------------------------ lazy model
    @property
    def hf_config(self) -> Any:
        if self._config is None:
            from transformers import EncodecConfig

            if not (self.model_dir / "config.json").is_file():
                hint = f" ({self.source})" if self.source else ""
                raise CheckpointError(
                    f"EnCodec model folder '{self.model_dir}' not found or incomplete{hint}: it must "
                    "hold a Hugging Face config.json and model.safetensors. Nothing is downloaded at "
                    "run time; place the folder there or point the bundle at it."
                )
            self._config = EncodecConfig.from_pretrained(str(self.model_dir), local_files_only=True)
        return self._config

    @property
    def model(self) -> Any:
        if self._model is None:
            from transformers import EncodecModel

            cfg = self.hf_config
            if (
                self.num_codebooks * self._bits_per_codebook() * cfg.frame_rate / 1000
                > max(cfg.target_bandwidths) + 1e-6
            ):
                raise ModalityError(
                    f"{self.model_dir} cannot produce {self.num_codebooks} codebooks"
                )
            self._model = (
                EncodecModel.from_pretrained(str(self.model_dir), local_files_only=True)
                .to(self.device)
                .eval()
            )
        return self._model

    def unload(self) -> None:
        self._model = None

    def _bits_per_codebook(self) -> float:
        return math.log2(self.hf_config.codebook_size)

    @property
    def bandwidth(self) -> float:
        """The bandwidth (kbps) that yields ``num_codebooks`` codebooks."""
        cfg = self.hf_config
        wanted = self.num_codebooks * self._bits_per_codebook() * cfg.frame_rate / 1000
        for bw in cfg.target_bandwidths:  # use the model's own float to pass its membership check
            if abs(bw - wanted) < 0.05:
                return bw
        return wanted

    # ------------------------------------------------------------------ contract properties
    @property
    def sample_rate(self) -> int:
        return int(self.hf_config.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.hf_config.upsampling_ratios))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def num_codebooks(self) -> int:
        if self._num_codebooks is None:  # read off the config (not the weights)
            cfg = self.hf_config
            per_codebook = self._bits_per_codebook() * cfg.frame_rate
            self._num_codebooks = int(1000 * max(cfg.target_bandwidths) // per_codebook)
        return self._num_codebooks

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (int(self.hf_config.codebook_size),) * self.num_codebooks

    # ------------------------------------------------------------------ media
    def load(
        self, path: str | Path, *, window_s: float | None = -1.0, offset_s: float | None = None
    ) -> torch.Tensor:
        """Mono waveform [T] at the model's rate; a window of ``window_s`` seconds from ``offset_s``."""
        window = self.window_s if window_s == -1.0 else window_s
        try:
            return load_audio(
                path,
                self.sample_rate,
                channels="mean",
                offset_s=self.offset_s if offset_s is None else offset_s,
                duration_s=window,
                min_samples=self.hop_length,
            )
        except AudioError as exc:
            raise ModalityError(str(exc)) from exc

    @torch.inference_mode()
    def encode(self, media: Sequence[torch.Tensor]) -> Codes:
        """Waveforms [T_i] -> codes [B, K, T] (equal lengths share a forward pass)."""
        if not media:
            raise ModalityError("no audio to encode")
        bandwidth = self.bandwidth
        model = self.model

        def run(group: list[torch.Tensor]) -> list[torch.Tensor]:
            x = torch.stack([w.reshape(-1) for w in group]).unsqueeze(1).to(self.device)
            out = model.encode(x, bandwidth=bandwidth, return_dict=True)
            codes = out.audio_codes[0]  # [B, K, T]
            return list(codes[:, : self.num_codebooks].cpu())

        return Codes.from_list(run_grouped(list(media), [int(w.shape[-1]) for w in media], run))

    @torch.inference_mode()
    def decode(self, codes: Codes, **_: Any) -> list[torch.Tensor]:
        """Codes [B, K, T] -> waveforms [hop * T_i]."""
        if codes.codes.shape[1] != self.num_codebooks:
            raise ModalityError(f"{self.name} codes need {self.num_codebooks} codebooks")
        if any(int(n) == 0 for n in codes.lengths):
            raise ModalityError(
                f"no {self.name} frames to decode (the model produced an empty span)"
            )
        model = self.model
        items = codes.unbatch()

        def run(group: list[torch.Tensor]) -> list[torch.Tensor]:
            x = torch.stack(group).unsqueeze(0).to(self.device)  # [1, B, K, T]
            audio = model.decode(x, [None], return_dict=True).audio_values  # [B, 1, T * hop]
            return list(audio[:, 0].float().cpu())

        return run_grouped(items, [c.shape[1] for c in items], run)

    def save(self, media: torch.Tensor, path: str | Path) -> None:
        save_wav(path, media, self.sample_rate)


# ---------------------------------------------------------------------- family
# Toy-width EnCodec models with the strides, codebook sizes and bandwidths of the released ones.
_TINY_SHAPES = {
    32000: {"ratios": [8, 5, 4, 4], "bandwidths": [2.2]},
    24000: {"ratios": [8, 5, 4, 2], "bandwidths": [1.5, 3.0, 6.0]},
}


def write_tiny_encodec(
    root: Path, gen: torch.Generator, definition: dict | None = None
) -> ModalityEntry:
    """A tiny random EnCodec shaped like the model a definition names (default: 32 kHz music)."""
    from transformers import EncodecConfig, EncodecModel

    from anygpt.layout import tokenizer_definition

    definition = definition or tokenizer_definition("encodec_32khz")
    rate = int(definition["sample_rate"])
    tokens = ModalityTokens.from_dict(definition["tokens"])
    folder = Path(definition["files"]["model"]).name
    shape = _TINY_SHAPES.get(rate, _TINY_SHAPES[32000])
    cfg = EncodecConfig(
        sampling_rate=rate,
        audio_channels=1,
        num_filters=4,
        hidden_size=16,
        codebook_dim=16,
        codebook_size=tokens.codebook_size,
        num_lstm_layers=1,
        upsampling_ratios=shape["ratios"],
        target_bandwidths=shape["bandwidths"],
        normalize=False,
        use_conv_shortcut=False,
    )
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = EncodecModel(cfg)
    fill_codebooks_randomly(model, gen)
    waves = synthetic_waves(rate, gen)
    fill_codebooks_from_data(
        model, lambda: model.encode(waves, bandwidth=max(shape["bandwidths"])), gen
    )
    model.save_pretrained(str(root / folder))
    opts = {"num_codebooks": tokens.num_codebooks}
    return ModalityEntry("encodec", tokens, {"model": folder}, opts)


def _build(ctx: BuildContext) -> EncodecModality:
    return EncodecModality(
        ctx.name,
        ctx.files["model"],
        num_codebooks=int(n) if (n := ctx.options.get("num_codebooks")) is not None else None,
        device=ctx.device,
        source=ctx.options.get("source"),
    )


register(Family("encodec", "music", _build, write_tiny=write_tiny_encodec))
