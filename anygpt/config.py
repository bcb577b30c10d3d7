"""Typed configuration: decoding settings per output modality.

The JSON files in ``config/`` keep AnyGPT's values.  Which file applies:

* base command line: ``{modality}_generate_config.json`` for image, speech, music (and audio) output,
  ``text_generate_config.json`` otherwise;
* chat command line: the same media files, and ``generate_config.json`` (beam sampling) otherwise;
* SoundStorm's step count is always ``vc_steps`` of ``generate_config.json`` (3): the ``vc_steps`` in
  ``speech_generate_config.json`` was never read by AnyGPT and is kept only for reference.

``min_new_tokens`` is stored but not applied by default: AnyGPT's generation never activated it
(transformers 4.34 builds that processor only when the passed config names an EOS id).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from anygpt.paths import config_dir

LLM_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "do_sample",
    "max_new_tokens",
    "min_new_tokens",
    "repetition_penalty",
    "num_beams",
)

# beyond this the guided log-probabilities overflow float32 and useful scales are below 20
MAX_GUIDANCE = 100.0


@dataclass(frozen=True)
class DecodingConfig:
    """LLM sampling settings for one output modality."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    do_sample: bool = True
    max_new_tokens: int = 100
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    vc_steps: int | None = None  # vocoder setting stored in the same files; not an LLM setting
    apply_min_new_tokens: bool = False
    # classifier-free guidance of text -> media requests (1.0: off); see anygpt.generation.guidance
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        scale = self.guidance_scale
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not 0 < scale <= MAX_GUIDANCE
        ):
            raise ValueError(
                f"guidance_scale must lie in (0, {MAX_GUIDANCE:g}] (1 = off), not {self.guidance_scale}"
            )

    @classmethod
    def from_file(cls, path: str | Path) -> DecodingConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown decoding keys {unknown}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **kw) -> DecodingConfig:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def generation_kwargs(self) -> dict:
        """Arguments for ``transformers.GenerationConfig``."""
        kw = {k: getattr(self, k) for k in LLM_KEYS}
        if not self.apply_min_new_tokens:
            kw["min_new_tokens"] = 0
        if kw["top_k"] is None:
            kw["top_k"] = 0  # 0 disables top-k filtering
        if not self.do_sample:
            kw.pop("temperature"), kw.pop("top_p"), kw.pop("top_k")
        return kw


def decoding_file(output_modality: str | None, chat: bool) -> str:
    """The text config's file name, or ``{modality}_generate_config.json`` for a media output."""
    if output_modality and output_modality != "text":
        return f"{output_modality}_generate_config.json"
    return "generate_config.json" if chat else "text_generate_config.json"


def load_decoding(
    output_modality: str | None, chat: bool, directory: Path | None = None
) -> DecodingConfig:
    """The decoding config for an output modality, from ``directory`` or the project's ``config/``.

    A modality without a config file of its own is decoded with the text settings.
    """
    names = [decoding_file(output_modality, chat)]
    if names[0] != decoding_file(None, chat):
        names.append(decoding_file(None, chat))
    for name in names:
        for d in (directory, config_dir()):
            if d is not None and (Path(d) / name).is_file():
                return DecodingConfig.from_file(Path(d) / name)
    raise FileNotFoundError(f"decoding config {names[0]} not found in {directory or config_dir()}")


def soundstorm_steps(directory: Path | None = None) -> int:
    """SoundStorm passes per level-2 refinement: ``vc_steps`` of ``generate_config.json``."""
    cfg = load_decoding(None, chat=True, directory=directory)
    return int(cfg.vc_steps or 3)
