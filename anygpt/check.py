"""``anygpt check --model M``: is every file of a model in place and usable?

For the LLM and each modality of a bundle (or of an AnyGPT model folder) it lists each file the
model needs, where it is looked for (relative paths resolve against the bundle folder), whether it
is present and readable, where it is released, where AnyGPT's command lines expect it and which
flag points at another copy.  Files are checked from their headers (safetensors headers, the zip
directory of torch files, JSON that parses); ``--load`` also loads each part, which checks every
weight name and shape against the model that reads it (slow for released models).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class FileCheck:
    """One file of one part of a model."""

    part: str  # "llm" or a modality name
    key: str  # the file's key in bundle.json ("config", "checkpoint", ...)
    path: str
    status: str  # "ok", "missing", "damaged", "unusable"
    detail: str = ""
    released_as: str = ""
    expected_at: str = ""  # where AnyGPT's command lines look for it
    flag: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def inspect_path(path: Path) -> tuple[str, str]:
    """``(status, detail)`` of a weights file or model folder, from headers only."""
    if not path.exists():
        return "missing", "not found"
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        if not files:
            return "missing", "an empty folder"
        weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
        for w in weights:
            status, detail = inspect_path(w)
            if status != "ok":
                return status, f"{w.relative_to(path)}: {detail}"
        configs = [p.name for p in files if p.name in ("config.json", "model_index.json")]
        if not configs:
            return "unusable", "a folder without config.json or model_index.json"
        return "ok", f"folder: {len(weights)} weight files"
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                return "ok", f"{len(list(handle.keys()))} tensors"
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
            return "ok", "JSON"
        if path.suffix in (".pt", ".pth", ".dev", ".bin", ".ckpt"):
            if not zipfile.is_zipfile(path):
                return "damaged", "not a complete torch file"
            import torch

            from anygpt.checkpoint import _load_failure

            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                return "unusable", f"not loadable as weights only ({_load_failure(exc)})"
            n = len(state) if isinstance(state, dict) else 0
            return "ok", f"{n} entries"
    except PermissionError:
        return "unusable", "permission denied"
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return "damaged", first[:200]
    return ("ok", f"{path.stat().st_size} bytes") if path.stat().st_size else ("damaged", "empty")


def _definitions() -> list[dict]:
    from anygpt.paths import tokenizers_dir

    out = []
    for f in sorted(tokenizers_dir().glob("*.json")):
        try:
            out.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _flags() -> dict[tuple[str, str], str]:
    """``(modality, file key or "main") -> flag`` of every modality file flag."""
    from anygpt.cli import FILE_FLAGS

    return {(modality, key or "main"): flag for flag, modality, key, _ in FILE_FLAGS}


def check_bundle(bundle, *, load: bool = False) -> list[FileCheck]:
    """Check every file of ``bundle`` (an :class:`~anygpt.bundle.Bundle`); nothing raises."""
    from anygpt.modalities.registry import family

    rows: list[FileCheck] = []
    llm = bundle.llm_dir
    for name in ("config.json", "tokenizer.model", "added_tokens.json"):
        status, detail = inspect_path(llm / name)
        rows.append(FileCheck("llm", name, str(llm / name), status, detail))
    weights = sorted(llm.glob("*.safetensors")) + sorted(llm.glob("*.bin"))
    if not weights:
        rows.append(FileCheck("llm", "weights", str(llm / "model.safetensors"), "missing",
                              "no model.safetensors or pytorch_model.bin"))  # fmt: skip
    for w in weights:
        rows.append(FileCheck("llm", "weights", str(w), *inspect_path(w)))
    released = "fnlp/AnyGPT-base or fnlp/AnyGPT-chat (a Hugging Face LLaMA folder)"
    for r in rows:
        r.released_as, r.expected_at, r.flag = released, "models/anygpt/base", "--model"
    if load and all(r.ok for r in rows):
        try:
            _ = bundle.llm
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            rows.append(FileCheck("llm", "loading", str(llm), "unusable", _one_line(exc)))

    definitions = _definitions()
    flags = _flags()
    for modality, entry in bundle.config.modalities.items():
        definition = next(
            (
                d
                for d in definitions
                if d.get("type") == entry.type and d.get("modality") == modality
            ),
            next((d for d in definitions if d.get("type") == entry.type), None),
        )
        main_key = family(entry.type).weights_file if _known(entry.type) else "model"
        first = len(rows)
        for key, rel in entry.files.items():
            path = bundle.path(rel)
            status, detail = inspect_path(path)
            row = FileCheck(modality, key, str(path), status, detail)
            if definition:
                row.released_as = definition.get("source", "")
                row.expected_at = definition.get("files", {}).get(key, "")
            else:
                row.released_as = "not released: made with this project (anygpt train-tokenizer)"
            row.flag = flags.get((modality, key)) or (
                flags.get((modality, "main"), "") if key == main_key else ""
            )
            rows.append(row)
        if load and all(r.ok for r in rows[first:]):
            try:
                tok = bundle.modality(modality, checked=True)
                for part in ("model", "soundstorm", "vocoder"):  # lazily loaded, strictly
                    getattr(tok, part, None)
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                rows.append(FileCheck(modality, "loading", str(bundle.root), "unusable",
                                      _one_line(exc)))  # fmt: skip
    return rows


def _known(type_name: str) -> bool:
    from anygpt.modalities.registry import family

    try:
        family(type_name)
        return True
    except Exception:  # noqa: BLE001
        return False


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def format_rows(root: Path, rows: list[FileCheck]) -> str:
    lines = [f"model: {root.resolve()}"]
    part = None
    for r in rows:
        if r.part != part:
            part = r.part
            lines.append(f"{part}:")
        mark = "ok" if r.ok else r.status.upper()
        lines.append(f"  [{mark}] {r.key}: {r.path} ({r.detail})")
        if not r.ok:
            where = f"; AnyGPT expects it at {r.expected_at}" if r.expected_at else ""
            flag = f"; or pass {r.flag} PATH" if r.flag else ""
            if r.released_as:
                lines.append(f"      released as {r.released_as}{where}{flag}")
    bad = sum(not r.ok for r in rows)
    lines.append(
        f"{len(rows)} files checked: " + ("all in place" if not bad else f"{bad} need attention")
    )
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    from anygpt.bundle import Bundle
    from anygpt.cli import apply_file_overrides, file_overrides
    from anygpt.debug_bundle import ensure_default_model

    root = Path(args.model) if args.model else ensure_default_model()
    bundle = Bundle(root, device="cpu")
    apply_file_overrides(bundle, file_overrides(args))
    rows = check_bundle(bundle, load=args.load)
    if args.json:
        print(json.dumps({"model": str(root.resolve()), "files": [asdict(r) for r in rows]},
                         ensure_ascii=False, indent=1))  # fmt: skip
    else:
        print(format_rows(root, rows))
    return 0 if all(r.ok for r in rows) else 1


def register(sub: argparse._SubParsersAction) -> None:
    from anygpt.cli import add_file_flags

    p = sub.add_parser(
        "check",
        help="list the files a model needs and whether each is in place and usable",
        description="For the LLM and each modality: each file, where it is looked for "
        "(relative to the bundle), whether it is present and readable, where it is released, "
        "where AnyGPT expects it and the flag that points elsewhere. Exit status 1 when any "
        "file needs attention.",
    )
    p.add_argument("--model", "--model-name-or-path", dest="model", default=None)
    p.add_argument(
        "--load", action="store_true", help="also load each part (checks every weight name)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_file_flags(p)
    p.set_defaults(handler=cmd_check)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the 'anygpt check' command")
