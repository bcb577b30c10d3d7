"""``anygpt eval``: measure a bundle on the held-out split of a nano world.

Every score is computed from what the model makes, judged by the world's own ground truth (the
scene or melody behind a held-out file) or by judges trained separately on world media, never by
the model under test.  The table gives each figure beside its target.

    anygpt eval --model models/anygpt-nano --world WORLD [--limit 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anygpt.config import MAX_GUIDANCE
from anygpt.paths import models_dir

JUDGES = "nano-judges"


@dataclass
class Score:
    """One row of the table: a fraction (or a rate) measured on ``n`` held-out items."""

    task: str
    metric: str
    value: float
    target: str
    n: int
    passed: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> str:
        mark = "yes" if self.passed else "NO"
        return f"| {self.task} | {self.metric} | {self.value:.3f} | {self.target} | {self.n} | {mark} |"


def read_rows(path: Path, limit: int | None, kind: str | None = None) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (make a world with 'anygpt world')")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if kind is not None:
        rows = [r for r in rows if r.get("kind") == kind]
    return rows[:limit] if limit else rows


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edit distance in words, reference length)."""
    r, h = ref.lower().split(), hyp.lower().split()
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i]
        for j, hw in enumerate(h, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw)))
        prev = cur
    return prev[-1], len(r)


def _objects(scene: dict) -> list[tuple[str, str, str]]:
    return [(o["size"], o["colour"], o["shape"]) for o in scene["objects"]]


def _caption_objects(text: str) -> list[tuple[str, str, str]]:
    """The (size, colour, shape) of each object a caption names (none when it names none)."""
    from anygpt.world.images import parse_caption

    try:
        return [tuple(o) for o in parse_caption(text or "").objects]
    except ValueError:
        return []


def eval_image_captioning(engine, split: Path, limit: int | None) -> Score:
    rows = read_rows(split / "image.jsonl", limit)
    outs = engine.run_base([f"image|text|{split / r['image']}" for r in rows])
    right = total = 0
    for r, o in zip(rows, outs, strict=True):
        truth = _objects(r["scene"])
        said = _caption_objects(o.text or "") if o.ok else []
        total += len(truth)
        right += sum(1 for t in truth if t in said)
    value = right / max(total, 1)
    return Score(
        "image captioning",
        "objects with size, colour, shape right",
        value,
        ">= 0.90",
        total,
        value >= 0.9,
    )


def eval_text_to_image(engine, split: Path, limit: int | None, judges: Path) -> Score:
    from anygpt.eval.image_judge import ImageJudge

    judge = ImageJudge.load(judges / "image")
    rows = read_rows(split / "image.jsonl", limit)
    outs = engine.run_base([f"text|image|{r['text']}" for r in rows])
    right = total = 0
    for r, o in zip(rows, outs, strict=True):
        n = len(r["scene"]["objects"])
        total += n
        if o.ok and o.media:
            right += int(judge.score(o.media[0].data, r["text"])["objects_correct"])
    value = right / max(total, 1)
    return Score(
        "text -> image", "objects drawn right (image judge)", value, ">= 0.80", total, value >= 0.8
    )


def eval_speech_to_text(engine, split: Path, limit: int | None) -> Score:
    rows = read_rows(split / "speech.jsonl", limit)
    outs = engine.run_base([f"speech|text|{split / r['speech']}" for r in rows])
    errors = words = 0
    for r, o in zip(rows, outs, strict=True):
        e, n = word_errors(r["text"], (o.text or "") if o.ok else "")
        errors, words = errors + e, words + n
    wer = errors / max(words, 1)
    return Score(
        "speech -> text",
        "word error rate (held-out voices)",
        wer,
        "<= 0.10",
        len(rows),
        wer <= 0.10,
    )


