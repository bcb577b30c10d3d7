"""Train a small EnCodec (transformers' ``EncodecModel``) as a music tokenizer.

Recipe: random crops of the training audio -> encoder -> residual VQ whose codebooks learn by EMA
k-means with dead-code restarts (:mod:`anygpt.train.encodec_vq`) -> decoder, trained on an L1
waveform loss, multi-resolution log-mel and spectral-convergence losses and a commitment loss
(no adversarial loss: it would cost more than the whole budget here).  The result is a Hugging
Face ``EncodecModel`` folder (``config.json`` + ``model.safetensors``) that the ``encodec``
modality family loads, plus ``tokens.json`` (the LLM token block) and ``train_config.json``.

Default size: 16 kHz mono, hop 640 (25 frames/s), 2 codebooks of 1024, i.e. 150 codes for a 3 s
clip.  It runs as ``anygpt train-tokenizer music DATA --out DIR``; DATA is a folder of audio files
or a JSON-lines manifest with an audio column.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

MUSIC_TOKENS = {"name": "music", "prefix": "🎶", "start_tag": "<somu>", "end_tag": "<eomu>"}


@dataclass
class MusicCodecConfig:
    """Model size and training recipe (saved as ``train_config.json`` beside the weights)."""

    data: str
    out: str
    heldout: str | None = None  # audio for the final reconstruction figures
    column: str | None = None  # manifest column holding audio paths (None: audio, music, ...)
    checkpoint_dir: str | None = None  # default: OUT/checkpoint
    # model
    sample_rate: int = 16000
    num_filters: int = 8
    hidden_size: int = 64  # = codebook dimension
    upsampling_ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 4])
    num_lstm_layers: int = 1
    codebook_size: int = 1024
    num_codebooks: int = 2
    # training
    steps: int = 4000
    batch_size: int = 4
    crop_s: float = 0.96
    lr: float = 2e-3
    warmup: int = 100
    seed: int = 0
    threads: int = 1
    ema_decay: float = 0.99
    dead_fraction: float = 0.1
    quantizer_dropout: float = 0.0
    commitment_weight: float = 1.0
    # keeps silences silent; without it the decoder fills gaps between notes with noise
    waveform_weight: float = 0.1
    sc_weight: float = 1.0
    logmag_weight: float = 1.0
    init_clips: int = 64  # clips whose encoder outputs seed the codebooks by k-means
    # first steps train the plain autoencoder (no quantizer); the codebooks then start from
    # k-means of encoder outputs that already carry the signal, instead of collapsing on the
    # near-constant output of a random encoder
    vq_start: float = 0.3  # fraction of the steps (or of --max-minutes)
    checkpoint_every: int = 250
    log_every: int = 50  # steps between entries of the loss history
    max_minutes: float | None = None  # stop early (saving) past this wall time
    # a trained codec folder whose encoder and codebooks are kept frozen while only its decoder
    # trains on: the codes stay exactly as they were, so an LLM trained on them still fits
    finetune_decoder: str | None = None
    eval_clips: int = 200
    eval_s: float = 3.0

    @property
    def hop(self) -> int:
        return math.prod(self.upsampling_ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def bandwidth(self) -> float:
        """kbps that selects exactly ``num_codebooks`` codebooks in ``EncodecModel``."""
        return self.num_codebooks * math.log2(self.codebook_size) * self.frame_rate / 1000


def encodec_config(cfg: MusicCodecConfig) -> Any:
    """The transformers ``EncodecConfig`` of a :class:`MusicCodecConfig` (non-causal, mono)."""
    from transformers import EncodecConfig

    if cfg.sample_rate % cfg.hop:
        raise ValueError(f"the hop ({cfg.hop}) must divide the sample rate ({cfg.sample_rate})")
    if 2 ** int(math.log2(cfg.codebook_size)) != cfg.codebook_size:
        raise ValueError("the codebook size must be a power of 2")
    # a hair above the exact figure, so EncodecModel's floor never drops a codebook
    bandwidth = round(cfg.bandwidth, 6) + 1e-6
    ecfg = EncodecConfig(
        sampling_rate=cfg.sample_rate,
        audio_channels=1,
        num_filters=cfg.num_filters,
        hidden_size=cfg.hidden_size,
        codebook_dim=cfg.hidden_size,
        codebook_size=cfg.codebook_size,
        num_lstm_layers=cfg.num_lstm_layers,
        upsampling_ratios=list(cfg.upsampling_ratios),
        target_bandwidths=[bandwidth],
        normalize=False,
        use_causal_conv=False,
        use_conv_shortcut=False,
        pad_mode="reflect",
    )
    if ecfg.num_quantizers != cfg.num_codebooks:
        raise ValueError(f"bandwidth {bandwidth} gives {ecfg.num_quantizers} codebooks")
    return ecfg


def tokens_definition(cfg: MusicCodecConfig) -> dict:
    """The LLM token block of the trained codec (``anygpt.layout.ModalityTokens`` fields)."""
    return {
        **MUSIC_TOKENS,
        "codebook_size": cfg.codebook_size,
        "num_codebooks": cfg.num_codebooks,
        "fixed_length": None,
    }


# ---------------------------------------------------------------------------------- training
def lr_at(progress: float, step: int, cfg: MusicCodecConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to a tenth at progress 1."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    return cfg.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_music_codec(cfg: MusicCodecConfig) -> dict:
    """Train, checkpoint, save the folder; returns the final figures (also in train_config.json).

    Progress is the larger of steps done / ``steps`` and minutes spent / ``max_minutes``, so a
    run cut short by time still decays its learning rate and switches its quantizer on.
    """
    from tqdm import tqdm
    from transformers import EncodecModel

    from anygpt.train.codec_data import CropSampler, list_audio
    from anygpt.train.codec_losses import MultiResolutionSpectralLoss
    from anygpt.train.encodec_vq import EmaResidualQuantizer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else out / "checkpoint"
    crop = int(round(cfg.crop_s * cfg.sample_rate / cfg.hop)) * cfg.hop
    sampler = CropSampler(list_audio(cfg.data, cfg.column), cfg.sample_rate, crop, cfg.seed)

    if cfg.finetune_decoder:
        model = decoder_finetune_model(cfg)
    else:
        model = EncodecModel(encodec_config(cfg))
    vq = EmaResidualQuantizer(
        model.quantizer,
        cfg.num_codebooks,
        decay=cfg.ema_decay,
        dead_fraction=cfg.dead_fraction,
        dropout=cfg.quantizer_dropout,
    )
    spectral = MultiResolutionSpectralLoss(cfg.sample_rate)
    trained = model.decoder.parameters() if cfg.finetune_decoder else model.parameters()
    opt = torch.optim.Adam(trained, lr=cfg.lr, betas=(0.8, 0.99))
    start, history, quantizing, spent = 0, [], bool(cfg.finetune_decoder), 0.0
    state_file = ckpt_dir / "state.pt"
    if state_file.is_file():
        state = torch.load(state_file, weights_only=True)  # plain containers and tensors only
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        sampler.rng.setstate(state["sampler"])
        start, history = state["step"], state["history"]
        quantizing, spent = state["quantizing"], state["seconds"]
        print(f"resumed from {state_file} at step {start}")
    elif not cfg.finetune_decoder:
        with torch.no_grad():
            rescale_init(model, sampler.batch(cfg.init_clips))

    t0, cpu0 = time.monotonic() - spent, time.process_time()

    def save(step: int, summary: dict | None = None) -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "sampler": sampler.rng.getstate(),
            "step": step,
            "history": history,
            "quantizing": quantizing,
            "seconds": time.monotonic() - t0,
        }
        torch.save(state, ckpt_dir / "state.tmp")
        (ckpt_dir / "state.tmp").replace(state_file)
        write_folder(model, cfg, out, summary or {"step": step, "history": history})

    def progress(step: int) -> float:
        done = step / max(1, cfg.steps)
        if cfg.max_minutes:
            done = max(done, (time.monotonic() - t0) / (60 * cfg.max_minutes))
        return done

    model.train()
    bar = tqdm(initial=start, total=cfg.steps, mininterval=20)
    running: dict[str, float] = {}
    step = start
    while progress(step) < 1.0:
        now = progress(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(now, step, cfg)
        if not quantizing and now >= cfg.vq_start:
            # the quantizer comes in: codebooks from k-means of outputs that carry the signal
            with torch.no_grad():
                vq.init_kmeans(model.encoder(sampler.batch(cfg.init_clips)), generator=gen)
            quantizing = True
            print(f"step {step}: quantizer on")
        x = sampler.batch(cfg.batch_size)
        if cfg.finetune_decoder:
            with torch.no_grad():  # frozen: the codes of every clip stay what they were
                q = vq(model.encoder(x), train=False)
            zq, commit, ppl, restarted = q.quantized, q.commitment, q.perplexity.mean(), 0
        elif quantizing:
            z = model.encoder(x)
            q = vq(z, train=True, generator=gen)
            zq, commit, ppl, restarted = q.quantized, q.commitment, q.perplexity.mean(), q.restarted
        else:
            z = model.encoder(x)
            zq, commit, ppl, restarted = z, z.new_zeros(()), torch.zeros(()), 0
        y = model.decoder(zq)[..., : x.shape[-1]]
        spec = spectral(y, x)
        wave = (y - x).abs().mean()
        loss = (
            spec["mel"]
            + cfg.sc_weight * spec["sc"]
            + cfg.logmag_weight * spec["logmag"]
            + cfg.waveform_weight * wave
            + cfg.commitment_weight * commit
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        figures = {
            "loss": float(loss.detach()),
            "mel": float(spec["mel"].detach()),
            "sc": float(spec["sc"].detach()),
            "logmag": float(spec["logmag"].detach()),
            "l1": float(wave.detach()),
            "commit": float(commit.detach()),
            "ppl": float(ppl),
            "restart": float(restarted),
        }
        for k, v in figures.items():
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        bar.set_postfix({k: f"{v:.3g}" for k, v in running.items()}, refresh=False)
        if step % cfg.log_every == 0:
            history.append({"step": step, **{k: round(v, 5) for k, v in running.items()}})
        if step % cfg.checkpoint_every == 0:
            save(step)
            cpu = time.process_time() - cpu0
            print(
                f"step {step} ({cpu:.0f} s CPU): "
                + " ".join(f"{k} {v:.4g}" for k, v in running.items())
            )
    bar.close()
    if not quantizing:  # a run too short to reach vq_start still leaves usable codebooks
        with torch.no_grad():
            vq.init_kmeans(model.encoder(sampler.batch(cfg.init_clips)), generator=gen)
        quantizing = True
    summary: dict[str, Any] = {
        "step": step,
        "train_seconds": round(time.monotonic() - t0, 1),
        "train_cpu_seconds": round(time.process_time() - cpu0, 1),
        "history": history,
    }
    if cfg.heldout:
        summary["heldout"] = evaluate(model, cfg, cfg.heldout)
        print("held-out reconstruction: " + json.dumps(summary["heldout"]))
    save(step, summary)
    return summary


MODEL_FIELDS = ("sample_rate", "num_filters", "hidden_size", "upsampling_ratios",
                "num_lstm_layers", "codebook_size", "num_codebooks")  # fmt: skip


def decoder_finetune_model(cfg: MusicCodecConfig) -> Any:
    """The codec of ``cfg.finetune_decoder`` with its encoder and codebooks frozen; ``cfg``
    takes that codec's model fields (its size), so the saved folder describes the same codes."""
    from transformers import EncodecModel

    folder = Path(cfg.finetune_decoder or "")
    record = folder / "train_config.json"
    if not (folder / "config.json").is_file() or not record.is_file():
        raise FileNotFoundError(
            f"'{folder}' is not a codec folder made by 'anygpt train-tokenizer music' "
            "(config.json, model.safetensors and train_config.json)"
        )
    trained = json.loads(record.read_text())["config"]
    for name in MODEL_FIELDS:
        setattr(cfg, name, trained[name])
    model = EncodecModel.from_pretrained(str(folder))
    for p in [*model.encoder.parameters(), *model.quantizer.parameters()]:
        p.requires_grad_(False)
    return model


