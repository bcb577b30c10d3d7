"""Generation time for N prompts batched vs one by one.

python scripts/bench_generation.py --model /tmp/bundle --prompts 16 --new-tokens 64
"""

from __future__ import annotations

import argparse
import time

import torch

from anygpt.bundle import Bundle
from anygpt.config import DecodingConfig
from anygpt.generation import generate
from anygpt.prompts import base_t2x_prompt


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", required=True, help="bundle folder (e.g. one made by 'anygpt debug-bundle')"
    )
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = Bundle(args.model, device=args.device)
    tok = bundle.tokenizer
    prompts = [
        tok.encode(
            base_t2x_prompt("Please read this text aloud.", f"sentence number {i} " * (1 + i % 4))
        )
        for i in range(args.prompts)
    ]
    # fixed length so both runs do the same work: greedy, no early stop
    cfg = DecodingConfig(
        do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens
    )
    cfg = cfg.with_overrides(apply_min_new_tokens=True)
    model, layout = bundle.llm, bundle.layout
    generate(model, layout, prompts[:2], cfg, stop_ids=[tok.eos_id])  # warm-up

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    batched = timed(lambda: generate(model, layout, prompts, cfg, stop_ids=[tok.eos_id]))
    single = timed(
        lambda: [generate(model, layout, [p], cfg, stop_ids=[tok.eos_id]) for p in prompts]
    )
    n_tok = args.prompts * args.new_tokens
    print(
        f"device={args.device} threads={torch.get_num_threads()} prompts={args.prompts} new_tokens={args.new_tokens}"
    )
    print(f"{'mode':<12}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'one by one':<12}{single:>10.2f}{n_tok / single:>12.0f}")
    print(f"{'batched':<12}{batched:>10.2f}{n_tok / batched:>12.0f}")
    print(f"speed-up: {single / batched:.1f}x")


if __name__ == "__main__":
    main()
