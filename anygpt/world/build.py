"""``anygpt world OUT --seed N``: generate the nano world (pictures, speech, music, dialogues).

Layout (paths in manifests are relative to their split folder, as ``anygpt tokenize`` reads them)::

    OUT/world.json                       seed, counts, vocabulary, voices, versions
    OUT/{train,heldout}/images/NNNNNN.png      64x64 RGB
    OUT/{train,heldout}/speech/NNNNNN.wav      16 kHz mono PCM16
    OUT/{train,heldout}/music/NNNNNN.wav       16 kHz mono PCM16, 3 s
    OUT/{split}/image.jsonl      {"text": caption, "image": "images/000001.png", "scene": {...}}
    OUT/{split}/speech.jsonl     {"text": sentence, "speech": "speech/000001.wav", "voice": ...,
                                  "rate": wpm, "kind": sentence kind}
    OUT/{split}/music.jsonl      {"text": caption, "music": "music/000001.wav", "melody": {...}}
    OUT/{split}/video.jsonl      {"text": caption, "video": "videos/000001.mp4", "motion": {...}}
    OUT/{split}/background.jsonl {"speech": "background/000001.wav", "kind": chatter|noise name,
                                  "text": what chatter says ("" for noise)}
    OUT/{split}/dialogues.jsonl  chat rows with {image:...}/{speech:...}/{music:...} placeholders
                                 (:mod:`anygpt.world.dialogues`; ``anygpt tokenize-chat``)
    OUT/{split}/video_dialogues.jsonl  every clip described and asked about, in the same format

``speech.jsonl`` lists the ``--speech`` stand-alone utterances (numbered first) and then the
questions and answers the dialogues speak (kinds ``dialogue_question``/``dialogue_answer``).  The
held-out split uses only held-out voices and rates (:mod:`anygpt.world.speech`); each split's
spoken answers are in one assistant voice of that split (``world.json`` names it).

Determinism: every stage of every split draws from its own ``random.Random`` seeded from
``(seed, split, stage)``, and the work done in worker processes (speech synthesis, music
rendering) only renders what the main process planned, so the same seed gives the same files byte
for byte, whatever the number of workers.  The world is written to ``.OUT.partial`` beside OUT and
renamed into place at the end: OUT is never half-written.

The sentence set (:func:`anygpt.world.text.all_sentences`) holds 69,979 distinct sentences:
16,448 picture captions, 49 questions, 4,014 answers, 49,344 drawing requests, 4 describe
prompts, 24 melody captions and 96 music requests.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from anygpt.world import vocab
from anygpt.world.dialogues import (
    KIND_WEIGHTS,
    BackgroundItem,
    DialogueMaker,
    ImageItem,
    MusicItem,
    SpeechBank,
    SpeechJob,
    VideoItem,
    clip_dialogues,
)

FORMAT_VERSION = 2

KINDS = ("images", "speech", "music", "videos", "background", "dialogues")
DEFAULT_COUNTS = {"images": 12000, "speech": 8000, "music": 4000, "videos": 3000}
DEFAULT_COUNTS |= {"background": 2000, "dialogues": 8000, "heldout": 300}
TINY_COUNTS = {"images": 6, "speech": 5, "music": 3, "videos": 3, "background": 3}
TINY_COUNTS |= {"dialogues": 12, "heldout": 3}

# What the stand-alone utterances say.
SPEECH_KIND_WEIGHTS = {
    "image_caption": 0.30,
    "question": 0.15,
    "answer": 0.20,
    "draw_request": 0.12,
    "describe": 0.05,
    "music_caption": 0.08,
    "music_request": 0.10,
}
POOL_MIN_JOBS = 32  # fewer jobs than this run in the main process (a pool costs more)


class WorldError(ValueError):
    """A world that cannot be written (one line)."""


@dataclass
class WorldConfig:
    """Settings of one ``anygpt world`` run (counts are per split; ``heldout`` for each kind)."""

    out: str
    seed: int = 0
    images: int = DEFAULT_COUNTS["images"]
    speech: int = DEFAULT_COUNTS["speech"]
    music: int = DEFAULT_COUNTS["music"]
    videos: int = DEFAULT_COUNTS["videos"]
    background: int = DEFAULT_COUNTS["background"]
    dialogues: int = DEFAULT_COUNTS["dialogues"]
    heldout: int = DEFAULT_COUNTS["heldout"]
    workers: int = 2
    overwrite: bool = False
    progress: bool = True

    def counts(self, split: str) -> dict[str, int]:
        if split == "train":
            return {k: getattr(self, k) for k in KINDS}
        return dict.fromkeys(KINDS, self.heldout)


@dataclass
class WorldSummary:
    out: Path
    counts: dict
    seconds: float
    bytes: int


def split_voices(split: str) -> tuple[tuple[str, ...], tuple[int, ...], str, int]:
    """``(voices, rates, answer voice, answer rate)`` of a split."""
    from anygpt.world import speech

    if split == "train":
        voices, rates = speech.VOICES_TRAIN, speech.RATES_TRAIN
    else:
        voices, rates = speech.VOICES_HELDOUT, speech.RATES_HELDOUT
    return tuple(voices), tuple(rates), voices[0], rates[len(rates) // 2]


def _rng(seed: int, split: str, stage: str) -> random.Random:
    # A string seed goes through SHA-512: stable across runs and Python processes.
    return random.Random(f"anygpt-world/{seed}/{split}/{stage}")


# ---------------------------------------------------------------------- worker jobs
def _write_wav(path: str, wav) -> None:
    import numpy as np
    import soundfile as sf

    sf.write(path, np.clip(wav, -1.0, 1.0), vocab.SPEECH_RATE, subtype="PCM_16", format="WAV")


def _speech_job(job: tuple[str, str, int, str]) -> int:
    """Synthesize one utterance into a file; returns its number of samples."""
    from anygpt.world.speech import speak

    text, voice, rate, path = job
    wav = speak(text, voice, rate)
    _write_wav(path, wav)
    return int(wav.shape[0])


def _music_job(job: tuple[dict, str]) -> int:
    from anygpt.world.music import Melody, render

    melody, path = job
    wav = render(Melody.from_dict(melody))
    _write_wav(path, wav)
    return int(wav.shape[0])


def _background_job(job: tuple[str, list[str], str, int, int, str]) -> int:
    """Write one background sound: chatter (said), babble (two lines at once) or noise."""
    from anygpt.world.clips import noise
    from anygpt.world.speech import speak

    kind, texts, voice, rate, seed, path = job
    if kind == "chatter":
        wav = speak(texts[0], voice, rate)
    else:
        said = [speak(t, voice, rate) * 0.5 for t in texts] if kind == "babble" else []
        seconds = max([w.shape[0] / vocab.SPEECH_RATE for w in said] + [1.0 + (seed % 20) / 10])
        wav = noise(kind, seconds, seed, said)
    _write_wav(path, wav)
    return int(wav.shape[0])


class _Runner:
    """Runs jobs in order, in a process pool when there are many (results in input order)."""

    def __init__(self, workers: int, progress: bool) -> None:
        self.workers = max(1, workers)
        self.progress = progress
        self.pool: ProcessPoolExecutor | None = None

    def map(self, fn, jobs: list, desc: str) -> list:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="file", disable=not self.progress)
        out = []
        if self.workers > 1 and len(jobs) >= POOL_MIN_JOBS:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(self.workers)
            results = self.pool.map(fn, jobs, chunksize=8)
        else:
            results = map(fn, jobs)
        for r in results:
            out.append(r)
            bar.update(1)
        bar.close()
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


# ---------------------------------------------------------------------- one split
def _utterance(rng: random.Random) -> tuple[str, str]:
    """``(kind, sentence)`` of one stand-alone utterance."""
    from anygpt.world import images, music
    from anygpt.world import text as wt

    kinds = list(SPEECH_KIND_WEIGHTS)
    kind = rng.choices(kinds, weights=[SPEECH_KIND_WEIGHTS[k] for k in kinds])[0]
    if kind in ("image_caption", "question", "answer", "draw_request"):
        scene = images.random_scene(rng)
        if kind == "image_caption":
            return kind, wt.phrase(images.caption(scene))
        if kind == "draw_request":
            return kind, wt.random_draw_request(images.caption(scene), rng)
        qa = wt.random_question(scene, rng)
        return kind, qa.question if kind == "question" else qa.answer
    if kind == "describe":
        return kind, rng.choice(wt.DESCRIBE_IMAGE + wt.DESCRIBE_MUSIC)
    cap = music.caption(music.random_melody(rng))
    return kind, wt.phrase(cap) if kind == "music_caption" else wt.random_music_request(cap, rng)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_split(
    root: Path, split: str, counts: dict[str, int], seed: int, runner: _Runner
) -> dict[str, int]:
    """Write one split under ``root/split``; returns what it wrote."""
    from tqdm.auto import tqdm

    from anygpt.world import images, music
    from anygpt.world.speech import check_voice

    d = root / split
    for sub in ("images", "speech", "music", "videos", "background"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    voices, rates, answer_voice, answer_rate = split_voices(split)
    for v in voices:
        check_voice(v)

    # pictures
    rng = _rng(seed, split, "images")
    image_items, image_rows = [], []
    for i in tqdm(
        range(counts["images"]), desc=f"{split} images", unit="file", disable=not runner.progress
    ):
        scene = images.random_scene(rng)
        rel = f"images/{i + 1:06d}.png"
        images.render(scene).save(d / rel, format="PNG")
        cap = images.caption(scene)
        image_items.append(ImageItem(rel, scene, cap))
        image_rows.append({"text": cap, "image": rel, "scene": scene.to_dict()})
    _write_jsonl(d / "image.jsonl", image_rows)

    # melodies
    rng = _rng(seed, split, "music")
    melodies = [music.random_melody(rng) for _ in range(counts["music"])]
    music_items, music_rows, jobs = [], [], []
    for i, m in enumerate(melodies):
        rel = f"music/{i + 1:06d}.wav"
        cap = music.caption(m)
        music_items.append(MusicItem(rel, m, cap))
        music_rows.append({"text": cap, "music": rel, "melody": m.to_dict()})
        jobs.append((m.to_dict(), str(d / rel)))
    runner.map(_music_job, jobs, f"{split} music")
    _write_jsonl(d / "music.jsonl", music_rows)

    # moving shapes
    from anygpt.video import write_video
    from anygpt.world import clips

    rng = _rng(seed, split, "videos")
    video_items, video_rows = [], []
    for i in tqdm(
        range(counts["videos"]), desc=f"{split} videos", unit="file", disable=not runner.progress
    ):
        m = clips.random_motion(rng)
        rel = f"videos/{i + 1:06d}.mp4"
        write_video(d / rel, clips.frames(m), clips.CLIP_FPS)
        video_items.append(VideoItem(rel, m, clips.caption(m)))
        video_rows.append({"text": clips.caption(m), "video": rel, "motion": m.to_dict()})
    _write_jsonl(d / "video.jsonl", video_rows)
    _write_jsonl(
        d / "video_dialogues.jsonl", clip_dialogues(video_items, _rng(seed, split, "clips"), split)
    )

    # background sounds: chatter said in the split's voices, or noise
    rng = _rng(seed, split, "background")
    background_items, background_jobs = [], []
    for i in range(counts["background"]):
        kind = "chatter" if rng.random() < 0.65 else rng.choice(clips.NOISES)
        texts = [clips.chatter(rng) for _ in range({"chatter": 1, "babble": 2}.get(kind, 0))]
        rel = f"background/{i + 1:06d}.wav"
        voice, rate = rng.choice(voices), rng.choice(rates)
        background_jobs.append((kind, texts, voice, rate, rng.randrange(2**31), str(d / rel)))
        background_items.append(BackgroundItem(rel, kind, texts[0] if kind == "chatter" else ""))
    runner.map(_background_job, background_jobs, f"{split} background")
    _write_jsonl(
        d / "background.jsonl",
        [{"speech": b.path, "kind": b.kind, "text": b.text} for b in background_items],
    )

    # stand-alone utterances, then the dialogues and the speech they need
    rng = _rng(seed, split, "speech")
    speech_jobs = []
    for i in range(counts["speech"]):
        kind, sentence = _utterance(rng)
        speech_jobs.append(
            SpeechJob(
                sentence, rng.choice(voices), rng.choice(rates), f"speech/{i + 1:06d}.wav", kind
            )
        )
    bank = SpeechBank(voices, rates, answer_voice, answer_rate, next_index=len(speech_jobs) + 1)
    dialogue_rows = []
    if counts["dialogues"]:
        if not image_items or not music_items:
            raise WorldError("dialogues need at least one picture and one melody per split")
        rng = _rng(seed, split, "dialogues")
        maker = DialogueMaker(image_items, music_items, bank, video_items, background_items)
        for i in range(counts["dialogues"]):
            dialogue_rows.append(maker.make(i + 1, maker.random_kind(rng), rng, split))
    speech_jobs += bank.jobs
    runner.map(
        _speech_job,
        [(j.text, j.voice, j.rate, str(d / j.path)) for j in speech_jobs],
        f"{split} speech",
    )
    _write_jsonl(
        d / "speech.jsonl",
        [
            {"text": j.text, "speech": j.path, "voice": j.voice, "rate": j.rate, "kind": j.kind}
            for j in speech_jobs
        ],
    )
    _write_jsonl(d / "dialogues.jsonl", dialogue_rows)
    return {
        "images": len(image_rows),
        "music": len(music_rows),
        "speech": counts["speech"],
        "dialogue_speech": len(bank.jobs),
        "videos": len(video_rows),
        "background": len(background_items),
        "dialogues": len(dialogue_rows),
    }


# ---------------------------------------------------------------------- the world
def _versions() -> dict[str, str]:
    import numpy
    import PIL
    import soundfile

    import anygpt
    from anygpt.world.speech import espeak_binary

    try:
        espeak = subprocess.run(
            [espeak_binary(), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except Exception as exc:  # noqa: BLE001 - recorded, never fatal
        espeak = f"unknown ({exc})"
    return {
        "world_format": str(FORMAT_VERSION),
        "anygpt": anygpt.__version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "espeak-ng": espeak,
    }


def _vocabulary() -> dict:
    from anygpt.world import text as wt

    return {
        "shapes": list(vocab.SHAPES),
        "colours": list(vocab.COLOURS),
        "sizes": list(vocab.SIZES),
        "relations": list(vocab.RELATIONS),
        "tempos": list(vocab.TEMPOS),
        "moods": list(vocab.MOODS),
        "instruments": list(vocab.INSTRUMENTS),
        "registers": list(vocab.REGISTERS),
        "words": list(wt.all_words()),
        "sentences": wt.sentence_counts(),
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_world(cfg: WorldConfig) -> WorldSummary:
    """Generate the world described by ``cfg`` (see the module docstring)."""
    for k in (*KINDS, "heldout"):
        if getattr(cfg, k) < 0:
            raise WorldError(f"--{k} must be >= 0")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise WorldError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise WorldError(f"{out} exists and is not empty (use --overwrite to replace it)")
    t0 = time.time()
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    tmp.mkdir(parents=True)
    runner = _Runner(cfg.workers, cfg.progress)
    try:
        counts = {}
        for split in vocab.SPLITS:
            counts[split] = build_split(tmp, split, cfg.counts(split), cfg.seed, runner)
        runner.close()
        voices = {}
        for split in vocab.SPLITS:
            v, r, av, ar = split_voices(split)
            voices[split] = {"voices": list(v), "rates": list(r), "answer_voice": av}
            voices[split]["answer_rate"] = ar
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "overwrite")}
        settings.pop("progress")
        settings.pop("workers")  # never changes the files
        meta = {
            "name": "anygpt-nano world",
            "seed": cfg.seed,
            "settings": settings,
            "counts": counts,
            "splits": list(vocab.SPLITS),
            "media": {
                "image_size": vocab.IMAGE_SIZE,
                "speech_rate": vocab.SPEECH_RATE,
                "music_rate": vocab.MUSIC_RATE,
                "music_seconds": vocab.MUSIC_SECONDS,
                "wav_subtype": "PCM_16",
            },
            "speech": voices,
            "speech_kind_weights": SPEECH_KIND_WEIGHTS,
            "dialogue_kind_weights": KIND_WEIGHTS,
            "placeholder": "{MODALITY:PATH} with PATH relative to the split folder",
            "vocabulary": _vocabulary(),
            "versions": _versions(),
        }
        (tmp / "world.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(out)
    except BaseException:
        runner.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WorldSummary(out, counts, time.time() - t0, _dir_bytes(out))


# ---------------------------------------------------------------------- command line
def cmd_world(args: argparse.Namespace) -> int:
    preset = TINY_COUNTS if args.tiny else DEFAULT_COUNTS
    counts = {
        k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in preset.items()
    }
    cfg = WorldConfig(
        out=args.out,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **counts,
    )
    from anygpt.world.speech import SpeechSynthesisError

    try:
        s = build_world(cfg)
    except SpeechSynthesisError as exc:
        raise WorldError(str(exc)) from exc
    parts = [
        f"{split}: {c['images']} images, {c['speech']}+{c['dialogue_speech']} speech, "
        f"{c['music']} music, {c['videos']} videos, {c['background']} background sounds, "
        f"{c['dialogues']} dialogues"
        for split, c in s.counts.items()
    ]
    print(f"wrote world {s.out}: {'; '.join(parts)}; {s.bytes / 1e6:.1f} MB in {s.seconds:.1f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``world`` to the ``anygpt`` parser."""
    p = sub.add_parser(
        "world",
        help="generate the nano world: pictures, speech, music, dialogues (train + held-out)",
        description="Writes OUT/{train,heldout}/{images,speech,music}/ with manifests image.jsonl, "
        "speech.jsonl, music.jsonl (readable by 'anygpt tokenize'), dialogues.jsonl (for "
        "'anygpt tokenize-chat') and OUT/world.json. The same seed writes the same files.",
    )
    p.add_argument("out", help="folder to create (must be empty or absent)")
    p.add_argument("--seed", type=int, default=0)
    for k in KINDS:
        p.add_argument(f"--{k}", type=int, help=f"{k} in train (default {DEFAULT_COUNTS[k]})")
    p.add_argument(
        "--heldout",
        type=int,
        help=f"of each kind in the held-out split (default {DEFAULT_COUNTS['heldout']})",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a few items of each kind, for tests and CI (seconds); other counts override it",
    )
    p.add_argument("--workers", type=int, default=2, help="processes for speech and music")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_world)
