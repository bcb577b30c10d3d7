"""Stage-1 examples: one modality-text pair -> one x2t or t2x training string.

Each line of a pair file holds ``text`` and one modality key (``speech``, ``image``, ``music``,
``audio``) whose value is a token string ``<sosp><🗣️12>...<eosp>``.  The pair becomes::

    x2t: "[Human]: {instruction} {segment}<eoh> [MMGPT]: {text}<eos>"
    t2x: "[Human]: {instruction} This is input: {text}<eoh> [MMGPT]: {segment}<eos>"

tokenized with BOS first and ``</s>`` always appended; the instruction is drawn from AnyGPT's lists.

Differences from AnyGPT's ``stage1_pretrain.py``, on purpose:

* **Direction mixture.**  AnyGPT meant speech and music to be 50/50, image datasets whose name
  contains ``caption`` to be x2t only and other image datasets t2x only, but passed that
  probability into ``add_eos_token``: every dataset came out 50/50 and image datasets without
  ``caption`` lost their ``</s>``.  Here the intended mixture is applied (configurable per dataset
  with ``x2t_prob``) and ``</s>`` is always appended.
* **Modality key.**  AnyGPT took the last key that is not ``text``, so an extra column (``id``)
  broke it.  Here the modality is the one key that names a known modality; other keys are ignored,
  and a row with none or several is skipped and counted.
* **Long examples** (more tokens than ``block_size``) are dropped and counted, never cut: a cut
  would leave an unterminated modality span.  AnyGPT truncated them.
* Labels equal the inputs as in AnyGPT (``train_on_prompt``); with ``train_on_prompt=False`` only
  the answer (``{text}<eos>`` or ``{segment}<eos>``) and ``</s>`` carry loss.
"""

from __future__ import annotations

import random

from anygpt.layout import ANYGPT_MODALITIES, ModalityTokens
from anygpt.prompts import T2X, X2T, base_t2x_prompt, base_x2t_prompt, choose_instruction
from anygpt.train.config import DataSpec
from anygpt.train.data import Example, SkipExample
from anygpt.train.tokens import encode_with_loss

KNOWN_MODALITIES = tuple(m.name for m in ANYGPT_MODALITIES)


def default_x2t_prob(modality: str, dataset_name: str) -> float:
    """AnyGPT's intended direction rule: images by dataset name, everything else 50/50."""
    if modality == "image":
        return 1.0 if "caption" in dataset_name else 0.0
    return 0.5


def render_pair(
    modality: str, segment: str, text: str, x2t: bool, instruction: str
) -> tuple[str, tuple[int, int]]:
    """The training string and the character span of its answer (answer + ``<eos>``)."""
    if x2t:
        prompt = base_x2t_prompt(instruction, segment)
        full = base_x2t_prompt(instruction, segment, answer=text)
    else:
        prompt = base_t2x_prompt(instruction, text)
        full = base_t2x_prompt(instruction, text, segment)
    # the full string is the prompt, one space, the answer and "<eos>"
    assert full.startswith(prompt + " "), "prompt templates changed shape"
    return full, (len(prompt) + 1, len(full))


def segment_problem(segment: str, tokens: ModalityTokens) -> str | None:
    """Why a ``<start><code>...<end>`` string is not one span of this modality's codes, or None.

    A code token out of range is not in the vocabulary: the text tokenizer would split it into
    ordinary pieces, and the model would be trained on them.
    """
    body = segment[len(tokens.start_tag) : len(segment) - len(tokens.end_tag)]
    if not body:
        return "is empty"
    head = "<" + tokens.prefix
    pieces = body.split(">")
    if pieces[-1] != "":
        return "has text after its last code"
    for piece in pieces[:-1]:
        if not piece.startswith(head) or not piece[len(head) :].isdigit():
            return f"holds '{piece[:40]}>', not a {tokens.name} code"
        if int(piece[len(head) :]) >= tokens.vocab_size:
            return f"holds code {piece[len(head) :]}, out of range (< {tokens.vocab_size})"
    return None


class PretrainExamples:
    """Builds stage-1 examples (see the module docstring).

    Args:
        tokenizer: the model's :class:`~anygpt.text_tokenizer.TextTokenizer`.
        modalities: the model's modality blocks (``TokenLayout.modalities``).
        block_size: examples longer than this are dropped.
        train_on_prompt: loss on every token (AnyGPT) or on the answer only.
    """

    def __init__(
        self,
        tokenizer,
        modalities: dict[str, ModalityTokens],
        block_size: int,
        train_on_prompt: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.modalities = dict(modalities)
        self.known = set(KNOWN_MODALITIES) | set(self.modalities)
        self.block_size = block_size
        self.train_on_prompt = train_on_prompt

    def __call__(self, row: dict, spec: DataSpec, rng: random.Random) -> Example:
        keys = [k for k in row if k in self.known]
        if not keys:
            raise SkipExample("no modality key")
        if len(keys) > 1:
            raise SkipExample("several modality keys")
        modality = keys[0]
        if modality not in self.modalities:
            raise SkipExample(f"modality '{modality}' not in the model's vocabulary")
        tokens = self.modalities[modality]
        text, segment = row.get("text"), row[modality]
        if not isinstance(text, str) or not text.strip():
            raise SkipExample("no text")
        if not (
            isinstance(segment, str)
            and segment.startswith(tokens.start_tag)
            and segment.endswith(tokens.end_tag)
        ):
            raise SkipExample(f"malformed {modality} segment")
        bad = segment_problem(segment, tokens)
        if bad:
            raise SkipExample(f"{modality} segment {bad}")
        p = spec.x2t_prob if spec.x2t_prob is not None else default_x2t_prob(modality, spec.name)
        x2t = rng.random() < p
        instruction = choose_instruction(X2T if x2t else T2X, modality, rng)
        full, answer = render_pair(modality, segment, text, x2t, instruction)
        span = (0, len(full)) if self.train_on_prompt else answer
        ids, loss = encode_with_loss(self.tokenizer, full, [span])
        if len(ids) > self.block_size:
            raise SkipExample("longer than block_size")
        return Example(ids, loss, (f"{modality} {'x2t' if x2t else 't2x'}",))
