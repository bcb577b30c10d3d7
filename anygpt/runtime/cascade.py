"""Cascaded spoken chat: speech -> text (ASR) -> a text reply (the chat model) -> speech (TTS).

The opposite of end-to-end spoken chat, where the chat model itself reads speech codes and writes
them.  Each stage is an :class:`~anygpt.runtime.engine.Engine`: by default all three are the same
bundle (its base model's speech -> text and text -> speech abilities, its chat model for the
reply); a bundle whose LLM has no speech can borrow another bundle's ASR and TTS.

The reply is spoken sentence by sentence: while the chat model generates, every sentence that is
complete is synthesised at once, so the first audio exists after the first sentence, not after the
whole reply.  A reply with no sentence end is spoken when it ends; an empty reply speaks nothing.
Everything runs on the caller's thread (the engines are not thread-safe).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from anygpt.runtime.chat import ChatSession, PreparedTurn, cut_stop_text, display_text
from anygpt.runtime.engine import Engine, Outcome
from anygpt.runtime.media import Media
from anygpt.runtime.requests import REQUEST_ERRORS, ChatRequest, RequestError

# A sentence ends at . ! ? (or several, or with closing quotes) followed by white space; at the end
# of a reply whatever is left is the last sentence.
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")

# Called with each spoken sentence: (its text, its waveform [S] as float32, its sample rate).
OnAudio = Callable[[str, torch.Tensor, int], None]
# Called with the reply text so far, each time it grows.
OnText = Callable[[str], None]


def split_sentences(text: str, final: bool) -> tuple[list[str], str]:
    """Complete sentences of ``text`` and the unfinished rest (empty when ``final``)."""
    out, pos = [], 0
    for m in SENTENCE_END.finditer(text):
        s = text[pos : m.end()].strip()
        if s:
            out.append(s)
        pos = m.end()
    rest = text[pos:]
    if final:
        if rest.strip():
            out.append(rest.strip())
        rest = ""
    return out, rest


def plain_text(text: str) -> str:
    """Reply text without the ``[speech]``/``[image]`` placeholders of modality spans."""
    return " ".join(re.sub(r"\[(speech|image|music|audio)\]", " ", text).split())


@dataclass
class CascadeResult:
    """What a cascaded turn made: the outcome (text, one waveform [S] of all sentences), the words
    heard, the sentences spoken and the reply's ids."""

    outcome: Outcome
    transcript: str = ""
    sentences: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # the chat model's reply ids
    turn: PreparedTurn | None = None


