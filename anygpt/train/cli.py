"""Subcommands ``tokenize``, ``extend-vocab``, ``pretrain`` and ``sft`` of the ``anygpt`` command.

Only argparse happens at import time; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import sys


def cmd_tokenize(args: argparse.Namespace) -> int:
    """Media manifest -> AnyGPT token jsonl (resumable; failed rows go to an errors file)."""
    from anygpt.train.tokenize_media import TokenizeConfig, tokenize_manifest

    cfg = TokenizeConfig(
        manifest=args.manifest,
        model=args.model,
        output=args.output,
        modality=args.modality,
        column=args.column,
        text_column=args.text_column,
        errors=args.errors,
        media_root=args.media_root,
        split=args.split,
        batch_size=args.batch_size,
        max_seconds=args.max_seconds,
        device=args.device,
        limit=args.limit,
        overwrite=args.overwrite,
    )
    from pathlib import Path

    out = Path(cfg.output)
    sharded = (
        args.format == "parquet" or args.num_shards is not None or args.shard_index is not None
    )
    if sharded:
        from anygpt.train.shards import STATE_DIR, ShardPlan, tokenize_to_shards

        plan = ShardPlan.resolve(args.num_shards, args.shard_index, args.rows_per_part)
        summary = tokenize_to_shards(cfg, plan)
        errors = Path(cfg.errors or out / STATE_DIR / f"errors-{plan.shard_index:05d}.jsonl")
    else:
        summary = tokenize_manifest(cfg)
        errors = Path(cfg.errors) if cfg.errors else out.with_name(out.stem + ".errors.jsonl")
    print(summary.line(cfg, errors))
    if summary.reasons:
        print("failures: " + ", ".join(f"{n} {r}" for r, n in sorted(summary.reasons.items())))
    # a run that wrote nothing but failed rows did not do its job
    return 1 if summary.failed and not summary.written else 0


def cmd_extend_vocab(args: argparse.Namespace) -> int:
    """Add AnyGPT's tags and modality tokens to a LLaMA folder and write a bundle."""
    from anygpt.train.vocab import ExtendVocabConfig, extend_vocab

    mods = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    cfg = ExtendVocabConfig(
        source=args.source,
        output=args.output,
        modalities=mods,
        modality_files=args.modality_files,
        copy_modalities=args.copy_modalities,
        sft_tags=not args.no_sft_tags,
        video=args.video,
        seed=args.seed,
        cov_scale=args.cov_scale,
        max_context=args.max_context,
    )
    out, report = extend_vocab(cfg, overwrite=args.overwrite)
    print(
        f"wrote bundle {out}: vocabulary {report.old_rows} -> {report.old_rows + report.new_rows} "
        f"tokens; new rows initialised by {report.methods}"
    )
    return 0


def _train(kind: str, args: argparse.Namespace) -> int:
    from anygpt.train.config import PretrainConfig, SFTConfig, config_from_args
    from anygpt.train.engine import run_training

    cls = PretrainConfig if kind == "pretrain" else SFTConfig
    cfg = config_from_args(cls, args)
    result = run_training(cfg)
    print(f"final bundle: {result.final}  (load it with: anygpt chat --model {result.final})")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    return _train("pretrain", args)


