"""Memory of a bundle with and without int8 weight-only LLM loading.

    python scripts/bench_memory.py [--model models/anygpt-nano] [--prompts 20]

Sections:

* **weights**: the bundle's LLM parameter bytes at fp32 and with ``quantize="int8"`` (all
  parameters, and the ``nn.Linear`` weights alone), and how many of ``--prompts`` greedy text
  replies (up to ``--new-tokens`` tokens) are the same token for token.
* **process**: peak RSS of a fresh process (``VmHWM``) after its imports, after loading the
  bundle's LLM, and after one chat turn (a question about the demo picture), for ``--quantize
  none`` and ``int8``; each in its own subprocess, run one after the other, shown side by side.
* **7B**: a 7B-shaped LLaMA with AnyGPT's vocabulary (the shapes of ``bench_generate.py``'s memory
  section), built on the meta device (nothing is allocated) in bf16 and then quantized with the
  same call the bundle uses, so the int8 figure is torchao's real layout (int8 weights, a float32
  scale and an int8 zero point per output row).

Needs torchao (``pip install torchao``).  Figures are for the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from anygpt.world.text import SAMPLE_REQUESTS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

QUESTIONS = list(SAMPLE_REQUESTS)  # the world's own requests (see anygpt.world.text)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def status_bytes(field: str) -> int:
    """A size from ``/proc/self/status`` in bytes: ``VmHWM`` (peak resident set), ``VmRSS`` (now).

    Not ``ru_maxrss`` for the peak: Linux carries it over from the parent across fork and exec,
    so a child would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this script needs Linux)")


def peak_rss() -> int:
    return status_bytes("VmHWM")


def child(model: str, quantize: str) -> None:
    """One process: load the bundle, answer one chat turn, print the peaks as JSON."""
    import anygpt

    after_imports = peak_rss()
    start = time.perf_counter()
    engine = anygpt.load(model, device="cpu", seed=0, quantize=quantize)
    engine.bundle.llm  # noqa: B018 - the load is what is measured
    after_load, load_s = peak_rss(), time.perf_counter() - start
    picture = Path(model) / "demo" / "picture.png"
    start = time.perf_counter()
    reply = engine.chat().turn(f"interleaved|what is in the picture?|||{picture}")
    turn_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "imports": after_imports,
                "load": after_load,
                "turn": peak_rss(),
                "now": status_bytes("VmRSS"),
                "load_s": load_s,
                "turn_s": turn_s,
                "reply": reply.text if reply.ok else f"error: {reply.error}",
            }
        )
    )


def greedy_ids(bundle, questions: list[str], new_tokens: int) -> list[list[int]]:
    from bench_generate import chat_prompt

    from anygpt.config import DecodingConfig
    from anygpt.generation import generate

    greedy = DecodingConfig(do_sample=False, max_new_tokens=new_tokens)
    stop = [bundle.tokenizer.eos_id] if hasattr(bundle.tokenizer, "eos_id") else [2]
    return [
        generate(bundle.llm, bundle.layout, [chat_prompt(bundle, q)], greedy, stop_ids=stop)[0]
        for q in questions
    ]


def weights(args) -> None:
    from anygpt.bundle import Bundle
    from anygpt.memory import weight_bytes

    plain = Bundle(args.model, device="cpu")
    int8 = Bundle(args.model, device="cpu", quantize="int8")
    print(f"\n### weights: {args.model} LLM on the CPU\n")
    print("| | fp32 | int8 weight-only | ratio |")
    print("|---|---|---|---|")
    for label, linear_only in (("all parameters", False), ("nn.Linear weights", True)):
        a = weight_bytes(plain.llm, linear_only=linear_only)
        b = weight_bytes(int8.llm, linear_only=linear_only)
        print(f"| {label} | {mib(a)} | {mib(b)} | {a / b:.2f}x |")
    questions = (QUESTIONS * (args.prompts // len(QUESTIONS) + 1))[: args.prompts]
    ref = greedy_ids(plain, questions, args.new_tokens)
    got = greedy_ids(int8, questions, args.new_tokens)
    same = sum(a == b for a, b in zip(ref, got, strict=True))
    tokens = sum(len(r) for r in ref)
    agree = sum(
        sum(x == y for x, y in zip(a, b, strict=False)) for a, b in zip(ref, got, strict=True)
    )
    print(
        f"\ngreedy text replies (<= {args.new_tokens} tokens): {same}/{len(questions)} identical; "
        f"{agree}/{tokens} reference tokens equal at their position"
    )


def process(args) -> None:
    rows = {}
    for quantize in ("none", "int8"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", quantize, "--model", args.model],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        rows[quantize] = json.loads(out.stdout.strip().splitlines()[-1])
    print("\n### process: peak RSS of a fresh process (VmHWM), CPU\n")
    print("| | --quantize none | --quantize int8 |")
    print("|---|---|---|")
    for key, label in (
        ("imports", "after imports"),
        ("load", "after loading the LLM"),
        ("turn", "after one chat turn (picture question)"),
        ("now", "resident at the end (VmRSS, not the peak)"),
    ):
        print(f"| {label} | {mib(rows['none'][key])} | {mib(rows['int8'][key])} |")
    for key, label in (("load_s", "load time"), ("turn_s", "chat turn time")):
        print(f"| {label} | {rows['none'][key]:.2f} s | {rows['int8'][key]:.2f} s |")
    print(f"| reply | {rows['none']['reply']} | {rows['int8']['reply']} |")


def seven_b() -> None:
    from bench_generate import anygpt_vocab_size, seven_b_config
    from transformers import LlamaForCausalLM

    from anygpt.memory import quantize_llm, weight_bytes

    cfg = seven_b_config(anygpt_vocab_size())
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    bf16_all, bf16_linear = weight_bytes(model), weight_bytes(model, linear_only=True)
    quantize_llm(model)  # on meta tensors: shapes and dtypes only
    int8_all, int8_linear = weight_bytes(model), weight_bytes(model, linear_only=True)
    print(
        f"\n### 7B: LLaMA-7B shapes with AnyGPT's vocabulary ({cfg.vocab_size:,} tokens), "
        f"{total / 1e9:.2f} B parameters, meta device\n"
    )
    print("| | bf16 | int8 weight-only | ratio |")
    print("|---|---|---|---|")
    print(
        f"| all weights | {bf16_all / 2**30:.2f} GiB | {int8_all / 2**30:.2f} GiB "
        f"| {bf16_all / int8_all:.2f}x |"
    )
    print(
        f"| nn.Linear weights | {bf16_linear / 2**30:.2f} GiB | {int8_linear / 2**30:.2f} GiB "
        f"| {bf16_linear / int8_linear:.2f}x |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=str(ROOT / "models" / "anygpt-nano"), help="bundle folder")
    ap.add_argument("--prompts", type=int, default=20, help="greedy replies compared")
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--only", default="weights,process,7b", help="comma-separated sections")
    ap.add_argument("--child", choices=["none", "int8"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.child)
        return
    from anygpt.memory import check_quantize

    try:
        check_quantize("int8")
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    sections = set(args.only.split(","))
    if "weights" in sections:
        weights(args)
    if "process" in sections:
        process(args)
    if "7b" in sections:
        seven_b()


if __name__ == "__main__":
    main()
