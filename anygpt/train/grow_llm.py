"""``anygpt grow-llm``: a deeper copy of a trained LLaMA that computes exactly the same function.

A small model that has stopped improving can be grown instead of retrained: each of the ``L``
trained decoder layers is kept, and the ``N - L`` new layers are copies of their neighbour whose
attention output (``o_proj``) and MLP output (``down_proj``) are zero.  A LLaMA layer adds its
two branches to the residual stream, so a layer with both outputs at zero passes its input
through unchanged and the grown model's logits equal the source's (tested).  Training then starts
from the trained function rather than from noise; the new layers' first gradients reach their
output projections, and from there the copied attention and MLP weights.

Layer ``j`` of ``N`` copies source layer ``floor(j * L / N)``; the first layer of each run of
copies is the original and the rest are the zeroed copies, so the original order is kept.

The input is a bundle (``bundle.json`` + ``llm/``) or a bare LLM folder; the output is the same
kind, with the bundle's modality files named by absolute path, written under a temporary name
and renamed once complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from anygpt.train.config import TrainError

LLM_SIDE_FILES = ("tokenizer.model", "added_tokens.json", "generation_config.json")
# layer weights that write into the residual stream: zero in a new layer
RESIDUAL_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def layer_sources(old: int, new: int) -> list[tuple[int, bool]]:
    """For each of the ``new`` layers: (source layer, whether it is a zeroed copy)."""
    if old < 1 or new < old:
        raise TrainError(f"a model of {old} layers cannot grow to {new} (need {new} >= {old} >= 1)")
    out, previous = [], -1
    for j in range(new):
        src = j * old // new
        out.append((src, src == previous))
        previous = src
    return out


def grow_state_dict(state: dict, old: int, new: int) -> dict:
    """The state dict of the grown model (tensors are copied, never shared with ``state``)."""
    prefix = "model.layers."
    grown = {k: v.clone() for k, v in state.items() if not k.startswith(prefix)}
    for j, (src, zeroed) in enumerate(layer_sources(old, new)):
        head = f"{prefix}{src}."
        for key, value in state.items():
            if key.startswith(head):
                name = key[len(head) :]
                tensor = value.clone()
                if zeroed and name in RESIDUAL_OUTPUTS:
                    tensor.zero_()
                grown[f"{prefix}{j}.{name}"] = tensor
    return grown


def grow_llm_folder(src: Path, dst: Path, layers: int) -> tuple[int, int]:
    """Write the grown LLM folder ``dst`` from ``src``; returns (old, new) parameter counts."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(str(src))
    if config.model_type != "llama":
        raise TrainError(f"'{src}' holds a {config.model_type!r} model; grow-llm takes LLaMA")
    source = LlamaForCausalLM.from_pretrained(str(src), dtype=torch.float32, local_files_only=True)
    old = config.num_hidden_layers
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[s] for s, _ in layer_sources(old, layers)]
    grown = LlamaForCausalLM(config)
    missing, unexpected = grown.load_state_dict(
        grow_state_dict(source.state_dict(), old, layers), strict=False
    )
    # rotary buffers are rebuilt by the module itself; any weight left out would be random
    if [k for k in missing if not k.endswith("inv_freq")] or unexpected:
        raise TrainError(f"grown weights do not fit: missing {missing}, unexpected {unexpected}")
    dst.mkdir(parents=True)
    grown.save_pretrained(str(dst), safe_serialization=True)
    for name in LLM_SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return count(source), count(grown)


def grow(src: Path, out: Path, layers: int) -> tuple[int, int]:
    """Grow a bundle or LLM folder ``src`` into ``out`` (which must not exist)."""
    from anygpt.bundle import BUNDLE_FILE, Bundle

    if out.exists():
        raise TrainError(f"'{out}' exists; choose a new output folder")
    tmp = out.with_name(f".{out.name}.growing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if (src / BUNDLE_FILE).is_file():
            bundle = Bundle(src, device="cpu")
            cfg = bundle.config
            counts = grow_llm_folder(bundle.llm_dir, tmp / "llm", layers)
            for entry in cfg.modalities.values():
                entry.files = {k: str(bundle.path(v).resolve()) for k, v in entry.files.items()}
            if bundle.decoding_dir is not None:
                cfg.decoding = str(bundle.decoding_dir.resolve())
            cfg.llm = "llm"
            cfg.save(tmp)
        elif (src / "config.json").is_file():
            counts = grow_llm_folder(src, tmp, layers)
        else:
            raise TrainError(f"'{src}' is neither a bundle nor an LLM folder")
        (tmp / "llm" if (tmp / "llm").is_dir() else tmp).joinpath("grow_llm.json").write_text(
            json.dumps({"source": str(src.resolve()), "layers": layers}, indent=2) + "\n"
        )
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``grow-llm`` to the ``anygpt`` parser."""
    p = sub.add_parser(
        "grow-llm",
        help="deepen a trained LLaMA (bundle or LLM folder) without changing what it computes",
        description="Writes a copy of a trained LLaMA with more decoder layers: the new layers "
        "copy their neighbours with their residual outputs at zero, so the grown model's logits "
        "equal the source's, and training continues from the trained function "
        "(then run 'anygpt sft --model OUT ...').",
    )
    p.add_argument("source", help="a bundle folder (bundle.json) or a Hugging Face LLaMA folder")
    p.add_argument("output", help="folder to write (must not exist)")
    p.add_argument("--layers", type=int, required=True, help="decoder layers of the grown model")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    old, new = grow(Path(args.source), Path(args.output), args.layers)
    print(
        f"grown {args.source} -> {args.output}: {old / 1e6:.2f} M -> {new / 1e6:.2f} M parameters"
    )
    return 0