def _weight_norm_gain(conv: Any) -> torch.Tensor:
    """The magnitude ``g`` of an ``EncodecConv1d``'s weight-normed convolution."""
    inner = conv.conv
    if hasattr(inner, "parametrizations"):
        return inner.parametrizations.weight.original0
    return inner.weight_g


@torch.no_grad()
def rescale_init(model: Any, x: torch.Tensor) -> None:
    """Scale the last encoder and decoder convolutions of a fresh model on a batch ``x``
    [B, 1, T]: encoder output to unit spread, decoder output as loud as ``x``.

    A random SEANet starts about 20 dB too quiet at both ends, and climbing out of that costs
    hundreds of steps, which a short training cannot spare.
    """
    z = model.encoder(x)
    _weight_norm_gain(model.encoder.layers[-1]).mul_(1.0 / z.std().clamp_min(1e-6))
    y = model.decoder(model.encoder(x))
    _weight_norm_gain(model.decoder.layers[-1]).mul_(x.std() / y.std().clamp_min(1e-6))


@torch.no_grad()
def evaluate(model: Any, cfg: MusicCodecConfig, data: str) -> dict:
    """Reconstruction figures through ``EncodecModel.encode``/``decode`` (the inference path)."""
    from anygpt.train.codec_data import CropSampler, list_audio
    from anygpt.train.codec_losses import MultiResolutionSpectralLoss, si_snr_db

    was_training = model.training
    model.eval()
    crop = int(round(cfg.eval_s * cfg.sample_rate / cfg.hop)) * cfg.hop
    clips = CropSampler(list_audio(data, cfg.column), cfg.sample_rate, crop).fixed(cfg.eval_clips)
    spectral = MultiResolutionSpectralLoss(cfg.sample_rate)
    mel, sc, logmag, l1, snr, codes = [], [], [], [], [], []
    for x in clips.split(16):
        enc = model.encode(x, bandwidth=model.config.target_bandwidths[0])
        y = model.decode(enc.audio_codes, enc.audio_scales).audio_values[..., : x.shape[-1]]
        spec = spectral(y, x)
        mel.append(float(spec["mel"]) * len(x))
        sc.append(float(spec["sc"]) * len(x))
        logmag.append(float(spec["logmag"]) * len(x))
        l1.append(float((y - x).abs().mean()) * len(x))
        snr.append(si_snr_db(y[:, 0], x[:, 0]).sum().item())
        codes.append(enc.audio_codes[0])
    model.train(was_training)
    n = len(clips)
    all_codes = torch.cat(codes)  # [N, K, T]
    used = [int(torch.unique(all_codes[:, k]).numel()) for k in range(all_codes.shape[1])]
    return {
        "clips": n,
        "mel": round(sum(mel) / n, 4),
        "sc": round(sum(sc) / n, 4),
        "logmag": round(sum(logmag) / n, 4),
        "l1": round(sum(l1) / n, 5),
        "si_snr_db": round(sum(snr) / n, 2),
        "codes_used": used,
        "codes_per_clip": int(all_codes.shape[1] * all_codes.shape[2]),
    }


