"""Speech through SpeechTokenizer (16 kHz, 8-layer RVQ, 50 frames/s).

AnyGPT's LLM sees only RVQ layer 1 (the semantic layer).  To speak, SoundStorm fills in layers 2-8
(optionally in the voice of a prompt) and SpeechTokenizer's decoder makes the waveform.  Without a
SoundStorm model the waveform is decoded from layer 1 alone (intelligible but robotic).

The network is the ``speechtokenizer`` package's model class (Apache-2.0), which supports both the
ELU and the Snake variants.  Importing that package normally runs its ``__init__``, which pulls in its
trainer and with it torchaudio, matplotlib and more; :func:`speechtokenizer_class` loads only the
model modules, so the package is installed with ``--no-deps``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anygpt.audio import AudioError, load_audio, save_wav
from anygpt.checkpoint import load_strict, missing_file_error, read_state_dict
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


def speechtokenizer_class() -> type:
    """The ``SpeechTokenizer`` model class, imported without the package's training code."""
    if "speechtokenizer.model" in sys.modules:
        return sys.modules["speechtokenizer.model"].SpeechTokenizer
    spec = importlib.util.find_spec("speechtokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModalityError(
            "the 'speechtokenizer' package is not installed; run "
            "'pip install --no-deps speechtokenizer==1.0.1' (see README: Install)"
        )
    if "speechtokenizer" not in sys.modules:
        # An empty parent package keeps `speechtokenizer/__init__.py` (and its trainer imports) from
        # running; the model modules only need torch, numpy and einops.
        pkg = types.ModuleType("speechtokenizer")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["speechtokenizer"] = pkg
    return importlib.import_module("speechtokenizer.model").SpeechTokenizer


