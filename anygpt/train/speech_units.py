"""Train a nano speech tokenizer (speech units) on transcribed speech.

``anygpt train-tokenizer speech MANIFEST --out DIR``.  MANIFEST is JSON lines with "text" and
"speech" (audio path relative to the manifest); an optional speaker column ("voice") teaches the
vocoder voices.  Three stages, each saved under DIR so that a stopped run resumes:

1. recogniser: a small CTC character recogniser (``recogniser.safetensors``);
2. units: k-means of one of its hidden layers (``centroids.safetensors``);
3. vocoder: units + a voice prompt's speaker vector -> log-mel (``vocoder.safetensors``).

The tokenizer is then ``DIR/nano_speech.safetensors`` + ``DIR/nano_speech.json`` (float16), which a
bundle entry of type ``nano-units`` points at.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from anygpt.models.nano_speech import (
    FeatureConfig,
    Recogniser,
    RecogniserConfig,
    assign_units,
    ctc_greedy,
    kmeans,
)
from anygpt.models.nano_speech_codec import NanoSpeech, NanoSpeechConfig, tiny_config
from anygpt.models.nano_vocoder import VocoderConfig, masked_l1
from anygpt.train.speech_data import (
    ManifestError,
    SpeechSet,
    length_batches,
    load_speech_set,
    pad_mels,
    read_manifest,
    spec_augment,
)

SIZES = {
    "tiny": tiny_config,
    "small": lambda n_units=256: NanoSpeechConfig(
        FeatureConfig(), RecogniserConfig(), VocoderConfig(n_units=n_units)
    ),
}


# ---------------------------------------------------------------------- helpers
def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance of two sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def error_rates(hyps: list[str], refs: list[str]) -> tuple[float, float]:
    """(character error rate, word error rate) over a corpus."""
    ce = sum(edit_distance(list(h), list(r)) for h, r in zip(hyps, refs))
    we = sum(edit_distance(h.split(), r.split()) for h, r in zip(hyps, refs))
    return ce / max(1, sum(len(r) for r in refs)), we / max(1, sum(len(r.split()) for r in refs))


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def save_state(path: Path, module: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


def load_state(path: Path, module: torch.nn.Module, what: str) -> None:
    from anygpt.checkpoint import load_strict, read_state_dict

    load_strict(module, read_state_dict(path, what=what), what=what)


class Stage:
    """A resumable training loop: model + AdamW + step counter, checkpointed to ``DIR/NAME.ckpt``."""

    def __init__(self, name: str, out: Path, params, steps: int, lr: float, restart: bool) -> None:
        self.name, self.ckpt, self.steps, self.lr = name, out / f"{name}.ckpt", steps, lr
        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
        self.step = 0
        self.restart = restart

    def resume(self, modules: dict[str, torch.nn.Module]) -> None:
        if self.restart or not self.ckpt.is_file():
            return
        state = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        for k, m in modules.items():
            m.load_state_dict(state[k])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        print(f"{self.name}: resumed at step {self.step}", flush=True)

    def save(self, modules: dict[str, torch.nn.Module]) -> None:
        state = {k: m.state_dict() for k, m in modules.items()}
        state.update(opt=self.opt.state_dict(), step=self.step)
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.ckpt)

    def update(self, loss: torch.Tensor) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, self.steps, self.lr, min(200, self.steps // 10 + 1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.step += 1


def batches_forever(data: SpeechSet, batch_size: int, seed: int):
    rng = random.Random(seed)
    lengths = [data.frames(i) for i in range(len(data))]
    while True:
        yield from length_batches(lengths, batch_size, rng)


# ---------------------------------------------------------------------- stage 1: recogniser
@torch.no_grad()
def transcribe(model: Recogniser, data: SpeechSet, batch_size: int = 32) -> list[str]:
    model.eval()
    hyps: list[str] = [""] * len(data)
    order = sorted(range(len(data)), key=data.frames)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        mel, n = pad_mels([data.mels[j] for j in idx])
        logits, slots = model(mel, n)
        for j, h in zip(idx, ctc_greedy(logits, slots, model.cfg.alphabet)):
            hyps[j] = h
    return hyps


def train_recogniser(
    model: Recogniser, data: SpeechSet, heldout: SpeechSet | None, args, out: Path
) -> dict:
    final = out / "recogniser.safetensors"
    if final.is_file() and not args.restart:
        load_state(final, model, "recogniser")
        print("recogniser: trained (found recogniser.safetensors)", flush=True)
        return {}
    stage = Stage(
        "recogniser", out, model.parameters(), args.recogniser_steps, args.lr, args.restart
    )
    stage.resume({"model": model})
    g = torch.Generator().manual_seed(args.seed)
    batches = batches_forever(data, args.batch_size, args.seed + stage.step)
    model.train()
    bar = tqdm(total=stage.steps, initial=stage.step, desc="recogniser", mininterval=10)
    avg = None
    while stage.step < stage.steps:
        idx = next(batches)
        mel, n = pad_mels([data.mels[i] for i in idx])
        mel = spec_augment(mel, n, g, floor=float(mel.min()))
        loss = model.ctc_loss(mel, n, [data.labels[i] for i in idx])
        stage.update(loss)
        value = loss.item()
        avg = value if avg is None else 0.95 * avg + 0.05 * value
        bar.update(1)
        bar.set_postfix(ctc=f"{avg:.3f}")
        if stage.step % args.save_every == 0 or stage.step == stage.steps:
            stage.save({"model": model})
            model.train()
    bar.close()
    save_state(final, model)
    report = {"recogniser_final_ctc": avg}
    if heldout is not None:
        cer, wer = error_rates(transcribe(model, heldout), heldout.texts)
        report.update(heldout_cer=cer, heldout_wer=wer)
        print(f"recogniser: held-out CER {cer:.3%}, WER {wer:.3%}", flush=True)
    return report


# ---------------------------------------------------------------------- stage 2: units
@torch.no_grad()
def unit_layer_vectors(
    model: NanoSpeech, data: SpeechSet, batch_size: int = 32
) -> list[torch.Tensor]:
    """Each utterance's unit-layer vectors [T'_i, D]."""
    model.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(data)
    order = sorted(range(len(data)), key=data.frames)
    for i in tqdm(range(0, len(order), batch_size), desc="unit features", mininterval=10):
        idx = order[i : i + batch_size]
        mel, n = pad_mels([data.mels[j] for j in idx])
        h, k = model.unit_features(mel, n)
        for j, row, m in zip(idx, h, k.tolist()):
            out[j] = row[:m].clone()
    return out


def train_units(model: NanoSpeech, data: SpeechSet, args, out: Path) -> list[torch.Tensor]:
    """Fit (or read) the centroids; returns every utterance's units [T'_i]."""
    final = out / "centroids.safetensors"
    vectors = unit_layer_vectors(model, data)
    if final.is_file() and not args.restart:
        from safetensors.torch import load_file

        model.centroids.copy_(load_file(str(final))["centroids"])
        print("units: fitted (found centroids.safetensors)", flush=True)
    else:
        g = torch.Generator().manual_seed(args.seed)
        allv = torch.cat(vectors)
        sample = allv[torch.randperm(len(allv), generator=g)[: args.kmeans_frames]]
        t0 = time.time()
        model.centroids.copy_(kmeans(sample, model.cfg.n_units, args.kmeans_iters, generator=g))
        from safetensors.torch import save_file

        save_file({"centroids": model.centroids.contiguous()}, str(final))
        print(f"units: k-means of {len(sample)} frames in {time.time() - t0:.0f} s", flush=True)
    return [assign_units(v, model.centroids) for v in vectors]


# ---------------------------------------------------------------------- stage 3: vocoder
def prompt_for(
    i: int, data: SpeechSet, by_speaker: dict[int, list[int]], rng: random.Random
) -> int:
    """Another utterance of the same speaker (itself when the speaker is unknown or alone)."""
    same = by_speaker.get(data.speakers[i], [])
    if data.speakers[i] < 0 or len(same) < 2:
        return i
    while True:
        j = rng.choice(same)
        if j != i:
            return j


def crop(mel: torch.Tensor, frames: int, rng: random.Random) -> torch.Tensor:
    """A random window of at most ``frames`` frames of mel [M, T] (short prompts train faster)."""
    if mel.shape[-1] <= frames:
        return mel
    start = rng.randrange(mel.shape[-1] - frames + 1)
    return mel[:, start : start + frames]


def train_vocoder(
    model: NanoSpeech, data: SpeechSet, units: list[torch.Tensor], args, out: Path
) -> dict:
    final = out / "vocoder.safetensors"
    modules = {"speaker": model.speaker, "vocoder": model.vocoder}
    n_spk = len(data.speaker_names)
    classifier = torch.nn.Linear(model.cfg.vocoder.speaker_dim, max(1, n_spk))
    if final.is_file() and not args.restart:
        load_state(final, torch.nn.ModuleDict(modules), "vocoder")
        print("vocoder: trained (found vocoder.safetensors)", flush=True)
        return {}
    modules["classifier"] = classifier
    params = [p for m in modules.values() for p in m.parameters()]
    stage = Stage("vocoder", out, params, args.vocoder_steps, args.lr, args.restart)
    stage.resume(modules)
    by_speaker: dict[int, list[int]] = {}
    for i, s in enumerate(data.speakers):
        by_speaker.setdefault(s, []).append(i)
    rng = random.Random(args.seed + 1 + stage.step)
    batches = batches_forever(data, args.batch_size, args.seed + 1 + stage.step)
    for m in modules.values():
        m.train()
    bar = tqdm(total=stage.steps, initial=stage.step, desc="vocoder", mininterval=10)
    avg = None
    while stage.step < stage.steps:
        idx = next(batches)
        mel, n = pad_mels([data.mels[i] for i in idx])
        pmel, pn = pad_mels(
            [
                crop(data.mels[prompt_for(i, data, by_speaker, rng)], args.prompt_frames, rng)
                for i in idx
            ]
        )
        u = torch.zeros(len(idx), max(len(units[i]) for i in idx), dtype=torch.long)
        for k, i in enumerate(idx):
            u[k, : len(units[i])] = units[i]
        un = torch.tensor([len(units[i]) for i in idx])
        voice = model.speaker(pmel, pn)
        pred = model.vocoder(u, un, voice)
        loss = masked_l1(pred, mel, n)
        spk = torch.tensor([data.speakers[i] for i in idx])
        if n_spk > 1 and (spk >= 0).any():
            loss = loss + 0.1 * F.cross_entropy(classifier(voice)[spk >= 0], spk[spk >= 0])
        stage.update(loss)
        value = loss.item()
        avg = value if avg is None else 0.95 * avg + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{avg:.3f}")
        if stage.step % args.save_every == 0 or stage.step == stage.steps:
            stage.save(modules)
    bar.close()
    model.eval()
    set_default_voice(model, data, args.default_voice)
    save_state(final, torch.nn.ModuleDict({"speaker": model.speaker, "vocoder": model.vocoder}))
    return {"vocoder_final_loss": avg}


@torch.no_grad()
def set_default_voice(model: NanoSpeech, data: SpeechSet, name: str | None) -> None:
    """The default voice: the mean speaker vector of speaker ``name`` (else of everything)."""
    wanted = data.speaker_names.index(name) if name in data.speaker_names else None
    idx = [i for i, s in enumerate(data.speakers) if wanted is None or s == wanted][:64]
    vecs = [
        model.speaker(data.mels[i][None].float(), torch.tensor([data.frames(i)]))[0] for i in idx
    ]
    model.vocoder.default_voice.copy_(torch.stack(vecs).mean(0))


# ---------------------------------------------------------------------- recipe
def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="JSON lines with 'text' and 'speech' (paths relative to it)")
    p.add_argument("--out", required=True, help="folder for checkpoints and the tokenizer")
    p.add_argument("--heldout", help="a second manifest to report recogniser CER/WER on")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--units", type=int, default=256, help="k-means clusters (speech tokens)")
    p.add_argument("--recogniser-steps", type=int, default=1500)
    p.add_argument("--vocoder-steps", type=int, default=1500)
    p.add_argument("--kmeans-iters", type=int, default=20)
    p.add_argument("--kmeans-frames", type=int, default=100_000, help="vectors k-means sees")
    p.add_argument("--prompt-frames", type=int, default=200, help="voice prompt crop (10 ms)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--speaker-column", default="voice", help="manifest column naming the speaker")
    p.add_argument("--default-voice", default="en-us", help="speaker used when no prompt is given")
    p.add_argument("--max-seconds", type=float, default=10.0, help="skip longer utterances")
    p.add_argument("--save-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = SIZES[args.size](args.units)
    model = NanoSpeech(cfg)
    try:
        rows = read_manifest(args.manifest)
        data = load_speech_set(
            rows,
            model.logmel,
            speaker_column=args.speaker_column,
            max_seconds=args.max_seconds,
            alphabet=cfg.recogniser.alphabet,
        )
        heldout = None
        if args.heldout:
            heldout = load_speech_set(
                read_manifest(args.heldout),
                model.logmel,
                speaker_column=None,
                max_seconds=args.max_seconds,
                alphabet=cfg.recogniser.alphabet,
            )
    except ManifestError as exc:
        print(f"error: {exc}")
        return 2
    print(f"{len(data)} utterances, {len(data.speaker_names)} speakers", flush=True)
    t0 = time.time()
    report: dict = {"utterances": len(data), "speakers": len(data.speaker_names)}
    report.update(train_recogniser(model.recogniser, data, heldout, args, out))
    units = train_units(model, data, args, out)
    report.update(train_vocoder(model, data, units, args, out))
    weights, config = model.save(out)
    report["seconds"] = round(time.time() - t0, 1)
    (out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"tokenizer: {weights} ({weights.stat().st_size / 1e6:.1f} MB) and {config}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_args(parser)
    raise SystemExit(main(parser.parse_args()))
