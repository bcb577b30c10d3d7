"""Extending a LLaMA vocabulary with AnyGPT's tags and modality tokens.

Tokens are added in AnyGPT's order (:func:`anygpt.layout.extended_vocabulary`: ``[Human]``,
``[MMGPT]``, ``<eoh>``, ``<eos>``, then ``<-Res->``, ``<-Ins->``, then each modality's codes and
its two tags, modalities in the order image, speech, music, audio); tokens already present are
skipped, new ids follow the current vocabulary.

New rows of the input embeddings and of the (untied) LM head are drawn from a normal distribution
with the mean and covariance of the existing rows (Hewitt, "Initializing new word embeddings for
pretrained language models", 2021), so a new token starts as a plausible "average" token instead of
a random vector whose logits could dominate.  ``cov_scale`` shrinks the covariance (0 gives the
mean).  When the covariance is not positive definite (fewer existing rows than dimensions, or
degenerate rows), the rows get the mean plus small noise (1% of the rows' standard deviation).
AnyGPT left the new rows at the default random initialisation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from anygpt.text_tokenizer import TextTokenizer
from anygpt.train.config import TrainError


def _anygpt_definitions() -> dict[str, str]:
    """Modality name -> AnyGPT's ``tokenizers/*.json`` definition, in its order of addition."""
    from anygpt.layout import ANYGPT_DEFINITIONS, tokenizer_definition

    return {tokenizer_definition(d)["modality"]: d for d in ANYGPT_DEFINITIONS}


DEFINITIONS = _anygpt_definitions()


def extend_tokenizer(
    tokenizer: TextTokenizer, tokens: list[str]
) -> tuple[TextTokenizer, list[str]]:
    """A tokenizer with ``tokens`` appended (those not yet present), and the list actually added."""
    added = dict(tokenizer.added)
    new = []
    next_id = tokenizer.vocab_size
    for t in tokens:
        if t in added or tokenizer.has_token(t) or t in new:
            continue
        added[t] = next_id
        next_id += 1
        new.append(t)
    if not new:
        return tokenizer, []
    import tempfile

    # a new tokenizer over the same SentencePiece model (loaded into memory, the file can go)
    with tempfile.TemporaryDirectory() as d:
        sp_path = Path(d) / "tokenizer.model"
        sp_path.write_bytes(tokenizer.sp.serialized_model_proto())
        return TextTokenizer(sp_path, added), new


@dataclass
class InitReport:
    """How new rows were initialised: per matrix, ``mean_cov`` or ``mean_noise`` (fallback)."""

    old_rows: int
    new_rows: int
    methods: dict[str, str]


@torch.no_grad()
def init_new_rows(
    weight: torch.Tensor, start: int, end: int, generator: torch.Generator, cov_scale: float = 1.0
) -> str:
    """Fill ``weight[start:end]`` ([V, H]) from the statistics of ``weight[:start]``; in place.

    Returns ``"mean_cov"``, or ``"mean_noise"`` when the covariance is not positive definite.
    """
    if end <= start:
        return "none"
    rows = weight[:start].detach().to(torch.float64).cpu()
    n, h = rows.shape
    mean = rows.mean(0)
    centred = rows - mean
    count = end - start
    method = "mean_noise"
    chol = None
    if n > h and cov_scale > 0:
        cov = centred.T @ centred / (n - 1)
        chol, info = torch.linalg.cholesky_ex(cov * cov_scale)
        if int(info) == 0 and torch.isfinite(chol).all():
            method = "mean_cov"
        else:
            chol = None
    if chol is not None:
        z = torch.randn(count, h, generator=generator, dtype=torch.float64)
        new = mean + z @ chol.T
    else:
        std = centred.std(0).mean() if n > 1 else torch.tensor(1e-3, dtype=torch.float64)
        z = torch.randn(count, h, generator=generator, dtype=torch.float64)
        new = mean + z * (0.01 * std if cov_scale > 0 else 0.0)
    weight[start:end] = new.to(weight.dtype).to(weight.device)
    return method


