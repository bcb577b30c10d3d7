"""Turn a trained bundle into a self-contained, shippable folder (the shipped ``anygpt-nano``).

    python -m anygpt.world.ship TRAINED_BUNDLE OUT [--world WORLD] [--name anygpt-nano]

Every file the bundle names is copied inside ``OUT`` with a relative path (training leaves
absolute ones), training state stays behind, and a few held-out world files go to ``OUT/demo/``
as the inputs of ``anygpt demo``.  ``OUT`` is replaced only once the new folder is complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

LLM_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
             "added_tokens.json")  # fmt: skip


def demo_files(world: Path, dest: Path) -> None:
    """A held-out picture with a spoken question about it, a held-out melody and clip."""
    split = world / "heldout"
    dialogues = [json.loads(r) for r in (split / "dialogues.jsonl").read_text().splitlines() if r]
    qa = next(d for d in dialogues if d.get("kind") == "spoken_image_qa")["turns"][0]
    melody = json.loads((split / "music.jsonl").read_text().splitlines()[0])["music"]
    dest.mkdir(parents=True)
    shutil.copy2(split / qa["image"], dest / "picture.png")
    shutil.copy2(split / qa["question_speech"], dest / "question.wav")
    shutil.copy2(split / melody, dest / "melody.wav")
    note = f'the question asks "{qa["question"]}" (answer: "{qa["answer"]}")'
    clips = split / "video.jsonl"
    lines = clips.read_text().splitlines() if clips.is_file() else []
    if lines:
        clip = json.loads(lines[0])
        shutil.copy2(split / clip["video"], dest / "clip.mp4")
        note += f'; the clip shows "{clip["text"]}"'
    (dest / "README.md").write_text(f"Held-out world files for `anygpt demo`: {note}.\n")


def copy_llm_weights(src: Path, dst: Path, dtype: str) -> None:
    """Copy ``model.safetensors``, storing floating-point tensors as ``dtype``.

    Half precision halves the file; every loader of the project upcasts to float32 on a CPU.
    """
    if dtype == "float32":
        shutil.copy2(src, dst)
        return
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in load_file(src).items()}
    save_file(tensors, str(dst), metadata={"format": "pt"})
    config = dst.with_name("config.json")
    if config.is_file():
        cfg = json.loads(config.read_text())
        cfg["dtype"] = dtype
        config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def ship(src: Path, out: Path, world: Path | None, name: str, llm_dtype: str = "float32") -> Path:
    from anygpt.bundle import Bundle
    from anygpt.paths import config_dir

    bundle = Bundle(src, device="cpu")
    cfg = bundle.config
    tmp = out.with_name(f".{out.name}.shipping")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "llm").mkdir(parents=True)
    for f in LLM_FILES:
        if (bundle.llm_dir / f).is_file() and f != "model.safetensors":
            shutil.copy2(bundle.llm_dir / f, tmp / "llm" / f)
    weights = bundle.llm_dir / "model.safetensors"
    if weights.is_file():
        copy_llm_weights(weights, tmp / "llm" / "model.safetensors", llm_dtype)
    for modality, entry in cfg.modalities.items():
        files = {}
        for key, rel in entry.files.items():
            path = bundle.path(rel)
            dst = tmp / modality / path.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(path, dst)
            files[key] = f"{modality}/{path.name}"
        entry.files = files
    shutil.copytree(config_dir() / "nano", tmp / "decoding", ignore=shutil.ignore_patterns("*.md"))
    cfg.llm, cfg.name, cfg.decoding = "llm", name, "decoding"
    cfg.save(tmp)
    if world is not None:
        demo_files(world, tmp / "demo")
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anygpt.world.ship", description=__doc__)
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--world", help="world folder whose held-out files become the demo inputs")
    p.add_argument("--name", default="anygpt-nano")
    p.add_argument(
        "--llm-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="how the LLM's weights are stored (float16 halves the file; loaders upcast on a CPU)",
    )
    a = p.parse_args(argv)
    world = Path(a.world) if a.world else None
    out = ship(Path(a.src), Path(a.out), world, a.name, a.llm_dtype)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"shipped {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