def eval_text_to_speech(engine, split: Path, limit: int | None) -> tuple[Score, Score]:
    from anygpt.eval.speech_judge import SentenceJudge, speaker_similarity

    rows = read_rows(split / "speech.jsonl", limit)
    judge = SentenceJudge(sorted({r["text"] for r in read_rows(split / "speech.jsonl", None)}))
    # plain text -> speech (the model's default voice)
    outs = engine.run_base([f"text|speech|{r['text']}" for r in rows])
    heard = 0
    for r, o in zip(rows, outs, strict=True):
        if o.ok and o.media:
            heard += int(judge.recognise(o.media[0].numpy(), o.media[0].sample_rate) == r["text"])
    ceiling = sum(
        judge.recognise(_wave(split / r["speech"]), 16000) == r["text"] for r in rows
    ) / max(len(rows), 1)
    tts = Score(
        "text -> speech", "sentences recognised (pocketsphinx, world grammar)", heard / max(len(rows), 1),
        ">= 0.80", len(rows), heard / max(len(rows), 1) >= 0.8, {"judge ceiling on world speech": round(ceiling, 3)},
    )  # fmt: skip
    # voice cloning: the prompt is another held-out utterance; compare to a different voice
    by_voice: dict[str, list[dict]] = {}
    for r in read_rows(split / "speech.jsonl", None):
        by_voice.setdefault(r["voice"], []).append(r)
    voices = sorted(by_voice)
    pairs = []
    for i, r in enumerate(rows):
        other_voice = voices[(voices.index(r["voice"]) + 1) % len(voices)]
        prompt = by_voice[r["voice"]][(i + 1) % len(by_voice[r["voice"]])]
        other = by_voice[other_voice][i % len(by_voice[other_voice])]
        pairs.append((r, prompt, other))
    clones = engine.run_base(
        [f"text|speech|{r['text']}|{split / p['speech']}" for r, p, _ in pairs]
    )
    # a reply that failed or is too short to compare counts as a loss, never drops out
    wins, own_sims, other_sims, unusable = 0, [], [], 0
    for (_, p, q), o in zip(pairs, clones, strict=True):
        try:
            if not (o.ok and o.media):
                raise ValueError("no reply")
            wave = o.media[0].numpy()
            own = speaker_similarity(wave, _wave(split / p["speech"]), 16000)
            oth = speaker_similarity(wave, _wave(split / q["speech"]), 16000)
        except ValueError:
            unusable += 1
            continue
        own_sims.append(own)
        other_sims.append(oth)
        wins += int(own > oth)
    n, m = max(len(pairs), 1), max(len(own_sims), 1)
    clone = Score(
        "voice cloning", "replies closer to their prompt voice than to another", wins / n,
        "> 0.50", len(pairs), wins / n > 0.5,
        {"mean similarity to prompt": round(sum(own_sims) / m, 3),
         "mean similarity to other voice": round(sum(other_sims) / m, 3),
         "replies too short or failed": unusable},
    )  # fmt: skip
    return tts, clone


def _wave(path: Path):
    import soundfile as sf

    wave, rate = sf.read(str(path), dtype="float32", always_2d=False)
    if rate != 16000:
        from anygpt.audio import resample

        wave = resample(wave, rate, 16000)
    return wave


def _music_attrs(d: dict) -> dict:
    return {k: d.get(k) for k in ("tempo", "mood", "instrument", "register")}


def eval_music(engine, split: Path, limit: int | None, judges: Path) -> tuple[Score, Score]:
    from anygpt.eval.music_judge import MusicJudge
    from anygpt.world.music import parse_caption

    rows = read_rows(split / "music.jsonl", limit)
    outs = engine.run_base([f"music|text|{split / r['music']}" for r in rows])
    right = 0
    for r, o in zip(rows, outs, strict=True):
        truth = _music_attrs(r["melody"])
        said = _music_attrs(parse_caption(o.text or "") or {}) if o.ok else {}
        right += sum(said.get(k) == v for k, v in truth.items())
    cap = right / max(4 * len(rows), 1)
    judge = MusicJudge.load(judges / "music")
    outs = engine.run_base([f"text|music|{r['text']}" for r in rows])
    made = 0
    for r, o in zip(rows, outs, strict=True):
        if o.ok and o.media:
            made += int(
                judge.score(o.media[0].numpy(), o.media[0].sample_rate, r["text"])["correct"]
            )
    gen = made / max(4 * len(rows), 1)
    return (
        Score("music captioning", "attributes right", cap, ">= 0.80", len(rows), cap >= 0.8),
        Score(
            "text -> music", "attributes right (music judge)", gen, ">= 0.70", len(rows), gen >= 0.7
        ),
    )


