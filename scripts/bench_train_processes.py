"""Stage-1 tokens/s of the nano LLM on the CPU: one process with N threads vs N DDP processes.

The nano setup of ``scripts/bench_nano_pretrain.py`` (hidden 256, 6 layers, 512-token packed
blocks, fp32, synthetic pairs).  Each case trains ``skip + steps`` optimizer steps with the same
global batch through the real command lines: ``anygpt pretrain --num-threads N`` and
``accelerate launch --multi_gpu --num_processes N ... --num-threads 1`` (DDP over gloo).  Figure:
real (non-padding) tokens per second over the steps after the first ``skip``, from the
``tokens_per_second`` of the log history; under DDP that is the first process's rate times the
number of processes (each process trains one packed block of about the same length per step).

    python scripts/bench_train_processes.py --processes 2 --steps 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _nano_builder():
    spec = importlib.util.spec_from_file_location(
        "bench_nano_pretrain", ROOT / "scripts" / "bench_nano_pretrain.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


def run_case(bundle: Path, pairs: Path, out: Path, processes: int, threads: int, args) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    steps = args.skip + args.steps
    flags = [
        "pretrain", "--model", str(bundle), "--data", str(pairs), "--output-dir", str(out),
        "--block-size", str(args.block_size), "--max-steps", str(steps),
        "--save-steps", str(steps), "--logging-steps", "1", "--learning-rate", "1e-3",
        "--warmup-ratio", "0", "--precision", "fp32", "--val-set-size", "0",
        "--num-threads", str(threads), "--resume", "never",
        "--per-device-train-batch-size", str(args.global_batch // processes),
    ]  # fmt: skip
    if processes == 1:
        cmd = [sys.executable, "-m", "anygpt", *flags]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "anygpt", *flags,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    state = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    rates = [
        h["tokens_per_second"] * processes
        for h in state["log_history"]
        if "tokens_per_second" in h and h["step"] > args.skip
    ]
    return {
        "processes": processes,
        "threads_each": threads,
        "global_batch": args.global_batch,
        "steps": len(rates),
        "tokens_per_second": round(sum(rates) / len(rates), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    nano = argparse.Namespace(
        modalities="speech", block_size=args.block_size, pairs=args.pairs, hidden=256,
        layers=6, heads=8, kv_heads=4,
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-train-processes-"))
    try:
        bundle, pairs, facts = _nano_builder()(work, nano)
        print(json.dumps(facts), flush=True)
        n = args.processes
        results = []
        for processes, threads in ((1, 1), (1, n), (n, 1)):
            res = run_case(
                bundle, pairs, work / f"run-{processes}x{threads}", processes, threads, args
            )
            results.append(res)
            print(json.dumps(res), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"model": facts, "runs": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
