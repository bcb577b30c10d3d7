"""``anygpt tokenize``: media manifests -> token datasets in AnyGPT's JSON Lines format.

Input: a JSON Lines or CSV/TSV manifest with a ``text`` column and one media column named after a
modality (``speech``, ``music``, ``audio``, ``image``) holding file paths (relative paths are read
from ``--media-root``, by default the manifest's folder), or a Hugging Face ``datasets`` folder
(``save_to_disk``) whose media column holds audio (``{"array", "sampling_rate"}`` or an ``Audio``
feature, read without torchcodec), images (an ``Image`` feature) or paths.

Output: one line per usable row, exactly like ``data/pretrain/*/*.jsonl``::

    {"text": "hello world", "speech": "<sosp><🗣️12><🗣️7>...<eosp>"}

Rows that fail (missing, corrupt or empty media, no text) go to ``OUT.errors.jsonl`` with the row
number and reason, and are counted in the summary line; they never stop the run.

Resuming: rows are encoded in batches; after each batch its lines are appended and flushed to both
files, then ``OUT.progress.json`` records the rows done and both file sizes (written under a
temporary name, then renamed).  Re-running continues after the last recorded batch, first
cutting anything a crash left past the recorded sizes, so nothing is lost or written twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anygpt.train.config import TrainError


@dataclass
class TokenizeConfig:
    """Settings of one ``anygpt tokenize`` run."""

    manifest: str
    model: str
    output: str
    modality: str | None = None  # default: the one column named after a modality of the model
    column: str | None = None  # media column (default: the modality name)
    text_column: str = "text"
    errors: str | None = None  # default: OUTPUT with .errors.jsonl
    media_root: str | None = None
    split: str = "train"  # for a DatasetDict folder
    batch_size: int = 16
    max_seconds: float | None = None  # audio window; default: the modality's own
    device: str = "auto"
    limit: int | None = None
    overwrite: bool = False


# ---------------------------------------------------------------------- manifests
class Manifest:
    """Rows of a manifest as dicts, with their count and a fingerprint for resuming."""

    def __init__(self, path: str, split: str = "train") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise TrainError(f"manifest not found: {self.path}")
        self.dataset = None
        if self.path.is_dir():
            self._open_dataset(split)
        elif self.path.suffix.lower() in (".csv", ".tsv"):
            self.kind = "csv"
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, dialect=self._dialect())
                self.columns = list(reader.fieldnames or [])
                self.length = sum(1 for _ in reader)
        else:
            self.kind = "jsonl"
            self.columns = []
            with self.path.open("rb") as f:
                self.length = sum(1 for line in f if line.strip())
                f.seek(0)
                for line in f:
                    if line.strip():
                        try:
                            self.columns = list(json.loads(line))
                        except (json.JSONDecodeError, TypeError):
                            pass
                        break

    def _dialect(self) -> Any:
        return "excel-tab" if self.path.suffix.lower() == ".tsv" else "excel"

    def _open_dataset(self, split: str) -> None:
        import datasets

        try:
            ds = datasets.load_from_disk(str(self.path))
        except FileNotFoundError as exc:
            raise TrainError(
                f"{self.path} is not a 'datasets' folder saved with save_to_disk"
            ) from exc
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise TrainError(f"{self.path} has no split '{split}' (it has {', '.join(ds)})")
            ds = ds[split]
        # decode media ourselves: Audio decoding needs torchcodec, Image gives us bytes or paths
        for name, feature in ds.features.items():
            if isinstance(feature, (datasets.Audio, datasets.Image)) and feature.decode:
                ds = ds.cast_column(name, type(feature)(decode=False))
        self.kind = "dataset"
        self.dataset = ds
        self.columns = list(ds.column_names)
        self.length = len(ds)

    def fingerprint(self) -> str:
        h = hashlib.sha256(str(self.path.resolve()).encode())
        if self.dataset is not None:
            h.update(str(self.length).encode())
            h.update(str(self.dataset.features).encode())
        else:
            st = self.path.stat()
            h.update(f"{st.st_size}".encode())
            with self.path.open("rb") as f:
                h.update(f.read(1 << 20))
        return h.hexdigest()[:16]

    def rows(self, start: int = 0) -> Iterator[tuple[int, dict | None, str | None]]:
        """``(index, row, problem)`` from ``start``; a malformed line gives ``(i, None, reason)``."""
        if self.kind == "dataset":
            for i in range(start, self.length):
                yield i, self.dataset[i], None
        elif self.kind == "csv":
            with self.path.open(newline="", encoding="utf-8") as f:
                for i, row in enumerate(csv.DictReader(f, dialect=self._dialect())):
                    if i >= start:
                        yield i, row, None
        else:
            with self.path.open("rb") as f:
                i = 0
                for line in f:
                    if not line.strip():
                        continue
                    if i >= start:
                        try:
                            obj = json.loads(line)
                            yield (
                                (i, obj, None)
                                if isinstance(obj, dict)
                                else (i, None, "not a JSON object")
                            )
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            yield i, None, "malformed JSON line"
                    i += 1


# ---------------------------------------------------------------------- media
class RowError(Exception):
    """A row that cannot be tokenized: the message is the reason, ``kind`` its class."""

    def __init__(self, reason: str, kind: str = "other") -> None:
        super().__init__(reason)
        self.kind = kind


def failure_kind(message: str) -> str:
    """Class of a media error message (file names must already be taken out)."""
    m = message.lower()
    for kind, keys in (
        (
            "missing file",
            (
                "not found",
                "not a file",
                "no speech file",
                "no music file",
                "no audio file",
                "no image file",
            ),
        ),
        ("empty audio", ("is empty", "holds no samples", "empty audio")),
        ("too short", ("too short",)),
        ("too large", ("too large", "pixels, more than")),
        (
            "unreadable file",
            ("cannot read", "cannot decode", "could not be decoded", "not a recognised"),
        ),
    ):
        if any(k in m for k in keys):
            return kind
    return "other"


def _waveform(tok: Any, modality: str, array: Any, rate: int, max_seconds: float | None):
    """A decoded waveform -> what ``tok.encode`` takes: mono float32 [T] at its sample rate."""
    import torch

    from anygpt.audio import resample

    wav = np.asarray(array, dtype=np.float32)
    if wav.ndim == 2:  # [T, C] as soundfile gives; a [C, T] array is transposed
        wav = wav if wav.shape[0] >= wav.shape[1] else wav.T
        # the tokenizer's own policy, the same one its ``load`` applies to files
        wav = wav[:, 0] if getattr(tok, "channels", "mean") == "first" else wav.mean(axis=1)
    wav = wav.reshape(-1)
    if max_seconds is not None:
        wav = wav[: int(round(max_seconds * rate))]
    if wav.size == 0:
        raise RowError("empty audio", "empty audio")
    if not np.isfinite(wav).all():
        raise RowError("audio holds NaN or infinite samples", "unreadable file")
    wav = resample(wav, int(rate), int(tok.sample_rate))
    hop = getattr(tok, "hop_length", 1)
    if wav.shape[0] < hop:
        raise RowError(
            f"audio too short ({wav.shape[0]} samples at {tok.sample_rate} Hz)", "too short"
        )
    return torch.from_numpy(np.ascontiguousarray(wav))


def load_media(tok: Any, modality: str, value: Any, root: Path, max_seconds: float | None) -> Any:
    """One manifest cell -> the media ``tok.encode`` takes; raises :class:`RowError`."""
    from anygpt.modalities.base import ModalityError

    image = tok.media_kind == "image"
    try:
        if isinstance(value, dict) and value.get("array") is not None:
            if image:
                raise RowError("an audio array in an image column", "wrong media type")
            return _waveform(
                tok, modality, value["array"], int(value["sampling_rate"]), max_seconds
            )
        if isinstance(value, dict) and value.get("bytes"):
            data = value["bytes"]
            if image:
                from anygpt.imageio import ImageError, open_image

                try:
                    return open_image(data)
                except ImageError as exc:
                    raise RowError(str(exc), failure_kind(str(exc))) from exc
            import soundfile as sf

            try:
                array, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
            except Exception as exc:  # noqa: BLE001 - soundfile raises several types
                raise RowError(f"cannot decode audio bytes: {exc}", "unreadable file") from exc
            return _waveform(tok, modality, array, rate, max_seconds)
        if isinstance(value, dict):
            value = value.get("path")
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"no {modality} file", "missing file")
        path = Path(value.strip())
        path = path if path.is_absolute() else root / path
        if image:
            return tok.load(path)
        kw = (
            {}
            if max_seconds is None
            else (
                {"max_seconds": max_seconds} if modality == "speech" else {"window_s": max_seconds}
            )
        )
        return tok.load(path, **kw)
    except ModalityError as exc:
        text = str(exc)
        name = str(value) if isinstance(value, (str, Path)) else ""
        bare = text.replace(str(root / name), "").replace(name, "") if name else text
        raise RowError(text, failure_kind(bare)) from exc


def encode_rows(
    tok: Any,
    layout: Any,
    modality: str,
    column: str,
    root: Path,
    cfg: TokenizeConfig,
    batch: list[tuple[int, dict | None, str | None]],
) -> tuple[list[tuple[int, str, str]], list[tuple[int, dict | None, RowError]]]:
    """Load and encode one batch of manifest rows ``(index, row, problem)``.

    Returns ``(index, text, segment)`` for the rows that worked, in manifest order, and
    ``(index, row, error)`` for the others, sorted by index.  One odd row never ends the run.
    """
    bad: list[tuple[int, dict | None, RowError]] = []
    media, keep = [], []
    for i, row, problem in batch:
        try:
            if problem:
                raise RowError(problem, "malformed row")
            text = row.get(cfg.text_column)
            if not isinstance(text, str) or not text.strip():
                raise RowError(f"no text in column '{cfg.text_column}'", "no text")
            media.append(load_media(tok, modality, row.get(column), root, cfg.max_seconds))
            keep.append((i, row, text))
        except RowError as exc:
            bad.append((i, row, exc))
        except Exception as exc:  # noqa: BLE001 - one odd row must not end the run
            bad.append((i, row, RowError(f"{type(exc).__name__}: {exc}", "unexpected error")))
    good: list[tuple[int, str, str]] = []
    for (i, row, text), seg in zip(keep, _encode(tok, layout, modality, media), strict=True):
        if isinstance(seg, RowError):
            bad.append((i, row, seg))
        else:
            good.append((i, text, seg))
    return good, sorted(bad, key=lambda b: b[0])


def error_line(i: int, row: dict | None, err: RowError, column: str) -> bytes:
    """One line of the errors file: the row's index, reason, kind, media path and id."""
    rec: dict[str, Any] = {"row": i, "reason": str(err), "kind": err.kind}
    if row is not None:
        ref = _media_ref(row.get(column))
        if ref is not None:
            rec["path"] = ref
        if "id" in row:
            rec["id"] = row["id"]
    return (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _media_ref(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return value["path"]
    return None


# ---------------------------------------------------------------------- progress file
def _progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.json")


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _truncate(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size > size:
        with path.open("r+b") as f:
            f.truncate(size)


# ---------------------------------------------------------------------- the run
@dataclass
class TokenizeSummary:
    """Counts of one run (``written``/``failed`` include rows done by earlier runs)."""

    total: int
    written: int
    failed: int
    skipped: int  # already done before this run
    reasons: dict

    def line(self, cfg: TokenizeConfig, errors: Path) -> str:
        s = (
            f"tokenize: {self.total} rows: {self.written} written to {cfg.output}, "
            f"{self.failed} failed"
        )
        if self.failed:
            s += f" (see {errors})"
        if self.skipped:
            s += f", {self.skipped} already done by an earlier run"
        return s


def tokenize_manifest(cfg: TokenizeConfig) -> TokenizeSummary:
    """Tokenize ``cfg.manifest`` into ``cfg.output`` (see the module docstring)."""
    from anygpt.bundle import Bundle

    out = Path(cfg.output)
    errors = Path(cfg.errors) if cfg.errors else out.with_name(out.stem + ".errors.jsonl")
    progress_path = _progress_path(out)
    check_outputs(Path(cfg.manifest), out, errors, progress_path)
    manifest = Manifest(cfg.manifest, cfg.split)
    bundle = Bundle(cfg.model, device=cfg.device)
    layout = bundle.layout
    modality = cfg.modality
    if modality is None:
        candidates = [c for c in manifest.columns if c in bundle.config.modalities]
        if cfg.column:
            raise TrainError("--column needs --modality (which modality the column holds)")
        if len(candidates) != 1:
            found = ", ".join(candidates) or "none"
            raise TrainError(
                f"cannot tell the modality: media columns found: {found}; pass --modality "
                f"(the model has {', '.join(bundle.config.modalities)})"
            )
        modality = candidates[0]
    if modality not in layout.modalities:
        raise TrainError(f"the model has no tokens for modality '{modality}'")
    column = cfg.column or modality
    if manifest.columns and column not in manifest.columns:
        raise TrainError(
            f"the manifest has no column '{column}' (it has {', '.join(manifest.columns)})"
        )
    tok = bundle.modality(modality)
    root = (
        Path(cfg.media_root)
        if cfg.media_root
        else (manifest.path.parent if manifest.path.is_file() else Path.cwd())
    )

    fingerprint = manifest.fingerprint()
    settings = output_settings(cfg, bundle, modality, column, root)
    state = {
        "manifest": str(manifest.path),
        "fingerprint": fingerprint,
        "modality": modality,
        "settings": settings,
        "rows_done": 0,
        "output_bytes": 0,
        "errors_bytes": 0,
        "written": 0,
        "failed": 0,
        "reasons": {},
    }
    if cfg.overwrite:
        for p in (out, errors, progress_path):
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                raise TrainError(f"cannot remove {p} for --overwrite: {exc.strerror}") from exc
    if progress_path.is_file():
        old = json.loads(progress_path.read_text(encoding="utf-8"))
        if old.get("fingerprint") != fingerprint or old.get("modality") != modality:
            raise TrainError(
                f"{out} was started from another manifest or modality; use --overwrite to start again"
            )
        changed = [
            f"{k} {old['settings'].get(k)!r} -> {v!r}"
            for k, v in settings.items()
            if "settings" in old and old["settings"].get(k) != v
        ]
        if changed:
            raise TrainError(
                f"{out} was started with other settings ({'; '.join(changed)}); resuming would "
                "mix rows of both in one file: run with the earlier settings, or use --overwrite "
                "to start again"
            )
        state = old
        state["settings"] = settings
        _truncate(out, state["output_bytes"])  # drop what a crash wrote after the last record
        _truncate(errors, state["errors_bytes"])
    elif out.exists() and out.stat().st_size:
        raise TrainError(f"{out} exists without its progress file; use --overwrite to start again")
    try:
        skipped = _run_batches(
            cfg, manifest, tok, layout, modality, column, root, state, out, errors
        )
    except OSError as exc:
        raise TrainError(
            f"cannot write {getattr(exc, 'filename', None) or out}: {exc.strerror or exc}; "
            f"the first {state['rows_done']} rows are done and saved, re-running the same "
            "command continues from there"
        ) from exc
    total = manifest.length if cfg.limit is None else min(manifest.length, cfg.limit)
    return TokenizeSummary(
        total, state["written"], state["failed"], skipped, dict(state.get("reasons", {}))
    )


def _run_batches(cfg, manifest, tok, layout, modality, column, root, state, out, errors) -> int:
    """Encode the rows from ``state["rows_done"]`` on, appending to ``out`` and ``errors``.

    Returns the number of rows an earlier run had done.
    """
    from tqdm.auto import tqdm

    progress_path = _progress_path(out)

    total = manifest.length if cfg.limit is None else min(manifest.length, cfg.limit)
    skipped = min(state["rows_done"], total)
    reasons = Counter(state.get("reasons", {}))
    # closed on any exit, so an error line starts on a line of its own
    bar = tqdm(total=total, initial=skipped, desc=f"tokenize {modality}", unit="row")
    with bar, out.open("ab") as fo, errors.open("ab") as fe:

        def flush_batch(batch: list[tuple[int, dict | None, str | None]]) -> None:
            good, bad = encode_rows(tok, layout, modality, column, root, cfg, batch)
            good_lines = [
                (i, json.dumps({"text": text, modality: seg}, ensure_ascii=False))
                for i, text, seg in good
            ]
            for _, line in good_lines:
                fo.write((line + "\n").encode("utf-8"))
            for i, row, err in bad:
                fe.write(error_line(i, row, err, column))
                reasons[err.kind] += 1
            for f in (fo, fe):
                f.flush()
                os.fsync(f.fileno())
            done = dict(
                state,
                rows_done=batch[-1][0] + 1,
                output_bytes=fo.tell(),
                errors_bytes=fe.tell(),
                written=state["written"] + len(good_lines),
                failed=state["failed"] + len(bad),
                reasons=dict(reasons),
            )
            _write_json_atomic(progress_path, done)
            state.update(done)  # only once recorded: an error message counts what is on disk
            bar.update(len(batch))

        batch: list = []
        for item in manifest.rows(state["rows_done"]):
            if item[0] >= total:
                break
            batch.append(item)
            if len(batch) >= cfg.batch_size:
                flush_batch(batch)
                batch = []
        if batch:
            flush_batch(batch)
    return skipped


def check_outputs(manifest: Path, out: Path, errors: Path, progress: Path) -> None:
    """Refuse outputs that would destroy the input or cannot be files, before any work.

    An output that is the manifest (the same path, or the same file through a link) would be
    emptied by ``--overwrite`` or appended to while it is read.
    """
    for what, path in (("output", out), ("errors file", errors), ("progress file", progress)):
        if path.is_dir():
            raise TrainError(
                f"the {what} {path} is a folder; give a file name (e.g. {path}/data.jsonl)"
            )
        if _same_file(path, manifest):
            raise TrainError(
                f"the {what} {path} is the manifest itself; writing it would destroy the input: "
                "choose another output name"
            )
    if _same_file(out, errors):
        raise TrainError(f"the output and the errors file are the same file ({out})")
    for path in (out, errors):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "it is not a folder" if isinstance(exc, FileExistsError) else exc.strerror
            raise TrainError(f"cannot create the folder of {path}: {exc.filename}: {why}") from exc
        if not os.access(path.parent, os.W_OK):
            raise TrainError(f"cannot write to {path.parent}: permission denied")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def output_settings(
    cfg: TokenizeConfig, bundle: Any, modality: str, column: str, root: Path
) -> dict:
    """Every setting that changes the lines written (a resumed run must have the same ones)."""
    entry = bundle.config.modalities.get(modality)
    described = json.dumps(
        asdict(entry) if entry is not None else None, sort_keys=True, default=str
    )
    return {
        "model": str(Path(cfg.model).resolve()),
        "tokenizer": hashlib.sha256(described.encode()).hexdigest()[:16],
        "column": column,
        "text_column": cfg.text_column,
        "media_root": str(root.resolve()),
        "max_seconds": cfg.max_seconds,
        "split": cfg.split,
    }


def _encode(tok: Any, layout: Any, modality: str, media: list) -> list:
    """Encode a batch (``tok.encode``); on failure, item by item to isolate the bad one."""
    if not media:
        return []
    try:
        codes = tok.encode(media).unbatch()
    except Exception:  # noqa: BLE001 - one bad item must not fail the batch
        if len(media) == 1:
            exc = sys.exc_info()[1]
            return [RowError(f"encoding failed: {exc}", "encoding failed")]
        return [r for m in media for r in _encode(tok, layout, modality, [m])]
    out: list = []
    for c in codes:
        if c.shape[-1] == 0:
            out.append(RowError("no frames after encoding", "too short"))
        else:
            out.append(layout.segment_text(modality, c))
    return out


def config_dict(cfg: TokenizeConfig) -> dict:
    return asdict(cfg)
