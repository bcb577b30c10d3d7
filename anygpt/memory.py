"""Memory options of a bundle: int8 weight-only LLM weights, and modality models that wait
on another device while idle.

* :func:`quantize_llm` replaces the weight of every ``nn.Linear`` of the LLM (attention and MLP
  projections and ``lm_head``) with torchao's int8 weight-only tensor: int8 values ``[out, in]``
  with one float32 scale (and an int8 zero point) per output row.  The token embedding is an
  ``nn.Embedding`` and keeps the LLM's dtype; so do the norms.  A ``lm_head`` tied to the
  embedding is left as it is, since quantizing it would untie it and add an int8 copy.
* :class:`OffloadedModality` wraps a modality tokenizer so that its torch models live on an idle
  device (normally the CPU) and visit the bundle's device only for the call that needs them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import threading
from collections.abc import Iterator
from typing import Any

import torch

QUANTIZE_MODES = ("none", "int8")

# Adapter methods that read, prepare or write media and never run a model: calling them does not
# move models (a video prepares every frame; moving a GPU model per frame would cost seconds).
MEDIA_ONLY_METHODS = frozenset({"load", "prepare", "save", "unload"})


class QuantizeError(ValueError):
    """A quantization mode that is unknown, or that needs a library that is not installed."""


def check_quantize(mode: str) -> str:
    """Validate a ``quantize`` option before anything loads; returns it."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(
            f"unknown quantize mode '{mode}'; use one of {', '.join(QUANTIZE_MODES)}"
        )
    # find_spec, not an import: importing torchao takes seconds, and the LLM loads lazily
    if mode == "int8" and importlib.util.find_spec("torchao") is None:
        raise QuantizeError(
            "int8 loading needs torchao: pip install torchao (or pip install -e .[quant])"
        )
    return mode


@contextlib.contextmanager
def quiet_torchao() -> Iterator[None]:
    """Silence what importing and first using torchao logs on a CPU build.

    transformers imports torchao while loading any model when it is installed, so the bundle's
    plain loads use this too.

    A CPU build of torch lacks the CUDA and Triton kernels torchao tries to load, and torchao
    registers Enums that this torch warns about; none of it concerns int8 weight-only layers.
    """
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)


def quantize_llm(model: torch.nn.Module, device: torch.device | str | None = None) -> None:
    """Make the LLM's ``nn.Linear`` weights int8 weight-only, in place (see the module docs).

    With ``device``, each layer moves there just before it is quantized, so a GPU never holds
    more than one layer at full precision.  Works on the meta device too (sizes only).
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared = embedding.weight if embedding is not None else None

    def wanted(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and module.weight is not shared

    with quiet_torchao():
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise QuantizeError(
                f"int8 loading needs torchao: pip install torchao ({first})"
            ) from exc
        # set_inductor_config=False: leave torch.compile's global settings as the user set them
        config = Int8WeightOnlyConfig(set_inductor_config=False)
        quantize_(model, config, filter_fn=wanted, device=device)


def tensor_bytes(t: torch.Tensor | None) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's int8 weight) counts its inner tensors."""
    if t is None:
        return 0
    if type(t) in (torch.Tensor, torch.nn.Parameter):
        return t.numel() * t.element_size()
    inner, _ = t.__tensor_flatten__()
    return sum(tensor_bytes(getattr(t, name)) for name in inner)


def weight_bytes(model: torch.nn.Module, *, linear_only: bool = False) -> int:
    """Bytes of a model's parameters (works on the meta device: nothing is read)."""
    if linear_only:
        params = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    else:
        params = list(model.parameters())
    return sum(tensor_bytes(p) for p in {id(p): p for p in params}.values())


# ---------------------------------------------------------------------------- offloading


def _held_models(obj: Any, depth: int = 2) -> list[Any]:
    """The torch models an adapter holds: its ``nn.Module`` attributes and diffusers pipelines,
    also inside the project's own helper objects (SEED's ``UnclipDecoder`` holds a pipeline)."""
    found = []
    for value in vars(obj).values():
        if isinstance(value, torch.nn.Module):
            found.append(value)
        elif hasattr(value, "components") and callable(getattr(value, "to", None)):
            found.append(value)  # a diffusers pipeline: .to() moves all its modules
        elif (
            depth > 1
            and type(value).__module__.startswith("anygpt.")
            and hasattr(value, "__dict__")
        ):
            found.extend(_held_models(value, depth - 1))
    return found


def _device_of(model: Any) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        first = next(model.parameters(), None)
        return first.device if first is not None else None
    return getattr(model, "device", None)


class OffloadedModality:
    """A modality tokenizer whose models stay on ``idle_device`` except during a call.

    Every public method but those in :data:`MEDIA_ONLY_METHODS` runs inside :meth:`in_use`:
    the models move to the adapter's device (the bundle's) for the call and back afterwards, even
    when it raises.  Models that load lazily during a call (or while a property such as
    ``codebook_sizes`` is read) load on the bundle's device and are moved away when it ends.
    Other attributes read and write through to the adapter.
    """

    def __init__(self, adapter: Any, idle_device: torch.device | str) -> None:
        # object.__setattr__: our own __setattr__ writes to the adapter
        object.__setattr__(self, "adapter", adapter)
        object.__setattr__(self, "idle_device", torch.device(idle_device))
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_calls", 0)  # calls in progress (server threads may overlap)

    def _move(self, device: torch.device) -> None:
        for model in _held_models(self.adapter):
            if _device_of(model) != device:
                model.to(device)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Models on the adapter's device inside the block, on the idle device after it."""
        with self._lock:
            object.__setattr__(self, "_calls", self._calls + 1)
            if self._calls == 1:
                self._move(self.adapter.device)
        try:
            yield
        finally:
            with self._lock:
                object.__setattr__(self, "_calls", self._calls - 1)
                if self._calls == 0:
                    self._park()

    def _park(self) -> None:
        self._move(self.idle_device)
        if self.adapter.device.type == "cuda" and self.idle_device != self.adapter.device:
            torch.cuda.empty_cache()  # hand the freed blocks back, for the LLM and other processes

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.adapter, name)
        if name.startswith("_") or name in MEDIA_ONLY_METHODS:
            return value
        # methods, and functions set on the adapter (tests count calls that way); not callable
        # objects such as a ``model`` property's module, which callers may inspect
        if inspect.ismethod(value) or inspect.isfunction(value):

            def call(*args: Any, **kwargs: Any) -> Any:
                with self.in_use():
                    return value(*args, **kwargs)

            return call
        with self._lock:
            if self._calls == 0:
                self._park()  # reading a property may have loaded a model on the bundle's device
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.adapter, name, value)

    def __repr__(self) -> str:
        return f"OffloadedModality({self.adapter!r}, idle on {self.idle_device})"
