"""Packing examples into blocks, and the collator that turns blocks into model inputs.

Examples are never split.  Two packers:

* ``greedy`` (AnyGPT's rule): examples in order; one that would overflow the current block
  closes it and starts the next.
* ``first_fit``: up to ``window`` blocks stay open and each example goes into the first one with
  room; when the window is full, the fullest block is closed.  Order changes only locally, and
  the gaps greedy packing leaves are filled, which keeps padding low.

Packed examples do not attend to each other: the collator restarts ``position_ids`` at 0 for each
example and passes no ``attention_mask``, from which transformers builds a block-diagonal causal
mask (``sdpa``/``eager``) or variable-length kernels (``flash_attention_2``).  The first token of
each example has no label, so no example is trained to predict the next one's start.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE = -100


def pack_greedy(lengths: Sequence[int], block_size: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into consecutive blocks of at most ``block_size`` tokens."""
    blocks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if n > block_size:
            raise ValueError(f"example {i} ({n} tokens) is longer than the block ({block_size})")
        if current and used + n > block_size:
            blocks.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        blocks.append(current)
    return blocks


def pack_first_fit(lengths: Sequence[int], block_size: int, window: int = 64) -> list[list[int]]:
    """First-fit packing over a window of ``window`` open blocks (see module docstring)."""
    window = max(1, int(window))
    blocks: list[list[int]] = []
    open_blocks: list[list[int]] = []
    free: list[int] = []
    for i, n in enumerate(lengths):
        if n > block_size:
            raise ValueError(f"example {i} ({n} tokens) is longer than the block ({block_size})")
        for j, room in enumerate(free):
            if n <= room:
                open_blocks[j].append(i)
                free[j] -= n
                break
        else:
            if len(open_blocks) == window:
                j = int(np.argmin(free))  # the fullest block is the least likely to fill more
                blocks.append(open_blocks.pop(j))
                free.pop(j)
            open_blocks.append([i])
            free.append(block_size - n)
    # close the rest fullest first, for a stable order
    for j in np.argsort(free, kind="stable"):
        blocks.append(open_blocks[int(j)])
    return blocks


def pack(
    lengths: Sequence[int], block_size: int, strategy: str = "first_fit", window: int = 64
) -> list[list[int]]:
    if strategy == "greedy":
        return pack_greedy(lengths, block_size)
    if strategy == "first_fit":
        return pack_first_fit(lengths, block_size, window)
    raise ValueError(f"unknown packing strategy '{strategy}'")


def labels_for(ids: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Labels [N] int32: the id where ``loss`` is set, else -100; the first token never has one."""
    labels = np.where(loss, ids, IGNORE).astype(np.int32)
    labels[:1] = IGNORE
    return labels


def position_ids_for(seq_lens: Sequence[int], total: int) -> torch.Tensor:
    """Positions [total]: 0..n-1 for each example, then 0.. again for the padding tail."""
    parts = [torch.arange(int(n)) for n in seq_lens]
    rest = total - sum(int(n) for n in seq_lens)
    if rest > 0:
        parts.append(torch.arange(rest))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


class PackedCollator:
    """Rows ``{input_ids, labels, seq_lens}`` -> padded batch tensors.

    Returns ``input_ids`` [B, L], ``labels`` [B, L] (-100 on padding) and ``position_ids`` [B, L];
    ``L`` is the longest row rounded up to ``pad_to_multiple_of``.  Padding goes on the right.
    ``real_tokens`` / ``pad_tokens`` count what it produced (in the process that runs it).
    """

    def __init__(self, pad_id: int = 0, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.real_tokens = 0
        self.pad_tokens = 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        m = self.pad_to_multiple_of
        if m and longest % m:
            longest += m - longest % m
        b = len(rows)
        input_ids = torch.full((b, longest), self.pad_id, dtype=torch.long)
        labels = torch.full((b, longest), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((b, longest), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(r["labels"], dtype=torch.long)
            position_ids[i] = position_ids_for(r["seq_lens"], longest)
            self.real_tokens += n
        self.pad_tokens += b * longest - sum(len(r["input_ids"]) for r in rows)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}

    @property
    def padding_fraction(self) -> float:
        total = self.real_tokens + self.pad_tokens
        return self.pad_tokens / total if total else 0.0