def cmd_sft(args: argparse.Namespace) -> int:
    return _train("sft", args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the ``anygpt`` parser."""
    from anygpt.train.config import PretrainConfig, SFTConfig, add_config_args

    t = sub.add_parser(
        "tokenize",
        help="encode a media manifest into AnyGPT token jsonl (resumable)",
        description="Media manifest (JSON Lines / CSV with a 'text' column and a media column "
        "named speech, music, audio or image; or a 'datasets' folder) -> lines like "
        'data/pretrain: {"text": ..., "speech": "<sosp>...<eosp>"}. Failed rows go to '
        "OUT.errors.jsonl; re-running continues where the last run stopped.",
    )
    t.add_argument("manifest", help="manifest file (.jsonl/.csv/.tsv) or datasets folder")
    t.add_argument("--model", required=True, help="bundle whose modality tokenizers are used")
    t.add_argument("--output", "-o", required=True, help="output .jsonl")
    t.add_argument("--modality", help="speech, music, audio or image (default: from the columns)")
    t.add_argument("--column", help="media column (default: the modality name)")
    t.add_argument("--text-column", default="text")
    t.add_argument("--errors", help="errors file (default: OUTPUT stem + .errors.jsonl)")
    t.add_argument("--media-root", help="folder of relative media paths (default: the manifest's)")
    t.add_argument("--split", default="train", help="split of a DatasetDict folder")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument(
        "--max-seconds", type=float, help="audio read per row (default: the modality's own)"
    )
    t.add_argument("--device", default="auto")
    t.add_argument("--limit", type=int, help="only the first N rows")
    t.add_argument("--overwrite", action="store_true", help="start again from the first row")
    t.add_argument(
        "--format",
        choices=("jsonl", "parquet"),
        default="jsonl",
        help="jsonl: one file; parquet: a folder of shard parts that 'datasets' loads",
    )
    t.add_argument(
        "--num-shards",
        type=int,
        help="parquet: deal rows to N shards (default under a launcher: WORLD_SIZE)",
    )
    t.add_argument("--shard-index", type=int, help="parquet: the shard to write (default: RANK)")
    t.add_argument("--rows-per-part", type=int, default=4096, help="parquet: rows per part file")
    t.set_defaults(handler=cmd_tokenize)

    e = sub.add_parser(
        "extend-vocab",
        help="add AnyGPT's tokens to a LLaMA model folder and write a bundle",
        description="Adds [Human] [MMGPT] <eoh> <eos> <-Res-> <-Ins-> and the modality tokens in "
        "AnyGPT's order, resizes the embeddings and the LM head (new rows drawn from the mean "
        "and covariance of the existing ones) and writes a bundle.",
    )
    e.add_argument("source", help="Hugging Face LLaMA folder with tokenizer.model")
    e.add_argument("output", help="bundle folder to write")
    e.add_argument("--modalities", default="image,speech,music,audio")
    e.add_argument(
        "--modality-files",
        metavar="BUNDLE",
        help="take the modality tokenizers from this bundle (default: AnyGPT's models/... paths)",
    )
    e.add_argument(
        "--copy-modalities", action="store_true", help="copy modality files instead of linking"
    )
    e.add_argument("--no-sft-tags", action="store_true", help="leave out <-Res-> and <-Ins->")
    e.add_argument(
        "--video",
        action="store_true",
        help="also add the video tags <sovi> <eovi> (video input: frames as image tokens)",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--cov-scale", type=float, default=1.0, help="covariance scale of new rows (0: the mean)"
    )
    e.add_argument(
        "--max-context",
        type=int,
        help="prompt + reply tokens at inference (default: the model's max_position_embeddings)",
    )
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(handler=cmd_extend_vocab)

    p = sub.add_parser(
        "pretrain",
        help="stage 1: modality-text pairs (x2t / t2x), packed",
        description="Stage-1 pretraining on Hugging Face Trainer. Settings: dataclass defaults "
        "(AnyGPT's), then --config FILE, then flags. See README: Training.",
    )
    add_config_args(p, PretrainConfig)
    p.set_defaults(handler=cmd_pretrain)

    s = sub.add_parser(
        "sft",
        help="stage 2: multi-turn conversations, loss on assistant turns",
        description="Stage-2 instruction tuning on Hugging Face Trainer. Settings: dataclass "
        "defaults (AnyGPT's), then --config FILE, then flags. See README: Training.",
    )
    add_config_args(s, SFTConfig)
    s.set_defaults(handler=cmd_sft)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the 'anygpt' command")
