"""The whole nano speech tokenizer: waveform -> units -> waveform, saved as one safetensors file.

``nano_speech.safetensors`` holds the recogniser (``recogniser.*``), the unit centroids
(``centroids``), the speaker encoder (``speaker.*``) and the vocoder (``vocoder.*``), in float16;
``nano_speech.json`` beside it holds :class:`NanoSpeechConfig`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from anygpt.models.nano_speech import (
    FeatureConfig,
    LogMel,
    Recogniser,
    RecogniserConfig,
    assign_units,
)
from anygpt.models.nano_vocoder import GriffinLim, SpeakerEncoder, UnitVocoder, VocoderConfig

FORMAT = "anygpt-nano-speech/1"


@dataclass
class NanoSpeechConfig:
    """Everything needed to rebuild the networks (saved as JSON beside the weights)."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    recogniser: RecogniserConfig = field(default_factory=RecogniserConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    griffin_lim_iters: int = 48
    max_prompt_s: float = 10.0  # a voice prompt is cut to this many seconds
    format: str = FORMAT

    def __post_init__(self) -> None:
        if (
            self.vocoder.n_mels != self.features.n_mels
            or self.recogniser.n_mels != self.features.n_mels
        ):
            raise ValueError("features, recogniser and vocoder must agree on n_mels")
        if not 1 <= self.recogniser.unit_layer <= self.recogniser.layers:
            raise ValueError("unit_layer must name one of the recogniser's transformer layers")

    @property
    def n_units(self) -> int:
        return self.vocoder.n_units

    @property
    def frame_rate(self) -> float:
        """Units per second (25 for a 10 ms hop)."""
        return self.features.sample_rate / (self.features.hop_length * self.vocoder.upsample)

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "features": self.features.to_dict(),
            "recogniser": self.recogniser.to_dict(),
            "vocoder": self.vocoder.to_dict(),
            "griffin_lim_iters": self.griffin_lim_iters,
            "max_prompt_s": self.max_prompt_s,
        }

    @classmethod
    def from_dict(cls, d: dict) -> NanoSpeechConfig:
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"not a nano speech config (format {d.get('format')!r})")
        return cls(
            FeatureConfig.from_dict(d.get("features", {})),
            RecogniserConfig.from_dict(d.get("recogniser", {})),
            VocoderConfig.from_dict(d.get("vocoder", {})),
            int(d.get("griffin_lim_iters", 48)),
            float(d.get("max_prompt_s", 10.0)),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> NanoSpeechConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def tiny_config(n_units: int = 16) -> NanoSpeechConfig:
    """A very small configuration for tests and debug bundles."""
    return NanoSpeechConfig(
        FeatureConfig(n_mels=20),
        RecogniserConfig(n_mels=20, dim=32, layers=2, heads=2, ff=64, unit_layer=1),
        VocoderConfig(
            n_units=n_units,
            n_mels=20,
            dim=32,
            layers=1,
            heads=2,
            ff=64,
            postnet_dim=16,
            speaker_dim=8,
            speaker_channels=16,
        ),
        griffin_lim_iters=4,
    )


class NanoSpeech(nn.Module):
    """Waveform <-> units, with voices.

    ``encode(wav [B, T], lengths [B]) -> units [B, T'], lengths [B]`` (25 units/s);
    ``voice(wav [1, T]) -> [speaker_dim]``; ``decode(units [B, T'], lengths, voice [B, S]) ->
    waveform [B, 640 * T']``.
    """

    def __init__(self, cfg: NanoSpeechConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.logmel = LogMel(cfg.features)
        self.recogniser = Recogniser(cfg.recogniser)
        self.register_buffer("centroids", torch.zeros(cfg.n_units, cfg.recogniser.dim))
        self.speaker = SpeakerEncoder(cfg.vocoder)
        self.vocoder = UnitVocoder(cfg.vocoder)
        self.griffin_lim = GriffinLim(cfg.features, iters=cfg.griffin_lim_iters)

    def mel_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, self.cfg.features.hop_length, rounding_mode="floor")

    def unit_features(
        self, mel: torch.Tensor, mel_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel [B, M, T] -> unit-layer vectors [B, ceil(T/4), D] and their lengths."""
        outs, n = self.recogniser.hidden(mel, mel_lengths, upto=self.cfg.recogniser.unit_layer)
        return outs[-1], n

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, T] float, lengths [B] samples -> units [B, T'] int64, unit lengths [B]."""
        mel = self.logmel(wav)
        h, n = self.unit_features(mel, self.mel_lengths(lengths))
        return assign_units(h, self.centroids), n

    @torch.no_grad()
    def voice(self, wav: torch.Tensor) -> torch.Tensor:
        """A voice prompt [T] -> its voice vector [speaker_dim]."""
        mel = self.logmel(wav.reshape(1, -1))
        return self.speaker(mel, torch.tensor([mel.shape[-1]]))[0]

    @torch.no_grad()
    def decode_mel(
        self, units: torch.Tensor, lengths: torch.Tensor, voice: torch.Tensor | None = None
    ) -> torch.Tensor:
        """units [B, T'] -> log-mel [B, M, 4T'] (``voice`` [B, S]; None: the default voice)."""
        if voice is None:
            voice = self.vocoder.default_voice[None].expand(units.shape[0], -1)
        return self.vocoder(units, lengths, voice)

    @torch.no_grad()
    def decode(
        self,
        units: torch.Tensor,
        lengths: torch.Tensor,
        voice: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """units [B, T'] -> waveform [B, hop * 4T'] (Griffin-Lim phase from ``generator``)."""
        return self.griffin_lim(self.decode_mel(units, lengths, voice), generator=generator)

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path, stem: str = "nano_speech") -> tuple[Path, Path]:
        """Write ``stem.safetensors`` (float16) and ``stem.json``; returns both paths."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        weights, config = folder / f"{stem}.safetensors", folder / f"{stem}.json"
        save_file(state, str(weights), metadata={"format": FORMAT})
        self.cfg.save(config)
        return weights, config

    @classmethod
    def load(cls, weights: str | Path, config: str | Path) -> NanoSpeech:
        """Build from the config and load the weights strictly (as float32).

        Built on the CPU, not the meta device: the model is small and its filterbanks are computed
        at construction.
        """
        from anygpt.checkpoint import load_strict, read_state_dict

        model = cls(NanoSpeechConfig.from_file(config))
        state = read_state_dict(weights, what="nano speech weights")
        load_strict(model, {k: v.float() for k, v in state.items()}, what="nano speech tokenizer")
        return model.eval()
