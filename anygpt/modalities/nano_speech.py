"""Speech through nano speech units (``type: nano-units``): 16 kHz, 25 units/s, one codebook.

The units are k-means clusters of a small CTC recogniser's hidden layer (they carry the words and
little of the voice); a unit vocoder turns them back into a log-mel in the voice of a prompt (or
a default voice) and Griffin-Lim makes the waveform.  See :mod:`anygpt.models.nano_speech`,
:mod:`anygpt.models.nano_vocoder` and the trainer :mod:`anygpt.train.speech_units`.

Bundle entry files: ``model`` (``nano_speech.safetensors``) and ``config`` (``nano_speech.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anygpt.audio import AudioError, load_audio, save_wav
from anygpt.checkpoint import CheckpointError, missing_file_error
from anygpt.layout import ModalityTokens
from anygpt.modalities.base import Codes, ModalityError, ModalityTokenizer, run_grouped
from anygpt.modalities.registry import BuildContext, Family, ModalityEntry, register

DEFAULT_UNITS = 256
SAMPLE_RATE = 16000


def nano_speech_tokens(n_units: int = DEFAULT_UNITS) -> ModalityTokens:
    """The LLM token format of nano speech units: ``<🗣️N>`` inside ``<sosp> ... <eosp>``."""
    return ModalityTokens("speech", "🗣️", "<sosp>", "<eosp>", n_units)


class NanoSpeechModality(ModalityTokenizer):
    """Speech <-> unit codes ``[B, 1, T]`` at 25 frames/s.

    Args:
        weights: ``nano_speech.safetensors``.
        config: ``nano_speech.json``.
        max_voice_prompt_s: a voice prompt is cut to this many seconds (default: the config's).
    """

    name = "speech"
    media_kind = "audio"
    file_suffix = ".wav"

    def __init__(
        self,
        weights: str | Path,
        config: str | Path,
        *,
        device: str | torch.device = "cpu",
        max_voice_prompt_s: float | None = None,
    ) -> None:
        self.weights = Path(weights)
        self.config_path = Path(config)
        self.device = torch.device(device)
        self._max_prompt = max_voice_prompt_s
        self._cfg: Any = None
        self._model: Any = None

    # ------------------------------------------------------------------ lazy model
    @property
    def config(self):
        if self._cfg is None:
            from anygpt.models.nano_speech_codec import NanoSpeechConfig

            if not self.config_path.is_file():
                raise missing_file_error(self.config_path, "nano speech config")
            try:
                self._cfg = NanoSpeechConfig.from_file(self.config_path)
            except (ValueError, TypeError, KeyError) as exc:
                raise CheckpointError(f"bad nano speech config {self.config_path}: {exc}") from exc
        return self._cfg

    @property
    def model(self):
        if self._model is None:
            from anygpt.models.nano_speech_codec import NanoSpeech

            if not self.weights.is_file():
                raise missing_file_error(self.weights, "nano speech weights")
            self.config  # noqa: B018 - a readable error for a bad config comes first
            self._model = NanoSpeech.load(self.weights, self.config_path).to(self.device)
        return self._model

    def unload(self) -> None:
        self._model = None

    # ------------------------------------------------------------------ contract properties
    @property
    def sample_rate(self) -> int:
        return int(self.config.features.sample_rate)

    @property
    def hop_length(self) -> int:
        """Samples per unit (640)."""
        return int(self.config.features.hop_length * self.config.vocoder.upsample)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (int(self.config.n_units),)

    @property
    def max_voice_prompt_s(self) -> float:
        return float(self._max_prompt or self.config.max_prompt_s)

    # ------------------------------------------------------------------ media
    def load(self, path: str | Path, *, max_seconds: float | None = None) -> torch.Tensor:
        """Waveform [T] at 16 kHz, channels averaged; at least one unit long."""
        try:
            return load_audio(
                path,
                self.sample_rate,
                channels="mean",
                duration_s=max_seconds,
                min_samples=self.hop_length,
            )
        except AudioError as exc:
            raise ModalityError(str(exc)) from exc

    def load_voice_prompt(self, path: str | Path) -> torch.Tensor:
        """A voice prompt waveform [T] (at most ``max_voice_prompt_s`` seconds)."""
        return self.load(path, max_seconds=self.max_voice_prompt_s)

    def _check_wave(self, w: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(w, torch.Tensor) or w.dim() != 1:
            raise ModalityError(f"{what} must be a 1-D waveform tensor")
        if w.shape[0] < self.hop_length:
            raise ModalityError(
                f"{what} is too short ({w.shape[0]} samples; need at least {self.hop_length})"
            )
        if not torch.isfinite(w).all():
            raise ModalityError(f"{what} holds NaN or infinite samples")
        return w.float()

    @torch.inference_mode()
    def encode(self, media: Sequence[torch.Tensor]) -> Codes:
        """Waveforms [T_i] at 16 kHz -> units [B, 1, T] (T_i // 640 rounded up per item)."""
        if not media:
            raise ModalityError("no audio to encode")
        waves = [self._check_wave(w.reshape(-1), "speech") for w in media]
        model = self.model

        def run(group: list[torch.Tensor]) -> list[torch.Tensor]:
            x = torch.stack(group).to(self.device)
            units, n = model.encode(x, torch.full((len(group),), x.shape[1], device=self.device))
            return [u[: int(k)].reshape(1, -1).cpu() for u, k in zip(units, n)]

        return Codes.from_list(run_grouped(waves, [int(w.shape[0]) for w in waves], run))

    @torch.inference_mode()
    def voice(self, voice_prompt: torch.Tensor | None) -> torch.Tensor:
        """A prompt waveform [T] -> voice vector [speaker_dim] (``None``: the default voice)."""
        model = self.model
        if voice_prompt is None:
            return model.vocoder.default_voice.clone()
        w = self._check_wave(voice_prompt.reshape(-1), "voice prompt")
        w = w[: int(self.max_voice_prompt_s * self.sample_rate)]
        return model.voice(w.to(self.device))

    @torch.inference_mode()
    def decode(
        self,
        codes: Codes,
        *,
        voice_prompt: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> list[torch.Tensor]:
        """Units [B, 1, T] -> waveforms [640 * T_i], in the voice of ``voice_prompt`` [T].

        ``generator`` seeds Griffin-Lim's initial phase (same generator state, same waveform).
        """
        if codes.codes.shape[1] != 1:
            raise ModalityError(f"nano speech codes have 1 codebook, got {codes.codes.shape[1]}")
        if any(int(n) == 0 for n in codes.lengths):
            raise ModalityError("no speech codes to decode (the model produced an empty span)")
        n_units = self.codebook_sizes[0]
        items = codes.unbatch()
        for c in items:
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= n_units):
                raise ModalityError(f"speech unit out of range (units are 0..{n_units - 1})")
        voice = self.voice(voice_prompt)
        model = self.model

        def run(group: list[torch.Tensor]) -> list[torch.Tensor]:
            u = torch.stack([c[0] for c in group]).to(self.device)
            n = torch.full((len(group),), u.shape[1], device=self.device)
            wav = model.decode(u, n, voice[None].expand(len(group), -1), generator=generator)
            return list(wav.float().cpu())

        return run_grouped(items, [c.shape[1] for c in items], run)

    def save(self, media: torch.Tensor, path: str | Path) -> None:
        save_wav(path, media, self.sample_rate)


# ---------------------------------------------------------------------- registry
def write_tiny_nano_speech(
    root: Path, gen: torch.Generator, definition: dict | None = None
) -> ModalityEntry:
    """A tiny random nano speech tokenizer under ``root/nano_speech`` (16 units)."""
    from anygpt.models.nano_speech_codec import NanoSpeech, tiny_config

    n_units = 16
    if definition and "tokens" in definition:
        n_units = int(definition["tokens"]["codebook_size"])
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = NanoSpeech(tiny_config(n_units))
    with torch.no_grad():
        model.centroids.normal_(generator=gen)
        model.vocoder.default_voice.normal_(generator=gen)
    model.save(root / "nano_speech")
    files = {
        "model": "nano_speech/nano_speech.safetensors",
        "config": "nano_speech/nano_speech.json",
    }
    return ModalityEntry("nano-units", nano_speech_tokens(n_units), files)


def _build(ctx: BuildContext) -> NanoSpeechModality:
    for key in ("model", "config"):
        if key not in ctx.files:
            raise ModalityError(f"'{ctx.name}': a nano-units entry needs a '{key}' file")
    prompt = ctx.options.get("max_voice_prompt_s")
    return NanoSpeechModality(
        ctx.files["model"],
        ctx.files["config"],
        device=ctx.device,
        max_voice_prompt_s=float(prompt) if prompt else None,
    )


register(
    Family(
        type="nano-units",
        modality="speech",
        build=_build,
        tokens=nano_speech_tokens(),
        write_tiny=write_tiny_nano_speech,
    )
)
