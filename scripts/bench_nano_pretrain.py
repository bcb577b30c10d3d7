"""Stage-1 pretraining throughput of a nano-sized LLaMA on the CPU, through 'anygpt pretrain'.

Builds, in a work folder: a world-sentence corpus, 'anygpt init-llm' (hidden 256, 6 layers, 8
heads, 4 KV heads: about 5M parameters before the modality rows), a debug bundle whose modality
tokenizers give the code vocabulary, 'anygpt extend-vocab', and synthetic pairs (world sentences
with random code segments of 60-200 codes, about what 1-4 s of speech gives).  Then trains a few
steps with packed 512-token blocks and 1, then 2, torch threads, exactly as 'anygpt pretrain' does,
and reports real (non-padding) tokens per second over the optimizer steps after the first
``--skip`` ones (the first steps allocate).  "tok/CPU-s" divides by the CPU time the process used
in those steps, which says less about other jobs sharing the machine than wall time does.

    python scripts/bench_nano_pretrain.py                       # speech codes only (vocab ~1.5k)
    python scripts/bench_nano_pretrain.py --modalities image,speech,music   # the debug codebooks
    python scripts/bench_nano_pretrain.py --threads 1 --steps 12 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path


def build(work: Path, args) -> tuple[Path, Path, dict]:
    """The extended bundle, the pair file and facts about the model."""
    from anygpt.debug_bundle import write_debug_bundle
    from anygpt.train.init_llm import InitLLMConfig, init_llm
    from anygpt.train.vocab import ExtendVocabConfig, extend_vocab
    from anygpt.world.text import all_sentences

    rng = random.Random(0)
    sentences = list(all_sentences())
    rng.shuffle(sentences)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(sentences[:20000]) + "\n", encoding="utf-8")
    mods = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    report = init_llm(
        InitLLMConfig(
            str(work / "llm"), (str(corpus),), hidden=args.hidden, layers=args.layers,
            heads=args.heads, kv_heads=args.kv_heads, max_context=args.block_size, seed=0,
        ),
        overwrite=True,
    )  # fmt: skip
    tok_bundle = write_debug_bundle(
        work / "tokenizers", modalities=mods, soundstorm=False, overwrite=True
    )
    bundle, _ = extend_vocab(
        ExtendVocabConfig(
            str(work / "llm"), str(work / "bundle"), modalities=mods,
            modality_files=str(tok_bundle),
        ),
        overwrite=True,
    )  # fmt: skip
    from safetensors import safe_open

    from anygpt.bundle import Bundle

    b = Bundle(bundle, device="cpu")
    pairs = work / "pairs.jsonl"
    with pairs.open("w", encoding="utf-8") as f:
        for i in range(args.pairs):
            name = mods[i % len(mods)]
            t = b.layout.modalities[name]
            n = t.fixed_length or rng.randint(60, 200) // t.num_codebooks * t.num_codebooks
            codes = [rng.randrange(t.codebook_size) for _ in range(n)]
            frames = [codes[j : j + t.num_codebooks] for j in range(0, n, t.num_codebooks)]
            seg = "".join(
                f"<{t.prefix}{c + k * t.codebook_size}>" for fr in frames for k, c in enumerate(fr)
            )
            row = {name: t.start_tag + seg + t.end_tag, "text": sentences[i]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with safe_open(str(bundle / "llm" / "model.safetensors"), "pt") as sf:
        total = sum(math.prod(sf.get_slice(k).get_shape()) for k in sf.keys())
    facts = {
        "parameters_init_llm": report.parameters,
        "parameters": total,
        "vocab": b.tokenizer.vocab_size,
    }
    return bundle, pairs, facts


class StepClock:
    """Wall and CPU seconds of each optimizer step (on_step_begin -> on_step_end)."""

    def __init__(self) -> None:
        self.wall: dict[int, float] = {}
        self.cpu: dict[int, float] = {}

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self._w, self._c = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):
                clock.wall[state.global_step] = time.perf_counter() - self._w
                clock.cpu[state.global_step] = time.process_time() - self._c

        return Clock()


def measure(bundle: Path, pairs: Path, out: Path, threads: int, args) -> dict:
    """Train ``skip + steps`` steps; tokens/s over the last ``steps``."""
    from anygpt.train.config import DataSpec, PretrainConfig
    from anygpt.train.engine import run_training

    shutil.rmtree(out, ignore_errors=True)
    cfg = PretrainConfig(
        model=str(bundle), output_dir=str(out), datasets=[DataSpec(str(pairs))],
        block_size=args.block_size, per_device_train_batch_size=args.batch_size,
        max_steps=args.skip + args.steps, learning_rate=1e-3, warmup_ratio=0.0,
        precision="fp32", val_set_size=0, logging_steps=1, save_steps=100_000, resume="never",
        num_threads=threads, seed=0,
    )  # fmt: skip
    clock = StepClock()
    result = run_training(cfg, callbacks=[clock.callback()])
    rates = {h["step"]: h["tokens_per_second"] for h in result.log_history if "loss" in h}
    steps = [s for s in sorted(rates) if s > args.skip]
    tokens = sum(rates[s] * clock.wall[s] for s in steps)
    wall = sum(clock.wall[s] for s in steps)
    cpu = sum(clock.cpu[s] for s in steps)
    return {
        "threads": threads,
        "steps": len(steps),
        "tokens": round(tokens),
        "seconds": round(wall, 2),
        "tokens_per_second": round(tokens / wall, 1),
        "tokens_per_cpu_second": round(tokens / cpu, 1),
        "padding": result.padding_fraction,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", help="work folder (default: a temporary one, removed at the end)")
    p.add_argument("--modalities", default="speech", help="code vocabulary of the debug bundle")
    p.add_argument("--threads", default="1,2", help="torch thread counts to measure")
    p.add_argument("--steps", type=int, default=10, help="measured optimizer steps")
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the figure")
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()

    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-nano-")
        work = Path(tmp.name)
    try:
        bundle, pairs, facts = build(work, args)
        load = os.getloadavg()[0]
        rows = [
            measure(bundle, pairs, work / f"run-{t}", int(t), args) for t in args.threads.split(",")
        ]
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(
        f"\nmodel: hidden {args.hidden}, {args.layers} layers, {facts['parameters']:,} parameters "
        f"({facts['parameters_init_llm']:,} before the modality rows), vocabulary "
        f"{facts['vocab']}; block {args.block_size}, batch {args.batch_size}, fp32; "
        f"load average {load:.1f} on {os.cpu_count()} CPUs at the start\n"
    )
    print("| threads | steps | tokens | seconds | tokens/s | tok/CPU-s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threads']} | {r['steps']} | {r['tokens']} | {r['seconds']} | "
            f"{r['tokens_per_second']:.0f} | {r['tokens_per_cpu_second']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": facts, "settings": vars(args), "load": load, "runs": rows},
                       indent=2) + "\n"
        )  # fmt: skip


if __name__ == "__main__":
    main()
