"""Sharded, streaming ``anygpt tokenize``: a manifest -> Parquet parts that ``datasets`` loads.

The manifest is read as a stream (one row at a time; only the batch being encoded and the part
being filled are in memory).  Rows are dealt to ``num_shards`` shards round-robin (row ``i`` goes
to shard ``i % num_shards``), so each process of ``accelerate launch`` (or each job of a cluster
array) can take one with ``--shard-index`` (default under a launcher: its ``RANK`` of
``WORLD_SIZE``).  Output folder ``OUT``::

    OUT/part-SSSSS-PPPPP.parquet     rows {"text", <modality>} (the JSON Lines format's columns)
    OUT/.tokenize/errors-SSSSS.jsonl failed rows of shard S (row number, reason, kind)
    OUT/.tokenize/progress-SSSSS.json what shard S has finished

``datasets.load_dataset("parquet", data_files="OUT/*.parquet")`` (or ``load_dataset("OUT")``)
reads all parts; training reads the folder directly (``--data OUT``, see :class:`ParquetRows`).

Resuming: a part is written under a temporary name and renamed once complete, then the progress
file records it with the manifest position and the errors file size.  A re-run removes parts past
the record, cuts the errors file back, and continues from the recorded position, so a killed shard
resumes to byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anygpt.train.config import DataSpec, TrainError
from anygpt.train.tokenize_media import (
    Manifest,
    TokenizeConfig,
    TokenizeSummary,
    _same_file,
    _truncate,
    _write_json_atomic,
    encode_rows,
    error_line,
    output_settings,
)

STATE_DIR = ".tokenize"


@dataclass
class ShardPlan:
    """Which shard this run writes, and how many rows of the manifest go into one part file."""

    num_shards: int = 1
    shard_index: int = 0
    rows_per_part: int = 4096

    @classmethod
    def resolve(cls, num_shards: int | None, shard_index: int | None, rows_per_part: int):
        """Explicit values, else the launcher's ``WORLD_SIZE``/``RANK``, else one shard."""
        if num_shards is None:
            num_shards = int(os.environ.get("WORLD_SIZE", "1") or 1)
            if shard_index is None:
                shard_index = int(os.environ.get("RANK", "0") or 0)
        shard_index = 0 if shard_index is None else shard_index
        if num_shards < 1:
            raise TrainError("--num-shards must be at least 1")
        if not 0 <= shard_index < num_shards:
            raise TrainError(f"--shard-index must lie in 0..{num_shards - 1}")
        if rows_per_part < 1:
            raise TrainError("--rows-per-part must be at least 1")
        return cls(num_shards, shard_index, rows_per_part)