def eval_tokenizers(engine, split: Path, limit: int | None, judges: Path) -> tuple[Score, ...]:
    """The judges on held-out pictures and melodies round-tripped through the bundle's own image
    and music tokenizers: the most text -> image and text -> music can reach with them, so a
    generation figure below target is put on the tokenizer or on the LLM."""
    from anygpt.eval.image_judge import ImageJudge
    from anygpt.eval.music_judge import MusicJudge

    names = engine.bundle.modality_names
    scores: list[Score] = []
    if "image" in names:
        judge = ImageJudge.load(judges / "image")
        rows = read_rows(split / "image.jsonl", limit)
        right = total = 0
        for r in rows:
            total += len(r["scene"]["objects"])
            _, media = engine.reconstruct("image", str(split / r["image"]))
            right += int(judge.score(media[0].data, r["text"])["objects_correct"])
        value = right / max(total, 1)
        scores.append(
            Score(
                "image tokenizer",
                "objects right after encode + decode (image judge)",
                value,
                ">= 0.80",
                total,
                value >= 0.8,
            )
        )
    if "music" in names:
        judge = MusicJudge.load(judges / "music")
        rows = read_rows(split / "music.jsonl", limit)
        made = 0
        for r in rows:
            _, media = engine.reconstruct("music", str(split / r["music"]))
            m = media[0]
            made += int(judge.score(m.numpy(), m.sample_rate, r["text"])["correct"])
        value = made / max(4 * len(rows), 1)
        scores.append(
            Score(
                "music tokenizer",
                "attributes right after encode + decode (music judge)",
                value,
                ">= 0.70",
                len(rows),
                value >= 0.7,
            )
        )
    return tuple(scores)


def eval_spoken_chat(
    engine, split: Path, limit: int | None, cascade: Any = None, on_turn: Callable | None = None
) -> Score:
    """A spoken question about a picture; the spoken reply's text answer must be right.

    ``cascade``: a :class:`~anygpt.runtime.cascade.Cascade` answers (ASR -> text reply -> TTS)
    instead of the chat model end to end.  ``on_turn(outcome)`` sees each turn's outcome.
    """
    from anygpt.runtime.requests import parse_chat_line

    rows = read_rows(split / "dialogues.jsonl", limit, kind="spoken_image_qa")
    right = 0
    for r in rows:
        turn = r["turns"][0]
        line = f"interleaved||speech||{split / turn['image']}|{split / turn['question_speech']}"
        if cascade is None:
            o = engine.chat().turn(line)
        else:
            o = cascade.turn(engine.chat(), parse_chat_line(line)).outcome
        if on_turn is not None:
            on_turn(o)
        said = (o.text or "").split("<-Res->")[-1].replace("[speech]", " ").strip()
        right += int(o.ok and said.lower().startswith(turn["answer"].lower()) and bool(o.media))
    value = right / max(len(rows), 1)
    return Score(
        "spoken chat about a picture" + (" (cascaded)" if cascade is not None else ""),
        "right spoken answers",
        value,
        ">= 0.70",
        len(rows),
        value >= 0.7,
    )


def eval_video(engine, split: Path, limit: int | None) -> Score:
    """A held-out clip of a moving shape, described in chat: the direction said must be right."""
    from anygpt.world.clips import DESCRIBE_VIDEO, parse_direction

    rows = read_rows(split / "video.jsonl", limit)
    right = 0
    for i, r in enumerate(rows):
        prompt = DESCRIBE_VIDEO[i % len(DESCRIBE_VIDEO)]
        o = engine.chat().turn(f"interleaved|{prompt}|||{split / r['video']}")
        said = parse_direction((o.text or "").lower()) if o.ok else None
        right += int(said == r["motion"]["direction"])
    value = right / max(len(rows), 1)
    return Score("video: motion", "direction said right", value, ">= 0.80", len(rows), value >= 0.8)


