"""The command lines, run as a user runs them (subprocesses) on the debug bundle."""

import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf
import torch

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(*args, stdin=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "anygpt", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=ENV,
        cwd=cwd,
        timeout=600,
    )


def saved(stdout):
    return [
        Path(line.split("saved: ", 1)[1])
        for line in stdout.splitlines()
        if line.startswith("saved: ")
    ]


def test_help_answers_the_obvious():
    r = run("--help")
    assert (
        r.returncode == 0
        and "base" in r.stdout
        and "chat" in r.stdout
        and "debug-bundle" in r.stdout
    )
    r = run("base", "--help")
    assert "text|speech|TEXT[|VOICE.wav]" in r.stdout and "--model-name-or-path" in r.stdout


def test_base_every_pipe_form(debug_bundle, media_dir, tmp_path):
    out = tmp_path / "out"
    prompts = [
        "text|speech|hello world",
        f"text|speech|hello again|{media_dir / 'stereo48k.wav'}",
        f"speech|text|{media_dir / 'speech.wav'}",
        "text|music|calm piano",
        f"music|text|{media_dir / 'music.wav'}",
        "text|audio|a dog barks",
        f"audio|text|{media_dir / 'music.wav'}",
        "text|speech|a/b\\|c: odd name?",
    ]
    image = []
    if (debug_bundle / "seed").exists():
        image = ["text|image|a red circle", f"image|text|{media_dir / 'image.jpg'}"]
    r = run(
        "base",
        "--model",
        str(debug_bundle),
        "--seed",
        "0",
        "--max-new-tokens",
        "24",
        "--output-dir",
        str(out),
        *prompts,
        *image,
    )
    assert r.returncode == 0, r.stderr
    files = saved(r.stdout)
    assert len(files) == 5 + (1 if image else 0)
    assert sum(line.startswith("results: ") for line in r.stdout.splitlines()) == 3 + (
        1 if image else 0
    )
    rates = sorted(sf.info(str(f)).samplerate for f in files if f.suffix == ".wav")
    assert rates == [16000, 16000, 16000, 24000, 32000]
    assert all(f.parent == out and f.exists() for f in files)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no partial files left"


def test_base_batch_file_and_upstream_flags(debug_bundle, tmp_path):
    batch = tmp_path / "prompts.txt"
    batch.write_text("# comment\ntext|speech|one\n\ntext|speech|two\n")
    r = run(
        "base",
        "--model-name-or-path",
        str(debug_bundle),
        "--batch",
        str(batch),
        "--seed",
        "1",
        "--max-new-tokens",
        "10",
        "--output-dir",
        str(tmp_path / "o"),
        "--batch-size",
        "2",
        "--speech-tokenizer-config",
        str(debug_bundle / "speechtokenizer" / "config.json"),
    )
    assert r.returncode == 0, r.stderr
    assert len(saved(r.stdout)) == 2


def test_bad_inputs_give_one_line_errors(debug_bundle, media_dir, tmp_path):
    out = tmp_path / "bad"
    bad = {
        "smell|text|x": "unknown modality 'smell'",
        "text|image": "expected 'source|target|content'",
        "speech|music|x.wav": "exactly one side must be text",
        f"speech|text|{tmp_path / 'missing.wav'}": "not found",
        f"speech|text|{media_dir / 'empty.wav'}": "empty",
        f"speech|text|{media_dir / 'corrupt.wav'}": "cannot read audio file",
        f"speech|text|{media_dir / 'text.wav'}": "cannot read audio file",
        "text|speech|   ": "content field is empty",
        "text|speech|" + "long " * 5000: "context",
        f"image|text|{media_dir / 'truncated.jpg'}": "image",
        f"image|text|{media_dir / 'corrupt.wav'}": "image",
    }
    r = run(
        "base",
        "--model",
        str(debug_bundle),
        "--max-new-tokens",
        "4",
        "--output-dir",
        str(out),
        *bad,
    )
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad), r.stderr
    for line, (_, expected) in zip(errors, bad.items()):
        assert expected in line
    assert "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_ugly_audio_is_converted(debug_bundle, media_dir, tmp_path):
    r = run(
        "base",
        "--model",
        str(debug_bundle),
        "--max-new-tokens",
        "4",
        "--output-dir",
        str(tmp_path),
        f"speech|text|{media_dir / 'multi96k.wav'}",
        f"music|text|{media_dir / 'multi96k.wav'}",
    )
    assert r.returncode == 0, r.stderr


