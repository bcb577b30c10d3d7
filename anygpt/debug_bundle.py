"""Tiny randomly initialised bundles, built through the same factories as real models.

A debug bundle exercises every code path (tokenization, generation, every codec, file output) in a
few seconds on a CPU.  Its outputs are noise: the weights are random.

What goes in is named per modality: a modality of AnyGPT (``image``, ``speech``, ``music``,
``audio``: a tiny model shaped like AnyGPT's tokenizer for it), a tokenizer definition of
``tokenizers/`` (``mhubert_units``), or a family type of the registry (``units``, ``vq-image``, ...).
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from anygpt.bundle import BundleConfig
from anygpt.layout import ANYGPT_DEFINITIONS, extended_vocabulary, tokenizer_definition
from anygpt.modalities.registry import Family, ModalityEntry, families
from anygpt.paths import default_model, default_nano_path, tokenizers_dir
from anygpt.text_tokenizer import TextTokenizer

DEBUG_SPM = "debug-spm.model"


def anygpt_definitions() -> dict[str, dict]:
    """AnyGPT's tokenizer definitions by modality, in its order of vocabulary extension."""
    return {d["modality"]: d for d in map(tokenizer_definition, ANYGPT_DEFINITIONS)}


DEFAULT_MODALITIES = tuple(anygpt_definitions())


def resolve(name: str) -> tuple[Family, dict | None]:
    """A requested modality -> (its family, the tokenizer definition to imitate, if any)."""
    known = families()
    anygpt = anygpt_definitions()
    if name in anygpt:
        d = anygpt[name]
        return known[d["type"]], d
    if (tokenizers_dir() / f"{name}.json").is_file():
        d = tokenizer_definition(name)
        return known[d["type"]], d
    if name in known:
        return known[name], None
    choices = [*anygpt, *sorted(t for t, f in known.items() if f.write_tiny)]
    raise ValueError(f"unknown modality '{name}'; choose from {', '.join(choices)}")


def _write_tiny(fam: Family, root: Path, gen: torch.Generator, definition, soundstorm: bool):
    if fam.write_tiny is None:
        raise ValueError(f"the '{fam.type}' family has no tiny model for debug bundles")
    params = inspect.signature(fam.write_tiny).parameters
    kw = {"soundstorm": soundstorm} if "soundstorm" in params else {}
    if definition is not None and len(params) >= 3:
        return fam.write_tiny(root, gen, definition, **kw)
    return fam.write_tiny(root, gen, **kw)


def _write_llm(root: Path, vocab_tokens: list[str], gen: torch.Generator, hidden: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    d = root / "llm"
    spm_path = tokenizers_dir() / DEBUG_SPM
    base = TextTokenizer(spm_path, {})
    added = {tok: base.base_size + i for i, tok in enumerate(vocab_tokens)}
    tok = TextTokenizer(spm_path, added)
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=0,
    )
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(d))
    tok.save(d)


def write_debug_bundle(
    out_dir: str | Path,
    *,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
    seed: int = 0,
    hidden: int = 64,
    soundstorm: bool = True,
    video: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a tiny random bundle to ``out_dir`` (built in a temporary folder, then moved in place).

    ``video``: also add the video tags, so that the bundle reads video inputs.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (use --overwrite)")
        shutil.rmtree(out)
    chosen = [resolve(m) for m in modalities]
    serves = [(d or {}).get("modality", f.modality) for f, d in chosen]
    if len(set(serves)) != len(serves):
        raise ValueError(f"two tokenizers for one modality in {', '.join(modalities)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a private temporary folder: two runs building the same bundle at once never share one
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    gen = torch.Generator().manual_seed(seed)
    try:
        entries: dict[str, ModalityEntry] = {}
        for (fam, definition), modality in zip(chosen, serves, strict=True):
            entries[modality] = _write_tiny(fam, tmp, gen, definition, soundstorm)
        rank = {m: i for i, m in enumerate(DEFAULT_MODALITIES)}  # AnyGPT's order first
        order = sorted(entries, key=lambda m: rank.get(m, len(rank)))
        vocab = extended_vocabulary([entries[m].tokens for m in order])
        if video:
            from anygpt.modalities.video import VIDEO_TAGS

            vocab += list(VIDEO_TAGS)
        _write_llm(tmp, vocab, gen, hidden)
        BundleConfig(modalities={m: entries[m] for m in order}, name="anygpt-debug").save(tmp)
        (tmp / "README.md").write_text(
            "# anygpt debug bundle\n\nRandomly initialised tiny models for tests. Outputs are noise.\n"
        )
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "bundle.json").is_file():  # not another run's complete bundle
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # that run won; its bundle is just as good
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_default_model() -> Path:
    """The default model folder; without a shipped or configured one, a debug bundle is made there.

    Safe when several runs start at once, and self-healing: each run builds in a private folder and
    renames it into place, so the folder is complete or absent; a broken leftover is moved aside
    (atomically, never deleted in place) before a new one is built.
    """
    root = default_model()
    if root != default_nano_path() or (root / "bundle.json").is_file():
        return root
    print(
        f"note: no default model at {root}; creating a debug bundle there "
        "(random weights: outputs are noise)",
        file=sys.stderr,
    )
    if root.exists():
        aside = root.with_name(f".{root.name}.broken-{os.getpid()}-{time.time_ns()}")
        try:
            root.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        except FileNotFoundError:
            pass
    try:
        write_debug_bundle(root, seed=0)
    except FileExistsError:
        if not (root / "bundle.json").is_file():
            raise
    return root
