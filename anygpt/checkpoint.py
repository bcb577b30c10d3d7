"""Safe weight loading shared by every model in the package.

Weights are read from safetensors when possible; legacy ``.pt``/``.pth``/``.dev`` files go
through ``torch.load(weights_only=True)`` so that no pickled code can run.  Loading is strict:
missing or unexpected keys raise :class:`CheckpointError` with the names that differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def missing_file_error(path: str | Path, what: str, source: str | None = None) -> CheckpointError:
    """Error for a weights file that is not on disk; names what to put where."""
    where = f" (released as {source})" if source else ""
    return CheckpointError(
        f"{what} not found at '{path}'. Nothing is downloaded at run time: "
        f"place the file{where} at that path, or pass its location explicitly."
    )


def read_state_dict(path: str | Path, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a flat tensor dictionary from safetensors or a legacy torch file.

    Legacy files are opened with ``weights_only=True``.  A file that needs arbitrary unpickling
    is refused with an explanation instead of being executed.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path, what)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - report any parse failure the same way
            raise CheckpointError(f"cannot read {what} '{path}': {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"cannot read {what} '{path}' as weights only ({_load_failure(exc)}). "
            "The file may hold pickled Python objects, which are not loaded for safety; "
            "convert it to safetensors on a trusted machine."
        ) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} '{path}' holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _load_failure(exc: Exception) -> str:
    """The cause of a failed ``weights_only`` load in a few words, without PyTorch's advice
    (it suggests ``weights_only=False``, which would run whatever the file holds)."""
    import re

    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it needs the Python object {found.group(1)}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "weights_only" in first or "Weights only load failed" in first:
        return type(exc).__name__
    return f"{type(exc).__name__}: {first[:200]}"


def unwrap(state: Mapping[str, object], container_key: str | None) -> dict[str, torch.Tensor]:
    """Return ``state[container_key]`` (e.g. ``'generator'``) or the state itself."""
    if container_key is None:
        return dict(state)  # type: ignore[arg-type]
    if container_key not in state:
        raise CheckpointError(
            f"expected the weights under the key '{container_key}'; found keys {sorted(state)[:8]}"
        )
    inner = state[container_key]
    if not isinstance(inner, Mapping):
        raise CheckpointError(f"'{container_key}' does not hold a state dict")
    return dict(inner)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    """``load_state_dict(strict=True)`` with a readable report of any mismatch.

    Works on modules built on the meta device (``assign=True`` is used then).
    """
    on_meta = any(p.is_meta for p in module.parameters())
    expected = set(module.state_dict().keys())
    got = set(state.keys())
    missing = sorted(expected - got)
    unexpected = sorted(got - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: {len(missing)} missing and {len(unexpected)} unexpected keys; "
            f"missing: {_head(missing)}; unexpected: {_head(unexpected)}"
        )
    try:
        module.load_state_dict(dict(state), strict=True, assign=on_meta)
    except RuntimeError as exc:
        raise CheckpointError(f"{what}: {exc}") from exc


def state_manifest(module: nn.Module) -> dict[str, list[int]]:
    """Names and shapes of a module's state dict, as the manifests list them."""
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def load_manifest(path: str | Path) -> dict[str, list[int]]:
    """Read a ``spec/manifests``-style JSON file into ``{key: shape}``."""
    entries = json.loads(Path(path).read_text())["keys"]
    return {name: list(shape) for name, shape, *_ in entries}


def _head(names: Iterable[str], n: int = 6) -> str:
    names = list(names)
    shown = ", ".join(names[:n])
    return shown + (f", ... (+{len(names) - n})" if len(names) > n else "") if names else "none"
