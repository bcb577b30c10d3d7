"""``anygpt bundle-tokenizers``: gather trained modality tokenizers into a bundle (no LLM yet).

The bundle's token definitions are read off the tokenizers themselves (codebook size and count,
codes per image), so they always match; its ``bundle.json`` is what ``anygpt extend-vocab
--modality-files`` takes to give an LLM those modalities::

    anygpt bundle-tokenizers OUT image=vq-image:tok/image music=encodec:tok/music \\
        speech=nano-units:model=tok/speech/nano_speech.safetensors,config=tok/speech/nano_speech.json

A tokenizer is a folder (read as the entry's ``model`` file), or ``KEY=PATH`` pairs naming each
file of the entry.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from anygpt.layout import ModalityTokens


def entry_for(modality: str, family_type: str, files: dict[str, Path], options: dict | None = None):
    """A bundle entry for trained tokenizer files, its tokens read off the loaded tokenizer."""
    from anygpt.modalities.registry import BuildContext, ModalityEntry, family

    fam = family(family_type)
    opts = dict(options or {})
    adapter = fam.build(BuildContext(modality, files, opts, torch.device("cpu")))
    sizes = tuple(int(s) for s in adapter.codebook_sizes)
    template = fam.tokens or _tags_for(modality)
    tokens = replace(
        template,
        name=modality,
        codebook_size=max(sizes),
        num_codebooks=int(adapter.num_codebooks),
        fixed_length=int(adapter.frame_rate) if adapter.media_kind == "image" else None,
    )
    if family_type == "encodec":
        opts.setdefault("num_codebooks", tokens.num_codebooks)
    return ModalityEntry(family_type, tokens, {k: str(v) for k, v in files.items()}, opts)


def parse_spec(spec: str) -> tuple[str, str, dict[str, Path]]:
    """``MODALITY=TYPE:FOLDER`` or ``MODALITY=TYPE:KEY=PATH,KEY=PATH`` -> (modality, type, files)."""
    modality, _, rest = spec.partition("=")
    family_type, _, where = rest.partition(":")
    if not (modality and family_type and where):
        raise ValueError(
            f"expected MODALITY=TYPE:FOLDER or MODALITY=TYPE:KEY=PATH,..., got '{spec}'"
        )
    if "=" in where:
        files = {}
        for part in where.split(","):
            key, _, path = part.partition("=")
            if not (key and path):
                raise ValueError(f"bad KEY=PATH '{part}' in '{spec}'")
            files[key] = Path(path)
    else:
        files = {"model": Path(where)}
    for path in files.values():
        if not path.exists():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
    return modality, family_type, files


def _tags_for(modality: str) -> ModalityTokens:
    """AnyGPT's emoji prefix and tags of a modality (its token definition), sizes to be filled."""
    from anygpt.debug_bundle import anygpt_definitions

    d = anygpt_definitions().get(modality)
    if d is None:
        raise ValueError(f"no token tags known for modality '{modality}'; give the family tokens")
    return ModalityTokens.from_dict(d["tokens"])


def bundle_tokenizers(out: Path, specs: list[str], name: str = "", overwrite: bool = False) -> Path:
    """Write ``out/bundle.json`` plus a copy of each tokenizer folder (``MODALITY=TYPE:FOLDER``)."""
    from anygpt.bundle import BundleConfig

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --overwrite)")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        entries = {}
        for spec in specs:
            modality, family_type, files = parse_spec(spec)
            placed = {}
            for key, src in files.items():  # copies inside the bundle, named as before
                dst = tmp / modality / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dst)
                else:
                    shutil.copy2(src, dst)
                placed[key] = dst
            entry = entry_for(modality, family_type, placed)
            entry.files = {k: str(p.relative_to(tmp)) for k, p in placed.items()}
            entries[modality] = entry
        BundleConfig(llm="llm", modalities=entries, name=name).save(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cmd(args: argparse.Namespace) -> int:
    try:
        out = bundle_tokenizers(Path(args.out), args.specs, args.name, args.overwrite)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote tokenizer bundle {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bundle-tokenizers",
        help="gather trained modality tokenizers into a bundle for extend-vocab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="bundle folder to write")
    p.add_argument("specs", nargs="+", metavar="MODALITY=TYPE:FOLDER")
    p.add_argument("--name", default="")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=cmd)
