"""A table of malformed requests, files and options: never a traceback, never a lost or partial file.

Every case runs the ``anygpt`` command in-process on the debug bundle. For each one: the command
returns 0, 1 or 2 (a usage error) and never raises; every line on stderr is ``error: ...`` or
``note: ...`` (or argparse's usage text for status 2); no input file changes; the output folder
holds only whole files (no temporary names, every file readable as what its suffix says).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from anygpt.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, debug_bundle) -> Path:
    """Good and bad files side by side, and broken copies of the debug bundle."""
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    sf.write(d / "good.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    sf.write(d / "empty.wav", np.zeros(0), 16000)
    sf.write(d / "silent.wav", np.zeros(16000), 16000)
    sf.write(d / "one_sample.wav", np.zeros(1), 16000)
    sf.write(d / "eight_channels.wav", 0.1 * rng.standard_normal((8000, 8)), 8000)
    loud = rng.standard_normal(16000) * 1e6
    sf.write(d / "loud.wav", loud, 16000, subtype="FLOAT")
    nan = np.full(16000, np.nan)
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (d / "text.wav").write_text("not audio")
    (d / "zero.wav").write_bytes(b"")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 4)
    from PIL import Image

    Image.new("RGB", (24, 16), (10, 200, 30)).save(d / "good.png")
    Image.new("RGBA", (3, 3000)).save(d / "tall.png")
    Image.new("I;16", (8, 8)).save(d / "sixteen.png")
    (d / "truncated.jpg").write_bytes((d / "good.png").read_bytes()[:40])
    (d / "folder.jpg").mkdir()
    (d / "a_file").write_text("x")
    # bundles: malformed bundle.json, an LLM folder without config, a damaged tokenizer file
    (d / "no_bundle").mkdir()
    (d / "bad_json").mkdir()
    (d / "bad_json" / "bundle.json").write_text("{not json")
    (d / "wrong_format").mkdir()
    (d / "wrong_format" / "bundle.json").write_text(json.dumps({"format": "other"}))
    damaged = d / "damaged"
    shutil.copytree(debug_bundle, damaged)
    weights = damaged / "seed" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (damaged / "speechtokenizer" / "ckpt.dev").write_bytes(b"not a checkpoint")
    (d / "batch.txt").write_text("text|image|from a file\n# comment\n\nnonsense\n")
    (d / "manifest.jsonl").write_text(
        '{"text": "a", "speech": "good.wav"}\n[1, 2]\n{broken\n'
        '{"text": "", "speech": "good.wav"}\n{"text": "b", "speech": "folder.jpg"}\n'
        '{"text": "c", "speech": "nan.wav"}\n{"text": 5, "speech": 7}\n'
    )
    (d / "manifest.csv").write_text("text,other\nhello,good.wav\n")
    (d / "manifest.tsv").write_bytes(b"\xff\xfe\x00garbage\tx\n")
    return d


D = "{d}"  # the inputs folder, filled in per case
TEXT = "text|image|a red circle"

# (name, argv after the command) for `base`; the model and output options are added
BASE_CASES = [
    ("empty line", [""]),
    ("only bars", ["||||"]),
    ("two fields", ["text|image"]),
    ("empty content", ["text|image|"]),
    ("text to text", ["text|text|x"]),
    ("media to media", ["image|speech|x.png"]),
    ("unknown modality", ["smell|text|x"]),
    ("huge field", ["x" * 50_000 + "|text|y"]),
    ("control characters", ["text|image|\x00\x1b[31m\u202e\ud7ff"]),
    ("emoji and tags", ["text|speech|<sosp><🗣️3><eosp> </s> [MMGPT]"]),
    ("voice not audio", [f"text|speech|hi|{D}/good.png"]),
    ("voice missing", [f"text|speech|hi|{D}/missing.wav"]),
    ("voice corrupt", [f"text|speech|hi|{D}/corrupt.wav"]),
    ("voice empty", [f"text|speech|hi|{D}/zero.wav"]),
    ("voice nan", [f"text|speech|hi|{D}/nan.wav"]),
    ("two voices", [f"text|speech|hi|{D}/good.wav|{D}/good.wav"]),
    ("speech missing", [f"speech|text|{D}/missing.wav"]),
    ("speech folder", [f"speech|text|{D}/folder.jpg"]),
    ("speech corrupt", [f"speech|text|{D}/corrupt.wav"]),
    ("speech is text", [f"speech|text|{D}/text.wav"]),
    ("speech empty", [f"speech|text|{D}/empty.wav"]),
    ("speech zero bytes", [f"speech|text|{D}/zero.wav"]),
    ("speech one sample", [f"speech|text|{D}/one_sample.wav"]),
    ("speech nan", [f"speech|text|{D}/nan.wav"]),
    ("speech is an image", [f"speech|text|{D}/good.png"]),
    ("music corrupt", [f"music|text|{D}/corrupt.wav"]),
    ("audio is an image", [f"audio|text|{D}/good.png"]),
    ("odd but valid audio", [f"music|text|{D}/eight_channels.wav", f"audio|text|{D}/loud.wav"]),
    ("silence", [f"speech|text|{D}/silent.wav"]),
    ("image truncated", [f"image|text|{D}/truncated.jpg"]),
    ("image folder", [f"image|text|{D}/folder.jpg"]),
    ("image is audio", [f"image|text|{D}/good.wav"]),
    ("odd but valid images", [f"image|text|{D}/tall.png", f"image|text|{D}/sixteen.png"]),
    ("batch file", ["--batch", f"{D}/batch.txt"]),
    ("batch missing", ["--batch", f"{D}/missing.txt"]),
    ("batch folder", ["--batch", f"{D}/folder.jpg"]),
    ("batch binary", ["--batch", f"{D}/binary.txt"]),
    ("batch size 0", ["--batch-size", "0", TEXT]),
    ("batch size text", ["--batch-size", "many", TEXT]),
    ("max new tokens negative", ["--max-new-tokens", "-1", TEXT]),
    ("seed float", ["--seed", "1e23", TEXT]),
    ("seed huge", ["--seed", "9" * 30, TEXT]),
    ("seed negative", ["--seed", "-5", TEXT]),
    ("device tpu", ["--device", "tpu", TEXT]),
    ("device cuda", ["--device", "cuda:3", TEXT]),
    ("device garbage", ["--device", "::", TEXT]),
    ("dtype garbage", ["--dtype", "float8", TEXT]),
    ("unknown option", ["--frobnicate", TEXT]),
    ("output under a file", ["--output-dir", f"{D}/a_file/out", TEXT]),
    ("output is a file", ["--output-dir", f"{D}/a_file", TEXT]),
    ("model missing", ["--model", f"{D}/missing_model", TEXT]),
    ("model is a file", ["--model", f"{D}/a_file", TEXT]),
    ("model without bundle.json", ["--model", f"{D}/no_bundle", TEXT]),
    ("model bundle.json malformed", ["--model", f"{D}/bad_json", TEXT]),
    ("model of another format", ["--model", f"{D}/wrong_format", TEXT]),
    (
        "model with damaged files",
        ["--model", f"{D}/damaged", f"image|text|{D}/good.png", f"speech|text|{D}/good.wav", TEXT],
    ),  # fmt: skip
    ("tokenizer path missing", ["--image-tokenizer-path", f"{D}/missing.pt", TEXT]),
    (
        "tokenizer path is text",
        ["--speech-tokenizer-path", f"{D}/binary.txt", f"speech|text|{D}/good.wav"],
    ),  # fmt: skip
]

CHAT_CASES = [
    ("plain", ["hello"]),
    ("too many fields", ["interleaved|a|text|||||x|y"]),
    ("unknown output", ["interleaved|a|smell"]),
    ("image in the speech field", [f"interleaved|a||||{D}/good.png"]),
    ("audio in the image field", [f"interleaved|a|||{D}/good.wav"]),
    ("missing files", [f"interleaved|a||{D}/missing.wav|{D}/missing.png|{D}/missing.wav"]),
    ("clear and empty", ["|clear", "interleaved|", "|"]),
    ("voice flag missing", ["--voice", f"{D}/missing.wav", "hi"]),
    ("voice flag image", ["--voice", f"{D}/good.png", "hi"]),
    ("voice flag folder", ["--voice", f"{D}/folder.jpg", "hi"]),
]

TOKENIZE_CASES = [
    ("mixed bad rows", ["{d}/manifest.jsonl", "-o", "{o}/t.jsonl"]),
    ("csv without the media column", ["{d}/manifest.csv", "-o", "{o}/t.jsonl"]),
    ("tsv of garbage", ["{d}/manifest.tsv", "-o", "{o}/t.jsonl", "--modality", "speech"]),
    ("manifest missing", ["{d}/missing.jsonl", "-o", "{o}/t.jsonl"]),
    ("manifest is a plain folder", ["{d}/folder.jpg", "-o", "{o}/t.jsonl"]),
    ("output is the manifest", ["{d}/manifest.jsonl", "-o", "{d}/manifest.jsonl", "--overwrite"]),
    ("output is a folder", ["{d}/manifest.jsonl", "-o", "{o}", "--overwrite"]),
    ("output under a file", ["{d}/manifest.jsonl", "-o", "{d}/a_file/t.jsonl"]),
    ("unknown modality", ["{d}/manifest.jsonl", "-o", "{o}/t.jsonl", "--modality", "smell"]),
    ("column without modality", ["{d}/manifest.jsonl", "-o", "{o}/t.jsonl", "--column", "x"]),
    ("negative seconds", ["{d}/manifest.jsonl", "-o", "{o}/t.jsonl", "--max-seconds", "-1"]),
    ("device tpu", ["{d}/manifest.jsonl", "-o", "{o}/t.jsonl", "--device", "tpu"]),
]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _check_whole(folder: Path) -> None:
    """Every file under ``folder`` is complete: no temporary names, each readable."""
    if not folder.exists():
        return
    for p in folder.rglob("*"):
        if p.is_dir():
            continue
        assert ".partial" not in p.name and not p.name.endswith(".tmp"), p
        if p.suffix == ".wav":
            assert sf.info(str(p)).frames > 0, p
        elif p.suffix in (".png", ".jpg"):
            from PIL import Image

            with Image.open(p) as img:
                img.load()
        elif p.suffix in (".jsonl", ".json"):
            text = p.read_text(encoding="utf-8")
            assert not text or text.endswith("\n") or p.suffix == ".json", p
            for line in text.splitlines() if p.suffix == ".jsonl" else [text]:
                json.loads(line)


def _run_case(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    # anything else escaping main() would be a traceback for the user: the test fails on it
    out, err = capsys.readouterr()
    return rc, out, err


def _check_streams(rc, err: str, name: str) -> None:
    assert rc in (0, 1, 2), (name, rc)
    assert "Traceback" not in err, name
    if rc == 2:
        assert "error: " in err, name  # argparse: usage, then one error line
        return
    for line in err.replace("\r", "\n").splitlines():
        if not line.strip() or "row/s" in line:  # tokenize's progress bar
            continue
        assert line.startswith(("error: ", "note: ")), (name, line[:200])
        assert len(line) < 1200, (name, len(line))


@pytest.mark.parametrize("command", ["base", "chat"])
def test_malformed_requests_and_options(debug_bundle, inputs, tmp_path, capsys, command):
    before = _digest(inputs)
    cases = BASE_CASES if command == "base" else CHAT_CASES
    for name, args in cases:
        out_dir = tmp_path / name.replace(" ", "_")
        args = [a.replace(D, str(inputs)) for a in args]
        argv = [command, "--model", str(debug_bundle), "--output-dir", str(out_dir)]
        argv += ["--max-new-tokens", "4", "--seed", "0", *args]
        rc, _, err = _run_case(argv, capsys)
        _check_streams(rc, err, name)
        _check_whole(out_dir)
        assert _digest(inputs) == before, name
    if command == "base":
        assert any(p.is_file() for p in tmp_path.rglob("*")), "no case produced anything"


def test_malformed_manifests_and_tokenize_options(debug_bundle, inputs, tmp_path, capsys):
    before = _digest(inputs)
    for name, args in TOKENIZE_CASES:
        out_dir = tmp_path / name.replace(" ", "_")
        out_dir.mkdir()
        args = [a.format(d=inputs, o=out_dir) for a in args]
        rc, _, err = _run_case(["tokenize", *args, "--model", str(debug_bundle)], capsys)
        _check_streams(rc, err, name)
        _check_whole(out_dir)
        assert _digest(inputs) == before, name
    # the mixed manifest kept its one good row and recorded every other
    out = tmp_path / "mixed_bad_rows" / "t.jsonl"
    assert len(out.read_text().splitlines()) == 1
    assert len((tmp_path / "mixed_bad_rows" / "t.errors.jsonl").read_text().splitlines()) == 6
