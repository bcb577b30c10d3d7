"""``anygpt tokenize-chat``: dialogues with media placeholders -> conversations in token form.

Input: JSON Lines rows as :mod:`anygpt.train.sft_data` reads them (``conversation`` or
``conversations``), whose messages may hold media placeholders::

    {image:images/000012.png}   {speech:speech/000040.wav}   {music:music/000003.wav}

``{MODALITY:PATH}``: the modality is one of the bundle's (``image``, ``speech``, ``music``,
``audio``), or ``video`` for a bundle that reads video (:mod:`anygpt.modalities.video`); PATH is a file, relative to ``--media-root`` (default: the dialogue file's folder)
unless absolute, with no braces or newline in it.  Each placeholder becomes the media's token
segment (``<soim>...<eoim>``) from the bundle's modality tokenizer; every other character of the row
is kept.  Media are encoded once each, in batches per modality, whatever the number of rows that
use them.

A row whose media file is missing or unreadable, or that names a modality the bundle lacks, is
left out: one line on stderr says why (the first :data:`SHOWN_ERRORS` of them), every one goes to
``OUT.errors.jsonl``, and the summary counts them.  The output is written under a temporary name
and renamed when complete, so it is never half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anygpt.train.config import TrainError

MODALITY_NAMES = ("image", "speech", "music", "audio", "video")
PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(MODALITY_NAMES) + r"):([^{}\n]+)\}")
SHOWN_ERRORS = 20


def placeholder(modality: str, path: str) -> str:
    """``{modality:path}``: the reference to a media file inside a dialogue message."""
    if modality not in MODALITY_NAMES:
        raise ValueError(f"unknown modality '{modality}'")
    if any(c in path for c in "{}\n"):
        raise ValueError(f"a placeholder path cannot hold braces or newlines: {path!r}")
    return f"{{{modality}:{path}}}"


def placeholders(text: str) -> list[tuple[str, str]]:
    """``(modality, path)`` of every placeholder in ``text``, in order."""
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER_RE.finditer(text)]


@dataclass
class ChatTokenizeConfig:
    """Settings of one ``anygpt tokenize-chat`` run."""

    dialogues: str
    model: str
    output: str
    media_root: str | None = None
    errors: str | None = None  # default: OUTPUT stem + .errors.jsonl
    batch_size: int = 16
    device: str = "auto"
    limit: int | None = None
    overwrite: bool = False


@dataclass
class ChatTokenizeSummary:
    total: int
    written: int
    skipped: int
    media: int  # distinct media files encoded
    reasons: dict

    def line(self, out: str) -> str:
        s = (
            f"tokenize-chat: {self.total} rows: {self.written} written to {out}, "
            f"{self.skipped} skipped; {self.media} media files encoded"
        )
        if self.reasons:
            s += " (" + ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items())) + ")"
        return s


def _messages(row: Any) -> list[dict] | None:
    """The turn dicts of a row (AnyGPT's once-more-nested list accepted), or ``None``."""
    if not isinstance(row, dict):
        return None
    conv = row.get("conversation", row.get("conversations"))
    if isinstance(conv, list) and len(conv) == 1 and isinstance(conv[0], list):
        conv = conv[0]
    if not isinstance(conv, list) or not all(isinstance(t, dict) for t in conv):
        return None
    return conv


def _texts(turn: dict) -> list[tuple[str, str]]:
    return [
        (k, v)
        for k, v in turn.items()
        if k in ("message", "value", "content") and isinstance(v, str)
    ]


def _read_rows(path: Path, limit: int | None):
    """``(row number, row or None, problem)`` for each non-empty line."""
    with path.open("rb") as f:
        i = 0
        for line in f:
            if not line.strip():
                continue
            if limit is not None and i >= limit:
                return
            try:
                yield i, json.loads(line), None
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield i, None, "malformed JSON line"
            i += 1


class _Reporter:
    """One line per skipped row on stderr (the first few) and in the errors file (all)."""

    def __init__(self, errors: Path) -> None:
        self.file = errors.open("w", encoding="utf-8")
        self.reasons: Counter = Counter()
        self.count = 0

    def skip(self, i: int, row: Any, kind: str, reason: str, path: str | None = None) -> None:
        self.count += 1
        self.reasons[kind] += 1
        rid = row.get("id") if isinstance(row, dict) else None
        where = f"row {i}" + (f" (id {rid})" if rid is not None else "")
        if self.count <= SHOWN_ERRORS:
            print(f"tokenize-chat: {where}: {reason}; row skipped", file=sys.stderr)
        elif self.count == SHOWN_ERRORS + 1:
            print("tokenize-chat: further skipped rows only in the errors file", file=sys.stderr)
        rec = {"row": i, "kind": kind, "reason": reason}
        if rid is not None:
            rec["id"] = rid
        if path is not None:
            rec["path"] = path
        self.file.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        self.file.close()


def tokenize_chat(cfg: ChatTokenizeConfig) -> ChatTokenizeSummary:
    """Tokenize ``cfg.dialogues`` into ``cfg.output`` (see the module docstring)."""
    from tqdm.auto import tqdm

    from anygpt.bundle import Bundle
    from anygpt.train.tokenize_media import RowError, _encode, load_media

    src = Path(cfg.dialogues)
    if not src.is_file():
        raise TrainError(f"dialogue file not found: {src}")
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise TrainError(f"{out} exists; use --overwrite to replace it")
    errors = Path(cfg.errors) if cfg.errors else out.with_name(out.stem + ".errors.jsonl")
    root = Path(cfg.media_root) if cfg.media_root else src.parent
    bundle = Bundle(cfg.model, device=cfg.device)
    layout = bundle.layout
    available = set(bundle.input_modalities)

    def resolve(p: str) -> Path:
        q = Path(p.strip())
        return q if q.is_absolute() else root / q

    # Pass 1: which rows are usable, and which media they need.
    out.parent.mkdir(parents=True, exist_ok=True)
    report = _Reporter(errors)
    good: dict[int, list[tuple[str, str]]] = {}
    total = 0
    for i, row, problem in _read_rows(src, cfg.limit):
        total += 1
        turns = _messages(row) if problem is None else None
        if turns is None:
            report.skip(i, row, "malformed row", problem or "no conversation list")
            continue
        refs = [r for t in turns for _, text in _texts(t) for r in placeholders(text)]
        bad = next(((m, p) for m, p in refs if m not in available), None)
        if bad:
            report.skip(i, row, "unknown modality", f"the model has no '{bad[0]}' modality")
            continue
        missing = next(((m, p) for m, p in refs if not resolve(p).is_file()), None)
        if missing:
            m, p = missing
            report.skip(i, row, "missing file", f"missing {m} file {resolve(p)}", p)
            continue
        good[i] = refs

    # Encode each distinct media file once, in batches per modality.
    segments: dict[tuple[str, str], str] = {}
    failed: dict[tuple[str, str], str] = {}
    wanted = list(dict.fromkeys(r for refs in good.values() for r in refs))
    for modality in sorted({m for m, _ in wanted}):
        items = [r for r in wanted if r[0] == modality]
        if modality == "video":
            _encode_videos(bundle, items, resolve, segments, failed, cfg.batch_size)
            continue
        tok = bundle.modality(modality)
        bar = tqdm(total=len(items), desc=f"tokenize-chat {modality}", unit="file")
        for start in range(0, len(items), max(1, cfg.batch_size)):
            batch, media = [], []
            for ref in items[start : start + cfg.batch_size]:
                try:
                    media.append(load_media(tok, modality, str(resolve(ref[1])), root, None))
                    batch.append(ref)
                except RowError as exc:
                    failed[ref] = str(exc)
            for ref, seg in zip(batch, _encode(tok, layout, modality, media), strict=True):
                if isinstance(seg, RowError):
                    failed[ref] = str(seg)
                else:
                    segments[ref] = seg
            bar.update(min(cfg.batch_size, len(items) - start))
        bar.close()

    # Pass 2: write the usable rows with their placeholders replaced.
    tmp = out.with_name(f".{out.name}.partial")
    written = 0
    try:
        with tmp.open("w", encoding="utf-8") as fo:
            for i, row, _ in _read_rows(src, cfg.limit):
                if i not in good:
                    continue
                bad = next((r for r in good[i] if r in failed), None)
                if bad:
                    report.skip(i, row, "unreadable file", f"{bad[0]} file {bad[1]}: {failed[bad]}")
                    continue
                for turn in _messages(row) or []:
                    for key, text in _texts(turn):
                        turn[key] = PLACEHOLDER_RE.sub(
                            lambda m: segments[(m.group(1), m.group(2))], text
                        )
                fo.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
            fo.flush()
            os.fsync(fo.fileno())
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        report.close()
    if not report.count:
        errors.unlink(missing_ok=True)
    return ChatTokenizeSummary(total, written, report.count, len(segments), dict(report.reasons))


def _encode_videos(bundle, items, resolve, segments: dict, failed: dict, batch_size: int) -> None:
    """Video placeholders -> segments (frames and soundtrack through the bundle's tokenizers)."""
    from tqdm.auto import tqdm

    from anygpt.modalities.base import ModalityError

    bar = tqdm(total=len(items), desc="tokenize-chat video", unit="file")
    for start in range(0, len(items), max(1, batch_size)):
        batch = items[start : start + batch_size]
        try:
            segs = bundle.video.encode([resolve(p) for _, p in batch])
            segments.update(zip(batch, segs, strict=True))
        except ModalityError:  # one bad clip: find it, keep the others
            for ref in batch:
                try:
                    segments[ref] = bundle.video.encode([resolve(ref[1])])[0]
                except ModalityError as exc:
                    failed[ref] = str(exc)
        bar.update(len(batch))
    bar.close()


# ---------------------------------------------------------------------- command line
def cmd_tokenize_chat(args: argparse.Namespace) -> int:
    cfg = ChatTokenizeConfig(
        dialogues=args.dialogues,
        model=args.model,
        output=args.output,
        media_root=args.media_root,
        errors=args.errors,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        overwrite=args.overwrite,
    )
    summary = tokenize_chat(cfg)
    print(summary.line(cfg.output))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tokenize-chat`` to the ``anygpt`` parser."""
    p = sub.add_parser(
        "tokenize-chat",
        help="replace media placeholders in dialogues by token segments (for anygpt sft)",
        description="Dialogue JSON Lines (conversation rows as 'anygpt sft' reads them) whose "
        "messages hold placeholders {image:PATH}, {speech:PATH}, {music:PATH}, {audio:PATH} "
        "-> the same rows with each placeholder replaced by the media's token segment. Rows "
        "with a missing or unreadable file are skipped and listed in OUT.errors.jsonl.",
    )
    p.add_argument("dialogues", help="dialogue .jsonl with placeholders")
    p.add_argument("--model", required=True, help="bundle whose modality tokenizers are used")
    p.add_argument("--output", "-o", required=True, help="output .jsonl")
    p.add_argument("--media-root", help="folder of relative media paths (default: the file's)")
    p.add_argument("--errors", help="errors file (default: OUTPUT stem + .errors.jsonl)")
    p.add_argument("--batch-size", type=int, default=16, help="media files encoded together")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(handler=cmd_tokenize_chat)
