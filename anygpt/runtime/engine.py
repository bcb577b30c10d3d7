"""The inference engine: one pipeline for every front end (command lines, the Python API, servers).

Media inputs are encoded in batches per modality, prompts of the same output modality are generated
together, and outputs are decoded from token ids (never from decoded text) into :class:`Media`
objects.  The engine writes nothing: a sink (:class:`~anygpt.runtime.media.FileSink` for the
command lines) decides where media go.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anygpt.bundle import Bundle
from anygpt.config import DecodingConfig
from anygpt.generation import generate
from anygpt.generation.guidance import guided_generate
from anygpt.modalities.base import Codes, ModalityError
from anygpt.prompts import X2T, base_t2x_prompt, base_x2t_prompt, choose_instruction
from anygpt.runtime.limits import check_input_length, crop_options
from anygpt.runtime.media import Media
from anygpt.runtime.requests import REQUEST_ERRORS, BaseRequest, RequestError, parse_base_line

# Called after every generation step with the new ids so far, [B, t] (for streaming front ends).
TokenHook = Callable[[torch.Tensor], None]


@dataclass
class Outcome:
    """What one request produced: text, media, notes, or an error line.

    ``files`` is filled by a sink that writes the media (the command lines' ``FileSink``).
    """

    request: str
    text: str | None = None
    media: list[Media] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Engine:
    """Runs requests against a :class:`~anygpt.bundle.Bundle`.

    Args:
        bundle: the model.
        seed: makes instruction choice, sampling and vocoding reproducible.
        batch_size: prompts generated together.
        max_new_tokens: overrides the decoding config's limit.
        instruction: a fixed instruction instead of a random one from AnyGPT's lists.
        guidance_scale: overrides the decoding configs' classifier-free guidance of text -> media
            requests (1: off).
        on_token: called after each generation step with the new ids so far ``[B, t]``.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        seed: int | None = None,
        batch_size: int = 16,
        max_new_tokens: int | None = None,
        instruction: str | None = None,
        guidance_scale: float | None = None,
        on_token: TokenHook | None = None,
    ) -> None:
        self.bundle = bundle
        self.on_token = on_token
        self.seed = seed
        self.rng = random.Random(seed)
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.instruction = instruction
        self.guidance_scale = guidance_scale
        # The LLM stage: ``None`` runs :func:`anygpt.generation.generate` on the bundle's LLM; a
        # server may set another backend (same call, see :meth:`generate_ids`).
        self.backend: Any = None
        # Extra options of the built-in loop, e.g. per-span configs and a repetition guard:
        # ``{"span_decoding": span_configs(bundle, chat=True), "guard": RepetitionGuard()}``
        # (see :mod:`anygpt.runtime.scheduler`); off by default, keeping AnyGPT's decoding.
        self.generate_options: dict[str, Any] = {}
        # read only the first seconds of audio inputs (None: the tokenizer's own window)
        self.max_input_seconds: float | None = None
        self._calls = 0

    # ------------------------------------------------------------------ helpers
    @property
    def tokenizer(self):
        return self.bundle.tokenizer

    @property
    def layout(self):
        return self.bundle.layout

    def next_seed(self) -> int | None:
        """The seed of the next random step (``None`` when the engine is unseeded)."""
        self._calls += 1
        return None if self.seed is None else self.seed + 1000 * self._calls

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        g = torch.Generator(device=self.bundle.device)
        g.manual_seed(seed)
        return g

    def stop_ids(self) -> list[int]:
        return [self.tokenizer.eos_id, self.layout.eos_tag_id]

    def stop_texts(self, chat: bool) -> tuple[str, ...]:
        """Turn-end markers that are plain text, not one token (``<eom>`` of AnyGPT's template)."""
        end = self.bundle.template.assistant_end
        return (end,) if chat and not self.tokenizer.has_token(end) else ()

    def decoding(self, target: str | None, chat: bool) -> DecodingConfig:
        """The decoding config for an output modality (``None``: text), with engine overrides."""
        if target is not None and target not in self.bundle.modality_names:
            target = None
        cfg = self.bundle.decoding(target, chat)
        guidance = self.guidance_scale if target is not None else None
        return cfg.with_overrides(max_new_tokens=self.max_new_tokens, guidance_scale=guidance)

    def fit(self, prompts: list[list[int]], cfg: DecodingConfig) -> DecodingConfig:
        """``cfg`` with ``max_new_tokens`` cut to what the context leaves after the prompts."""
        room = self.bundle.config.max_context - max(len(p) for p in prompts)
        return cfg.with_overrides(max_new_tokens=max(1, min(cfg.max_new_tokens, room)))

    def generate_ids(
        self,
        prompts: list[list[int]],
        cfg: DecodingConfig,
        *,
        seed: int | None = None,
        stop_texts: tuple[str, ...] = (),
        on_step: TokenHook | None = None,
    ) -> list[list[int]]:
        """New ids per prompt (cut before the first stop id), through :attr:`backend` if set.

        ``on_step`` (default: the engine's ``on_token``) gets the new ids so far ``[B, t]``.
        """
        kwargs = dict(
            stop_ids=self.stop_ids(),
            seed=seed,
            stop_texts=stop_texts,
            on_step=on_step or self.on_token,
        )
        if self.backend is not None:
            return self.backend.generate(prompts, cfg, **kwargs)
        return generate(
            self.bundle.llm, self.layout, prompts, cfg, **kwargs, **self.generate_options
        )

    def guided(self, target: str, cfg: DecodingConfig) -> bool:
        """Whether text -> ``target`` requests use classifier-free guidance: the config asks for
        it and the LLM is the bundle's own (another backend decodes unguided)."""
        return target != "text" and cfg.guidance_scale != 1.0 and self.backend is None

    def generate_guided(
        self,
        prompts: list[list[int]],
        twins: list[list[int]],
        cfg: DecodingConfig,
        seed: int | None,
    ) -> list[list[int]]:
        """New ids per prompt with classifier-free guidance against ``twins`` (each prompt without
        its text), see :mod:`anygpt.generation.guidance`."""
        return guided_generate(
            self.bundle.llm,
            self.layout,
            prompts,
            twins,
            cfg,
            scale=cfg.guidance_scale,
            stop_ids=self.stop_ids(),
            seed=seed,
            on_step=self.on_token,
        )

    def check_length(self, ids: list[int]) -> None:
        limit = self.bundle.config.max_context
        if len(ids) >= limit:
            raise RequestError(f"the prompt is {len(ids)} tokens; the model's context is {limit}")

    def encode_media(self, modality: str, paths: list[str], **load_kw: Any) -> list[str]:
        """Load and encode media files (one batch), returning their segment strings."""
        if modality == "video":
            return self.bundle.video.encode(paths, max_seconds=self.max_input_seconds)
        tok = self.bundle.modality(modality, checked=True)
        load_kw = {**crop_options(tok, self.max_input_seconds), **load_kw}
        crop = load_kw.get("max_seconds", load_kw.get("window_s"))
        for p in paths:  # from the headers, before anything is decoded
            check_input_length(self.bundle, modality, p, crop)
        media = [tok.load(p, **load_kw) for p in paths]
        codes = tok.encode(media)
        return [self.layout.segment_text(modality, c) for c in codes.unbatch()]

    def forced_start(self, modality: str) -> list[int]:
        """Ids of ``" <start tag>"`` as they follow ``[MMGPT]:`` in AnyGPT's training data."""
        ids = self.tokenizer.encode(": " + self.layout.spec(modality).start_tag, add_bos=False)
        colon = self.tokenizer.encode(":", add_bos=False)
        return ids[len(colon) :]

    def decode_media(
        self,
        modality: str,
        bodies: list[list[int]],
        label: str,
        voice_prompt: str | None = None,
        seed: int | None = None,
    ) -> tuple[list[Media], list[str]]:
        """Decode code spans (token ids between the tags) of one modality; returns (media, notes)."""
        notes: list[str] = []
        spec = self.layout.spec(modality)
        items = []
        for body in bodies:
            parsed = self.layout.codes_from_ids(modality, body)
            if parsed.dropped_tokens:
                notes.append(f"{parsed.dropped_tokens} malformed {modality} tokens dropped")
            codes = parsed.codes
            if codes.shape[1] == 0:
                raise ModalityError(f"the model produced no {modality} codes")
            if spec.fixed_length and codes.shape[1] != spec.fixed_length:
                notes.append(
                    f"{modality} had {codes.shape[1]} codes; padded/truncated to {spec.fixed_length}"
                )
                reps = spec.fixed_length - codes.shape[1]
                codes = (
                    torch.cat([codes, codes[:, -1:].expand(-1, reps)], dim=1)
                    if reps > 0
                    else codes[:, : spec.fixed_length]
                )
            items.append(codes)
        tok = self.bundle.modality(modality, checked=True)
        kw: dict[str, Any] = {}
        if voice_prompt is not None:
            kw["voice_prompt"] = tok.load_voice_prompt(voice_prompt)  # type: ignore[attr-defined]
        if seed is not None:
            kw["generator"] = self._generator(seed)
        decoded = tok.decode(Codes.from_list(items), **kw)
        rate = tok.sample_rate if tok.media_kind == "audio" else None
        return [Media(modality, m, rate, tok.file_suffix, label) for m in decoded], notes

    def reconstruct(
        self, modality: str, path: str, label: str | None = None
    ) -> tuple[Codes, list[Media]]:
        """Round-trip one file through its modality tokenizer: its codes (batch of one) and the
        media decoded from them as they would stand between the tags, which is the best the LLM
        can reproduce."""
        tok = self.bundle.modality(modality, checked=True)
        codes = tok.encode([tok.load(path)])
        ids = self.layout.segment_ids(modality, codes.unbatch()[0])
        media, _ = self.decode_media(
            modality, [ids[1:-1]], label or Path(path).stem, seed=self.next_seed()
        )
        return codes, media

    # ------------------------------------------------------------------ public shortcuts
    def base(self, *lines: str) -> list[Outcome]:
        """Run base-model request lines (``"text|image|a red circle"``, ...)."""
        return self.run_base(list(lines))

    def chat(self, *, voice: str | None = None):
        """A new :class:`~anygpt.runtime.chat.ChatSession` on this engine."""
        from anygpt.runtime.chat import ChatSession

        return ChatSession(self, voice=voice)

    # ------------------------------------------------------------------ base model
    def run_base(
        self, lines: list[str], on_outcome: Callable[[Outcome], None] | None = None
    ) -> list[Outcome]:
        """Run base-model request lines; bad lines give an error outcome, the rest go on.

        ``on_outcome`` is called with each outcome as soon as it is complete (failed requests
        first, then each generation batch), so a failure late in a run loses nothing made before.
        """
        outcomes = [Outcome(line) for line in lines]
        requests: dict[int, BaseRequest] = {}
        for i, line in enumerate(lines):
            try:
                requests[i] = parse_base_line(line, self.bundle.input_modalities)
                if requests[i].target == "video":
                    del requests[i]
                    raise RequestError(
                        "video is an input only: models read video, they do not make it"
                    )
            except REQUEST_ERRORS as exc:
                outcomes[i].error = str(exc)
        # encode media inputs, one batch per modality
        segments: dict[int, str] = {}
        by_modality: dict[str, list[int]] = defaultdict(list)
        for i, req in requests.items():
            if req.source != "text":
                by_modality[req.source].append(i)
        for i in by_modality.pop("video", []):  # frames and soundtrack, see VideoEncoder
            try:
                segments[i] = self.encode_media("video", [requests[i].content])[0]
            except REQUEST_ERRORS as exc:
                outcomes[i].error = str(exc)
        for modality, idx in by_modality.items():
            tok = self.bundle.modality(modality, checked=True)
            loaded: dict[int, Any] = {}
            for i in idx:  # load one by one so one bad file fails only its own request
                try:
                    path, crop = requests[i].content, self.max_input_seconds
                    check_input_length(self.bundle, modality, path, crop)  # header only
                    loaded[i] = tok.load(path, **crop_options(tok, crop))
                except REQUEST_ERRORS as exc:
                    outcomes[i].error = str(exc)
            if not loaded:
                continue
            try:
                codes = tok.encode(list(loaded.values())).unbatch()
                for i, c in zip(loaded, codes, strict=True):
                    segments[i] = self.layout.segment_text(modality, c)
            except REQUEST_ERRORS as exc:
                for i in loaded:
                    outcomes[i].error = str(exc)
        # prompts (and, for guided text -> media, each one's twin without the text)
        prompts: dict[int, list[int]] = {}
        twins: dict[int, list[int]] = {}
        for i, req in requests.items():
            if outcomes[i].error:
                continue
            modality = req.source if req.direction == X2T else req.target
            instruction = self.instruction or choose_instruction(req.direction, modality, self.rng)
            if req.direction == X2T:
                text = base_x2t_prompt(instruction, segments[i])
                ids = self.tokenizer.encode(text)
            else:
                ids = self.tokenizer.encode(base_t2x_prompt(instruction, req.content))
                ids += self.forced_start(req.target)
                twins[i] = self.tokenizer.encode(base_t2x_prompt(instruction, ""))
                twins[i] += self.forced_start(req.target)
            try:
                self.check_length(ids)
                prompts[i] = ids
            except RequestError as exc:
                outcomes[i].error = str(exc)
        done = on_outcome or (lambda _o: None)
        for i, o in enumerate(outcomes):
            if i not in prompts:
                done(o)
        # generate per output modality, in batches
        by_target: dict[str, list[int]] = defaultdict(list)
        for i in prompts:
            by_target[requests[i].target].append(i)
        for target, idx in by_target.items():
            try:
                cfg = self.decoding(None if target == "text" else target, chat=False)
            except (OSError, ValueError) as exc:  # a malformed decoding config fails its requests
                for i in idx:
                    outcomes[i].error = f"decoding config: {exc}"
                    done(outcomes[i])
                continue
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                batch = [prompts[i] for i in chunk]
                if self.guided(target, cfg):
                    new = self.generate_guided(
                        batch, [twins[i] for i in chunk], self.fit(batch, cfg), self.next_seed()
                    )
                else:
                    new = self.generate_ids(batch, self.fit(batch, cfg), seed=self.next_seed())
                for i, ids in zip(chunk, new, strict=True):
                    self._finish_base(requests[i], outcomes[i], ids)
                    done(outcomes[i])
        return outcomes

    def _finish_base(self, req: BaseRequest, outcome: Outcome, new_ids: list[int]) -> None:
        try:
            if req.target == "text":
                outcome.text = self.tokenizer.decode(new_ids).strip()
                return
            ids = self.forced_start(req.target) + new_ids
            bodies = [s.body for s in self.layout.find_segments(ids) if s.modality == req.target][
                :1
            ]
            if not bodies:
                raise ModalityError(f"the model produced no {req.target} output")
            media, notes = self.decode_media(
                req.target, bodies, req.content, req.voice_prompt, seed=self.next_seed()
            )
            outcome.media += media
            outcome.notes += notes
        except REQUEST_ERRORS as exc:
            outcome.error = str(exc)