def test_interactive_loop_survives_bad_lines(debug_bundle, tmp_path):
    lines = "nonsense\nsmell|text|x\ntext|speech|hi\nquit\n"
    r = run(
        "base",
        "--model",
        str(debug_bundle),
        "--max-new-tokens",
        "6",
        "--output-dir",
        str(tmp_path),
        stdin=lines,
    )
    assert r.returncode == 0
    assert "Please" not in r.stdout  # piped input gets no prompt text
    assert r.stderr.count("error: ") == 2 and len(saved(r.stdout)) == 1


def test_chat_one_shot_forms(debug_bundle, media_dir, tmp_path):
    r = run(
        "chat",
        "--model",
        str(debug_bundle),
        "--seed",
        "0",
        "--max-new-tokens",
        "12",
        "--output-dir",
        str(tmp_path),
        "interleaved|hello there",
        "just plain text",
        f"interleaved|what do you hear|speech|||{media_dir / 'speech.wav'}",
        f"interleaved|describe|music||||{media_dir / 'music.wav'}",
        "interleaved|clear",
        f"interleaved||text|{media_dir / 'missing.wav'}||{media_dir / 'missing.wav'}",
    )
    assert r.returncode == 1  # the last turn names a missing file
    responses = [line for line in r.stdout.splitlines() if line.startswith("results: ")]
    assert len(responses) == 5 and "(conversation cleared)" in responses[-1]
    assert r.stderr.count("error: ") == 1 and "not found" in r.stderr


def test_missing_model_says_what_to_do(tmp_path):
    r = run("base", "--model", str(tmp_path / "nope"), "text|speech|hi")
    assert r.returncode == 1 and "debug-bundle" in r.stderr and "Traceback" not in r.stderr


def test_units_bundle_round_trip_through_cli(tmp_path, media_dir):
    bundle = tmp_path / "units"
    r = run("debug-bundle", str(bundle), "--modalities", "units")
    assert r.returncode == 0, r.stderr
    r = run(
        "reconstruct",
        "--model",
        str(bundle),
        "--modality",
        "speech",
        "--output-dir",
        str(tmp_path / "o"),
        str(media_dir / "stereo48k.wav"),
    )
    assert r.returncode == 0, r.stderr
    assert " 1 x 49" in r.stdout  # 1 s at 50 units/s: HuBERT's 400-sample window gives 49
    (wav,) = saved(r.stdout)
    info = sf.info(str(wav))
    assert info.samplerate == 16000 and info.frames == 49 * 320
    r = run(
        "base",
        "--model",
        str(bundle),
        "--max-new-tokens",
        "8",
        "--output-dir",
        str(tmp_path / "o"),
        "text|speech|hi",
        f"speech|text|{media_dir / 'speech.wav'}",
    )
    assert r.returncode == 0, r.stderr
    assert len(saved(r.stdout)) == 1 and "results: " in r.stdout


def test_chat_reply_cut_inside_a_span_does_not_poison_the_next_turn(debug_bundle):
    from anygpt.bundle import Bundle
    from anygpt.runtime.chat import ChatSession
    from anygpt.runtime.engine import Engine

    bundle = Bundle(debug_bundle, device="cpu")
    session = ChatSession(Engine(bundle, seed=0, max_new_tokens=4))
    session.conversation.add_user("draw")
    session.conversation.add_assistant("sure <somu><🎶1>")  # a reply cut off inside a span
    from anygpt.generation import SpanConstraint

    ids = torch.tensor([bundle.tokenizer.encode(session.conversation.render() + " ")])
    scores = SpanConstraint(bundle.layout)(ids, torch.zeros(1, bundle.llm.config.vocab_size))
    assert torch.isinf(scores[0, bundle.layout.code_ids["music"]]).all(), (
        "span closed by the turn end"
    )
    from anygpt.runtime.chat import close_open_span

    assert close_open_span("sure <somu><🎶1>", bundle.layout) == "sure <somu><🎶1><eomu>"
    assert close_open_span("plain", bundle.layout) == "plain"
