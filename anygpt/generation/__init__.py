"""LLM generation with modality-span constraints.

* :mod:`anygpt.generation.loop`: the engine's own decode loop (:func:`generate`), over
* :mod:`anygpt.generation.model`: a transformers LLaMA with a preallocated KV cache,
* :mod:`anygpt.generation.sampling`: per-row logits processing and sampling on tensors,
* :mod:`anygpt.generation.spans`: the span constraint as a per-row state machine,
* :mod:`anygpt.generation.hf`: the same through transformers' ``generate`` (beam search, reference).

Continuous batching over the same pieces is :mod:`anygpt.runtime.scheduler`.
"""

from anygpt.generation.hf import SpanConstraint, StepHook, TextStop, hf_generate, left_pad
from anygpt.generation.loop import decode_one_token, generate, prefill

__all__ = [
    "SpanConstraint",
    "StepHook",
    "TextStop",
    "decode_one_token",
    "generate",
    "hf_generate",
    "left_pad",
    "prefill",
]
