"""Tokenize a rendered training string once and mark which tokens carry loss.

Loss spans are given as character ranges of the rendered string (an assistant message and its end
tag, a stage-1 answer).  The string is tokenized exactly as :meth:`TextTokenizer.encode` does
(added tokens cut out first, each text piece through SentencePiece on its own), keeping each token's
byte range, and a token is trained when its range overlaps a loss span.

Why ranges and not lengths: a role tag is followed by ``": "`` and the message in one SentencePiece
piece (``[MMGPT]`` is an added token, ``": hello"`` is text), so the first message token may also
hold the separator space (``"▁hello"``).  Such a token is trained (it contains message characters);
``"▁:"`` is not.  A lone whitespace token that ends where a span begins (``"▁"`` between
``"[MMGPT]:"`` and a message that opens with a tag such as ``<-Ins->`` or ``<soim>``) is trained
too: the prompt at generation time ends before it, so the model must learn to write it, or it never
starts such a reply.  Byte-fallback tokens that carry no text of their own (the leading bytes of
one character) belong to the character that follows them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anygpt.text_tokenizer import TextTokenizer


def _byte_offsets(text: str) -> list[int]:
    """``offsets[i]`` = byte position of character ``i`` (one extra entry for the end)."""
    out = [0] * (len(text) + 1)
    pos = 0
    for i, ch in enumerate(text):
        out[i] = pos
        pos += len(ch.encode("utf-8"))
    out[len(text)] = pos
    return out


def encode_with_loss(
    tokenizer: TextTokenizer,
    text: str,
    spans: Sequence[tuple[int, int]],
    *,
    add_bos: bool = True,
    add_eos: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize ``text`` and flag the tokens that overlap ``spans`` (character ranges).

    Returns:
        ids [N] int32: BOS, the tokens of ``text``, then ``</s>`` when ``add_eos``.
        loss [N] bool: True for tokens overlapping a span, and for the final ``</s>``.
    """
    offsets = _byte_offsets(text)
    byte_spans = [(offsets[a], offsets[b]) for a, b in spans if b > a]

    starts = {a for a, _ in byte_spans}
    raw = text.encode("utf-8")

    def in_span(begin: int, end: int) -> bool:
        if end > begin:
            if end in starts and not raw[begin:end].strip():
                return True  # the separator a reply opening with a tag needs
            return any(begin < b and end > a for a, b in byte_spans)
        return any(a <= begin < b for a, b in byte_spans)

    ids: list[int] = [tokenizer.bos_id] if add_bos else []
    loss: list[bool] = [False] if add_bos else []
    char = 0
    # The same cut as TextTokenizer.encode: added tokens (and <s>, </s>, <unk>) first.
    for piece, is_token in tokenizer.split_added(text):
        start = offsets[char]
        if is_token:
            ids.append(tokenizer.token_to_id(piece))
            loss.append(in_span(start, offsets[char + len(piece)]))
        else:
            proto = tokenizer.sp.encode(piece, out_type="proto")
            for p in proto.pieces:
                ids.append(p.id)
                loss.append(in_span(start + p.begin, start + p.end))
        char += len(piece)
    if add_eos:
        ids.append(tokenizer.eos_id)
        loss.append(True)
    return np.asarray(ids, dtype=np.int32), np.asarray(loss, dtype=bool)
