"""One clear line instead of a traceback, checks before work, nothing accepted silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from anygpt.cli import main


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error: ")]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    t = np.arange(16000) / 16000
    sf.write(d / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    bad = 0.3 * np.sin(2 * np.pi * 220 * t)
    bad[100:200] = np.nan
    sf.write(d / "nan.wav", bad, 16000, subtype="FLOAT")
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 10, 10)).save(d / "red.png")
    (d / "folder.png").mkdir()
    (d / "a_file").write_text("x")
    return d


def base(bundle, tmp_path, *prompts, extra=()):
    return ["base", "--model", bundle, "--output-dir", tmp_path / "out", "--max-new-tokens", "3",
            *extra, *prompts]  # fmt: skip


# ---------------------------------------------------------------------- item 3
@pytest.mark.parametrize(
    "device, says",
    [
        ("tpu", "unknown device 'tpu'"),
        ("cuda", "CUDA"),
        ("cuda:7", "CUDA"),
        ("meta", "not supported"),
    ],
)
def test_unusable_device_is_one_line(debug_bundle, tmp_path, capsys, device, says):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    rc, _, err = run(
        base(debug_bundle, tmp_path, "text|image|x", extra=["--device", device]), capsys
    )
    assert rc == 1 and len(errors(err)) == 1 and says in err


def test_output_folder_that_cannot_be_made_is_found_before_any_work(
    debug_bundle, files, tmp_path, capsys, monkeypatch
):
    from anygpt.bundle import Bundle

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(Bundle, "__init__", no_loading)
    for cmd in ("base", "chat"):
        argv = [
            cmd,
            "--model",
            debug_bundle,
            "--output-dir",
            files / "a_file" / "out",
            "text|speech|hi",
        ]
        rc, _, err = run(argv, capsys)
        assert rc == 1 and len(errors(err)) == 1 and "output folder" in err


def test_unwritable_output_folder_is_found_before_any_work(
    debug_bundle, tmp_path, capsys, monkeypatch
):
    import os

    from anygpt.bundle import Bundle

    monkeypatch.setattr(Bundle, "__init__", lambda *a, **k: pytest.fail("model loaded"))
    real_access = os.access
    ro = tmp_path / "ro"
    ro.mkdir()
    # the permission bits would not stop root, so the OS answer is what is replaced here
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == ro else real_access(p, m))
    rc, _, err = run(
        ["base", "--model", debug_bundle, "--output-dir", ro, "text|speech|hi"], capsys
    )
    assert rc == 1 and "permission denied" in err and len(errors(err)) == 1


def test_disk_full_while_saving_reports_each_request_and_goes_on(
    debug_bundle, tmp_path, capsys, monkeypatch
):
    from anygpt.runtime.media import Media

    real_save = Media.save
    calls = []

    def second_save_hits_a_full_disk(self, path):
        calls.append(path)
        # the real writers, onto a device that is always full
        real_save(self, "/dev/full" if len(calls) == 2 else path)

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    monkeypatch.setattr(Media, "save", second_save_hits_a_full_disk)
    prompts = ["text|speech|one", "text|speech|two", "text|image|three"]
    rc, out, err = run(base(debug_bundle, tmp_path, *prompts), capsys)
    assert rc == 1 and len(errors(err)) == 1 and "No space left on device" in err
    saved = [Path(ln[7:]) for ln in out.splitlines() if ln.startswith("saved: ")]
    assert len(saved) == 2 and all(p.is_file() for p in saved)  # before and after the failure
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == sorted(p.name for p in saved)  # nothing partial


def test_llm_without_weights_or_with_other_shapes_is_one_line(debug_bundle, tmp_path, capsys):
    import shutil

    missing = tmp_path / "missing"
    shutil.copytree(debug_bundle, missing)
    (missing / "llm" / "model.safetensors").unlink()
    rc, _, err = run(base(missing, tmp_path, "text|image|x"), capsys)
    assert rc == 1 and len(errors(err)) == 1 and "has no weights" in err

    shapes = tmp_path / "shapes"
    shutil.copytree(debug_bundle, shapes)
    config = json.loads((shapes / "llm" / "config.json").read_text())
    config["intermediate_size"] *= 2
    (shapes / "llm" / "config.json").write_text(json.dumps(config))
    rc, _, err = run(base(shapes, tmp_path, "text|image|x"), capsys)
    assert rc == 1 and len(errors(err)) == 1 and "do not fit its config.json" in err


class Payload:
    """A pickled object that a weights-only load refuses."""


def test_weights_only_refusal_never_suggests_unsafe_loading(tmp_path):
    import torch

    from anygpt.checkpoint import CheckpointError, read_state_dict

    torch.save({"x": Payload()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(tmp_path / "bad.pt")
    text = str(info.value)
    assert "weights_only=False" not in text and "set to `False`" not in text
    assert "Payload" in text and "\n" not in text


# ---------------------------------------------------------------------- item 7
@pytest.mark.parametrize(
    "flag, value",
    [("--max-new-tokens", "0"), ("--max-new-tokens", "-3"), ("--batch-size", "0"),
     ("--batch-size", "-1"), ("--seed", "1e23"), ("--seed", str(10**23)), ("--seed", "-1")],
)  # fmt: skip
def test_impossible_numbers_are_usage_errors(debug_bundle, tmp_path, capsys, flag, value):
    rc, _, err = run(base(debug_bundle, tmp_path, "text|image|x", extra=[flag, value]), capsys)
    assert rc == 2 and f"argument {flag}" in err and "Overflow" not in err


def test_nan_audio_is_refused_not_zeroed(debug_bundle, files, tmp_path, capsys):
    rc, out, err = run(base(debug_bundle, tmp_path, f"speech|text|{files / 'nan.wav'}"), capsys)
    assert rc == 1 and "NaN" in err and "results:" not in out


def test_tokenize_refuses_nan_audio(debug_bundle, files, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"text": "x", "speech": str(files / "nan.wav")}) + "\n")
    rc, out, _ = run(
        ["tokenize", manifest, "--model", debug_bundle, "-o", tmp_path / "o.jsonl"], capsys
    )
    assert rc == 1 and "1 failed" in out
    assert "NaN" in (tmp_path / "o.errors.jsonl").read_text()


@pytest.mark.parametrize("voice", ["red.png", "hello", "a.wav|b.wav"])
def test_voice_prompt_that_is_not_audio_is_refused(debug_bundle, files, tmp_path, capsys, voice):
    prompt = f"text|speech|hello|{voice if '.' not in voice else files / voice}"
    rc, out, err = run(base(debug_bundle, tmp_path, prompt), capsys)
    assert rc == 1 and "voice prompt" in err and "saved:" not in out


def test_missing_voice_is_found_before_any_work(debug_bundle, files, tmp_path, capsys, monkeypatch):
    from anygpt.bundle import Bundle

    monkeypatch.setattr(Bundle, "__init__", lambda *a, **k: pytest.fail("model loaded"))
    for voice in ("missing.wav", "red.png", "folder.png"):
        argv = ["chat", "--model", debug_bundle, "--voice", files / voice, "hello"]
        rc, _, err = run(argv, capsys)
        assert rc == 1 and err.startswith("error: --voice") and len(errors(err)) == 1


def test_missing_voice_of_one_base_prompt_fails_only_that_prompt(
    debug_bundle, files, tmp_path, capsys
):
    prompts = [f"text|speech|hi|{files / 'missing.wav'}", "text|image|x"]
    rc, out, err = run(base(debug_bundle, tmp_path, *prompts), capsys)
    assert rc == 1 and len(errors(err)) == 1 and "missing.wav" in err
    assert out.count("saved: ") == 1


@pytest.mark.parametrize(
    "line, says",
    [("interleaved|hi|text||||| extra", "at most 7 fields"),
     ("interleaved|hi||{a}|{a}", "not an image"),
     ("interleaved|hi|||{a}", "not an image"),
     ("interleaved|hi||||{red}", "speech field"),
     ("interleaved|hi|||||{red}", "music field")],
)  # fmt: skip
def test_chat_fields_swapped_or_extra_are_refused(line, says, files):
    from anygpt.runtime.requests import RequestError, parse_chat_line

    line = line.format(a=files / "a.wav", red=files / "red.png")
    with pytest.raises(RequestError, match=says):
        parse_chat_line(line, ["speech", "image", "music"])


def test_readme_order_of_chat_fields_is_still_accepted(files):
    from anygpt.runtime.requests import parse_chat_line

    req = parse_chat_line(f"interleaved|hi||{files / 'red.png'}|{files / 'a.wav'}")
    assert req.images == [str(files / "red.png")] and req.voice_prompt == str(files / "a.wav")


# ---------------------------------------------------------------------- item 8
def test_huge_bad_field_is_not_echoed_whole(debug_bundle, tmp_path, capsys):
    rc, _, err = run(base(debug_bundle, tmp_path, "x" * 100_000 + "|text|y"), capsys)
    assert rc == 1 and len(errors(err)) == 1 and len(err) < 1000


def test_folder_given_as_image_says_folder(debug_bundle, files, tmp_path, capsys):
    rc, _, err = run(base(debug_bundle, tmp_path, f"image|text|{files / 'folder.png'}"), capsys)
    assert rc == 1 and "is a folder" in err and "not found" not in err


@pytest.mark.parametrize("kind", ["audio", "image"])
def test_unreadable_file_says_permission_denied(files, monkeypatch, kind):
    import os

    from anygpt.audio import AudioError, load_audio
    from anygpt.imageio import ImageError, open_image

    target = files / ("a.wav" if kind == "audio" else "red.png")
    real_access = os.access
    # root reads any file, so the OS answer is what is replaced here
    monkeypatch.setattr(
        os, "access", lambda p, m: False if Path(p) == target else real_access(p, m)
    )
    with pytest.raises(AudioError if kind == "audio" else ImageError, match="permission denied"):
        load_audio(target, 16000) if kind == "audio" else open_image(target)


def test_ctrl_c_at_the_prompt_exits_130(debug_bundle, tmp_path, capsys, monkeypatch):
    import builtins

    def interrupted(prompt=""):
        raise KeyboardInterrupt

    monkeypatch.setattr(builtins, "input", interrupted)
    rc, _, _ = run(["base", "--model", debug_bundle, "--output-dir", tmp_path], capsys)
    assert rc == 130


def test_ctrl_c_during_a_chat_turn_keeps_the_conversation(
    debug_bundle, tmp_path, capsys, monkeypatch
):
    import builtins

    from anygpt.runtime.chat import ChatSession

    lines = iter(["first turn", "second turn", "third turn", "quit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    real_turn = ChatSession.turn
    seen = []

    def turn(self, line):
        seen.append(len(self.conversation.messages))
        if line == "second turn":
            self.conversation.add_user("half-made message")
            raise KeyboardInterrupt
        return real_turn(self, line)

    monkeypatch.setattr(ChatSession, "turn", turn)
    argv = ["chat", "--model", debug_bundle, "--output-dir", tmp_path, "--max-new-tokens", "3"]
    rc, _, err = run(argv, capsys)
    assert rc == 0 and "cancelled" in err
    assert seen == [0, 2, 2]  # the cancelled turn left the history as it was


# ---------------------------------------------------------------------- item 9
def test_json_output_is_one_object_per_request(debug_bundle, tmp_path, capsys):
    prompts = ["text|image|x", "nonsense", "text|speech|hi"]
    rc, out, err = run(base(debug_bundle, tmp_path, *prompts, extra=["--json"]), capsys)
    records = [json.loads(ln) for ln in out.splitlines()]
    assert rc == 1 and sorted(r["request"] for r in records) == sorted(prompts)
    assert all(set(r) == {"request", "text", "files", "notes", "error"} for r in records)
    by = {r["request"]: r for r in records}
    assert by["nonsense"]["error"] and not by["nonsense"]["files"]
    assert len(by["text|image|x"]["files"]) == 1 and by["text|image|x"]["error"] is None
    assert Path(by["text|speech|hi"]["files"][0]).is_file()


def test_notes_go_to_stderr(debug_bundle, tmp_path, capsys):
    rc, out, err = run(base(debug_bundle, tmp_path, "text|image|x"), capsys)
    assert rc == 0 and "note: " in err and "note: " not in out  # 3 codes padded to 32


# ---------------------------------------------------------------------- item 6
@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("long")
    rate = 8000
    t = np.arange(rate * 20) / rate
    sf.write(d / "twenty.wav", 0.3 * np.sin(2 * np.pi * 300 * t), rate)  # 20 s
    sf.write(d / "hundred.wav", np.zeros(rate * 100, dtype=np.int16), rate, subtype="PCM_16")
    return d


def test_audio_longer_than_the_context_takes_is_refused_naming_the_limit(
    debug_bundle, long_clips, tmp_path, capsys
):
    # general audio: 75 frames/s x 4 codebooks = 300 tokens/s; 4096 tokens hold about 13 s
    prompt = f"audio|text|{long_clips / 'twenty.wav'}"
    rc, _, err = run(base(debug_bundle, tmp_path, prompt), capsys)
    assert rc == 1 and len(errors(err)) == 1
    assert "300 per second" in err and "at most 13.2 s" in err and "--max-seconds 13.2" in err
    rc, out, err = run(base(debug_bundle, tmp_path, prompt, extra=["--max-seconds", "10"]), capsys)
    assert rc == 0 and "results: " in out


def test_long_speech_is_refused_from_its_header_before_decoding(
    debug_bundle, long_clips, tmp_path, capsys, monkeypatch
):
    import soundfile

    def no_decoding(*a, **k):
        raise AssertionError("the file was decoded before its length was checked")

    monkeypatch.setattr(soundfile, "read", no_decoding)
    rc, _, err = run(
        base(debug_bundle, tmp_path, f"speech|text|{long_clips / 'hundred.wav'}"), capsys
    )
    assert rc == 1 and "100.0 s of speech" in err and "--max-seconds" in err


def test_chat_input_longer_than_the_context_is_refused(debug_bundle, long_clips, tmp_path, capsys):
    argv = ["chat", "--model", debug_bundle, "--output-dir", tmp_path, "--max-new-tokens", "3",
            f"interleaved|what is said|||{'|'}{long_clips / 'hundred.wav'}"]  # fmt: skip
    rc, _, err = run(argv, capsys)
    assert rc == 1 and "at most" in err
    rc, out, _ = run([*argv[:-1], "--max-seconds", "5", argv[-1]], capsys)
    assert rc == 0 and "results: " in out