def shard_device(device: str) -> str:
    """``auto`` under a launcher: this process's own GPU (``LOCAL_RANK``), not everyone's first."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    if device == "auto" and local is not None and torch.cuda.is_available():
        return f"cuda:{int(local) % torch.cuda.device_count()}"
    return device


def part_name(shard: int, part: int) -> str:
    return f"part-{shard:05d}-{part:05d}.parquet"


def _write_part(path: Path, modality: str, rows: list[tuple[str, str]]) -> None:
    """Rows (text, segment) -> one Parquet file, complete before it takes its name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "text": pa.array([t for t, _ in rows], pa.string()),
            modality: pa.array([s for _, s in rows], pa.string()),
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def tokenize_to_shards(cfg: TokenizeConfig, plan: ShardPlan) -> TokenizeSummary:
    """Tokenize this shard of ``cfg.manifest`` into Parquet parts under ``cfg.output``."""
    from anygpt.bundle import Bundle

    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out} is a file; sharded output goes into a folder")
    if _same_file(out, Path(cfg.manifest)):
        raise TrainError(f"the output {out} is the manifest itself: choose another output folder")
    state_dir = out / STATE_DIR
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"cannot create {state_dir}: {exc.strerror}") from exc
    s = plan.shard_index
    errors = Path(cfg.errors) if cfg.errors else state_dir / f"errors-{s:05d}.jsonl"
    progress = state_dir / f"progress-{s:05d}.json"

    manifest = Manifest(cfg.manifest, cfg.split)
    bundle = Bundle(cfg.model, device=shard_device(cfg.device))
    modality = cfg.modality
    if modality is None:
        found = [c for c in manifest.columns if c in bundle.config.modalities]
        if len(found) != 1:
            raise TrainError(
                f"cannot tell the modality: media columns found: {', '.join(found) or 'none'}; "
                "pass --modality"
            )
        modality = found[0]
    if modality not in bundle.layout.modalities:
        raise TrainError(f"the model has no tokens for modality '{modality}'")
    column = cfg.column or modality
    if manifest.columns and column not in manifest.columns:
        raise TrainError(
            f"the manifest has no column '{column}' (it has {', '.join(manifest.columns)})"
        )
    tok = bundle.modality(modality)
    root = Path(cfg.media_root) if cfg.media_root else manifest.path.parent
    settings = {
        **output_settings(cfg, bundle, modality, column, root),
        "fingerprint": manifest.fingerprint(),
        "modality": modality,
        "num_shards": plan.num_shards,
        "rows_per_part": plan.rows_per_part,
        "limit": cfg.limit,
    }
    state = {"settings": settings, "parts": 0, "next_row": s, "errors_bytes": 0}
    state.update(written=0, failed=0, reasons={})
    if cfg.overwrite:
        progress.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)
        for p in out.glob(f"part-{s:05d}-*.parquet*"):
            p.unlink()
    if progress.is_file():
        old = json.loads(progress.read_text(encoding="utf-8"))
        changed = [
            f"{k} {old['settings'].get(k)!r} -> {v!r}"
            for k, v in settings.items()
            if old["settings"].get(k) != v
        ]
        if changed:
            raise TrainError(
                f"shard {s} of {out} was started with other settings ({'; '.join(changed)}); "
                "run with the earlier ones, or use --overwrite to start this shard again"
            )
        state = old
    elif any(out.glob(f"part-{s:05d}-*.parquet")):
        raise TrainError(
            f"{out} holds parts of shard {s} without its progress file; use --overwrite"
        )
    # what a killed run left past its last record
    for p in out.glob(f"part-{s:05d}-*.parquet*"):
        if p.name.endswith(".tmp") or int(p.name[11:16]) >= state["parts"]:
            p.unlink()
    _truncate(errors, state["errors_bytes"])
    skipped_before = state["written"] + state["failed"]

    total = manifest.length if cfg.limit is None else min(manifest.length, cfg.limit)
    reasons = Counter(state["reasons"])
    part_rows: list[tuple[str, str]] = []
    consumed_to = state["next_row"]

    def encode_batch(batch: list, fe) -> None:
        good, bad = encode_rows(tok, bundle.layout, modality, column, root, cfg, batch)
        part_rows.extend((text, seg) for _, text, seg in good)
        for i, row, err in bad:
            fe.write(error_line(i, row, err, column))
            reasons[err.kind] += 1
        state["failed"] += len(bad)

    def finish_part(fe, next_row: int) -> None:
        if part_rows:
            _write_part(out / part_name(s, state["parts"]), modality, part_rows)
            state["parts"] += 1
            state["written"] += len(part_rows)
            part_rows.clear()
        fe.flush()
        os.fsync(fe.fileno())
        state.update(next_row=next_row, errors_bytes=fe.tell(), reasons=dict(reasons))
        _write_json_atomic(progress, state)

    with errors.open("ab") as fe:
        batch: list = []
        in_part = 0
        for item in manifest.rows(state["next_row"]):
            i = item[0]
            if i >= total:
                break
            if i % plan.num_shards != s:
                continue
            batch.append(item)
            in_part += 1
            consumed_to = i + 1
            if len(batch) >= cfg.batch_size or in_part >= plan.rows_per_part:
                encode_batch(batch, fe)
                batch = []
            if in_part >= plan.rows_per_part:
                finish_part(fe, consumed_to)
                in_part = 0
        if batch:
            encode_batch(batch, fe)
        finish_part(fe, max(consumed_to, total))
    return TokenizeSummary(
        total, state["written"], state["failed"], skipped_before, dict(state["reasons"])
    )


# ---------------------------------------------------------------------- reading parts
def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a dataset path: the file itself, or a folder's ``*.parquet``."""
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if p.is_file())
    return [path] if path.suffix == ".parquet" and path.is_file() else []


class ParquetRows:
    """Rows of Parquet parts (a file or a folder of them) by index, one row group in memory.

    Same interface as :class:`anygpt.train.data.JsonlRows`: ``len``, ``row(i)``, ``fingerprint``.
    """

    def __init__(self, spec: DataSpec) -> None:
        import pyarrow.parquet as pq

        self.spec = spec
        self.path = Path(spec.path)
        self.files = parquet_files(self.path)
        if not self.files:
            raise TrainError(f"no Parquet files in {self.path}")
        # (file, row group) -> first row, from the footers only
        self._groups: list[tuple[int, int]] = []
        starts = [0]
        for f, name in enumerate(self.files):
            meta = pq.ParquetFile(name).metadata
            for g in range(meta.num_row_groups):
                self._groups.append((f, g))
                starts.append(starts[-1] + meta.row_group(g).num_rows)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._cached: tuple[int, list[dict]] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def row(self, i: int) -> dict:
        import pyarrow.parquet as pq

        g = int(np.searchsorted(self._starts, i, side="right")) - 1
        if self._cached is None or self._cached[0] != g:
            f, group = self._groups[g]
            table = pq.ParquetFile(self.files[f]).read_row_group(group)
            self._cached = (g, table.to_pylist())
        return self._cached[1][i - int(self._starts[g])]

    def fingerprint(self) -> dict:
        stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files]
        return {"path": str(self.path.resolve()), "parts": stats}


def open_rows(spec: DataSpec) -> Any:
    """The row source of a dataset spec: Parquet parts, or a JSON Lines file."""
    from anygpt.train.data import JsonlRows

    path = Path(spec.path)
    if path.is_dir() or path.suffix == ".parquet":
        return ParquetRows(spec)
    return JsonlRows(spec)
