"""From JSON Lines files to the packed, tokenized datasets the trainer reads (both stages).

Steps, each deterministic for a given config:

1. **Index** every file (byte offset of each line; rows are parsed when used, so files of any size
   work).
2. **Hold out** ``val_set_size`` rows per dataset (at most half of it) with a fixed seed
   (``val_seed``, 42 as in AnyGPT).
3. **Mix.**  With ``mixture`` weights (or a ``num_examples`` count): sampling with replacement by
   weight, seeded: each training example picks a group with probability proportional to its
   weight (a group's weight is its number of rows when ``mixture`` is empty), and within a group
   rows come from a shuffled pool that is reshuffled each time it runs out; ``num_examples`` draws
   (default: the number of training rows).  Without either: every training row once, in a seeded
   random order (a shuffled concatenation, as AnyGPT's stage 2 did).
4. **Render and tokenize** each drawn row with the stage's example builder (parallel with
   ``preprocessing_num_workers``).  Rows that cannot be used are skipped and counted by reason.
5. **Pack** into blocks of ``max_length`` tokens (see :mod:`anygpt.train.packing`), or keep one
   example per row.
6. **Cache** the result as Arrow files under ``cache_dir/<key>`` (written to a temporary name,
   then renamed); the key covers the config, the data files and the tokenizer, so a changed
   input builds anew and a resumed run reads the same data.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anygpt.train.config import DataSpec, TrainConfig, TrainError
from anygpt.train.packing import labels_for, pack

CACHE_VERSION = 2  # 2: lone separators before a reply that opens with a tag carry loss


class SkipExample(Exception):
    """A row that cannot become a training example; the message is the reason (counted)."""


@dataclass
class Example:
    """One tokenized example: ``ids`` [N] int32, ``loss`` [N] bool, and notes (counted)."""

    ids: np.ndarray
    loss: np.ndarray
    notes: tuple[str, ...] = ()


# Builds an Example from (row, dataset spec, rng); raises SkipExample.
ExampleFn = Callable[[dict, DataSpec, random.Random], Example]


class JsonlRows:
    """Random access to the rows of a JSON Lines file through a byte-offset index."""

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec
        self.path = Path(spec.path)
        if not self.path.is_file():
            raise TrainError(f"dataset file not found: {self.path}")
        offsets = []
        pos = 0
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self._fh = None

    def __len__(self) -> int:
        return len(self.offsets)

    def row(self, i: int) -> dict:
        """Row ``i`` as a dict; raises :class:`SkipExample` for a malformed line."""
        if self._fh is None or self._pid != os.getpid():  # one handle per worker process
            self._fh = self.path.open("rb")
            self._pid = os.getpid()
        self._fh.seek(int(self.offsets[i]))
        line = self._fh.readline()
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SkipExample("malformed JSON line") from None
        if not isinstance(obj, dict):
            raise SkipExample("line is not a JSON object")
        return obj

    def fingerprint(self) -> dict:
        st = self.path.stat()
        return {"path": str(self.path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}


# ---------------------------------------------------------------------- split and mixture
def split_validation(n: int, val_set_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) of one dataset: ``min(val_set_size, n // 2)`` rows held out."""
    k = min(max(val_set_size, 0), n // 2)
    perm = np.random.default_rng(seed).permutation(n)
    val = np.sort(perm[:k])
    train = np.sort(perm[k:])
    return train, val


def mixture_order(
    pools: dict[str, list[tuple[int, int]]],
    weights: dict[str, float],
    num_examples: int,
    seed: int,
) -> list[tuple[int, int]]:
    """``num_examples`` (dataset, row) draws: group by weight, then rows from a reshuffled pool."""
    groups = [g for g in pools if pools[g] and weights.get(g, 0) > 0]
    if not groups:
        raise TrainError("no training rows: every dataset is empty or has weight 0")
    w = np.asarray([weights[g] for g in groups], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(groups), size=num_examples, p=w / w.sum())
    streams = {g: _reshuffled(pools[g], rng) for g in groups}
    return [next(streams[groups[p]]) for p in picks]


def shuffled_concatenation(pools: dict[str, list[tuple[int, int]]], seed: int) -> list:
    """Every (dataset, row) of every pool exactly once, in a seeded random order."""
    items = [item for pool in pools.values() for item in pool]
    if not items:
        raise TrainError("no training rows: every dataset is empty")
    perm = np.random.default_rng(seed).permutation(len(items))
    return [items[int(i)] for i in perm]


def _reshuffled(pool: list[tuple[int, int]], rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    while True:
        for i in rng.permutation(len(pool)):
            yield pool[int(i)]


def group_weights(specs: Sequence[DataSpec], sizes: Sequence[int], mixture: dict) -> dict:
    """Weight of each group: from ``mixture``, or its number of training rows when empty."""
    groups: dict[str, int] = {}
    for spec, n in zip(specs, sizes, strict=True):
        groups[spec.group] = groups.get(spec.group, 0) + n
    if not mixture:
        return {g: float(n) for g, n in groups.items()}
    missing = sorted(set(groups) - set(mixture))
    if missing:
        raise TrainError(
            f"mixture has no weight for group(s) {', '.join(missing)}; add GROUP=WEIGHT to "
            "--mixture, put the dataset in a weighted group (PATH,group=G), or use --mixture none"
        )
    return {g: float(mixture[g]) for g in groups}


# ---------------------------------------------------------------------- building
@dataclass
class BuildStats:
    """What happened to the rows: kept, skipped (by reason), notes (e.g. truncated)."""

    drawn: int = 0
    kept: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    def merge(self, other: BuildStats) -> None:
        self.drawn += other.drawn
        self.kept += other.kept
        self.tokens += other.tokens
        self.loss_tokens += other.loss_tokens
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)

    def to_dict(self) -> dict:
        return {
            "drawn": self.drawn,
            "kept": self.kept,
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
        }


# Worker state, inherited through fork (the tokenizer and file indexes are not re-pickled).
_WORKER: dict[str, Any] = {}


def _build_chunk(
    chunk: tuple[str, int, list[tuple[int, int]]],
) -> tuple[list[Example], BuildStats]:
    tag, start, items = chunk
    sources: list[JsonlRows] = _WORKER["sources"]
    fn: ExampleFn = _WORKER["fn"]
    seed: int = _WORKER["seed"]
    out: list[Example] = []
    stats = BuildStats()
    for k, (d, r) in enumerate(items, start):
        stats.drawn += 1
        # one RNG per example, keyed by its position: identical with any number of workers
        rng = random.Random(f"{seed}:{tag}:{k}")
        try:
            ex = fn(sources[d].row(r), sources[d].spec, rng)
        except SkipExample as exc:
            stats.skipped[str(exc)] += 1
            continue
        stats.notes.update(ex.notes)
        stats.kept += 1
        stats.tokens += len(ex.ids)
        stats.loss_tokens += int(ex.loss.sum())
        out.append(ex)
    return out, stats


def build_examples(
    sources: list[JsonlRows],
    items: list[tuple[int, int]],
    fn: ExampleFn,
    *,
    seed: int,
    tag: str,
    num_proc: int = 1,
    desc: str = "tokenizing",
) -> tuple[list[Example], BuildStats]:
    """Run ``fn`` over ``items`` (in order), in ``num_proc`` processes when > 1."""
    from tqdm.auto import tqdm

    _WORKER.update(sources=sources, fn=fn, seed=seed)
    size = 256
    chunks = [(tag, s, items[s : s + size]) for s in range(0, len(items), size)]
    examples: list[Example] = []
    stats = BuildStats()
    bar = tqdm(total=len(items), desc=desc, unit="ex", disable=len(items) < 2000)
    use_pool = (
        num_proc > 1 and len(chunks) > 1 and "fork" in multiprocessing.get_all_start_methods()
    )
    try:
        if use_pool:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(num_proc) as pool:
                for exs, st in pool.imap(_build_chunk, chunks):
                    examples.extend(exs)
                    stats.merge(st)
                    bar.update(st.drawn)
        else:
            for c in chunks:
                exs, st = _build_chunk(c)
                examples.extend(exs)
                stats.merge(st)
                bar.update(st.drawn)
    finally:
        bar.close()
        _WORKER.clear()
    return examples, stats


def _rows(examples: list[Example], blocks: list[list[int]]) -> Iterator[dict]:
    for block in blocks:
        ids = np.concatenate([examples[i].ids for i in block])
        labels = np.concatenate([labels_for(examples[i].ids, examples[i].loss) for i in block])
        yield {
            "input_ids": ids.tolist(),
            "labels": labels.tolist(),
            "seq_lens": [len(examples[i].ids) for i in block],
        }


def to_blocks(examples: list[Example], cfg: TrainConfig) -> list[list[int]]:
    """Example indices per training row (packed, or one example per row)."""
    if not cfg.pack:
        return [[i] for i in range(len(examples))]
    lengths = [len(e.ids) for e in examples]
    return pack(lengths, cfg.max_length, cfg.packing, cfg.pack_window)


def padding_of(blocks: list[list[int]], examples: list[Example], block_size: int) -> float:
    """Fraction of a ``block_size`` row that is padding, over all rows."""
    if not blocks:
        return 0.0
    used = sum(len(examples[i].ids) for b in blocks for i in b)
    return 1.0 - used / (len(blocks) * block_size)


# ---------------------------------------------------------------------- the whole pipeline
@dataclass
class PreparedData:
    """The training and validation datasets (Hugging Face ``datasets``) and what was done."""

    train: Any
    validation: Any | None
    stats: dict
    path: Path


def data_key(cfg: TrainConfig, sources: list[JsonlRows], tokenizer_fp: str, extra: dict) -> str:
    """A short hash of everything the built data depends on."""
    fields = {
        k: getattr(cfg, k)
        for k in (
            "mixture",
            "num_examples",
            "val_set_size",
            "val_seed",
            "seed",
            "pack",
            "packing",
            "pack_window",
            "max_length",
        )
    }
    payload = {
        "version": CACHE_VERSION,
        "stage": cfg.stage,
        "config": fields,
        "datasets": [
            {"spec": vars(s.spec), **s.fingerprint()} for s in sources
        ],  # names, groups and x2t probabilities matter too
        "tokenizer": tokenizer_fp,
        **extra,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(tokenizer.sp.serialized_model_proto())
    h.update(json.dumps(sorted(tokenizer.added.items())).encode())
    return h.hexdigest()[:16]


def draw_order(cfg: TrainConfig, sources: list, log: Callable[[str], None] = print):
    """(training draws, validation rows, group weights): steps 2-3, (dataset, row) pairs only."""
    train_pools: dict[str, list[tuple[int, int]]] = {}
    val_items: list[tuple[int, int]] = []
    train_sizes = []
    for d, src in enumerate(sources):
        tr, va = split_validation(len(src), cfg.val_set_size, cfg.val_seed)
        train_pools.setdefault(src.spec.group, []).extend((d, int(r)) for r in tr)
        val_items.extend((d, int(r)) for r in va)
        train_sizes.append(len(tr))
    weights = group_weights([s.spec for s in sources], train_sizes, cfg.mixture)
    unused = sorted(set(cfg.mixture) - set(weights))
    if unused:
        log(f"data: mixture groups without data ignored: {', '.join(unused)}")
    if cfg.mixture or cfg.num_examples is not None:
        n_train = cfg.num_examples if cfg.num_examples is not None else sum(train_sizes)
        order = mixture_order(train_pools, weights, n_train, cfg.seed)
    else:
        order = shuffled_concatenation(train_pools, cfg.seed)
    return order, val_items, weights


def prepare_data(
    cfg: TrainConfig,
    tokenizer,
    fn: ExampleFn,
    *,
    extra_key: dict | None = None,
    log: Callable[[str], None] = print,
) -> PreparedData:
    """Build (or read from the cache) the datasets for ``cfg`` with example builder ``fn``."""
    from anygpt.train.shards import open_rows

    sources = [open_rows(s) for s in cfg.datasets]  # JSON Lines files or Parquet parts
    key = data_key(cfg, sources, tokenizer_fingerprint(tokenizer), extra_key or {})
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.output_dir) / "data_cache"
    path = cache_root / f"{cfg.stage}-{key}"
    if (path / "stats.json").is_file():
        stats = json.loads((path / "stats.json").read_text())
        log(f"data: using the cached build {path}")
        log(summary_line(stats, cfg))
        return _load(path, stats)

    order, val_items, weights = draw_order(cfg, sources, log)
    train_ex, train_stats = build_examples(
        sources, order, fn, seed=cfg.seed, tag="train", num_proc=cfg.preprocessing_num_workers
    )
    val_ex, val_stats = build_examples(
        sources, val_items, fn, seed=cfg.seed, tag="val", num_proc=cfg.preprocessing_num_workers
    )
    if not train_ex:
        raise TrainError(
            f"no usable training example ({_reasons(train_stats)}); check the data files"
        )
    train_blocks = to_blocks(train_ex, cfg)
    val_blocks = to_blocks(val_ex, cfg)
    stats = {
        "key": key,
        "groups": {g: round(w / sum(weights.values()), 6) for g, w in weights.items()},
        "train": train_stats.to_dict(),
        "validation": val_stats.to_dict(),
        "train_rows": len(train_blocks),
        "validation_rows": len(val_blocks),
        "packed": cfg.pack,
        "block_padding": padding_of(train_blocks, train_ex, cfg.max_length) if cfg.pack else None,
    }

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, ex, blocks in (
            ("train", train_ex, train_blocks),
            ("validation", val_ex, val_blocks),
        ):
            if blocks:
                _write_arrow(tmp / f"{name}.arrow", _rows(ex, blocks))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(summary_line(stats, cfg))
    return _load(path, stats)


FEATURES = {"input_ids": "int32", "labels": "int32", "seq_lens": "int32"}


def _write_arrow(path: Path, rows: Iterator[dict]) -> None:
    """Stream rows into one Arrow file (memory-mapped when read back)."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    features = datasets.Features(
        {k: datasets.Sequence(datasets.Value(v)) for k, v in FEATURES.items()}
    )
    with ArrowWriter(features=features, path=str(path)) as writer:
        for row in rows:
            writer.write(row)
        writer.finalize()


def _load(path: Path, stats: dict) -> PreparedData:
    import datasets

    def read(name: str):
        f = path / f"{name}.arrow"
        return datasets.Dataset.from_file(str(f)) if f.is_file() else None

    return PreparedData(read("train"), read("validation"), stats, path)


def _reasons(st: BuildStats) -> str:
    return ", ".join(f"{n} {r}" for r, n in st.skipped.most_common()) or "no rows"


def summary_line(stats: dict, cfg: TrainConfig) -> str:
    """One line: examples kept, rows built, padding, and every skip reason with its count."""
    tr, va = stats["train"], stats["validation"]
    parts = [
        f"data: {tr['kept']} training examples ({tr['tokens']} tokens, {tr['loss_tokens']} with "
        f"loss) -> {stats['train_rows']} rows"
    ]
    if stats["packed"]:
        parts.append(
            f"packed into blocks of {cfg.max_length} ({100 * stats['block_padding']:.1f}% padding)"
        )
    parts.append(f"{va['kept']} validation examples")
    skipped = Counter(tr["skipped"]) + Counter(va["skipped"])
    if skipped:
        parts.append("skipped: " + ", ".join(f"{n} {r}" for r, n in skipped.most_common()))
    notes = Counter(tr["notes"]) + Counter(va["notes"])
    if notes:
        parts.append(", ".join(f"{n} {r}" for r, n in notes.most_common()))
    return "; ".join(parts)