def eval_awake(engine, split: Path, limit: int | None) -> tuple[Score, Score]:
    """Spoken questions must get a reply; held-out background sounds must get none."""
    queries = read_rows(split / "dialogues.jsonl", limit, kind="spoken_image_qa")
    answered = 0
    for r in queries:
        turn = r["turns"][0]
        line = f"interleaved||speech||{split / turn['image']}|{split / turn['question_speech']}"
        o = engine.chat().turn(line)
        answered += int(o.ok and bool((o.text or "").strip() or o.media))
    sounds = read_rows(split / "background.jsonl", limit)
    silent, by_kind = 0, {}
    for r in sounds:
        o = engine.chat().turn(f"interleaved|||||{split / r['speech']}")
        quiet = o.ok and not (o.text or "").strip() and not o.media
        silent += int(quiet)
        k = "chatter" if r["kind"] == "chatter" else "noise"
        done, n = by_kind.get(k, (0, 0))
        by_kind[k] = (done + int(quiet), n + 1)
    a = answered / max(len(queries), 1)
    s = silent / max(len(sounds), 1)
    detail = {f"silent on {k}": round(d / max(n, 1), 3) for k, (d, n) in by_kind.items()}
    return (
        Score("addressed speech", "spoken queries answered", a, ">= 0.95", len(queries), a >= 0.95),
        Score("background sound", "stayed silent", s, ">= 0.90", len(sounds), s >= 0.9, detail),
    )


def run_eval(
    model: str | Path | None,
    world: Path,
    limit: int | None,
    judges: Path,
    only: set[str] | None,
    cascade: bool = False,
    guidance_scale: float | None = None,
) -> list[Score]:
    import anygpt

    engine = anygpt.load(model, device="cpu", seed=0, guidance_scale=guidance_scale)
    if cascade:
        from anygpt.runtime.cascade import Cascade

        cascade = Cascade(engine)
    split = world / "heldout"
    tasks: dict[str, Callable[[], Any]] = {
        "image-caption": lambda: eval_image_captioning(engine, split, limit),
        "text-image": lambda: eval_text_to_image(engine, split, limit, judges),
        "asr": lambda: eval_speech_to_text(engine, split, limit),
        "tts": lambda: eval_text_to_speech(engine, split, limit),
        "music": lambda: eval_music(engine, split, limit, judges),
        "chat": lambda: eval_spoken_chat(engine, split, limit, cascade or None),
        "video": lambda: eval_video(engine, split, limit),
        "awake": lambda: eval_awake(engine, split, limit),
        "tokenizers": lambda: eval_tokenizers(engine, split, limit, judges),
    }
    scores: list[Score] = []
    for name, task in tasks.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        result = task()
        for s in result if isinstance(result, tuple) else (result,):
            s.extra["seconds"] = round(time.perf_counter() - start, 1)
            scores.append(s)
            print(s.row(), flush=True)
    return scores


def table(scores: list[Score]) -> str:
    head = "| task | metric | value | target | n | met |\n|---|---|---|---|---|---|"
    return "\n".join([head, *(s.row() for s in scores)])


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="bundle (default: the shipped models/anygpt-nano)")
    p.add_argument("--world", required=True, help="a world folder made by 'anygpt world'")
    p.add_argument("--limit", type=int, default=50, help="held-out items per task (default 50)")
    p.add_argument("--judges", default=str(models_dir() / JUDGES), help="judge models folder")
    p.add_argument(
        "--tasks",
        help="comma-separated subset: image-caption,text-image,asr,tts,music,chat,video,awake,"
        "tokenizers (the judges on round trips through the image and music tokenizers)",
    )
    p.add_argument("--json", help="also write the scores here")
    p.add_argument(
        "--cascade",
        action="store_true",
        help="spoken chat through the cascade (ASR -> text reply -> TTS) instead of end to end",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance of text -> image, music and speech (1 = off; default: "
        "the bundle's decoding configs)",
    )


def main(args: argparse.Namespace) -> int:
    only = set(args.tasks.split(",")) if args.tasks else None
    if args.guidance_scale is not None and not 0 < args.guidance_scale <= MAX_GUIDANCE:
        print(
            f"error: --guidance-scale must lie in (0, {MAX_GUIDANCE:g}] (1 = off)", file=sys.stderr
        )
        return 1
    try:
        scores = run_eval(
            args.model,
            Path(args.world),
            args.limit,
            Path(args.judges),
            only,
            args.cascade,
            args.guidance_scale,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(scores))
    if args.json:
        Path(args.json).write_text(json.dumps([s.__dict__ for s in scores], indent=2) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="measure a bundle on a nano world's held-out split", description=__doc__
    )
    add_args(p)
    p.set_defaults(handler=main)
