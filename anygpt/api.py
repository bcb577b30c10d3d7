"""The Python API: load a model, run base requests and chat turns, get media back as arrays.

    import anygpt

    model = anygpt.load()                                 # the default model (or a folder)
    out = model.base("text|speech|a big red circle")[0]
    wave, rate = out.media[0].numpy(), out.media[0].sample_rate
    chat = model.chat()
    reply = chat.turn("interleaved|what colour is the circle?|||picture.png")
    print(reply.text)

Every front end (the command lines, servers) goes through the same :class:`Engine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(
    model: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    seed: int | None = None,
    quantize: str = "none",
    offload: str | None = None,
    **engine_options: Any,
):
    """An :class:`~anygpt.runtime.engine.Engine` over a bundle (default: ``$ANYGPT_MODEL`` or the
    shipped ``models/anygpt-nano``).  Models load lazily, on the first request that needs them.

    ``quantize="int8"``: int8 weight-only LLM linear layers (needs torchao); ``offload="cpu"``:
    the modality tokenizers' models wait on the CPU between encodes and decodes (see
    :class:`~anygpt.bundle.Bundle`).

    ``engine_options``: ``batch_size``, ``max_new_tokens``, ``instruction``, ``guidance_scale``,
    ``on_token``.
    """
    from anygpt.bundle import Bundle
    from anygpt.paths import default_model
    from anygpt.runtime.engine import Engine

    bundle = Bundle(
        Path(model) if model else default_model(),
        device=device,
        dtype=dtype,
        quantize=quantize,
        offload=offload,
    )
    return Engine(bundle, seed=seed, **engine_options)