def extend_model(
    model: Any, old_vocab: int, new_vocab: int, *, seed: int = 0, cov_scale: float = 1.0
) -> InitReport:
    """Resize embeddings and LM head of a causal LM to ``new_vocab`` rows; init rows >= ``old_vocab``."""
    emb = model.get_input_embeddings()
    if new_vocab > emb.weight.shape[0]:
        model.resize_token_embeddings(new_vocab, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    methods = {
        "embed_tokens": init_new_rows(
            model.get_input_embeddings().weight, old_vocab, new_vocab, gen, cov_scale
        )
    }
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        methods["lm_head"] = init_new_rows(head.weight, old_vocab, new_vocab, gen, cov_scale)
    return InitReport(old_vocab, new_vocab - old_vocab, methods)


# ---------------------------------------------------------------------- the command
def _modality_entries(names: list[str], source: str | None):
    """Bundle entries for ``names``: from a source bundle, or AnyGPT's default file locations."""
    from anygpt.bundle import Bundle, ModalityEntry
    from anygpt.layout import ModalityTokens, tokenizer_definition

    if source:
        src = Bundle(source, device="cpu")
        entries = {}
        for name in names:
            if name not in src.config.modalities:
                raise TrainError(f"bundle {source} has no '{name}' modality")
            entry = src.config.modalities[name]
            entries[name] = (entry, src.root)
        return entries
    entries = {}
    for name in names:
        d = tokenizer_definition(DEFINITIONS[name])
        files = {k: str(Path(v).resolve()) for k, v in d["files"].items()}
        opts = {**d.get("options", {}), "source": d.get("source")}
        entry = ModalityEntry(d["type"], ModalityTokens.from_dict(d["tokens"]), files, opts)
        entries[name] = (entry, None)
    return entries


def place_modality_files(entry, src_root: Path | None, dest_root: Path, copy: bool):
    """A copy of ``entry`` whose files resolve from ``dest_root``: absolute references, or copies."""
    from anygpt.bundle import ModalityEntry

    files = {}
    for key, rel in entry.files.items():
        p = Path(rel)
        src = p if p.is_absolute() or src_root is None else src_root / p
        src = src.resolve()
        if not copy:
            files[key] = str(src)
            continue
        target = p if not p.is_absolute() else Path(entry.tokens.name) / p.name
        dst = dest_root / target
        if not dst.exists():
            if not src.exists():
                raise TrainError(f"modality file not found: {src}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        files[key] = str(target)
    return ModalityEntry(entry.type, entry.tokens, files, dict(entry.options))


@dataclass
class ExtendVocabConfig:
    """Settings of ``anygpt extend-vocab`` (saved as ``extend_vocab.json`` in the bundle)."""

    source: str
    output: str
    modalities: tuple[str, ...] = tuple(DEFINITIONS)  # AnyGPT's, in its order
    modality_files: str | None = None
    copy_modalities: bool = False
    sft_tags: bool = True
    video: bool = False  # add the video tags <sovi> <eovi> (video input, frames as images)
    seed: int = 0
    cov_scale: float = 1.0
    max_context: int | None = None  # None: the model's max_position_embeddings (else 4096)


def extend_vocab(cfg: ExtendVocabConfig, overwrite: bool = False) -> tuple[Path, InitReport]:
    """Write a bundle: the source LLM with AnyGPT's tokens added, plus the modality entries."""
    from transformers import LlamaForCausalLM

    from anygpt.bundle import BundleConfig
    from anygpt.layout import extended_vocabulary

    src = Path(cfg.source)
    if not (src / "config.json").is_file():
        raise TrainError(f"{src} is not a Hugging Face model folder (no config.json)")
    if not (src / "tokenizer.model").is_file():
        raise TrainError(f"{src} has no SentencePiece tokenizer.model (LLaMA-style models only)")
    unknown = [m for m in cfg.modalities if m not in DEFINITIONS]
    if unknown and not cfg.modality_files:  # a source bundle may hold any modality family
        raise TrainError(f"unknown modalities {unknown}; choose from {', '.join(DEFINITIONS)}")
    out = Path(cfg.output)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (use --overwrite)")
    # AnyGPT's order, then any other modality of the source bundle in the order given
    order = [m for m in DEFINITIONS if m in cfg.modalities]
    order += [m for m in cfg.modalities if m not in order]
    entries = _modality_entries(order, cfg.modality_files)

    added_file = src / "added_tokens.json"
    added = json.loads(added_file.read_text(encoding="utf-8")) if added_file.is_file() else {}
    if isinstance(added, list):
        added = {t: int(i) for t, i in added}
    base = TextTokenizer(src / "tokenizer.model", {t: int(i) for t, i in added.items()})
    tokens = extended_vocabulary([entries[m][0].tokens for m in order], with_sft_tags=cfg.sft_tags)
    if cfg.video:
        from anygpt.modalities.video import VIDEO_TAGS

        tokens += list(VIDEO_TAGS)
    tokenizer, new = extend_tokenizer(base, tokens)

    model = LlamaForCausalLM.from_pretrained(str(src), dtype="auto", local_files_only=True)
    report = extend_model(
        model, base.vocab_size, tokenizer.vocab_size, seed=cfg.seed, cov_scale=cfg.cov_scale
    )

    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(str(tmp / "llm"))
        tokenizer.save(tmp / "llm")
        mods = {
            m: place_modality_files(e, root, tmp, cfg.copy_modalities)
            for m, (e, root) in entries.items()
        }
        context = cfg.max_context or getattr(model.config, "max_position_embeddings", None) or 4096
        BundleConfig(
            modalities=mods,
            name=out.name,
            max_context=int(context),
            video={"frames": 4} if cfg.video else {},
        ).save(tmp)
        (tmp / "extend_vocab.json").write_text(
            json.dumps({**asdict(cfg), "added_tokens": len(new), "init": asdict(report)}, indent=2)
            + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, report