class Cascade:
    """ASR -> chat model -> sentence-by-sentence TTS over engines.

    Args:
        engine: the chat model's engine (its ChatSession holds the conversation).
        asr: the engine whose base model transcribes speech (default: ``engine``).
        tts: the engine whose base model speaks the reply (default: ``engine``).
    """

    def __init__(self, engine: Engine, *, asr: Engine | None = None, tts: Engine | None = None):
        self.engine = engine
        self.asr = asr or engine
        self.tts = tts or engine
        for what, eng, modality in (("ASR", self.asr, "speech"), ("TTS", self.tts, "speech")):
            if modality not in eng.bundle.modality_names:
                raise ValueError(
                    f"the {what} bundle {eng.bundle.root} has no speech modality "
                    f"(name a bundle with speech: --{what.lower()}-model)"
                )

    # ------------------------------------------------------------------ stages
    def transcribe(self, paths: list[str]) -> str:
        """Speech files -> their words, joined (ASR through the base model's speech -> text)."""
        words = []
        for o in self.asr.run_base([f"speech|text|{escape(p)}" for p in paths]):
            if not o.ok:
                raise RequestError(f"speech input: {o.error}")
            words.append(plain_text(o.text or ""))
        return " ".join(w for w in words if w)

    def speak(self, sentence: str, voice: str | None) -> Media:
        """One sentence -> a speech :class:`Media` (TTS through the base model's text -> speech)."""
        line = f"text|speech|{escape(sentence)}" + (f"|{escape(voice)}" if voice else "")
        o = self.tts.run_base([line])[0]
        if not o.ok or not o.media:
            raise RequestError(f"speaking '{sentence[:40]}': {o.error or 'no speech'}")
        return o.media[0]

    # ------------------------------------------------------------------ a turn
    def text_request(self, req: ChatRequest) -> tuple[ChatRequest, str]:
        """The request with its speech replaced by the ASR transcript, asking for a text reply."""
        transcript = self.transcribe(req.speech) if req.speech else ""
        if req.speech and not transcript and not req.text.strip():
            raise RequestError("no words were recognised in the speech input")
        text = " ".join(t for t in (req.text.strip(), transcript) if t)
        return dataclasses.replace(req, text=text, to_modality="", speech=[]), transcript

    def turn(
        self,
        session: ChatSession,
        req: ChatRequest,
        *,
        speak: bool = True,
        on_text: OnText | None = None,
        on_audio: OnAudio | None = None,
        should_stop: Callable[[], bool] | None = None,
        decoding: dict | None = None,
    ) -> CascadeResult:
        """One cascaded turn on ``session`` (whose engine must be :attr:`engine`).

        ``speak``: synthesise the reply (else text only, as a text turn after ASR).  ``on_audio``
        gets each sentence's waveform as soon as it is synthesised, while the reply is still
        being generated.  ``should_stop`` is polled each step (a true answer raises
        ``RequestError('cancelled')``).  ``decoding``: overrides of the reply's decoding config
        (``max_new_tokens``, ``temperature``, ...).  Errors become ``outcome.error``; the conversation
        changes only when the turn succeeds.
        """
        result = CascadeResult(Outcome(req.text or "speech"))
        voice = req.voice_prompt or session.voice
        eng = self.engine
        try:
            text_req, result.transcript = self.text_request(req)
            turn = session.prepare(text_req)
            if decoding:
                turn.decoding = eng.fit([turn.prompt], turn.decoding.with_overrides(**decoding))
            if speak and turn.decoding.num_beams > 1:
                # sentences are spoken while the reply is written; a beam search's reply is
                # known only at its end
                turn.decoding = turn.decoding.with_overrides(num_beams=1)
        except REQUEST_ERRORS as exc:
            result.outcome.error = str(exc)
            return result
        result.turn = turn
        pieces: list[torch.Tensor] = []
        rate, reply, unspoken = 0, "", []
        state = {"said": "", "rest_from": 0}

        def say(sentences: list[str]) -> None:
            nonlocal rate
            for s in sentences:
                try:
                    media = self.speak(s, voice)
                except REQUEST_ERRORS as exc:  # the text stands; say which sentence is silent
                    unspoken.append(f"not spoken: {exc}")
                    continue
                wave = torch.as_tensor(media.numpy()).reshape(-1).float()
                rate = media.sample_rate or rate
                pieces.append(wave)
                result.sentences.append(s)
                if on_audio is not None:
                    on_audio(s, wave, rate)

        def on_step(new: torch.Tensor) -> None:  # new ids so far [1, t]
            if should_stop is not None and should_stop():
                raise RequestError("cancelled")
            ids = cut_stop_text(new[0].tolist(), turn.stop_texts, eng.tokenizer)
            text = plain_text(display_text(ids, eng.layout.find_segments(ids), eng.layout))
            if text != state["said"] and on_text is not None:
                on_text(text)
            state["said"] = text
            if speak:
                pending = text[state["rest_from"] :]
                done, rest = split_sentences(pending, final=False)
                if done:
                    # the next sentence starts where the unfinished rest does
                    state["rest_from"] += len(pending) - len(rest)
                    say(done)

        try:
            new = eng.generate_ids(
                [turn.prompt],
                turn.decoding,
                seed=eng.next_seed(),
                stop_texts=turn.stop_texts,
                on_step=on_step,
            )[0]
            outcome = session.finish(turn, new, decode=False)
            if outcome.error is None:
                reply = plain_text(outcome.text or "")
                if speak:
                    # the unfinished rest is flushed when the reply ends
                    say(split_sentences(reply[state["rest_from"] :], final=True)[0])
                outcome.text = reply
        except REQUEST_ERRORS as exc:
            session.conversation.messages[:] = turn.saved
            result.outcome.error = str(exc)
            return result
        if pieces:
            outcome.media = [Media("speech", torch.cat(pieces), rate, ".wav", reply or "reply")]
        outcome.notes += unspoken
        if result.transcript:
            outcome.notes.insert(0, f"heard: {result.transcript}")
        outcome.request = result.outcome.request
        result.outcome, result.ids = outcome, cut_stop_text(new, turn.stop_texts, eng.tokenizer)
        return result


def escape(field_text: str) -> str:
    """A request-line field with its bars escaped."""
    return field_text.replace("|", "\\|")
