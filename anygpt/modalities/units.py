"""Speech as self-supervised units: mHuBERT layer features -> k-means ids, and a unit HiFi-GAN.

This is the speech path of SpeechGPT, LLaMA-Omni and Open-GPT-4o: 1000 units at 50 per second
from mHuBERT base (VoxPopuli en/es/fr, layer 11), spoken back by fairseq's unit HiFi-GAN.  It is a
drop-in alternative to SpeechTokenizer: a bundle declares ``"type": "units"`` for its speech
modality and the same ``<sosp>``/``<🗣️k>`` token layout carries unit ids.

Options: ``dedup`` collapses runs of equal units before they reach the LLM (as unit LMs often do);
the vocoder's duration predictor then restores the timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anygpt.audio import AudioError, load_audio, save_wav
from anygpt.checkpoint import missing_file_error
from anygpt.modalities.base import Codes, ModalityError, ModalityTokenizer
from anygpt.modalities.registry import BuildContext, Family, ModalityEntry, register


class UnitsModality(ModalityTokenizer):
    """Speech <-> unit ids ``[B, 1, T]``.

    ``files``: ``hubert`` (a Hugging Face HuBERT folder), ``centroids`` (safetensors; default: inside
    the HuBERT folder), ``vocoder`` (a unit HiFi-GAN folder or fairseq ``g_*`` file).
    """

    name = "speech"
    media_kind = "audio"
    file_suffix = ".wav"

    def __init__(
        self,
        files: dict[str, Path],
        *,
        options: dict | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.files = files
        self.options = dict(options or {})
        self.dedup = bool(self.options.get("dedup", False))
        self.device = torch.device(device)
        self._extractor: Any = None
        self._vocoder: Any = None

    @property
    def extractor(self) -> Any:
        if self._extractor is None:
            from anygpt.models.hubert_units import UnitExtractor

            self._extractor = UnitExtractor.from_pretrained(
                self.files["hubert"], self.files.get("centroids"), device=self.device
            ).eval()
        return self._extractor

    @property
    def vocoder(self) -> Any:
        if self._vocoder is None:
            from anygpt.models.unit_hifigan import load_unit_hifigan

            path = self.files.get("vocoder")
            if path is None or not Path(path).exists():
                raise missing_file_error(
                    path,
                    "unit HiFi-GAN vocoder",
                    "fairseq code_hifigan mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj",
                )
            self._vocoder = load_unit_hifigan(path, device=self.device)
        return self._vocoder

    def unload(self) -> None:
        self._extractor = None
        self._vocoder = None

    @property
    def sample_rate(self) -> int:
        return 16000

    @property
    def frame_rate(self) -> float:
        return 50.0

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (int(self.extractor.num_units),)

    def load(
        self, path: str | Path, *, channels: str | None = None, max_seconds: float | None = None
    ) -> torch.Tensor:
        try:
            return load_audio(
                path,
                self.sample_rate,
                channels=channels or self.channels,
                duration_s=max_seconds,
                min_samples=400,
            )
        except AudioError as exc:
            raise ModalityError(str(exc)) from exc

    def load_voice_prompt(self, path: str | Path) -> torch.Tensor:
        """Unit vocoders have a single voice; a voice prompt is read (so bad files are reported) and ignored."""
        return self.load(path, max_seconds=1.0)

    @torch.inference_mode()
    def encode(self, media: Sequence[torch.Tensor]) -> Codes:
        """Waveforms [T_i] at 16 kHz -> units [B, 1, N] (collapsed runs if ``dedup``)."""
        from anygpt.models.hubert_units import collapse_repeats

        if not media:
            raise ModalityError("no audio to encode")
        units = self.extractor.extract(list(media), self.sample_rate)
        items = []
        for u in units:
            u = u.cpu()
            if self.dedup:
                u, _ = collapse_repeats(u)
            if u.numel() == 0:
                raise ModalityError("the audio is too short to give any speech unit")
            items.append(u.view(1, -1))
        return Codes.from_list(items)

    @torch.inference_mode()
    def decode(self, codes: Codes, **_: Any) -> list[torch.Tensor]:
        """Units [B, 1, T] -> waveforms (one batched vocoder call; durations predicted if ``dedup``)."""
        if any(int(n) == 0 for n in codes.lengths):
            raise ModalityError(
                "no speech units to decode (the model produced an empty speech span)"
            )
        seqs = [c[0] for c in codes.unbatch()]
        wavs = self.vocoder.vocode(seqs, dur_prediction=self.dedup)
        return [w.float().cpu() for w in wavs]

    def save(self, media: torch.Tensor, path: str | Path) -> None:
        save_wav(path, media, self.sample_rate)


def write_tiny_units(
    root: Path, gen: torch.Generator | None = None, definition: dict | None = None
) -> ModalityEntry:
    """A tiny random HuBERT + 1000 centroids + tiny unit vocoder, as a bundle speech entry."""
    from anygpt.layout import ModalityTokens, tokenizer_definition
    from anygpt.models.hubert_units import write_tiny_unit_extractor
    from anygpt.models.unit_hifigan import UNIT_HIFIGAN_TINY, build_unit_hifigan, save_unit_hifigan

    seed = 0 if gen is None else int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    write_tiny_unit_extractor(
        root / "hubert", num_clusters=UNIT_HIFIGAN_TINY.num_embeddings, seed=seed
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vocoder = build_unit_hifigan(UNIT_HIFIGAN_TINY)
    save_unit_hifigan(vocoder, root / "unit_hifigan", UNIT_HIFIGAN_TINY)
    tokens = ModalityTokens.from_dict(tokenizer_definition("mhubert_units")["tokens"])
    return ModalityEntry(
        "units", tokens, {"hubert": "hubert", "vocoder": "unit_hifigan"}, {"dedup": False}
    )


def _build(ctx: BuildContext) -> UnitsModality:
    return UnitsModality(ctx.files, options=ctx.options, device=ctx.device)


register(Family("units", "speech", _build, write_tiny=write_tiny_units))
