"""Prompt formats of AnyGPT, byte for byte (typos included: the checkpoints learned them).

Base model (single turn, no system prompt)::

    X -> text:  "[Human]: {instruction} {modality segment}<eoh> [MMGPT]:"
    text -> X:  "[Human]: {instruction} This is input: {text}<eoh> [MMGPT]:"

Training appends ``" {answer}<eos>"`` to these.  The chat model uses a conversation template with a
system line; see :class:`Conversation`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import cache

from anygpt.paths import config_dir

X2T = "x2t"
T2X = "t2x"


# ---------------------------------------------------------------------- base model
@cache
def instruction_lists(direction: str) -> dict[str, list[str]]:
    """AnyGPT's instruction lists (``x2t`` or ``t2x``), duplicates kept: they weight sampling."""
    if direction not in (X2T, T2X):
        raise ValueError(f"direction must be '{X2T}' or '{T2X}'")
    path = config_dir() / "instructions" / f"{direction}.json"
    return json.loads(path.read_text(encoding="utf-8"))


# Instructions for inputs AnyGPT never had (its lists above stay exactly as trained).
EXTRA_INSTRUCTIONS = {
    X2T: {
        "video": [
            "Please describe the video.",
            "What happens in this video?",
            "Describe what you see in the clip.",
            "Give a short description of the video.",
        ]
    },
    T2X: {},
}


def choose_instruction(direction: str, modality: str, rng: random.Random) -> str:
    """Draw an instruction like AnyGPT (uniform over the list, duplicates included)."""
    lists = {**EXTRA_INSTRUCTIONS.get(direction, {}), **instruction_lists(direction)}
    if modality not in lists:
        raise ValueError(f"no {direction} instructions for modality '{modality}'")
    return rng.choice(lists[modality])


def base_x2t_prompt(instruction: str, segment: str, answer: str | None = None) -> str:
    """Modality -> text prompt; with ``answer`` it is the full training string."""
    prompt = f"[Human]: {instruction} {segment}<eoh> [MMGPT]:"
    return prompt if answer is None else f"{prompt} {answer}<eos>"


def base_t2x_prompt(instruction: str, text: str, segment: str | None = None) -> str:
    """Text -> modality prompt; with ``segment`` it is the full training string."""
    prompt = f"[Human]: {instruction} This is input: {text}<eoh> [MMGPT]:"
    return prompt if segment is None else f"{prompt} {segment}<eos>"


# ---------------------------------------------------------------------- chat model
@dataclass(frozen=True)
class ChatTemplate:
    """A conversation format: system line, role names and turn separators."""

    name: str
    system: str
    user_role: str
    assistant_role: str
    user_end: str
    assistant_end: str


MMGPT_TEMPLATE = ChatTemplate(
    name="mmgpt",
    system=(
        "You are an AI assistant named MMGPT who can understand and generate multimodal content, "
        "including text, speech, images and audio."
    ),
    user_role="[Human]",
    assistant_role="[MMGPT]",
    user_end="<eoh>",
    assistant_end="<eos>",
)

# The template of AnyGPT's published SFT script; its tags are plain text, not added tokens.
ANYGPT_TEMPLATE = ChatTemplate(
    name="anygpt",
    system=(
        "You are an AI assistant named AnyGPT who can understand and generate multimodal content, "
        "including text, speech, images and audio."
    ),
    user_role="[Human]",
    assistant_role="[AnyGPT]",
    user_end="<eoh>",
    assistant_end="<eom>",
)

CHAT_TEMPLATES = {t.name: t for t in (MMGPT_TEMPLATE, ANYGPT_TEMPLATE)}


def chat_template(name: str) -> ChatTemplate:
    try:
        return CHAT_TEMPLATES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown chat template '{name}'; choose one of {', '.join(CHAT_TEMPLATES)}"
        ) from None


