"""Speech judges that know nothing of any speech tokenizer.

* :class:`SentenceJudge`: which of a closed list of sentences was said.  PocketSphinx (its own
  English acoustic model, shipped in the PyPI wheel) decodes with a JSGF grammar that allows only
  those sentences.  The waveform is brought to a fixed loudness and a faint fixed noise is added
  first: on espeak-ng's digitally silent pauses PocketSphinx otherwise fails on most utterances.
* :func:`speaker_similarity`: cosine similarity of two waveforms' speaker embeddings from a small
  x-vector-like network trained to tell the world's training voices apart (``anygpt train-judge
  speech``; weights in ``models/nano-judges/speech/``).

::

    waveform 16 kHz -> 30 MFCC (25 ms window, 10 ms hop), c0 dropped
      -> 4 dilated convolutions (TDNN) [B, C, T] -> mean and std over time [B, 2C]
      -> linear -> embedding [B, E]   (training adds a linear voice classifier)
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anygpt.checkpoint import CheckpointError, load_strict, read_state_dict

SAMPLE_RATE = 16000
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
JUDGE_LEVEL_RMS = 0.1  # loudness every waveform is brought to before PocketSphinx hears it
JUDGE_NOISE = 0.003  # standard deviation of the fixed white noise added (about -30 dB)


def _to_16k(wave: np.ndarray | torch.Tensor, sr: int) -> np.ndarray:
    from anygpt.audio import resample

    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    wave = np.nan_to_num(np.asarray(wave, dtype=np.float32).reshape(-1))
    return resample(wave, int(sr), SAMPLE_RATE)


# ---------------------------------------------------------------------- closed-set recogniser
class SentenceJudge:
    """Recognise which of ``sentences`` a waveform says (or ``None``).

    Sentences are lower-case words separated by spaces; every word must be in PocketSphinx's
    English dictionary (a ``ValueError`` names those that are not).
    """

    def __init__(self, sentences: Sequence[str] | None = None, *, jsgf: str | None = None) -> None:
        import pocketsphinx

        if (sentences is None) == (jsgf is None):
            raise ValueError("give either sentences or a JSGF grammar")
        self.decoder = pocketsphinx.Decoder(
            pocketsphinx.Config(samprate=SAMPLE_RATE, loglevel="FATAL")
        )
        if sentences is not None:
            clean = sorted({" ".join(s.lower().split()) for s in sentences if s.strip()})
            if not clean:
                raise ValueError("no sentences to recognise")
            unknown = sorted(
                {w for s in clean for w in s.split() if self.decoder.lookup_word(w) is None}
            )
            if unknown:
                raise ValueError(f"words missing from the PocketSphinx dictionary: {unknown}")
            self.sentences: tuple[str, ...] | None = tuple(clean)
            jsgf = "#JSGF V1.0;\ngrammar judge;\npublic <s> = " + " | ".join(clean) + " ;\n"
        else:
            self.sentences = None
        self.decoder.add_jsgf_string("judge", jsgf)
        self.decoder.activate_search("judge")

    @classmethod
    def from_jsgf(cls, grammar: str) -> SentenceJudge:
        """A judge over the sentences a JSGF grammar accepts (e.g. ``anygpt.world.text.jsgf()``)."""
        return cls(jsgf=grammar)

    @staticmethod
    def prepare(wave: np.ndarray | torch.Tensor, sr: int) -> bytes:
        """Waveform -> the 16 kHz 16-bit PCM PocketSphinx hears (fixed level, fixed faint noise)."""
        w = _to_16k(wave, sr)
        rms = float(np.sqrt(np.mean(w**2))) if w.size else 0.0
        if rms > 1e-6:
            w = w * (JUDGE_LEVEL_RMS / rms)
        w = w + JUDGE_NOISE * np.random.default_rng(0).standard_normal(len(w)).astype(np.float32)
        return (np.clip(w, -1.0, 1.0) * 32767).astype(np.int16).tobytes()

    def recognise(self, wave: np.ndarray | torch.Tensor, sr: int) -> str | None:
        """The sentence heard, or ``None`` when the grammar matches nothing."""
        if np.asarray(wave).size < sr // 20:  # under 50 ms: nothing was said
            return None
        d = self.decoder
        d.start_utt()
        d.process_raw(self.prepare(wave, sr), no_search=False, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        text = " ".join(hyp.hypstr.split()) if hyp is not None else ""
        return text or None


# ---------------------------------------------------------------------- speaker embedding
@dataclass
class SpeakerJudgeConfig:
    n_mels: int = 40
    n_mfcc: int = 30
    channels: int = 128
    embedding: int = 128
    voices: tuple[str, ...] = ()  # the training voices (classifier outputs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["voices"] = list(self.voices)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SpeakerJudgeConfig:
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["voices"] = tuple(kw.get("voices", ()))
        return cls(**kw)


class Mfcc(nn.Module):
    """wave [B, T] at 16 kHz -> MFCC [B, n_mfcc - 1, T // 160] (c0, the loudness, dropped)."""

    def __init__(self, n_mels: int, n_mfcc: int) -> None:
        super().__init__()
        from anygpt.models.nano_speech import FeatureConfig, mel_filterbank

        self.register_buffer(
            "fb", mel_filterbank(FeatureConfig(n_fft=400, n_mels=n_mels)), persistent=False
        )
        k = torch.arange(n_mfcc, dtype=torch.float32)[:, None]
        n = torch.arange(n_mels, dtype=torch.float32)[None]
        self.register_buffer(
            "dct", torch.cos(torch.pi / n_mels * (n + 0.5) * k)[1:], persistent=False
        )
        self.register_buffer("window", torch.hann_window(400), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, 400, 160, 400, self.window, return_complex=True).abs() ** 2
        logmel = torch.log(torch.einsum("mf,bft->bmt", self.fb, spec) + 1e-6)
        return torch.einsum("cm,bmt->bct", self.dct, logmel)[..., : wave.shape[-1] // 160]


class SpeakerJudgeNet(nn.Module):
    """wave [B, T] -> speaker embedding [B, embedding]; ``classify`` adds voice logits."""

    def __init__(self, cfg: SpeakerJudgeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.mfcc = Mfcc(cfg.n_mels, cfg.n_mfcc)
        self.tdnn = nn.ModuleList(
            [
                nn.Conv1d(cfg.n_mfcc - 1, c, 5, padding=2),
                nn.Conv1d(c, c, 3, padding=2, dilation=2),
                nn.Conv1d(c, c, 3, padding=3, dilation=3),
                nn.Conv1d(c, 2 * c, 1),
            ]
        )
        self.norms = nn.ModuleList([nn.BatchNorm1d(m.out_channels) for m in self.tdnn])
        self.embed = nn.Linear(4 * c, cfg.embedding)
        self.classifier = nn.Linear(cfg.embedding, max(1, len(cfg.voices)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.mfcc(wave) / 10.0
        for conv, norm in zip(self.tdnn, self.norms):
            x = F.relu(norm(conv(x)))
        stats = torch.cat([x.mean(-1), x.std(-1)], dim=-1)
        return self.embed(stats)

    def classify(self, wave: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self(wave)))


def default_judge_dir() -> Path:
    from anygpt.paths import models_dir

    return models_dir() / "nano-judges" / "speech"


class SpeakerJudge:
    """Speaker embeddings from a trained :class:`SpeakerJudgeNet` folder."""

    def __init__(self, folder: str | Path | None = None) -> None:
        folder = Path(folder) if folder is not None else default_judge_dir()
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"no speaker judge in {folder} (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                "train one with 'anygpt train-judge speech WORLD/train/speech.jsonl --out DIR'"
            )
        cfg = SpeakerJudgeConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        self.net = SpeakerJudgeNet(cfg)
        state = {k: v.float() for k, v in read_state_dict(folder / WEIGHTS_FILE).items()}
        load_strict(self.net, state, what="speaker judge")
        self.net.eval()

    @torch.no_grad()
    def embed(self, wave: np.ndarray | torch.Tensor, sr: int) -> torch.Tensor:
        """A waveform -> unit-length speaker embedding [embedding]."""
        w = torch.from_numpy(_to_16k(wave, sr))
        if w.numel() < 1600:
            raise ValueError("speaker similarity needs at least 0.1 s of audio")
        w = w / (w.abs().max() + 1e-6) * 0.5
        return F.normalize(self.net(w[None])[0], dim=0)

    def similarity(self, wave_a, wave_b, sr: int) -> float:
        return float(self.embed(wave_a, sr) @ self.embed(wave_b, sr))


@functools.lru_cache(maxsize=1)
def _default_judge() -> SpeakerJudge:
    return SpeakerJudge()


def speaker_similarity(
    wave_a: np.ndarray | torch.Tensor, wave_b: np.ndarray | torch.Tensor, sr: int
) -> float:
    """Cosine similarity (-1..1) of two waveforms' voices, by the shipped speaker judge."""
    return _default_judge().similarity(wave_a, wave_b, sr)


# ---------------------------------------------------------------------- training
def _load_waves(rows: list[dict], column: str) -> tuple[list[torch.Tensor], list[int], list[str]]:
    from tqdm import tqdm

    from anygpt.audio import load_audio

    voices = sorted({str(r[column]) for r in rows})
    index = {v: i for i, v in enumerate(voices)}
    waves, labels = [], []
    for r in tqdm(rows, desc="reading speech", mininterval=5):
        w = load_audio(r["speech"], SAMPLE_RATE, channels="mean")
        waves.append((w / (w.abs().max() + 1e-6) * 0.5 * 32767).to(torch.int16))
        labels.append(index[str(r[column])])
    return waves, labels, voices


def _crop_batch(
    waves: list[torch.Tensor], idx: list[int], samples: int, rng: random.Random
) -> torch.Tensor:
    out = torch.zeros(len(idx), samples)
    for k, i in enumerate(idx):
        w = waves[i].float() / 32767
        if len(w) > samples:
            s = rng.randrange(len(w) - samples + 1)
            w = w[s : s + samples]
        out[k, : len(w)] = w
        # random loudness and faint noise: the judge must not key on level or digital silence
        out[k] *= 10 ** rng.uniform(-0.5, 0.2)
        out[k] += rng.uniform(0.0, 0.01) * torch.randn(samples)
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="world speech JSON lines (text, speech, voice)")
    p.add_argument("--out", required=True, help="folder for config.json and model.safetensors")
    p.add_argument("--voice-column", default="voice")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--crop-s", type=float, default=2.0, help="seconds of each training example")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)


def main(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file
    from tqdm import tqdm

    from anygpt.train.speech_data import ManifestError, read_manifest

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        rows = [r for r in read_manifest(args.manifest) if args.voice_column in r]
    except ManifestError as exc:
        print(f"error: {exc}")
        return 2
    if not rows:
        print(f"error: no rows with a '{args.voice_column}' column")
        return 2
    waves, labels, voices = _load_waves(rows, args.voice_column)
    cfg = SpeakerJudgeConfig(voices=tuple(voices))
    net = SpeakerJudgeNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps)
    rng = random.Random(args.seed)
    samples = int(args.crop_s * SAMPLE_RATE)
    net.train()
    t0, avg = time.time(), None
    bar = tqdm(range(args.steps), desc="speaker judge", mininterval=10)
    for _ in bar:
        idx = [rng.randrange(len(waves)) for _ in range(args.batch_size)]
        x = _crop_batch(waves, idx, samples, rng)
        loss = F.cross_entropy(net.classify(x), torch.tensor([labels[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        bar.set_postfix(ce=f"{avg:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    print(
        f"speaker judge: {len(voices)} voices, {args.steps} steps in {time.time() - t0:.0f} s, "
        f"final loss {avg:.3f}; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_args(parser)
    raise SystemExit(main(parser.parse_args()))
