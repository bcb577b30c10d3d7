"""Training rows built while training reads them (``--streaming``): nothing is materialised.

The in-memory path (:func:`anygpt.train.data.prepare_data`) tokenizes every drawn example, packs
them all and caches the rows as Arrow.  Here the same steps run lazily, in the same order:

* the draw order is computed as there (:func:`anygpt.train.data.draw_order`: (dataset, row)
  pairs, 16 bytes a draw; no example text);
* each draw is read from its source (JSON Lines offsets or Parquet parts) and turned into an
  example with the same per-example RNG (``seed:train:k``);
* :class:`OnlinePacker` packs examples as they come and hands out each block when it closes;
  its blocks are exactly those of :func:`anygpt.train.packing.pack` (tested), and only the
  open blocks' examples are held.

So the rows are the in-memory path's rows in their built order.  The one difference: the
Trainer reads an iterable dataset in that order, while it shuffles a cached dataset's rows
(the draws themselves are already a seeded random order, and first-fit packing only reorders
within its window).  Reading the cached rows in order (``train_sampling_strategy="sequential"``)
gives the same batches and losses as streaming.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np
import torch

from anygpt.train.config import TrainConfig, TrainError
from anygpt.train.data import (
    ExampleFn,
    PreparedData,
    SkipExample,
    _rows,
    build_examples,
    draw_order,
    to_blocks,
)


class OnlinePacker:
    """Packing one example at a time: ``add`` returns the blocks it closed, ``finish`` the rest.

    ``first_fit`` keeps up to ``window`` open blocks (the fullest closes when a new one is
    needed); ``greedy`` keeps one.  Blocks are lists of example indices.
    """

    def __init__(self, block_size: int, strategy: str = "first_fit", window: int = 64) -> None:
        if strategy not in ("first_fit", "greedy"):
            raise ValueError(f"unknown packing strategy '{strategy}'")
        self.block_size = block_size
        self.window = 1 if strategy == "greedy" else max(1, int(window))
        self.greedy = strategy == "greedy"
        self.open: list[list[int]] = []
        self.free: list[int] = []

    def add(self, index: int, length: int) -> list[list[int]]:
        if length > self.block_size:
            raise ValueError(
                f"example {index} ({length} tokens) is longer than the block ({self.block_size})"
            )
        for j, room in enumerate(self.free):
            if length <= room:
                self.open[j].append(index)
                self.free[j] -= length
                return []
        closed = []
        if len(self.open) == self.window:
            j = 0 if self.greedy else int(np.argmin(self.free))
            closed.append(self.open.pop(j))
            self.free.pop(j)
        self.open.append([index])
        self.free.append(self.block_size - length)
        return closed

    def finish(self) -> list[list[int]]:
        order = np.argsort(self.free, kind="stable")  # fullest first, as pack_first_fit does
        blocks = [self.open[int(j)] for j in order]
        self.open, self.free = [], []
        return blocks


class StreamedRows(torch.utils.data.IterableDataset):
    """Training rows ``{input_ids, labels, seq_lens}`` built from the draws as they are read."""

    def __init__(self, cfg: TrainConfig, sources: list, order: list, fn: ExampleFn) -> None:
        self.cfg = cfg
        self.sources = sources
        self.order = order
        self.fn = fn
        self.kept = 0  # examples built by the last pass
        self.skipped = 0

    def examples(self) -> Iterator:
        """Usable examples in draw order (unusable draws are skipped, counted)."""
        self.kept = self.skipped = 0
        for k, (d, r) in enumerate(self.order):
            rng = random.Random(f"{self.cfg.seed}:train:{k}")  # as the in-memory build's
            try:
                ex = self.fn(self.sources[d].row(r), self.sources[d].spec, rng)
            except SkipExample:
                self.skipped += 1
                continue
            self.kept += 1
            yield ex

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise TrainError(
                "--streaming reads its rows in one process: --dataloader-num-workers 0"
            )
        cfg = self.cfg
        if not cfg.pack:
            for ex in self.examples():
                yield from _rows([ex], [[0]])
            return
        packer = OnlinePacker(cfg.max_length, cfg.packing, cfg.pack_window)
        held: dict[int, object] = {}
        for i, ex in enumerate(self.examples()):
            held[i] = ex
            for block in packer.add(i, len(ex.ids)):
                yield from self._emit(held, block)
        for block in packer.finish():
            yield from self._emit(held, block)

    @staticmethod
    def _emit(held: dict, block: list[int]) -> Iterator[dict]:
        yield from _rows(held, [block])
        for i in block:
            del held[i]


def prepare_streaming(
    cfg: TrainConfig, tokenizer, fn: ExampleFn, *, log: Callable[[str], None] = print
) -> PreparedData:
    """Streamed training rows and an in-memory validation set (it is small: ``val_set_size``)."""
    import datasets

    from anygpt.train.shards import open_rows

    sources = [open_rows(s) for s in cfg.datasets]
    order, val_items, weights = draw_order(cfg, sources, log)
    val_ex, val_stats = build_examples(sources, val_items, fn, seed=cfg.seed, tag="val")
    val_blocks = to_blocks(val_ex, cfg)
    validation = datasets.Dataset.from_list(list(_rows(val_ex, val_blocks))) if val_blocks else None
    total = sum(weights.values())
    stats = {
        "streaming": True,
        "train_draws": len(order),
        "groups": {g: round(w / total, 6) for g, w in weights.items()},
        "validation": val_stats.to_dict(),
        "validation_rows": len(val_blocks),
        "packed": cfg.pack,
    }
    log(
        f"data: streaming {len(order)} training draws (built and "
        f"{'packed' if cfg.pack else 'kept one per row'} while training); "
        f"{val_stats.kept} validation examples"
    )
    return PreparedData(StreamedRows(cfg, sources, order, fn), validation, stats, None)