def build_speechtokenizer(config: dict) -> torch.nn.Module:
    """A SpeechTokenizer network from its ``config.json`` dict (weights uninitialised)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that weight_norm is deprecated
        return speechtokenizer_class()(config)


def official_speechtokenizer_config(activation: str = "Snake") -> dict:
    """The 16 kHz SpeechTokenizer config (``Snake``: AnyGPT's checkpoint; ``ELU``: hubert_avg)."""
    return {
        "n_filters": 64,
        "strides": [8, 5, 4, 2],
        "dimension": 1024,
        "semantic_dimension": 768,
        "bidirectional": True,
        "dilation_base": 2,
        "residual_kernel_size": 3,
        "n_residual_layers": 1,
        "lstm_layers": 2,
        "activation": activation,
        "codebook_size": 1024,
        "n_q": 8,
        "sample_rate": 16000,
        "sampling_rate": 16000,
    }


class SpeechTokenizerModality(ModalityTokenizer):
    """Speech <-> RVQ-1 codes ``[B, 1, T]`` at 50 frames/s.

    Args:
        config_path: SpeechTokenizer ``config.json``.
        checkpoint_path: its weights (``ckpt.dev`` state dict, or ``.safetensors``).
        soundstorm_path: optional SoundStorm weights that complete layers 2-8.
        soundstorm_config: optional JSON config of a non-official-size SoundStorm.
        soundstorm_steps: refinement passes (AnyGPT: ``vc_steps`` = 3).
    """

    name = "speech"
    media_kind = "audio"
    file_suffix = ".wav"
    channels = "first"  # AnyGPT keeps the first channel of speech input

    def __init__(
        self,
        config_path: str | Path,
        checkpoint_path: str | Path,
        *,
        soundstorm_path: str | Path | None = None,
        soundstorm_config: str | Path | None = None,
        soundstorm_steps: int = 3,
        device: str | torch.device = "cpu",
        max_voice_prompt_s: float = 30.0,
    ) -> None:
        self.config_path = Path(config_path)
        self.checkpoint_path = Path(checkpoint_path)
        self.soundstorm_path = Path(soundstorm_path) if soundstorm_path else None
        self.soundstorm_config = Path(soundstorm_config) if soundstorm_config else None
        self.soundstorm_steps = soundstorm_steps
        self.device = torch.device(device)
        self.max_voice_prompt_s = max_voice_prompt_s
        self._config: dict | None = None
        self._model: torch.nn.Module | None = None
        self._soundstorm: Any = None

    # ------------------------------------------------------------------ config / lazy models
    @property
    def config(self) -> dict:
        if self._config is None:
            if not self.config_path.is_file():
                raise missing_file_error(
                    self.config_path,
                    "SpeechTokenizer config",
                    "fnlp/AnyGPT-speech-modules speechtokenizer/config.json",
                )
            self._config = json.loads(self.config_path.read_text())
        return self._config

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            if not self.checkpoint_path.is_file():
                raise missing_file_error(
                    self.checkpoint_path,
                    "SpeechTokenizer weights",
                    "fnlp/AnyGPT-speech-modules speechtokenizer/ckpt.dev",
                )
            with torch.device("meta"):
                model = build_speechtokenizer(self.config)
            load_strict(
                model,
                read_state_dict(self.checkpoint_path, what="SpeechTokenizer weights"),
                what="SpeechTokenizer",
            )
            self._model = model.to(self.device).eval()
        return self._model

    @property
    def soundstorm(self) -> Any:
        """The SoundStorm model, or ``None`` when the bundle has none."""
        if self._soundstorm is None and self.soundstorm_path is not None:
            from anygpt.models import soundstorm as ss

            cfg = ss.SOUNDSTORM_OFFICIAL
            if self.soundstorm_config is not None:
                cfg = ss.SoundStormConfig.from_dict(json.loads(self.soundstorm_config.read_text()))
            if not self.soundstorm_path.is_file():
                raise missing_file_error(
                    self.soundstorm_path,
                    "SoundStorm weights",
                    "fnlp/AnyGPT-speech-modules soundstorm/speechtokenizer_soundstorm_mls.pt",
                )
            self._soundstorm = ss.load_soundstorm(self.soundstorm_path, cfg, device=self.device)
        return self._soundstorm

    def unload(self) -> None:
        self._model = None
        self._soundstorm = None

    # ------------------------------------------------------------------ contract properties
    @property
    def sample_rate(self) -> int:
        return int(self.config.get("sample_rate") or self.config.get("sampling_rate"))

    @property
    def hop_length(self) -> int:
        hop = 1
        for s in self.config["strides"]:
            hop *= int(s)
        return hop

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def num_layers(self) -> int:
        """RVQ layers of the codec (8); the LLM sees the first."""
        return int(self.config["n_q"])

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (int(self.config["codebook_size"]),)

    # ------------------------------------------------------------------ media
    def load(
        self, path: str | Path, *, channels: str | None = None, max_seconds: float | None = None
    ) -> torch.Tensor:
        """Waveform [T] at 16 kHz; AnyGPT keeps the first channel of multi-channel speech."""
        try:
            return load_audio(
                path,
                self.sample_rate,
                channels=channels or self.channels,
                duration_s=max_seconds,
                min_samples=self.hop_length,
            )
        except AudioError as exc:
            raise ModalityError(str(exc)) from exc

    def load_voice_prompt(self, path: str | Path) -> torch.Tensor:
        """A voice prompt: all channels averaged, at most ``max_voice_prompt_s`` seconds."""
        return self.load(path, channels="mean", max_seconds=self.max_voice_prompt_s)

    @torch.inference_mode()
    def encode_layers(self, wavs: Sequence[torch.Tensor], n_q: int) -> Codes:
        """Waveforms [T_i] -> codes [B, n_q, T] of the first ``n_q`` RVQ layers."""
        if not wavs:
            raise ModalityError("no audio to encode")
        lengths = [int(w.shape[-1]) for w in wavs]

        def run(group: list[torch.Tensor]) -> list[torch.Tensor]:
            x = torch.stack([w.reshape(-1) for w in group]).unsqueeze(1).to(self.device)
            codes = self.model.encode(x, n_q=n_q)  # [n_q, B, T]
            return list(codes.permute(1, 0, 2).cpu())

        return Codes.from_list(run_grouped(list(wavs), lengths, run))

    def encode(self, media: Sequence[torch.Tensor]) -> Codes:
        """Waveforms [T_i] at 16 kHz -> semantic codes [B, 1, T]."""
        return self.encode_layers(media, n_q=1)

    @torch.inference_mode()
    def complete(
        self,
        semantic: Codes,
        voice_prompt: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Codes:
        """Semantic codes [B, 1, T] -> all RVQ layers [B, 8, T] through SoundStorm.

        Without SoundStorm only layer 1 is returned.
        """
        model = self.soundstorm
        if model is None:
            return semantic
        from anygpt.models.soundstorm import generate

        prompt = None
        if voice_prompt is not None:
            full = self.encode_layers([voice_prompt], n_q=self.num_layers).unbatch()[0]  # [8, T_p]
            prompt = full.t().unsqueeze(0).expand(len(semantic), -1, -1).to(self.device)
        out = generate(
            model,
            semantic.codes[:, 0, :].to(self.device),
            prompt,
            steps=self.soundstorm_steps,
            semantic_lengths=semantic.lengths.to(self.device),
            generator=generator,
        )  # [B, T, 8]
        return Codes(out.permute(0, 2, 1).cpu(), semantic.lengths.clone())

    @torch.inference_mode()
    def decode(
        self,
        codes: Codes,
        *,
        voice_prompt: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> list[torch.Tensor]:
        """Codes [B, K, T] (K = 1 semantic, or all 8 layers) -> waveforms [320 * T_i]."""
        if any(int(n) == 0 for n in codes.lengths):
            raise ModalityError(
                "no speech codes to decode (the model produced an empty speech span)"
            )
        if codes.codes.shape[1] == 1:
            codes = self.complete(codes, voice_prompt=voice_prompt, generator=generator)
        items = codes.unbatch()

        def run(group: list[torch.Tensor]) -> list[torch.Tensor]:
            x = torch.stack(group).permute(1, 0, 2).to(self.device)  # [K, B, T]
            wav = self.model.decode(x)  # [B, 1, T * hop]
            return list(wav[:, 0].float().cpu())

        return run_grouped(items, [c.shape[1] for c in items], run)

    def save(self, media: torch.Tensor, path: str | Path) -> None:
        save_wav(path, media, self.sample_rate)


# ---------------------------------------------------------------------- family
def tiny_speechtokenizer_config() -> dict:
    """SpeechTokenizer at toy width: same strides (hop 320), 8 RVQ layers of 1024 codes."""
    return {
        "n_filters": 4,
        "strides": [8, 5, 4, 2],
        "dimension": 32,
        "semantic_dimension": 32,
        "bidirectional": True,
        "dilation_base": 2,
        "residual_kernel_size": 3,
        "n_residual_layers": 1,
        "lstm_layers": 1,
        "activation": "Snake",
        "codebook_size": 1024,
        "n_q": 8,
        "sample_rate": 16000,
        "sampling_rate": 16000,
    }


def write_tiny_speechtokenizer(
    root: Path, gen: torch.Generator, definition: dict | None = None, *, soundstorm: bool = True
) -> ModalityEntry:
    """A tiny random SpeechTokenizer (released file layout) and, optionally, a tiny SoundStorm."""
    d = root / "speechtokenizer"
    d.mkdir(parents=True)
    cfg = tiny_speechtokenizer_config()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = build_speechtokenizer(cfg)
    fill_codebooks_randomly(model, gen)
    waves = synthetic_waves(cfg["sample_rate"], gen)
    fill_codebooks_from_data(model, lambda: model.encode(waves, n_q=cfg["n_q"]), gen)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # the released file is a plain torch state dict named ckpt.dev; keep that layout
    torch.save(model.state_dict(), d / "ckpt.dev")
    files = {"config": "speechtokenizer/config.json", "checkpoint": "speechtokenizer/ckpt.dev"}
    if soundstorm:
        files.update(_write_tiny_soundstorm(root, gen))
    tokens = ModalityTokens.from_dict(definition["tokens"]) if definition else _default_tokens()
    return ModalityEntry("speechtokenizer", tokens, files)


def _write_tiny_soundstorm(root: Path, gen: torch.Generator) -> dict[str, str]:
    from safetensors.torch import save_file

    from anygpt.models import soundstorm as ss

    d = root / "soundstorm"
    d.mkdir(parents=True)
    # speech-sized vocabulary (1024 codes, 7 acoustic levels) at toy width
    cfg = ss.SoundStormConfig(
        codebook_size=1024,
        num_quantizers=7,
        dim=32,
        depth=1,
        heads=2,
        dim_head=16,
        num_semantic_tokens=1024,
    )
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = ss.build_soundstorm(cfg)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(d / "soundstorm.safetensors"),
    )
    (d / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return {
        "soundstorm": "soundstorm/soundstorm.safetensors",
        "soundstorm_config": "soundstorm/config.json",
    }


def _default_tokens() -> ModalityTokens:
    from anygpt.layout import ANYGPT_SPEECH

    return ANYGPT_SPEECH


def _build(ctx: BuildContext) -> SpeechTokenizerModality:
    from anygpt.config import soundstorm_steps

    steps = ctx.options.get("soundstorm_steps") or soundstorm_steps(ctx.decoding_dir)
    return SpeechTokenizerModality(
        ctx.files["config"],
        ctx.files["checkpoint"],
        soundstorm_path=ctx.files.get("soundstorm"),
        soundstorm_config=ctx.files.get("soundstorm_config"),
        soundstorm_steps=int(steps),
        device=ctx.device,
    )


register(
    Family(
        "speechtokenizer",
        "speech",
        _build,
        tokens=_default_tokens(),
        write_tiny=write_tiny_speechtokenizer,
        weights_file="checkpoint",
    )
)