@dataclass
class Conversation:
    """A multi-turn conversation rendered with a :class:`ChatTemplate`.

    ``messages`` holds ``(role, text)`` pairs with role ``"user"`` or ``"assistant"``.
    """

    template: ChatTemplate = MMGPT_TEMPLATE
    messages: list[tuple[str, str]] = field(default_factory=list)

    def add_user(self, text: str) -> None:
        self.messages.append(("user", text))

    def add_assistant(self, text: str) -> None:
        self.messages.append(("assistant", text))

    def clear(self) -> None:
        self.messages.clear()

    def render(self, messages: list[tuple[str, str]] | None = None) -> str:
        """The prompt string; ends with ``"[MMGPT]:"`` when the last message is the user's."""
        t = self.template
        msgs = self.messages if messages is None else messages
        parts = [t.system + "\n"]
        for i, (role, text) in enumerate(msgs):
            if role == "user":
                parts.append(f"{t.user_role}: {text}{t.user_end}\n")
            else:
                last = i == len(msgs) - 1
                parts.append(
                    f"{t.assistant_role}: {text}{t.assistant_end}" + ("" if last else "\n")
                )
        if msgs and msgs[-1][0] == "user":
            parts.append(f"{t.assistant_role}:")
        return "".join(parts)


# ---------------------------------------------------------------------- task prompts
# Format strings of AnyGPT's `task_prompts`, exactly as trained (duplicate keys resolved as Python
# resolved them: the later entry wins).  "...2" entries were removed upstream but are still used by
# its data and README.
TASK_PROMPTS = {
    "Multimodal Prompt Image Generation": "{image1} {instruction} Please generation an image.",
    "Image Conversation": "{image} {question}",
    "Multi-Image Understanding": (
        "This is the first image. {image1} This is the second image. {image2} {question}"
    ),
    "Image Captioning": (
        "{image} Please provide an accurate and concisedescription of the given image."
    ),
    "Image QA": (
        "{image} {question} Please provide an accurate answer consisting of only one word or phrase."
    ),
    "Text-to-Speech": "{caption} Please read the given text.",
    "Speech-to-Text": "{speech} Please transcribe the given speech.",
    "Speech-Instruction": "{speech} Please recognize the voice command and give reply and voice",
    "Speech-Response": "<-Ins-> {instruction}\n <-Res-> {response}",
    "Text-Response": "{text_output}",
    "Text-to-Music": "{caption} Please compose a piece of music from the given text.",
    "Music-to-Text": "{music} Please interpret the given music and provide a textual description.",
    "Image-to-Text Caption": "{image} Please describe the picture briefly.",
    "Text-to-Image Generation": "{caption} Please generation an image.",
    "Text-Instruction": (
        "{text_input} Please interpret the user's text input, create a textual response."
    ),
    "Text-Text-Response": "{text_input}<eot>\n{text_output}",
    "Text-Speech-Response": "{text_output}\n{speech_output}",
    "Speech-Instruction-Speech": (
        "{speech} Please interpret the user's voice commands, provide text responses, and "
        "generate corresponding voice replies"
    ),
    "Speech-Response-Speech": "{text_output}<eot>\n{speech_output}",
    "Speech-Instruction-Text": (
        "{speech} Please interpret the user's voice commands, provide text responses."
    ),
    "Speech-Instruction2": (
        "{speech} Please acknowledge the user's vocal input, create a textual response"
    ),
    "Text-Instruction2": (
        "{text_input} Please interpret the user's text input, create a textual response, and "
        "subsequently produce a corresponding voice reply."
    ),
}


def interleaved_user_message(
    text: str,
    images: list[str] = (),  # type: ignore[assignment]
    music: list[str] = (),  # type: ignore[assignment]
    speech: list[str] = (),  # type: ignore[assignment]
) -> str:
    """The chat command line's user message: images, music, speech segments, then the text.

    With any speech input the message goes through the ``Speech-Instruction`` task prompt, as
    AnyGPT's chat command line does.  Arguments are already-rendered segment strings.
    """
    message = "".join(s + " " for s in images) + "".join(s + " " for s in music)
    message += "".join(s + " " for s in speech) + text
    if speech:
        message = TASK_PROMPTS["Speech-Instruction"].format(speech=message)
    return message.strip()


def task_message(task: str, **fields: str) -> str:
    """Render a named task prompt (``Image Captioning``, ``Text-to-Image Generation``, ...)."""
    if task not in TASK_PROMPTS:
        raise ValueError(f"unknown task '{task}'")
    if task == "Text-to-Image Generation" and "caption" in fields:
        caption = fields["caption"]
        if not caption.endswith((".", "!", "?")):
            fields = {**fields, "caption": caption + "."}
    return TASK_PROMPTS[task].format(**fields)
