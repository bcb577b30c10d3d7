"""Inference for the base model (single-turn instructions) and the chat model (conversations).

Requests are parsed from AnyGPT's pipe syntax, media are encoded in batches per modality, prompts
of the same output modality are generated together, and outputs are decoded from token ids (never
from decoded text) and written atomically to safe, unique file names.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anygpt.audio import AudioError
from anygpt.bundle import Bundle
from anygpt.checkpoint import CheckpointError
from anygpt.config import DecodingConfig
from anygpt.generation import generate
from anygpt.layout import LayoutError
from anygpt.modalities.base import Codes, ModalityError
from anygpt.outputs import unique_path, write_atomic
from anygpt.prompts import (
    T2X,
    TASK_PROMPTS,
    X2T,
    Conversation,
    base_t2x_prompt,
    base_x2t_prompt,
    choose_instruction,
    interleaved_user_message,
)
from anygpt.text_tokenizer import TextTokenizerError

# Errors that concern one request: reported on one line, the rest of the batch goes on.
REQUEST_ERRORS = (
    ModalityError,
    AudioError,
    LayoutError,
    CheckpointError,
    TextTokenizerError,
    ValueError,
    FileNotFoundError,
    OSError,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class RequestError(ValueError):
    """A malformed request line."""


@dataclass
class BaseRequest:
    """One base-model instruction: ``source|target|content[|voice_prompt]``."""

    source: str
    target: str
    content: str
    voice_prompt: str | None = None

    @property
    def direction(self) -> str:
        return X2T if self.target == "text" else T2X


@dataclass
class Outcome:
    """What one request produced: text, files, notes, or an error line."""

    request: str
    text: str | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def split_fields(line: str) -> list[str]:
    """Split on ``|``; ``\\|`` stands for a literal bar inside a field."""
    parts, buf, i = [], [], 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] == "|":
            buf.append("|")
            i += 2
            continue
        if ch == "|":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def parse_base_line(line: str, modalities: list[str]) -> BaseRequest:
    """Parse ``source|target|content[|voice_prompt]`` (AnyGPT's base command-line syntax)."""
    fields = split_fields(line.strip())
    if len(fields) < 3:
        raise RequestError(
            "expected 'source|target|content', e.g. 'text|image|a cat' or 'speech|text|question.wav'"
        )
    source, target = fields[0].strip().lower(), fields[1].strip().lower()
    rest = fields[2:]
    voice = None
    if (
        source == "text"
        and target == "speech"
        and len(rest) >= 2
        and rest[-1].strip().lower().endswith(AUDIO_SUFFIXES)
    ):
        voice = rest.pop().strip()
    content = "|".join(rest)
    known = ["text", *modalities]
    for name in (source, target):
        if name not in known:
            raise RequestError(f"unknown modality '{name}'; this model knows: {', '.join(known)}")
    if (source == "text") == (target == "text"):
        raise RequestError(f"'{source}|{target}' is not supported: exactly one side must be text")
    if source != "text":
        content = content.strip()  # a path
    if not content.strip():
        raise RequestError("the content field is empty")
    if voice is not None and not voice:
        voice = None
    return BaseRequest(source, target, content, voice)


class Engine:
    """Runs requests against a :class:`~anygpt.bundle.Bundle`.

    Args:
        bundle: the model.
        output_dir: where media outputs are written.
        seed: makes instruction choice, sampling and vocoding reproducible.
        batch_size: prompts generated together.
        max_new_tokens: overrides the decoding config's limit.
        instruction: a fixed instruction instead of a random one from AnyGPT's lists.
    """

    def __init__(
        self,
        bundle: Bundle,
        output_dir: str | Path,
        *,
        seed: int | None = None,
        batch_size: int = 16,
        max_new_tokens: int | None = None,
        instruction: str | None = None,
    ) -> None:
        self.bundle = bundle
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.rng = random.Random(seed)
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.instruction = instruction
        self._calls = 0

    # ------------------------------------------------------------------ helpers
    @property
    def tokenizer(self):
        return self.bundle.tokenizer

    @property
    def layout(self):
        return self.bundle.layout

    def _next_seed(self) -> int | None:
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

    def _decoding(self, target: str | None, chat: bool) -> DecodingConfig:
        cfg = self.bundle.decoding(target, chat)
        return cfg.with_overrides(max_new_tokens=self.max_new_tokens)

    def _fit(self, prompts: list[list[int]], cfg: DecodingConfig) -> DecodingConfig:
        room = self.bundle.config.max_context - max(len(p) for p in prompts)
        return cfg.with_overrides(max_new_tokens=max(1, min(cfg.max_new_tokens, room)))

    def check_length(self, ids: list[int]) -> None:
        limit = self.bundle.config.max_context
        if len(ids) >= limit:
            raise RequestError(f"the prompt is {len(ids)} tokens; the model's context is {limit}")

    def encode_media(self, modality: str, paths: list[str], **load_kw: Any) -> list[str]:
        """Load and encode media files (one batch), returning their segment strings."""
        tok = self.bundle.modality(modality)
        media = [tok.load(p, **load_kw) for p in paths]
        codes = tok.encode(media)
        return [self.layout.segment_text(modality, c) for c in codes.unbatch()]

    def forced_start(self, modality: str) -> list[int]:
        """Ids of ``" <start tag>"`` as they follow ``[MMGPT]:`` in AnyGPT's training data."""
        ids = self.tokenizer.encode(": " + self.layout.spec(modality).start_tag, add_bos=False)
        colon = self.tokenizer.encode(":", add_bos=False)
        return ids[len(colon) :]

    def decode_segments(
        self,
        modality: str,
        bodies: list[list[int]],
        text: str,
        voice_prompt: str | None = None,
        seed: int | None = None,
    ) -> tuple[list[Path], list[str]]:
        """Decode code spans of one modality and write them; returns (files, notes)."""
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
        tok = self.bundle.modality(modality)
        kw: dict[str, Any] = {}
        if voice_prompt is not None:
            kw["voice_prompt"] = tok.load_voice_prompt(voice_prompt)  # type: ignore[attr-defined]
        if seed is not None:
            kw["generator"] = self._generator(seed)
        media = tok.decode(Codes.from_list(items), **kw)
        files = []
        for m in media:
            path = unique_path(self.output_dir, text, modality, tok.file_suffix)
            files.append(write_atomic(path, lambda p, m=m: tok.save(m, p)))
        return files, notes

    # ------------------------------------------------------------------ base model
    def run_base(self, lines: list[str]) -> list[Outcome]:
        """Run base-model request lines; bad lines give an error outcome, the rest go on."""
        outcomes = [Outcome(line) for line in lines]
        requests: dict[int, BaseRequest] = {}
        for i, line in enumerate(lines):
            try:
                requests[i] = parse_base_line(line, self.bundle.modality_names)
            except REQUEST_ERRORS as exc:
                outcomes[i].error = str(exc)
        # encode media inputs, one batch per modality
        segments: dict[int, str] = {}
        by_modality: dict[str, list[int]] = defaultdict(list)
        for i, req in requests.items():
            if req.source != "text":
                by_modality[req.source].append(i)
        for modality, idx in by_modality.items():
            tok = self.bundle.modality(modality)
            loaded: dict[int, Any] = {}
            for i in idx:  # load one by one so one bad file fails only its own request
                try:
                    loaded[i] = tok.load(requests[i].content)
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
        # prompts
        prompts: dict[int, list[int]] = {}
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
            try:
                self.check_length(ids)
                prompts[i] = ids
            except RequestError as exc:
                outcomes[i].error = str(exc)
        # generate per output modality, in batches
        by_target: dict[str, list[int]] = defaultdict(list)
        for i in prompts:
            by_target[requests[i].target].append(i)
        for target, idx in by_target.items():
            cfg = self._decoding(None if target == "text" else target, chat=False)
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                batch = [prompts[i] for i in chunk]
                new = generate(
                    self.bundle.llm,
                    self.layout,
                    batch,
                    self._fit(batch, cfg),
                    stop_ids=self.stop_ids(),
                    seed=self._next_seed(),
                )
                for i, ids in zip(chunk, new, strict=True):
                    self._finish_base(requests[i], outcomes[i], ids)
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
            files, notes = self.decode_segments(
                req.target, bodies, req.content, req.voice_prompt, seed=self._next_seed()
            )
            outcome.files += files
            outcome.notes += notes
        except REQUEST_ERRORS as exc:
            outcome.error = str(exc)


# ---------------------------------------------------------------------- chat model
@dataclass
class ChatRequest:
    """One chat turn in AnyGPT's ``task|text|to_modality|voice|images|speech|music`` form."""

    task: str
    text: str
    to_modality: str = ""
    voice_prompt: str = ""
    images: list[str] = field(default_factory=list)
    speech: list[str] = field(default_factory=list)
    music: list[str] = field(default_factory=list)


def _files(field_text: str) -> list[str]:
    return [p.strip() for p in field_text.split(",") if p.strip()]


def parse_chat_line(line: str) -> ChatRequest:
    """Parse a chat line.  A line without ``|`` is plain text.

    Field order follows AnyGPT's chat code (voice prompt before images).  AnyGPT's README swaps
    those two; when the file types make it unambiguous (an image where the voice prompt should be),
    the README order is accepted too.
    """
    if "|" not in line:
        return ChatRequest("interleaved", line.strip())
    f = [x.strip() for x in split_fields(line)] + [""] * 7
    task, text, to_mod, voice, images, speech, music = f[:7]
    if voice.lower().endswith(IMAGE_SUFFIXES) and (
        not images or images.lower().endswith(AUDIO_SUFFIXES)
    ):
        voice, images = images, voice
    if to_mod and to_mod.lower() not in ("text", "image", "speech", "music", "audio"):
        raise RequestError(f"unknown output modality '{to_mod}'")
    return ChatRequest(
        task or "interleaved",
        text,
        to_mod.lower(),
        voice,
        _files(images),
        _files(speech),
        _files(music),
    )


class ChatSession:
    """A conversation with the chat model; keeps the history within the model's context.

    Args:
        engine: the engine (bundle, output folder, seed).
        voice: default voice prompt for speech replies.
        music_window_s: seconds of input music encoded (AnyGPT's chat uses 5).
    """

    def __init__(
        self, engine: Engine, *, voice: str | None = None, music_window_s: float = 5.0
    ) -> None:
        self.engine = engine
        self.voice = voice
        self.music_window_s = music_window_s
        self.conversation = Conversation(engine.bundle.template)

    def clear(self) -> None:
        self.conversation.clear()

    def user_message(self, req: ChatRequest) -> str:
        eng = self.engine
        images = eng.encode_media("image", req.images) if req.images else []
        music = (
            eng.encode_media("music", req.music, window_s=self.music_window_s) if req.music else []
        )
        speech = eng.encode_media("speech", req.speech) if req.speech else []
        if req.task == "interleaved" or req.task not in TASK_PROMPTS:
            return interleaved_user_message(req.text, images, music, speech)
        values: dict[str, str] = defaultdict(
            str,
            text=req.text,
            caption=req.text,
            question=req.text,
            instruction=req.text,
            text_input=req.text,
        )
        values.update(
            image=" ".join(images),
            image1=images[0] if images else "",
            image2=images[1] if len(images) > 1 else "",
            speech=" ".join(speech),
            music=" ".join(music),
        )
        return TASK_PROMPTS[req.task].format_map(values).strip()

    def _prompt_ids(self, max_new: int) -> list[int]:
        """Render and tokenize, dropping the oldest turns while the prompt does not fit."""
        tok = self.engine.tokenizer
        limit = self.engine.bundle.config.max_context
        while True:
            ids = tok.encode(self.conversation.render())
            if len(ids) + min(max_new, 64) <= limit or len(self.conversation.messages) <= 1:
                break
            del self.conversation.messages[:2]
        self.engine.check_length(ids)
        return ids

    def turn(self, line: str) -> Outcome:
        """Handle one user line; the history changes only if the turn succeeds."""
        outcome = Outcome(line)
        saved = list(self.conversation.messages)
        try:
            req = parse_chat_line(line)
            message = self.user_message(req)
            if not message:
                raise RequestError("empty message")
            eng = self.engine
            target = (
                req.to_modality
                if req.to_modality in ("image", "speech", "music", "audio")
                else None
            )
            cfg = eng._decoding(target, chat=True)
            self.conversation.add_user(message)
            prompt = self._prompt_ids(cfg.max_new_tokens)
            new = generate(
                eng.bundle.llm,
                eng.layout,
                [prompt],
                eng._fit([prompt], cfg),
                stop_ids=eng.stop_ids(),
                seed=eng._next_seed(),
            )[0]
            reply = eng.tokenizer.decode(new).strip()
            self.conversation.add_assistant(close_open_span(reply, eng.layout))
            by_mod: dict[str, list[list[int]]] = defaultdict(list)
            for seg in eng.layout.find_segments(new):
                by_mod[seg.modality].append(seg.body)
            for modality, bodies in by_mod.items():
                voice = (req.voice_prompt or self.voice) if modality == "speech" else None
                try:
                    files, notes = eng.decode_segments(
                        modality, bodies, req.text or "reply", voice or None, seed=eng._next_seed()
                    )
                except ModalityError as exc:  # the text reply stands; say what was not decoded
                    outcome.notes.append(f"{modality} not decoded: {exc}")
                    continue
                outcome.files += files
                outcome.notes += notes
            outcome.text = display_text(reply, eng.layout)
        except REQUEST_ERRORS as exc:
            self.conversation.messages[:] = saved
            outcome.error = str(exc)
        return outcome


def close_open_span(reply: str, layout) -> str:
    """Append the end tag of a modality span the reply left open (kept that way in the history)."""
    segs = layout.find_segments(layout.tokenizer.encode(reply, add_bos=False))
    if segs and segs[-1].end is None:
        return reply + layout.spec(segs[-1].modality).end_tag
    return reply


def display_text(reply: str, layout) -> str:
    """Reply text with each modality span shown as ``[speech]``, ``[image]``, ..."""
    ids = layout.tokenizer.encode(reply, add_bos=False)
    segs = layout.find_segments(ids)
    if not segs:
        return reply
    out, pos = [], 0
    for s in segs:
        out.append(layout.tokenizer.decode(ids[pos : s.start]))
        out.append(f"[{s.modality}]")
        pos = (s.end + 1) if s.end is not None else len(ids)
    out.append(layout.tokenizer.decode(ids[pos:]))
    return "".join(out).strip()
