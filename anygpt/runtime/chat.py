"""Chat sessions: a conversation with the chat model, turn by turn, through the shared engine.

A reply is kept as the ids the model produced: its modality spans are found and decoded from those
ids, its display text and its history text come from them, and nothing is re-tokenized to find out
what the model said.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from anygpt.config import DecodingConfig
from anygpt.modalities.base import ModalityError
from anygpt.prompts import TASK_PROMPTS, Conversation, interleaved_user_message
from anygpt.runtime.engine import Engine, Outcome
from anygpt.runtime.requests import REQUEST_ERRORS, ChatRequest, RequestError, parse_chat_line
from anygpt.video import VIDEO_SUFFIXES


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
        # video files among the pictures are videos (as the chat line's parser sorts them)
        videos = req.videos + [f for f in req.images if f.lower().endswith(VIDEO_SUFFIXES)]
        pictures = [f for f in req.images if not f.lower().endswith(VIDEO_SUFFIXES)]
        images = eng.encode_media("image", pictures) if pictures else []
        music = (
            eng.encode_media("music", req.music, window_s=self.music_window_s) if req.music else []
        )
        speech = eng.encode_media("speech", req.speech) if req.speech else []
        # a clip stands where a picture would: media first, videos before pictures
        images = (eng.encode_media("video", videos) if videos else []) + images
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
        try:
            req = parse_chat_line(line, self.engine.bundle.modality_names)
            turn = self.prepare(req, line)
        except REQUEST_ERRORS as exc:
            return Outcome(line, error=str(exc))
        eng = self.engine
        try:
            new = eng.generate_ids(
                [turn.prompt], turn.decoding, seed=eng.next_seed(), stop_texts=turn.stop_texts
            )[0]
        except REQUEST_ERRORS as exc:
            self.conversation.messages[:] = turn.saved
            return Outcome(line, error=str(exc))
        return self.finish(turn, new)

    def prepare(self, req: ChatRequest, line: str = "") -> PreparedTurn:
        """Encode the user's media, add the message and build the prompt (nothing generated).

        On an error the history is left as it was and the error is raised.
        """
        saved = list(self.conversation.messages)
        eng = self.engine
        try:
            message = self.user_message(req)
            if not message:
                raise RequestError("empty message")
            target = req.to_modality if req.to_modality in eng.bundle.modality_names else None
            cfg = eng.decoding(target, chat=True)
            self.conversation.add_user(message)
            prompt = self._prompt_ids(cfg.max_new_tokens)
        except REQUEST_ERRORS:
            self.conversation.messages[:] = saved
            raise
        return PreparedTurn(
            line, req, prompt, eng.fit([prompt], cfg), eng.stop_texts(chat=True), saved
        )

    def finish(
        self,
        turn: PreparedTurn,
        new: list[int],
        *,
        decode: bool | set[str] = True,
        seed: int | None = None,
    ) -> Outcome:
        """The outcome of generated ids ``new``: history, display text and decoded media.

        ``decode``: decode every modality span (True), none (False), or those named.
        """
        outcome = Outcome(turn.line)
        eng = self.engine
        req = turn.request
        try:
            new = cut_stop_text(new, turn.stop_texts, eng.tokenizer)
            segments = eng.layout.find_segments(new)
            self.conversation.add_assistant(history_text(new, segments, eng.layout))
            by_mod: dict[str, list[list[int]]] = defaultdict(list)
            for seg in segments:
                if decode is True or (decode and seg.modality in decode):
                    by_mod[seg.modality].append(seg.body)
            for modality, bodies in by_mod.items():
                voice = (req.voice_prompt or self.voice) if modality == "speech" else None
                step_seed = eng.next_seed() if seed is None else seed + len(outcome.media)
                try:
                    media, notes = eng.decode_media(
                        modality, bodies, req.text or "reply", voice or None, seed=step_seed
                    )
                except ModalityError as exc:  # the text reply stands; say what was not decoded
                    outcome.notes.append(f"{modality} not decoded: {exc}")
                    continue
                outcome.media += media
                outcome.notes += notes
            outcome.text = display_text(new, segments, eng.layout)
            if not outcome.text.strip() and not segments:
                outcome.notes.append("no reply: the model stayed silent (not addressed)")
        except REQUEST_ERRORS as exc:
            self.conversation.messages[:] = turn.saved
            outcome.error = str(exc)
        return outcome


@dataclass
class PreparedTurn:
    """A chat turn ready to generate: the prompt ids and how to decode them."""

    line: str
    request: ChatRequest
    prompt: list[int]
    decoding: DecodingConfig
    stop_texts: tuple[str, ...]
    saved: list[tuple[str, str]]


def cut_stop_text(ids: list[int], stop_texts: tuple[str, ...], tokenizer) -> list[int]:
    """``ids`` up to a plain-text end marker: the longest prefix decoding to text before it."""
    if not stop_texts or not ids:
        return ids
    text = tokenizer.decode(ids)
    found = [text.index(t) for t in stop_texts if t in text]
    if not found:
        return ids
    before = text[: min(found)]
    keep = len(ids)
    while keep > 0 and not before.startswith(tokenizer.decode(ids[:keep])):
        keep -= 1
    return ids[:keep]


def history_text(ids: list[int], segments, layout) -> str:
    """The reply as the history keeps it: a span the reply left open is closed with its end tag."""
    text = layout.tokenizer.decode(ids).strip()
    if segments and segments[-1].end is None:
        return text + layout.spec(segments[-1].modality).end_tag
    return text


def close_open_span(reply: str, layout) -> str:
    """Append the end tag of a modality span a reply string left open."""
    segs = layout.find_segments(layout.tokenizer.encode(reply, add_bos=False))
    if segs and segs[-1].end is None:
        return reply + layout.spec(segs[-1].modality).end_tag
    return reply


def display_text(ids: list[int], segments, layout) -> str:
    """Reply text with each modality span shown as ``[speech]``, ``[image]``, ..."""
    if not segments:
        return layout.tokenizer.decode(ids).strip()
    out, pos = [], 0
    for s in segments:
        out.append(layout.tokenizer.decode(ids[pos : s.start]))
        out.append(f"[{s.modality}]")
        pos = (s.end + 1) if s.end is not None else len(ids)
    out.append(layout.tokenizer.decode(ids[pos:]))
    return "".join(out).strip()
