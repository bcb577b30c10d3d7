"""The music judge: a small CNN that hears the four attributes of a world melody.

Given 3 s of 16 kHz audio it predicts tempo (slow/fast), mood (happy = major / sad = minor),
instrument (piano/organ/flute) and register (high/low).  It is trained on rendered world music
only, never on a codec's or a model's output, so it can judge both.  While training, generic
damage is applied to the waveforms (gain, noise, a random low-pass, a spectral tilt, an echo,
smeared spectra and noise shaped like the clip, a time shift) so that a dull, smeared or noisy
clip of the right melody still reads as that melody, and noise alone never reads as a flute.
Low-passing down to 600 Hz teaches it the instruments' envelopes as well as their spectra.

::

    wave [B, 48000] -> |STFT| (2048, hop 512) -> semitone bands MIDI 40-119, log, minus clip max
      [B, 1, 80, 94]
      -> 4 x (conv 3x3, batch norm, ReLU), max-pools on the way          [B, C, 20, T']
      -> mean and max over time, flatten                                 [B, 2C * 20]
    spectrogram -> mean and max over time (pitch profile)                [B, 2, 80]
      -> 2 x (conv along pitch, 13 semitones, ReLU), max and mean over pitch  [B, 2P]
    both -> linear, ReLU [B, hidden] -> linear, plus a linear of the profile features alone
      -> logits: tempo 2 | mood 2 | instrument 3 | register 2

Pitch is on a semitone grid, so a melody moved to another key is the same picture moved up or
down.  The pitch-profile branch pools over pitch after its convolutions, so the mode (a shape of
intervals) reads the same in every key; the main branch keeps frequency, so the register too.

``anygpt train-judge music`` trains one (:func:`add_args`, :func:`main`); the folder holds
``config.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anygpt.checkpoint import CheckpointError, load_strict, read_state_dict
from anygpt.world.music import ATTRIBUTES, VALUES, parse_caption

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class MusicJudgeConfig:
    """Front end and sizes of the judge (saved as ``config.json``)."""

    sample_rate: int = 16000
    clip_samples: int = 48000
    n_fft: int = 2048
    hop: int = 512
    midi_lo: int = 40  # E2, below the lowest fundamental (C3)
    midi_hi: int = 119  # B8 (7.9 kHz), to hear breath noise and bright partials
    floor_db: float = -80.0
    channels: tuple[int, ...] = (8, 16, 24, 32)
    hidden: int = 64
    profile_channels: int = 48
    profile_kernel: int = 13  # semitones: a triad in any inversion fits
    weights_dtype: str = "float16"

    @property
    def bands(self) -> int:
        return self.midi_hi - self.midi_lo + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MusicJudgeConfig:
        kw = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        if "channels" in kw:
            kw["channels"] = tuple(int(c) for c in kw["channels"])
        return cls(**kw)


def semitone_filterbank(cfg: MusicJudgeConfig) -> Tensor:
    """Triangular filters one semitone apart [bands, n_fft // 2 + 1], each 2 semitones wide.

    Below about 300 Hz a semitone is narrower than an FFT bin; the filters then weigh the two
    nearest bins, which still separates neighbouring notes through their upper partials.
    """
    freqs = torch.arange(cfg.n_fft // 2 + 1, dtype=torch.float64) * cfg.sample_rate / cfg.n_fft
    midi = 69 + 12 * torch.log2(freqs.clamp_min(1e-3) / 440.0)
    centres = torch.arange(cfg.midi_lo, cfg.midi_hi + 1, dtype=torch.float64)
    fb = (1 - (midi[None] - centres[:, None]).abs()).clamp_min(0)
    return (fb / fb.sum(1, keepdim=True).clamp_min(1e-9)).float()


class MusicJudgeNet(nn.Module):
    """Waveforms [B, clip_samples] -> logits [B, 9] (tempo 2, mood 2, instrument 3, register 2)."""

    def __init__(self, cfg: MusicJudgeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("fb", semitone_filterbank(cfg), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        layers: list[nn.Module] = []
        c_in = 1
        pools = [(1, 2), (2, 2), (2, 1), (1, 1)]  # keep pitch resolution early, time later
        for c, pool in zip(cfg.channels, pools):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            if pool != (1, 1):
                layers.append(nn.MaxPool2d(pool))
            c_in = c
        self.features = nn.Sequential(*layers)
        bands = cfg.bands // 4
        # pitch profile: which semitones sound over the clip (time-averaged and peak levels),
        # read by convolutions along pitch and max-pooled, so the same chord shape in any key
        # gives the same features (the mode is a shape of intervals, not a set of bands)
        k = cfg.profile_kernel
        self.profile = nn.Sequential(
            nn.Conv1d(2, cfg.profile_channels, k, padding=k // 2),
            nn.ReLU(),
            nn.Conv1d(cfg.profile_channels, cfg.profile_channels, k, padding=k // 2),
            nn.ReLU(),
        )
        self.fc = nn.Linear(2 * c_in * bands + 2 * cfg.profile_channels, cfg.hidden)
        self.drop = nn.Dropout(0.2)
        n_logits = sum(len(VALUES[a]) for a in ATTRIBUTES)
        self.head = nn.Linear(cfg.hidden, n_logits)
        # the profile also speaks to the logits directly: the mode is learned many times faster
        self.profile_head = nn.Linear(2 * cfg.profile_channels, n_logits)

    def spectrogram(self, wave: Tensor) -> Tensor:
        """[B, T] -> log semitone spectrogram [B, 1, bands, frames], 0 dB at each clip's peak."""
        spec = torch.stft(
            wave, self.cfg.n_fft, self.cfg.hop, window=self.window, return_complex=True
        ).abs()
        db = 20 * torch.log10(self.fb @ spec + 1e-7)
        db = db - db.amax(dim=(1, 2), keepdim=True)
        return (db.clamp_min(self.cfg.floor_db) / -self.cfg.floor_db + 0.5).unsqueeze(1)

    def forward(self, wave: Tensor) -> Tensor:
        spec = self.spectrogram(wave)  # [B, 1, bands, frames]
        h = self.features(spec)  # [B, C, bands/4, frames/4]
        h = torch.cat([h.mean(-1), h.amax(-1)], 1).flatten(1)
        prof = torch.cat([spec.mean(-1), spec.amax(-1)], 1)  # [B, 2, bands]
        p = self.profile(prof)  # [B, P, bands]
        p = torch.cat([p.amax(-1), p.mean(-1)], 1)  # [B, 2P]
        return self.head(self.drop(F.relu(self.fc(torch.cat([h, p], 1))))) + self.profile_head(p)


def split_logits(logits: Tensor) -> dict[str, Tensor]:
    """[B, 9] -> {attribute: [B, n_values]}."""
    out, i = {}, 0
    for a in ATTRIBUTES:
        n = len(VALUES[a])
        out[a] = logits[:, i : i + n]
        i += n
    return out


def fit_length(wave: Tensor, n: int) -> Tensor:
    """[T] -> [n]: the first ``n`` samples, zero-padded."""
    wave = wave.reshape(-1)[:n]
    return F.pad(wave, (0, n - wave.shape[0]))


class MusicJudge:
    """A trained judge: :meth:`predict` attributes, :meth:`score` a clip against a caption."""

    def __init__(self, net: MusicJudgeNet) -> None:
        self.net = net.eval()

    @property
    def cfg(self) -> MusicJudgeConfig:
        return self.net.cfg

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> MusicJudge:
        folder = Path(folder)
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise CheckpointError(f"no music judge {CONFIG_FILE} in '{folder}'")
        net = MusicJudgeNet(MusicJudgeConfig.from_dict(json.loads(cfg_path.read_text())))
        state = read_state_dict(folder / WEIGHTS_FILE, what="music judge weights")
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
        load_strict(net, state, what=f"music judge '{folder}'")
        return cls(net.to(device))

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """Write ``config.json`` (config plus ``extra``, e.g. held-out accuracy) and weights."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dtype = getattr(torch, self.cfg.weights_dtype)
        state = {
            k: (v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu())
            for k, v in self.net.state_dict().items()
        }
        record = {**self.cfg.to_dict(), **(extra or {})}
        (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "model": "judge"})
        return folder

    def _batch(self, waves: Sequence[Any], sample_rate: int) -> Tensor:
        from anygpt.audio import resample

        out = []
        for w in waves:
            a = w.detach().cpu().float().numpy() if isinstance(w, Tensor) else np.asarray(w)
            a = a.astype(np.float32).reshape(-1)
            if sample_rate != self.cfg.sample_rate:
                a = resample(a, sample_rate, self.cfg.sample_rate)
            out.append(fit_length(torch.as_tensor(np.asarray(a)), self.cfg.clip_samples))
        return torch.stack(out)

    @torch.no_grad()
    def probabilities(
        self, waves: Sequence[Any], sample_rate: int, batch_size: int = 128
    ) -> list[dict[str, list[float]]]:
        """Per clip, the probability of every value of every attribute (vocabulary order)."""
        x = self._batch(waves, sample_rate)
        dev = next(self.net.parameters()).device
        out: list[dict[str, list[float]]] = []
        for i in range(0, len(x), batch_size):
            heads = split_logits(self.net(x[i : i + batch_size].to(dev)))
            probs = {a: v.softmax(-1).cpu().tolist() for a, v in heads.items()}
            out += [{a: probs[a][j] for a in ATTRIBUTES} for j in range(len(probs["tempo"]))]
        return out

    def predict(self, waves: Sequence[Any], sample_rate: int) -> list[dict[str, str]]:
        """Clips (numpy or torch, any length: cut or padded to 3 s) -> one dict per clip of
        ``tempo``, ``mood``, ``instrument``, ``register``."""
        if len(waves) == 0:
            return []
        return [
            {a: VALUES[a][int(np.argmax(p[a]))] for a in ATTRIBUTES}
            for p in self.probabilities(waves, sample_rate)
        ]

    def score(self, wave: Any, sample_rate: int, caption: str) -> dict:
        """How much of ``caption`` one clip plays: ``correct`` (0-4), ``total`` (4),
        ``all_correct``.  A caption that does not name all four attributes raises ``ValueError``."""
        return self.score_batch([wave], sample_rate, [caption])[0]

    def score_batch(self, waves: Sequence[Any], sample_rate: int, captions: Sequence[str]):
        """:meth:`score` for many clips in one pass."""
        truths = [_truth(c) for c in captions]
        preds = self.predict(waves, sample_rate)
        out = []
        for p, t in zip(preds, truths, strict=True):
            correct = sum(p[a] == t[a] for a in ATTRIBUTES)
            out.append({"correct": correct, "total": 4, "all_correct": correct == 4})
        return out


def _truth(caption: str) -> dict[str, str]:
    t = parse_caption(caption)
    missing = [a for a in ATTRIBUTES if t[a] is None]
    if missing:
        raise ValueError(f"caption {caption[:80]!r} names no {', '.join(missing)}")
    return t  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- measuring
def accuracy(judge: MusicJudge, waves: Sequence[Any] | Tensor, captions: Sequence[str]) -> dict:
    """Per-attribute accuracy against true captions, and ``all`` (all four right)."""
    preds = judge.predict(list(waves), judge.cfg.sample_rate)
    hits: dict[str, int] = dict.fromkeys((*ATTRIBUTES, "all"), 0)
    for p, c in zip(preds, captions, strict=True):
        t = _truth(c)
        ok = [p[a] == t[a] for a in ATTRIBUTES]
        for a, k in zip(ATTRIBUTES, ok):
            hits[a] += int(k)
        hits["all"] += int(all(ok))
    n = max(len(preds), 1)
    return {k: round(v / n, 4) for k, v in hits.items()}


# ---------------------------------------------------------------------------------- training
def render_batch(rng: random.Random, n: int) -> tuple[Tensor, list[str]]:
    """``n`` fresh world melodies [n, 48000] and their captions."""
    from anygpt.world.music import caption, random_melody, render

    melodies = [random_melody(rng) for _ in range(n)]
    return torch.from_numpy(np.stack([render(m) for m in melodies])), [caption(m) for m in melodies]


def augment(x: Tensor, gen: torch.Generator, sample_rate: int = 16000) -> Tensor:
    """Generic damage, each on part of the batch: a random low-pass (0.6-7 kHz), a spectral tilt
    (+-3 dB/octave), a short room echo, lossy-coding damage (:func:`_lossy`), white noise
    (5-45 dB SNR), a gain, a time shift of up to 0.15 s.  [B, T] -> [B, T]."""
    b, t = x.shape
    rand = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731 - local shorthand
    spec = torch.fft.rfft(x, n=2 * t)
    f = torch.fft.rfftfreq(2 * t, 1 / sample_rate)[None]
    cutoff = 600 * (7000 / 600) ** rand(b, 1)  # log-uniform: a dull clip down to 600 Hz
    lowpass = torch.where(rand(b, 1) < 0.5, torch.sigmoid((cutoff - f) / 300), torch.ones(1))
    tilt_db = (rand(b, 1) - 0.5) * 6 * (rand(b, 1) < 0.5)
    tilt = 10 ** (tilt_db / 20 * torch.log2(f.clamp_min(50) / 1000))
    spec = spec * lowpass * tilt
    # a room: exponentially decaying noise, mixed in on a third of the clips
    n_ir = int(0.3 * sample_rate)
    tail = torch.arange(n_ir)[None] / sample_rate
    rt = 0.05 + 0.2 * rand(b, 1)
    ir = torch.randn(b, n_ir, generator=gen) * torch.exp(-6.9 * tail / rt)
    ir = ir / ir.norm(dim=1, keepdim=True) * (0.3 * rand(b, 1) * (rand(b, 1) < 0.33))
    ir[:, 0] += 1.0
    spec = spec * torch.fft.rfft(ir, n=2 * t)
    y = torch.fft.irfft(spec, n=2 * t)[:, :t]
    y = _lossy(y, gen)
    rms = y.pow(2).mean(1, keepdim=True).sqrt()
    snr_db = 5 + 40 * rand(b, 1)
    noise = torch.randn(b, t, generator=gen) * rms * 10 ** (-snr_db / 20) * (rand(b, 1) < 0.6)
    y = (y + noise) * (0.3 + 0.7 * rand(b, 1))
    shifts = ((rand(b) - 0.5) * 0.3 * sample_rate).long().tolist()
    out = torch.zeros_like(y)
    for i, s in enumerate(shifts):
        if s >= 0:
            out[i, s:] = y[i, : t - s]
        else:
            out[i, : t + s] = y[i, -s:]
    return out


def _lossy(x: Tensor, gen: torch.Generator, n_fft: int = 1024) -> Tensor:
    """The ways a lossy coder fails, on part of a batch [B, T]: magnitudes smeared across
    neighbouring bins and frames (40 %), and noise shaped like the clip's own spectrum, 6-30 dB
    down (50 %)."""
    b, t = x.shape
    rand = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    win = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, n_fft // 4, window=win, return_complex=True)  # [B, F, N]
    mag, phase = spec.abs(), torch.angle(spec)
    smear = rand(b) < 0.4
    if smear.any():
        width = int(1 + 3 * float(rand(())))  # bins either side
        k = torch.cat([torch.arange(1, width + 2), torch.arange(width, 0, -1)]).float()
        kt = torch.tensor([0.25, 0.5, 0.25])
        kernel = (k[:, None] * kt[None]) / (k.sum() * kt.sum())
        blurred = F.conv2d(mag[smear].unsqueeze(1), kernel[None, None], padding="same")[:, 0]
        mag = mag.clone()
        mag[smear] = blurred
    out = torch.polar(mag, phase)
    shaped = rand(b) < 0.5
    if shaped.any():
        level = 10 ** (-(6 + 24 * rand(int(shaped.sum()), 1, 1)) / 20)
        noise_phase = 2 * math.pi * torch.rand(mag[shaped].shape, generator=gen)
        out[shaped] = out[shaped] + torch.polar(mag[shaped] * level, noise_phase)
    return torch.istft(out, n_fft, n_fft // 4, window=win, length=t)


def _targets(captions: Sequence[str]) -> dict[str, Tensor]:
    rows = [_truth(c) for c in captions]
    return {a: torch.tensor([VALUES[a].index(r[a]) for r in rows]) for a in ATTRIBUTES}


def judge_loss(logits: Tensor, tgt: dict[str, Tensor]) -> Tensor:
    """Sum of the four heads' cross-entropies."""
    heads = split_logits(logits)
    return sum(F.cross_entropy(heads[a], tgt[a]) for a in ATTRIBUTES)  # type: ignore[return-value]


def read_labelled(
    data: str, column: str | None, caption_column: str, samples: int, sample_rate: int
) -> tuple[Tensor, list[str]]:
    """A JSON-lines manifest (audio + caption columns) -> int16 clips [N, samples], captions."""
    from tqdm.auto import tqdm

    from anygpt.audio import load_audio
    from anygpt.train.codec_data import AUDIO_COLUMNS

    root = Path(data).parent
    rows = [json.loads(line) for line in open(data, encoding="utf-8") if line.strip()]
    if column is None:
        column = next((c for c in AUDIO_COLUMNS if rows and c in rows[0]), AUDIO_COLUMNS[0])
    clips = torch.empty(len(rows), samples, dtype=torch.int16)
    captions = []
    for i, r in enumerate(tqdm(rows, desc=f"read {Path(data).name}", mininterval=10)):
        p = Path(r[column])
        wave = load_audio(p if p.is_absolute() else root / p, sample_rate)
        clips[i] = (fit_length(wave, samples).clamp(-1, 1) * 32767).round().to(torch.int16)
        captions.append(r.get(caption_column) or r.get("text") or "")
    return clips, captions


def _float(clips: Tensor) -> Tensor:
    return clips.float() / 32767 if clips.dtype == torch.int16 else clips


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``anygpt train-judge music``."""
    p.add_argument("--out", required=True, help="judge folder to write")
    p.add_argument(
        "--data",
        help="JSON Lines manifest (audio + caption columns) to train on; "
        "default: fresh world melodies rendered on the fly",
    )
    p.add_argument("--val-data", help="held-out manifest (default: melodies of --val-seed)")
    p.add_argument("--column", default=None, help="audio column (default: audio, else music)")
    p.add_argument("--caption-column", default="caption", help="falls back to 'text'")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (cooled down) by then")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-seed", type=int, default=424242)
    p.add_argument("--val-size", type=int, default=500, help="rendered held-out melodies")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--no-augment", action="store_true", help="train on clean clips only")


def main(args: argparse.Namespace) -> int:
    """Train the judge, write its folder and print its held-out accuracy; returns exit status."""
    from tqdm.auto import tqdm

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    cfg = MusicJudgeConfig()
    try:
        if args.val_data:
            val_x, val_c = read_labelled(
                args.val_data, args.column, args.caption_column, cfg.clip_samples, cfg.sample_rate
            )
        else:
            val_x, val_c = render_batch(random.Random(args.val_seed), args.val_size)
        train_x = train_t = None
        if args.data:
            train_x, caps = read_labelled(
                args.data, args.column, args.caption_column, cfg.clip_samples, cfg.sample_rate
            )
            train_t = _targets(caps)
        _targets(val_c)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    judge = MusicJudge(MusicJudgeNet(cfg))
    net = judge.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    limit_s = args.max_minutes * 60 if args.max_minutes else None
    t0 = time.time()
    bar = tqdm(total=args.steps, desc="train music judge", unit="step", mininterval=10)
    step, run = 0, 0.0

    def heldout() -> dict:
        net.eval()
        acc = accuracy(judge, _float(val_x), val_c)
        net.train()
        return acc

    while step < args.steps:
        progress = max(step / args.steps, (time.time() - t0) / limit_s if limit_s else 0.0)
        if progress >= 1.0:
            break
        warm = min(1.0, progress / 0.03)
        for g in opt.param_groups:  # warm-up, then cosine to zero
            g["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
        if train_x is None:
            x, caps = render_batch(rng, args.batch_size)
            tgt = _targets(caps)
        else:
            idx = torch.randint(0, len(train_x), (args.batch_size,), generator=gen)
            x, tgt = _float(train_x[idx]), {k: v[idx] for k, v in train_t.items()}
        if not args.no_augment:
            x = augment(x, gen, cfg.sample_rate)
        loss = judge_loss(net(x), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run = 0.98 * run + 0.02 * float(loss.detach()) if step > 1 else float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{run:.3f}", refresh=False)
        if step % args.save_every == 0:
            bar.write(json.dumps({"step": step, "loss": round(run, 4), "heldout": heldout()}))
            judge.save(args.out)
    bar.close()
    acc = heldout()
    minutes = round((time.time() - t0) / 60, 2)
    out = judge.save(args.out, {"heldout_accuracy": acc, "steps": step, "minutes": minutes})
    print(f"wrote {out}: {step} steps in {minutes} min, held-out accuracy {json.dumps(acc)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    sys.exit(main(parser.parse_args()))
