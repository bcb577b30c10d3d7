"""The LLM stage behind one small interface, so the server can run it on different engines.

A backend turns prompts (token id lists) into new ids with a decoding config, the modality-span
constraint, stop ids/texts and a per-step hook, exactly like :func:`anygpt.generation.generate`.
The engine calls it through :meth:`anygpt.runtime.engine.Engine.generate_ids` when
``engine.backend`` is set.

* ``transformers`` (default, CPU and GPU): :func:`anygpt.generation.generate` on the bundle's LLM.
* ``vllm`` (GPU, optional extra ``pip install -e .[vllm]``): imported only when chosen.  The span
  constraint runs as a per-request logits processor over the same masks; the per-step hook is
  called once with the finished ids (vLLM does not expose steps), so streamed replies arrive in
  one piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from anygpt.config import DecodingConfig

BACKENDS = ("transformers", "vllm")


class LLMBackend(Protocol):
    name: str

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        cfg: DecodingConfig,
        *,
        stop_ids: Sequence[int],
        seed: int | None = None,
        stop_texts: Sequence[str] = (),
        on_step: Any = None,
    ) -> list[list[int]]:
        """New ids per prompt, cut before the first stop id."""


class TransformersBackend:
    """transformers' ``generate`` with the project's processors (the reference backend)."""

    name = "transformers"

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle

    def generate(self, prompts, cfg, *, stop_ids, seed=None, stop_texts=(), on_step=None):
        from anygpt.generation import generate

        return generate(
            self.bundle.llm,
            self.bundle.layout,
            prompts,
            cfg,
            stop_ids=stop_ids,
            seed=seed,
            stop_texts=stop_texts,
            on_step=on_step,
        )


class VLLMBackend:
    """vLLM's offline engine over the bundle's LLM folder (needs a GPU and ``vllm``)."""

    name = "vllm"

    def __init__(self, bundle: Any, **engine_kw: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError(
                "the vllm backend needs the vllm package (pip install -e .[vllm], on a GPU)"
            ) from exc
        self.bundle = bundle
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=str(bundle.llm_dir),
            skip_tokenizer_init=True,
            dtype=str(bundle.dtype).replace("torch.", ""),
            max_model_len=bundle.config.max_context,
            **engine_kw,
        )

    def _span_processor(self, prompt_len: int):
        from anygpt.generation import SpanConstraint

        constraint = SpanConstraint(self.bundle.layout)
        prompt: list[int] = []

        def process(prompt_ids, output_ids, logits: torch.Tensor) -> torch.Tensor:
            if not prompt:
                prompt.extend(prompt_ids)
            ids = torch.tensor([[*prompt, *output_ids]], device=logits.device)
            return constraint(ids, logits[None].clone())[0]

        return process

    def generate(self, prompts, cfg, *, stop_ids, seed=None, stop_texts=(), on_step=None):
        vllm = self._vllm
        params = []
        for p in prompts:
            greedy = not cfg.do_sample
            params.append(
                vllm.SamplingParams(
                    temperature=0.0 if greedy else cfg.temperature,
                    top_p=1.0 if greedy else cfg.top_p,
                    top_k=-1 if greedy or not cfg.top_k else cfg.top_k,
                    repetition_penalty=cfg.repetition_penalty,
                    max_tokens=cfg.max_new_tokens,
                    stop_token_ids=list(stop_ids),
                    stop=list(stop_texts) or None,
                    seed=seed,
                    detokenize=False,
                    logits_processors=[self._span_processor(len(p))],
                )
            )
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        stops = set(stop_ids)
        results = []
        for o in outs:
            row = list(o.outputs[0].token_ids)
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            results.append(row[:cut])
        if on_step is not None and results:
            width = max(len(r) for r in results)
            pad = self.bundle.tokenizer.pad_id
            on_step(torch.tensor([r + [pad] * (width - len(r)) for r in results]))
        return results


def make_backend(name: str, bundle: Any) -> LLMBackend:
    """The backend called ``name`` (see :data:`BACKENDS`)."""
    if name == "transformers":
        return TransformersBackend(bundle)
    if name == "vllm":
        return VLLMBackend(bundle)
    raise ValueError(f"unknown backend '{name}'; choose from {', '.join(BACKENDS)}")
