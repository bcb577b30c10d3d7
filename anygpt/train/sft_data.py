"""Stage-2 examples: multi-turn conversations with loss on the assistant turns only.

Accepted rows::

    {"id": 1, "conversation": [{"role": "user", "message": "..."}, {"role": "assistant", ...}]}
    {"id": 1, "conversation": [[{...}, {...}]]}        # AnyGPT's sample file nests once more
    {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}

Roles ``user``/``human`` and ``assistant``/``gpt`` (any case).  Turns must alternate starting with the
user; a conversation that does not is skipped and counted (AnyGPT returned ``None`` for the whole
batch and crashed).  A trailing user turn has nothing to learn from and is dropped (counted).

The conversation is rendered with the chat template (:class:`anygpt.prompts.Conversation`: MMGPT
by default, AnyGPT's published SFT template with ``template="anygpt"``), BOS first and ``</s>``
appended, and tokenized once.  Loss is on the tokens of each assistant message, its end tag
(``<eos>``, or the plain-text ``<eom>``) and the final ``</s>``; the system line, user turns and the
``[MMGPT]: `` role prefixes carry none.  Spans are found from character positions, never from
token-length arithmetic (AnyGPT's Vicuna-style count broke on ``<eom>``, which is not a token).

Replay of stage-1 data: a row with no conversation but a modality pair (``{"text": ..., "image":
...}``, stage 1's format) is rendered as a stage-1 instruction pair when a ``replay`` builder is
given, so that stage 2 can keep practising stage 1's tasks (a little of it stops instruction tuning
from wiping out what pretraining taught; counted as ``replay``).

Over-long conversations: the latest turns are dropped, one user/assistant pair at a time, until
the rest fits ``model_max_length`` (counted as truncated); if not even the first pair fits, the
conversation is skipped (counted).  A turn is never cut in the middle.
"""

from __future__ import annotations

import random

from anygpt.prompts import ChatTemplate, Conversation
from anygpt.train.config import DataSpec
from anygpt.train.data import Example, ExampleFn, SkipExample
from anygpt.train.tokens import encode_with_loss

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def conversation_turns(row: dict) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """``(role, message)`` pairs of a row, validated; raises :class:`SkipExample`."""
    conv = row.get("conversation", row.get("conversations"))
    if isinstance(conv, list) and len(conv) == 1 and isinstance(conv[0], list):
        conv = conv[0]
    if not isinstance(conv, list) or not conv:
        raise SkipExample("no conversation")
    turns: list[tuple[str, str]] = []
    for t in conv:
        if not isinstance(t, dict):
            raise SkipExample("malformed turn")
        role = ROLES.get(str(t.get("role", t.get("from", ""))).lower())
        message = t.get("message", t.get("value", t.get("content")))
        if role is None:
            raise SkipExample("unknown role")
        if not isinstance(message, str):
            raise SkipExample("message is not text")
        turns.append((role, message))
    for i, (role, _) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise SkipExample("roles do not alternate starting with user")
    notes: tuple[str, ...] = ()
    if turns[-1][0] == "user":
        turns = turns[:-1]
        notes = ("trailing user turn dropped",)
    if not turns:
        raise SkipExample("no assistant turn")
    return turns, notes


def render_with_spans(
    template: ChatTemplate, turns: list[tuple[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant message + end tag."""
    t = template
    parts = [t.system + "\n"]
    pos = len(parts[0])
    spans = []
    for i, (role, message) in enumerate(turns):
        if role == "user":
            part = f"{t.user_role}: {message}{t.user_end}\n"
        else:
            head = f"{t.assistant_role}: "
            part = head + message + t.assistant_end + ("" if i == len(turns) - 1 else "\n")
            start = pos + len(head)
            spans.append((start, start + len(message) + len(t.assistant_end)))
        parts.append(part)
        pos += len(part)
    text = "".join(parts)
    if text != Conversation(template, list(turns)).render():
        raise AssertionError("the chat template renders differently from Conversation.render")
    return text, spans


class SFTExamples:
    """Builds stage-2 examples (see the module docstring)."""

    def __init__(
        self, tokenizer, template: ChatTemplate, max_length: int, replay: ExampleFn | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.replay = replay

    def encode(self, turns: list[tuple[str, str]]) -> Example:
        text, spans = render_with_spans(self.template, turns)
        ids, loss = encode_with_loss(self.tokenizer, text, spans)
        return Example(ids, loss)

    def __call__(self, row: dict, spec: DataSpec, rng: random.Random) -> Example:
        if (
            self.replay is not None
            and "text" in row
            and not {"conversation", "conversations"} & set(row)
        ):
            ex = self.replay(row, spec, rng)
            ex.notes = ("replay", *ex.notes)
            return ex
        turns, notes = conversation_turns(row)
        ex = self.encode(turns)
        pairs = len(turns) // 2
        while len(ex.ids) > self.max_length and pairs > 1:
            pairs -= 1
            ex = self.encode(turns[: 2 * pairs])
            notes = (*notes, "truncated (later turns dropped)")
        if len(ex.ids) > self.max_length:
            raise SkipExample("first turn longer than model_max_length")
        ex.notes = tuple(dict.fromkeys(notes))
        return ex
