"""Generation speed: the engine's own decode loop against a bare forward loop and transformers.

    python scripts/bench_generate.py [--model models/anygpt-nano] [--threads 2] [--rounds 3]

Sections (all measured in this one process, the contenders interleaved round by round):

* **batch 1**: ``--new-tokens`` greedy tokens after a chat prompt, three ways: a bare loop of the
  same ``LlamaForCausalLM`` forward with transformers' KV cache and an argmax (no logits
  processing at all), transformers' ``generate`` with the project's span constraint
  (:func:`anygpt.generation.hf_generate`), and the engine (:func:`anygpt.generation.generate`); then
  a speech reply (the bundle's speech decoding config: sampling, top-k, span constraint), engine vs
  transformers.  Figures: tokens/s (median of rounds), the engine over the bare loop and over
  ``generate``, and the engine's ttft / tpot.
* **serving**: ``--requests`` chat prompts arriving at staggered (Poisson, seeded) times, each with
  its own token limit; continuous batching (the scheduler admits requests at every step) against
  static batching (the same scheduler, but a batch is formed only when the previous one has
  finished).  Figures in the names ``vllm bench serve`` uses: output throughput, ttft (arrival to
  first token), tpot (per output token after the first), itl (between tokens), e2el (arrival to
  last token), median and p95, in ms.
* **chat turn**: ``anygpt chat`` turns on the bundle (text reply to a picture question, speech reply
  to a spoken question), the engine against transformers' ``generate`` as the LLM stage.
* **compile** (``--compile``): the engine's batch-1 decode with ``torch.compile`` of the one-token
  step, after a warm-up.
* **memory**: the LLM of a 7B-shaped bundle (LLaMA-7B with AnyGPT's extended vocabulary), computed
  from its meta-device parameter sizes (nothing is allocated): bf16 and int8 weight-only weights,
  and the KV cache per batch row at 4096 tokens.
* **gpu**: with a CUDA device, a 7B-shaped LLaMA with random weights in bf16, batch-1 decode
  tokens/s against the memory-bandwidth bound (weight bytes / ``--bandwidth-gbs``) and against
  transformers' ``generate``; without one the section says it is skipped.

Figures are for the machine it runs on; state its cores beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from anygpt.bundle import Bundle
from anygpt.config import DecodingConfig
from anygpt.generation import generate, hf_generate
from anygpt.runtime.scheduler import Scheduler

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@torch.inference_mode()
def bare_loop(model, prompt: list[int], new_tokens: int) -> int:
    """The model's forward with transformers' cache and an argmax: the speed of the model alone."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(new_tokens - 1):
        out = model(input_ids=token, cache=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return new_tokens


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def timed_both(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result): on a shared machine the CPU clock
    shows the work itself, the wall clock what a user waits."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def chat_prompt(bundle: Bundle, question: str, start_tag: str = "") -> list[int]:
    from anygpt.prompts import Conversation

    tok = bundle.tokenizer
    conversation = Conversation(bundle.template)
    conversation.add_user(question)
    ids = tok.encode(conversation.render())
    if start_tag:
        ids += tok.encode(": " + start_tag, add_bos=False)[len(tok.encode(":", add_bos=False)) :]
    return ids


def batch_one(bundle: Bundle, args) -> None:
    model, layout = bundle.llm, bundle.layout
    n = args.new_tokens
    prompt = chat_prompt(bundle, "how many objects are there in the picture")
    greedy = DecodingConfig(do_sample=False, max_new_tokens=n)
    stops = [-1]  # no stop: every contender makes exactly n tokens
    names = ("bare forward loop", "transformers generate", "engine")
    runs = {
        names[0]: lambda: bare_loop(model, prompt, n),
        names[1]: lambda: len(hf_generate(model, layout, [prompt], greedy, stop_ids=stops)[0]),
        names[2]: lambda: len(generate(model, layout, [prompt], greedy, stop_ids=stops)[0]),
    }
    speech_cfg = bundle.decoding("speech", chat=True).with_overrides(max_new_tokens=n)
    speech_prompt = chat_prompt(bundle, "say it aloud", layout.spec("speech").start_tag)
    speech_runs = {
        "transformers generate": lambda s: hf_generate(
            model, layout, [speech_prompt], speech_cfg, stop_ids=stops, seed=s
        ),
        "engine": lambda s: generate(
            model, layout, [speech_prompt], speech_cfg, stop_ids=stops, seed=s
        ),
    }
    for fn in runs.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {k: [] for k in runs}
    cpu_rates: dict[str, list[float]] = {k: [] for k in runs}
    speech_rates: dict[str, list[float]] = {k: [] for k in speech_runs}
    speech_cpu: dict[str, list[float]] = {k: [] for k in speech_runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            wall, cpu, count = timed_both(fn)
            rates[name].append(count / wall)
            cpu_rates[name].append(count / cpu)
        for name, fn in speech_runs.items():
            wall, cpu, out = timed_both(lambda fn=fn, r=r: fn(r))
            speech_rates[name].append(len(out[0]) / wall)
            speech_cpu[name].append(len(out[0]) / cpu)
    # the engine's ttft and tpot at batch 1
    scheduler = Scheduler(model, layout, max_batch=1, max_length=len(prompt) + n + 1)
    ttft, tpot = [], []
    for _ in range(args.rounds):
        request = scheduler.submit(prompt, greedy, stop_ids=stops)
        scheduler.run_until_idle()
        ttft.append(request.first_token_at - request.submitted_at)
        tpot.append((request.finished_at - request.first_token_at) / (len(request.tokens) - 1))
    med = {k: statistics.median(v) for k, v in rates.items()}
    cmed = {k: statistics.median(v) for k, v in cpu_rates.items()}
    smed = {k: statistics.median(v) for k, v in speech_rates.items()}
    scmed = {k: statistics.median(v) for k, v in speech_cpu.items()}
    print(f"\n### batch 1 ({n} new tokens, median of {args.rounds} rounds)\n")
    print("| contender | tokens/s (wall) | tokens per CPU-second |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} (greedy text) | {med[name]:.0f} | {cmed[name]:.0f} |")
    for name in speech_runs:
        label = f"{name} (speech reply: {describe(speech_cfg)})"
        print(f"| {label} | {smed[name]:.0f} | {scmed[name]:.0f} |")
    tg = "transformers generate"
    print(
        f"\nengine / bare forward loop: {med['engine'] / med[names[0]]:.2f} wall, "
        f"{cmed['engine'] / cmed[names[0]]:.2f} CPU"
    )
    print(
        f"engine / transformers generate (greedy): {med['engine'] / med[tg]:.2f} wall, "
        f"{cmed['engine'] / cmed[tg]:.2f} CPU"
    )
    print(
        f"engine / transformers generate (speech reply): {smed['engine'] / smed[tg]:.2f} wall, "
        f"{scmed['engine'] / scmed[tg]:.2f} CPU"
    )
    print(
        f"engine batch 1: ttft {1000 * statistics.median(ttft):.2f} ms "
        f"(prompt of {len(prompt)} tokens), tpot {1000 * statistics.median(tpot):.2f} ms"
    )


def describe(cfg: DecodingConfig) -> str:
    parts = [f"T={cfg.temperature:g}"] if cfg.do_sample else ["greedy"]
    if cfg.do_sample and cfg.top_k:
        parts.append(f"top-k {cfg.top_k}")
    if cfg.do_sample and cfg.top_p < 1:
        parts.append(f"top-p {cfg.top_p:g}")
    if cfg.repetition_penalty != 1:
        parts.append(f"penalty {cfg.repetition_penalty:g}")
    return ", ".join(parts)


def serving_workload(bundle: Bundle, args) -> list[tuple[float, list[int], int]]:
    """(arrival time in s, prompt ids, token limit) per request, seeded."""
    rng = random.Random(args.seed)
    questions = [
        "how many objects are there",
        "what colour is the circle in the picture",
        "describe the scene",
        "is the square above the triangle or below it",
        "name the shapes",
        "what is the largest object",
    ]
    arrivals, t = [], 0.0
    for i in range(args.requests):
        t += rng.expovariate(args.rate)
        question = questions[i % len(questions)] + " please" * rng.randint(0, 6)
        limit = rng.randint(args.new_tokens // 4, args.new_tokens * 2)
        arrivals.append((t, chat_prompt(bundle, question), limit))
    return arrivals


def serve(bundle: Bundle, workload, max_batch: int, continuous: bool) -> dict:
    """Replay the workload in real time; returns the vllm-style figures."""
    cfg = DecodingConfig(do_sample=False, max_new_tokens=max(w[2] for w in workload))
    longest = max(len(w[1]) for w in workload)
    scheduler = Scheduler(
        bundle.llm, bundle.layout, max_batch=max_batch, max_length=longest + cfg.max_new_tokens + 1
    )
    pending = list(workload)
    started = time.perf_counter()
    requests = []
    arrival_at = {}
    while pending or scheduler.has_work:
        now = time.perf_counter() - started
        may_admit = continuous or not scheduler.has_work
        while may_admit and pending and pending[0][0] <= now:
            if not continuous and scheduler.waiting >= max_batch:
                break
            at, prompt, limit = pending.pop(0)
            request = scheduler.submit(prompt, cfg, stop_ids=[-1], max_new_tokens=limit)
            arrival_at[request.id] = started + at
            requests.append(request)
        if scheduler.has_work:
            scheduler.step()
        elif pending:
            time.sleep(max(0.0, pending[0][0] - (time.perf_counter() - started)))
    ttft = [r.first_token_at - arrival_at[r.id] for r in requests]
    e2el = [r.finished_at - arrival_at[r.id] for r in requests]
    tpot = [
        (r.finished_at - r.first_token_at) / (len(r.tokens) - 1)
        for r in requests
        if len(r.tokens) > 1
    ]
    itl = [b - a for r in requests for a, b in zip(r.token_times, r.token_times[1:])]
    tokens = sum(len(r.tokens) for r in requests)
    span = max(r.finished_at for r in requests) - min(arrival_at.values())
    return {
        "throughput": tokens / span,
        "tokens": tokens,
        "ttft": ttft,
        "tpot": tpot,
        "itl": itl,
        "e2el": e2el,
    }


def serving(bundle: Bundle, args) -> None:
    workload = serving_workload(bundle, args)
    serve(bundle, workload[:4], args.max_batch, True)  # warm-up
    results = {}
    for name, continuous in (("continuous", True), ("static", False)):
        results[name] = serve(bundle, workload, args.max_batch, continuous)
    print(
        f"\n### serving ({args.requests} requests, Poisson arrivals at {args.rate:g}/s, "
        f"{args.new_tokens // 4}..{args.new_tokens * 2} greedy tokens each, "
        f"batch of at most {args.max_batch})\n"
    )
    print(
        "| batching | output tok/s | median ttft | p95 ttft | median tpot | p95 tpot "
        "| median itl | p95 itl | median e2el | p95 e2el |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = [f"{r['throughput']:.0f}"]
        for key in ("ttft", "tpot", "itl", "e2el"):
            cells += [f"{1000 * percentile(r[key], 0.5):.1f} ms"]
            cells += [f"{1000 * percentile(r[key], 0.95):.1f} ms"]
        print(f"| {name} | " + " | ".join(cells) + " |")


def chat_turns(bundle: Bundle, args) -> None:
    import anygpt.runtime.engine as engine_module
    from anygpt.runtime.engine import Engine

    demo = ROOT / "models" / "anygpt-nano" / "demo"
    if not (demo / "picture.png").is_file() or "speech" not in bundle.modality_names:
        print("\n### chat turn: skipped (needs the nano bundle's demo files and a speech modality)")
        return
    lines = {
        "text reply to a picture question": f"interleaved|how many objects are there|text||{demo / 'picture.png'}",
        "speech reply to a spoken question": f"interleaved||speech|||{demo / 'question.wav'}",
    }
    backends = {"transformers generate": hf_generate, "engine": generate}
    turns = {(line, b): [] for line in lines for b in backends}
    stage = {(line, b): [] for line in lines for b in backends}  # (LLM seconds, new tokens)
    engine = Engine(bundle, seed=1)
    for rnd in range(args.rounds + 1):
        for label, line in lines.items():
            for name, fn in backends.items():
                calls = []

                def measured(*a, fn=fn, calls=calls, **kw):
                    seconds, new = timed(lambda: fn(*a, **kw))
                    calls.append((seconds, sum(len(r) for r in new)))
                    return new

                engine_module.generate = measured
                try:
                    engine.seed = 100 + rnd
                    seconds, outcome = timed(lambda line=line: engine.chat().turn(line))
                finally:
                    engine_module.generate = generate
                if outcome.error:
                    sys.exit(f"error: the chat turn failed: {outcome.error}")
                if rnd:  # the first round pays for lazy initialisation
                    turns[(label, name)].append(seconds)
                    stage[(label, name)] += calls
    print(f"\n### chat turn (median of {args.rounds} rounds; sampled replies differ in length)\n")
    print("| turn | LLM | whole turn | LLM stage | new tokens | LLM ms per token |")
    print("|---|---|---|---|---|---|")
    per_token = {}
    for label in lines:
        for name in backends:
            calls = stage[(label, name)]
            tokens = sum(n for _, n in calls) / len(calls)
            llm = statistics.median(s for s, _ in calls)
            per_token[(label, name)] = sum(s for s, _ in calls) / max(1, sum(n for _, n in calls))
            print(
                f"| {label} | {name} | {1000 * statistics.median(turns[(label, name)]):.0f} ms "
                f"| {1000 * llm:.0f} ms | {tokens:.0f} | {1000 * per_token[(label, name)]:.2f} |"
            )
    for label in lines:
        a = statistics.median(turns[(label, "transformers generate")])
        b = statistics.median(turns[(label, "engine")])
        ratio = per_token[(label, "transformers generate")] / per_token[(label, "engine")]
        print(f"{label}: whole turn {a / b:.2f}x, LLM stage per token {ratio:.2f}x")


def compiled(bundle: Bundle, args) -> None:
    model, layout = bundle.llm, bundle.layout
    n = args.new_tokens
    prompt = chat_prompt(bundle, "how many objects are there in the picture")
    greedy = DecodingConfig(do_sample=False, max_new_tokens=n)
    kinds = {"eager": False, "torch.compile": True}
    schedulers = {
        k: Scheduler(model, layout, max_batch=1, max_length=len(prompt) + n + 1, compile=c)
        for k, c in kinds.items()
    }
    warm = {}
    for k, s in schedulers.items():
        seconds, _ = timed(
            lambda s=s: (s.submit(prompt, greedy, stop_ids=[-1]), s.run_until_idle())
        )
        warm[k] = seconds
    rates = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k, s in schedulers.items():
            seconds, _ = timed(
                lambda s=s: (s.submit(prompt, greedy, stop_ids=[-1]), s.run_until_idle())
            )
            rates[k].append(n / seconds)
    print(f"\n### torch.compile of the one-token step (batch 1, {n} tokens)\n")
    print("| step | tokens/s | first run (compiles) |")
    print("|---|---|---|")
    for k in kinds:
        print(f"| {k} | {statistics.median(rates[k]):.0f} | {warm[k]:.1f} s |")


def seven_b_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )


def anygpt_vocab_size() -> int:
    from anygpt.layout import ANYGPT_MODALITIES, extended_vocabulary

    return 32_000 + len(extended_vocabulary(ANYGPT_MODALITIES))


def memory() -> None:
    from transformers import LlamaForCausalLM

    cfg = seven_b_config(anygpt_vocab_size())
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    bf16 = 2 * total
    int8 = (
        linear
        + 2 * (total - linear)
        + 2 * sum(m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Linear))
    )  # int8 linear weights with one bf16 scale per output row; the rest stays bf16
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_row = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4096 * 2
    print(
        f"\n### memory: 7B-shaped LLM with AnyGPT's vocabulary ({cfg.vocab_size} tokens), "
        "computed from meta-device sizes\n"
    )
    print(f"parameters: {total / 1e9:.2f} B")
    print(f"weights bf16: {bf16 / 2**30:.1f} GiB; int8 weight-only: {int8 / 2**30:.1f} GiB")
    print(f"KV cache (bf16) per batch row of 4096 tokens: {kv_row / 2**30:.1f} GiB")


@torch.inference_mode()
def gpu(args) -> None:
    if not torch.cuda.is_available():
        print("\n### gpu: skipped (no CUDA device on this machine)")
        return
    from transformers import LlamaForCausalLM

    from anygpt.generation.model import CachedLM

    cfg = seven_b_config(anygpt_vocab_size())
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = args.bandwidth_gbs * 1e9
    if not bandwidth:  # measure a device-to-device copy
        x = torch.empty(weight_bytes // 8, dtype=torch.uint8, device="cuda")
        y = torch.empty_like(x)
        y.copy_(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            y.copy_(x)
        torch.cuda.synchronize()
        bandwidth = 2 * x.numel() * 5 / (time.perf_counter() - start)
        del x, y
    n = args.new_tokens
    prompt = torch.randint(0, cfg.vocab_size, (32,), device="cuda")
    lm = CachedLM(model, 1, 32 + n + 1, compile=args.compile)

    def ours():
        logits = lm.prefill(0, prompt)
        token = logits.argmax(-1, keepdim=True)
        for i in range(n - 1):
            pos = 32 + i
            logits = lm.decode(token, torch.tensor([pos], device="cuda"), [pos])
            token = logits.argmax(-1)
        torch.cuda.synchronize()

    def theirs():
        model.generate(
            prompt.unsqueeze(0), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
        torch.cuda.synchronize()

    for fn in (ours, theirs):
        fn()
    rates = {"engine": [], "transformers generate": []}
    for _ in range(args.rounds):
        for name, fn in (("engine", ours), ("transformers generate", theirs)):
            seconds, _ = timed(fn)
            rates[name].append(n / seconds)
    bound = bandwidth / weight_bytes
    print(
        f"\n### gpu: 7B-shaped LLaMA, random bf16 weights ({weight_bytes / 1e9:.1f} GB), batch 1\n"
    )
    print(f"memory-bandwidth bound: {bound:.0f} tokens/s ({bandwidth / 1e9:.0f} GB/s)")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name}: {rate:.0f} tokens/s ({rate / bound:.0%} of the bound)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=str(ROOT / "models" / "anygpt-nano"), help="bundle folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rate", type=float, default=20.0, help="request arrivals per second")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile")
    ap.add_argument("--bandwidth-gbs", type=float, default=0.0, help="GPU bandwidth (0: measure)")
    ap.add_argument(
        "--only",
        default="batch1,serving,chat,compile,memory,gpu",
        help="comma-separated sections to run",
    )
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the no-stop id (-1) of the timed runs is intended
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = set(args.only.split(","))
    try:
        bundle = Bundle(args.model, device=args.device)
        parameters = sum(p.numel() for p in bundle.llm.parameters())
    except Exception as exc:  # a bad --model is one line, not a traceback
        sys.exit(f"error: cannot load {args.model}: {exc}")
    print(
        f"model {args.model}: {parameters / 1e6:.1f}M "
        f"parameters, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    with contextlib.suppress(KeyboardInterrupt):
        if "batch1" in sections:
            batch_one(bundle, args)
        if "serving" in sections:
            serving(bundle, args)
        if "chat" in sections:
            chat_turns(bundle, args)
        if "compile" in sections and args.compile:
            compiled(bundle, args)
        if "memory" in sections:
            memory()
        if "gpu" in sections:
            gpu(args)


if __name__ == "__main__":
    main()
