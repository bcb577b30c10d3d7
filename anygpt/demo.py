"""``anygpt demo``: a short scripted tour of a model, printing what each step did and how long.

On the shipped nano bundle it captions a picture, draws one, transcribes a spoken question,
speaks a sentence, describes and composes music, holds one spoken chat turn about a picture, and
(for a model that reads video) says what happens in a clip.  The inputs are the bundle's own
examples (``demo/`` in the bundle) or, without them, media made by the world generator on the spot.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path


def demo_inputs(bundle_root: Path, work: Path, video: bool = True) -> dict[str, Path]:
    """A picture, a spoken question about it, a melody and a clip (the bundle's, else generated).

    ``video=False``: no clip is made for a model that does not read video (its path stays unmade).
    """
    shipped = bundle_root / "demo"
    names = {"picture": "picture.png", "question": "question.wav", "melody": "melody.wav"}
    if all((shipped / n).is_file() for n in names.values()):
        inputs = {k: shipped / n for k, n in names.items()}
    else:
        import soundfile as sf

        from anygpt.world import images, music, speech

        work.mkdir(parents=True, exist_ok=True)
        rng = random.Random(0)
        scene = images.random_scene(rng, n_objects=1)
        images.render(scene).save(work / names["picture"])
        sf.write(work / names["melody"], music.render(music.random_melody(rng)), 16000)
        shape = scene.objects[0].shape
        wave = speech.speak(f"what colour is the {shape}", speech.VOICES_TRAIN[0], 160)
        sf.write(work / names["question"], wave, 16000)
        inputs = {k: work / n for k, n in names.items()}
    inputs["clip"] = shipped / "clip.mp4"
    if video and not inputs["clip"].is_file():
        from anygpt.video import write_video
        from anygpt.world import clips

        work.mkdir(parents=True, exist_ok=True)
        inputs["clip"] = work / "clip.mp4"
        motion = clips.random_motion(random.Random(0))
        write_video(inputs["clip"], clips.frames(motion), clips.CLIP_FPS)
    return inputs


def steps(inputs: dict[str, Path]) -> list[tuple[str, str, str]]:
    """(what it shows, command line kind, request) for every step of the tour."""
    pic, question, melody, clip = (
        str(inputs[k]) for k in ("picture", "question", "melody", "clip")
    )
    return [
        ("caption a picture", "base", f"image|text|{pic}"),
        ("draw a picture", "base", "text|image|a big red circle to the left of a small blue star"),
        ("transcribe speech", "base", f"speech|text|{question}"),
        ("speak a sentence", "base", "text|speech|the circle is red"),
        ("describe music", "base", f"music|text|{melody}"),
        ("compose music", "base", "text|music|a slow happy piano melody in a high register"),
        ("spoken chat turn about a picture", "chat", f"interleaved||speech||{pic}|{question}"),
        ("say what happens in a video clip", "video", f"interleaved|describe the video|||{clip}"),
    ]


def run_demo(model: str | None, output_dir: str, device: str, seed: int) -> int:
    import anygpt
    from anygpt.debug_bundle import ensure_default_model
    from anygpt.runtime.media import FileSink

    t0 = time.perf_counter()
    engine = anygpt.load(model or ensure_default_model(), device=device, seed=seed)
    names = engine.bundle.modality_names
    print(f"model: {engine.bundle.root} ({engine.bundle.config.name or 'unnamed'})")
    sink = FileSink(output_dir)
    reads_video = bool(engine.bundle.config.video)
    inputs = demo_inputs(engine.bundle.root, Path(output_dir) / "inputs", video=reads_video)
    print(f"inputs: {', '.join(str(p) for p in inputs.values() if p.is_file())}")
    failures = 0
    for what, kind, request in steps(inputs):
        needed = {f for f in request.split("|")[:3] if f in ("image", "speech", "music")}
        if kind == "chat":
            needed = {"image", "speech"}
        if kind == "video" and not reads_video:
            print(f"- {what}: skipped (the model does not read video)")
            continue
        if not needed <= set(names):
            print(f"- {what}: skipped (the model has no {', '.join(sorted(needed - set(names)))})")
            continue
        start = time.perf_counter()
        if kind == "base":
            outcome = engine.base(request)[0]
        else:
            outcome = engine.chat().turn(request)
        if outcome.ok and outcome.media:
            try:
                sink.write(outcome)
            except OSError as exc:
                outcome.error = f"cannot write the output: {exc}"
        took = time.perf_counter() - start
        if not outcome.ok:
            failures += 1
            print(f"- {what} ({took:.2f} s): error: {outcome.error}")
            continue
        parts = [f'"{outcome.text}"'] if outcome.text else []
        parts += [str(p) for p in outcome.files]
        print(f"- {what} ({took:.2f} s): {'; '.join(parts) or '(nothing)'}")
    print(f"done in {time.perf_counter() - t0:.1f} s; outputs in {Path(output_dir).resolve()}")
    return 1 if failures else 0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="bundle folder (default: the shipped models/anygpt-nano)")
    p.add_argument("--output-dir", default="infer_output/demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    try:
        return run_demo(args.model, args.output_dir, args.device, args.seed)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo", help="a short scripted tour of the model (caption, draw, speak, listen, chat)"
    )
    add_args(d)
    d.set_defaults(handler=main)
