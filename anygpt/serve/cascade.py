"""Cascaded spoken replies in the server: a chat job that runs the whole cascade on the LLM thread.

``anygpt serve --speech-mode cascaded`` (or ``"speech_mode": "cascaded"`` in a request) answers a
chat completion asking for audio with :class:`~anygpt.runtime.cascade.Cascade`: the user's speech
is transcribed, the chat model replies in text, and each sentence is spoken as soon as it is
complete.  Streamed, every sentence's waveform is one ``("pcm", choice, wave [S], rate)`` event,
sent as an audio delta in the same chunk shape as end-to-end speech.  The cascade holds the LLM
thread for the turn (the engines are not thread-safe), so such replies are not batched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from anygpt.runtime.cascade import Cascade
from anygpt.runtime.chat import ChatSession
from anygpt.runtime.requests import ChatRequest, RequestError
from anygpt.serve.worker import Cancelled, ChatJob

SPEECH_MODES = ("end-to-end", "cascaded")


@dataclass
class CascadeJob(ChatJob):
    """A chat job answered by ``cascade``; the worker calls :meth:`run_here` on its LLM thread."""

    cascade: Any = None
    runs_itself: bool = True

    def run_here(self) -> None:
        eng = self.cascade.engine
        session = ChatSession(eng)
        for m in self.history:
            if m.role == "user":
                text = m.text
                if m.speech:  # earlier spoken turns are kept as their words
                    text = " ".join(t for t in (text, self.cascade.transcribe(m.speech)) if t)
                req = ChatRequest("interleaved", text, images=m.images)
                session.conversation.add_user(session.user_message(req))
            else:
                session.conversation.add_assistant(m.text)
        # the request's overrides apply to the text reply (max tokens, temperature, ...)
        overrides = {k: v for k, v in self.overrides.items() if v is not None}
        sent = [""]
        started = [False]

        def start() -> None:
            if not started[0]:
                started[0] = True
                self.emit("started")

        def on_text(text: str) -> None:
            start()
            if self.stream and text.startswith(sent[0]) and len(text) > len(sent[0]):
                self.emit("text", 0, text[len(sent[0]) :])
                sent[0] = text

        def on_audio(_sentence: str, wave, rate: int) -> None:
            start()
            if self.stream:
                self.emit("pcm", 0, wave, rate)

        result = self.cascade.turn(
            session,
            self.request,
            on_text=on_text,
            on_audio=on_audio,
            should_stop=self.cancelled.is_set,
            decoding=overrides,
        )
        out = result.outcome
        if out.error:
            if self.cancelled.is_set():
                self.emit("error", Cancelled("cancelled"))
            elif not started[0]:  # nothing sent yet: the request itself was unusable
                self.emit("error", RequestError(out.error))
            else:
                self.emit("done", [(out, result.ids)])
            return
        start()
        self.turn, self.session = result.turn, session
        self.prompt_tokens = len(result.turn.prompt) if result.turn else 0
        self.finish_reasons = [None]
        if self.stream:  # the audio went out sentence by sentence; the last chunk has the words
            out = dataclasses.replace(out, media=[])
        self.results = [(out, result.ids)]
        self.emit("done", self.results)


def make_cascade(engine, asr=None, tts=None) -> Cascade | None:
    """The server's cascade, or None when no speech bundle can do its ASR and TTS."""
    try:
        return Cascade(engine, asr=asr, tts=tts)
    except ValueError:
        return None