def write_folder(model: Any, cfg: MusicCodecConfig, out: Path, summary: dict) -> None:
    """``save_pretrained`` (safetensors) plus ``tokens.json`` and ``train_config.json``."""
    from transformers.utils import logging as hf_logging

    out.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()  # one bar per checkpoint would flood the training log
    model.save_pretrained(str(out))
    (out / "tokens.json").write_text(json.dumps(tokens_definition(cfg), ensure_ascii=False) + "\n")
    record = {"config": asdict(cfg), **summary}
    (out / "train_config.json").write_text(json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------------------------- CLI
def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``anygpt train-tokenizer music``."""
    d = MusicCodecConfig("", "")
    parser.add_argument("data", help="folder of audio files, or a JSON-lines manifest")
    parser.add_argument("--out", required=True, help="output model folder")
    parser.add_argument("--heldout", help="held-out audio (folder or manifest) for final figures")
    parser.add_argument(
        "--column", default=d.column, help="manifest column with audio paths (default: audio/music)"
    )
    parser.add_argument("--checkpoint-dir", help="training state folder (default OUT/checkpoint)")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--crop-s", type=float, default=d.crop_s, help="seconds per crop")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    parser.add_argument("--sample-rate", type=int, default=d.sample_rate)
    parser.add_argument("--codebook-size", type=int, default=d.codebook_size)
    parser.add_argument("--num-codebooks", type=int, default=d.num_codebooks)
    parser.add_argument("--num-filters", type=int, default=d.num_filters)
    parser.add_argument("--hidden-size", type=int, default=d.hidden_size)
    parser.add_argument(
        "--ratios",
        default=",".join(map(str, d.upsampling_ratios)),
        help="decoder upsampling ratios; their product is the hop (default 8,5,4,4 = 640)",
    )
    parser.add_argument("--quantizer-dropout", type=float, default=d.quantizer_dropout)
    parser.add_argument(
        "--vq-start",
        type=float,
        default=d.vq_start,
        help="fraction of the steps trained without the quantizer first",
    )
    parser.add_argument("--commitment-weight", type=float, default=d.commitment_weight)
    parser.add_argument("--waveform-weight", type=float, default=d.waveform_weight)
    parser.add_argument("--logmag-weight", type=float, default=d.logmag_weight)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--max-minutes", type=float, help="stop (and save) past this wall time")
    parser.add_argument(
        "--finetune-decoder",
        metavar="CODEC",
        help="train only the decoder of this trained codec folder; its encoder and codebooks stay "
        "frozen, so its codes (and an LLM trained on them) are unchanged",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``anygpt train-tokenizer music`` from parsed arguments."""
    cfg = MusicCodecConfig(
        data=args.data,
        out=args.out,
        heldout=args.heldout,
        column=args.column,
        checkpoint_dir=args.checkpoint_dir,
        steps=args.steps,
        batch_size=args.batch_size,
        crop_s=args.crop_s,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        sample_rate=args.sample_rate,
        codebook_size=args.codebook_size,
        num_codebooks=args.num_codebooks,
        num_filters=args.num_filters,
        hidden_size=args.hidden_size,
        upsampling_ratios=[int(r) for r in str(args.ratios).split(",") if r.strip()],
        quantizer_dropout=args.quantizer_dropout,
        vq_start=args.vq_start,
        commitment_weight=args.commitment_weight,
        waveform_weight=args.waveform_weight,
        logmag_weight=args.logmag_weight,
        checkpoint_every=args.checkpoint_every,
        max_minutes=args.max_minutes,
        finetune_decoder=args.finetune_decoder,
    )
    summary = train_music_codec(cfg)
    print(
        f"wrote {cfg.out}: {cfg.num_codebooks} codebooks x {cfg.codebook_size} at "
        f"{cfg.frame_rate:g} frames/s, step {summary['step']}"
    )
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(p)
    raise SystemExit(main(p.parse_args()))
