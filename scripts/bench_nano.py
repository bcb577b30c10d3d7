"""Speed of a bundle on this machine: load time, and one spoken chat turn end to end.

    python scripts/bench_nano.py [--model models/anygpt-nano] [--threads 2] [--rounds 3]

* **load**: a fresh process imports anygpt and makes the bundle ready for a spoken turn (the LLM,
  the text tokenizer and the speech tokenizer loaded); measured in a child process, so nothing is
  cached in memory from an earlier round.
* **spoken chat turn**: a picture and a spoken question about it in (the demo's inputs), a spoken
  answer out: reading and encoding both, generating the reply, decoding its speech tokens to a
  waveform.  The first turn of a
  process is reported apart (it pays for lazy initialisation); the figure is the median of the
  following rounds, each on a fresh chat session with its own seed.

Prints one table; figures are for the machine it runs on (state its cores beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD_CHILD = """
import time, json, sys
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
import anygpt
engine = anygpt.load({model!r}, device="cpu")
engine.bundle.llm
engine.bundle.tokenizer
engine.bundle.modality("speech")
print(json.dumps({{"load_s": time.perf_counter() - t0}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from anygpt.paths import default_model

    model = str(args.model or default_model())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    loads = []
    for _ in range(args.rounds):
        code = LOAD_CHILD.format(threads=args.threads, model=model)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        loads.append(json.loads(out.stdout.strip().splitlines()[-1])["load_s"])

    import torch

    torch.set_num_threads(args.threads)
    import anygpt

    engine = anygpt.load(model, device="cpu", seed=0)
    turns, tokens = [], []
    counter = {"steps": 0}
    engine.on_token = lambda ids: counter.__setitem__("steps", ids.shape[1])
    from anygpt.demo import demo_inputs

    with tempfile.TemporaryDirectory() as tmp:
        inputs = demo_inputs(engine.bundle.root, Path(tmp))
        line = f"interleaved||speech||{inputs['picture']}|{inputs['question']}"
        for _ in range(args.rounds + 1):
            t0 = time.perf_counter()
            outcome = engine.chat().turn(line)
            turns.append(time.perf_counter() - t0)
            tokens.append(counter["steps"])
            if not outcome.ok:
                sys.exit(f"error: the chat turn failed: {outcome.error}")
    audio_s = sum(m.numpy().shape[-1] / m.sample_rate for m in outcome.media if m.is_audio)
    warm = turns[1:]
    print(f"model: {model}; {args.threads} threads on {os.cpu_count()} cores")
    print("| measure | median | all rounds |")
    print("|---|---|---|")
    print(
        f"| load (fresh process, ready for speech) | {statistics.median(loads):.2f} s | "
        + ", ".join(f"{x:.2f}" for x in loads)
        + " |"
    )
    print(f"| first spoken chat turn of a process | {turns[0]:.2f} s | |")
    print(
        f"| spoken chat turn (speech in, speech out) | {statistics.median(warm):.2f} s | "
        + ", ".join(f"{x:.2f}" for x in warm)
        + " |"
    )
    print(f"reply of the last round: {tokens[-1]} tokens, {audio_s:.2f} s of audio")


if __name__ == "__main__":
    main()
