"""Training throughput with and without packing, on AnyGPT's stage-1 sample data.

One epoch over the samples in data/pretrain (80 pairs) on a small model, through the same Trainer
setup as 'anygpt pretrain'.  Reports real (non-padding) training tokens per second and the padding
fraction for: packed blocks (first-fit and AnyGPT's greedy rule), and one example per row padded
to the longest in its batch.  "padding" counts the padding tokens of the batches actually trained;
"unfilled blocks" is the share of block capacity left empty, i.e. the padding if every row were
padded to the full block (as with several packed rows per step).  A second table packs a larger
draw of the samples (lengths only, no training).

    python scripts/bench_train.py                      # builds a small debug bundle in a temp folder
    python scripts/bench_train.py --model BUNDLE --block-size 4500 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def run(bundle: Path, out: Path, pack: bool, packing: str, args) -> dict:
    """One epoch; returns tokens/s and padding measured on the batches actually trained."""
    from transformers import TrainerCallback

    from anygpt.train.config import DataSpec, PretrainConfig
    from anygpt.train.data import prepare_data
    from anygpt.train.engine import run_training

    files = sorted((ROOT / "data" / "pretrain").glob("*/*.jsonl"))
    cfg = PretrainConfig(
        model=str(bundle),
        output_dir=str(out),
        datasets=[DataSpec(str(f)) for f in files],
        block_size=args.block_size,
        pack=pack,
        packing=packing,
        per_device_train_batch_size=1 if pack else args.batch_size,
        precision="fp32",
        val_set_size=0,
        warmup_ratio=0.0,
        logging_steps=10_000,
        save_steps=10_000,
        resume="never",
        seed=0,
    )
    from anygpt.bundle import Bundle
    from anygpt.train.pretrain_data import PretrainExamples

    b = Bundle(bundle, device="cpu")
    fn = PretrainExamples(b.tokenizer, b.layout.modalities, cfg.block_size)
    data = prepare_data(cfg, b.tokenizer, fn, log=lambda m: None)
    rows = len(data.train)
    cfg.max_steps = -(-rows // cfg.per_device_train_batch_size)  # exactly one epoch

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    result = run_training(cfg, callbacks=[clock])
    real = data.stats["train"]["tokens"]
    return {
        "mode": f"packed ({packing})" if pack else f"unpacked (batch {args.batch_size})",
        "steps": cfg.max_steps,
        "real_tokens": real,
        "seconds": round(clock.seconds, 2),
        "tokens_per_s": round(real / clock.seconds, 1),
        "padding": round(result.padding_fraction, 4),
        "block_fill_padding": data.stats["block_padding"],
    }


def packing_only(bundle: Path, args) -> list[dict]:
    """Padding of each packer on a larger draw of the samples (no training, lengths only)."""
    import numpy as np

    from anygpt.bundle import Bundle
    from anygpt.train.config import DataSpec
    from anygpt.train.data import JsonlRows, build_examples, mixture_order
    from anygpt.train.packing import pack
    from anygpt.train.pretrain_data import PretrainExamples

    b = Bundle(bundle, device="cpu")
    files = sorted((ROOT / "data" / "pretrain").glob("*/*.jsonl"))
    sources = [JsonlRows(DataSpec(str(f))) for f in files]
    pools = {s.spec.group: [(d, r) for r in range(len(s))] for d, s in enumerate(sources)}
    order = mixture_order(pools, {g: 1.0 for g in pools}, args.draws, seed=0)
    fn = PretrainExamples(b.tokenizer, b.layout.modalities, args.block_size)
    examples, _ = build_examples(sources, order, fn, seed=0, tag="bench")
    lengths = [len(e.ids) for e in examples]
    out = []
    for strategy in ("first_fit", "greedy"):
        blocks = pack(lengths, args.block_size, strategy)
        fill = sum(lengths) / (len(blocks) * args.block_size)
        out.append(
            {
                "packing": strategy,
                "examples": len(lengths),
                "blocks": len(blocks),
                "padding": round(1 - fill, 4),
                "mean_len": round(float(np.mean(lengths)), 1),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", help="bundle with image, speech and music tokens (default: a debug one)"
    )
    ap.add_argument("--hidden", type=int, default=128, help="width of the debug model")
    ap.add_argument("--block-size", type=int, default=4500)
    ap.add_argument("--batch-size", type=int, default=4, help="rows per step without packing")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--draws", type=int, default=2000, help="examples for the packing-only table")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = Path(args.model) if args.model else None
        if bundle is None:
            from anygpt.debug_bundle import write_debug_bundle

            bundle = write_debug_bundle(
                tmp / "bundle", modalities=("speech", "music", "image"), hidden=args.hidden
            )
        results = [
            run(bundle, tmp / "packed", True, "first_fit", args),
            run(bundle, tmp / "greedy", True, "greedy", args),
            run(bundle, tmp / "unpacked", False, "first_fit", args),
        ]
        packers = packing_only(bundle, args)
    print(f"training, one epoch of the samples, {args.threads} thread(s), block {args.block_size}:")
    print(
        f"{'mode':22} {'steps':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} "
        f"{'padding':>8} {'unfilled blocks':>16}"
    )
    for r in results:
        fill = r["block_fill_padding"]
        print(
            f"{r['mode']:22} {r['steps']:5d} {r['real_tokens']:7d} {r['seconds']:8.2f} "
            f"{r['tokens_per_s']:9.1f} {100 * r['padding']:7.1f}% "
            f"{'' if fill is None else f'{100 * fill:15.1f}%'}"
        )
    print(f"packing only, {args.draws} examples drawn from the samples:")
    for p in packers:
        print(
            f"  {p['packing']:10} {p['blocks']:5d} blocks of {args.block_size}, "
            f"mean example {p['mean_len']} tokens, padding {100 * p['padding']:.2f}%"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"training": results, "packing": packers}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
