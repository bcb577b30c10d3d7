"""``anygpt tokenize``: manifests to AnyGPT token jsonl, failed rows recorded, resumable."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from anygpt.train.tokenize_media import TokenizeConfig, tokenize_manifest

ROWS = [
    ("good0.wav", "hello world"),
    ("missing.wav", "no such file"),
    ("good1.wav", "second one"),
    ("corrupt.wav", "broken file"),
    ("empty.wav", "no samples"),
    ("good2.wav", "third"),
    ("good3.wav", "fourth"),
    ("good0.wav", ""),
]
GOOD = [r for r in ROWS if r[0].startswith("good") and r[1]]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    for i, (secs, rate) in enumerate([(1.0, 16000), (1.5, 22050), (0.7, 16000), (2.0, 44100)]):
        t = np.arange(int(rate * secs)) / rate
        wav = 0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(d / f"good{i}.wav", wav, rate)
    sf.write(d / "empty.wav", np.zeros(0), 16000)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    with (d / "speech.jsonl").open("w") as f:
        for i, (p, text) in enumerate(ROWS):
            f.write(json.dumps({"id": i, "speech": p, "text": text}) + "\n")
    with (d / "music.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "music"])
        w.writerows([(t, p) for p, t in ROWS])
    return d


def run(bundle, manifest, out, **kw) -> tuple:
    cfg = TokenizeConfig(
        manifest=str(manifest), model=str(bundle), output=str(out), device="cpu", **kw
    )
    return tokenize_manifest(cfg), cfg


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rows_become_anygpt_lines_and_failures_are_recorded(debug_bundle, media, tmp_path):
    from anygpt.bundle import Bundle

    out = tmp_path / "speech.jsonl"
    summary, _ = run(debug_bundle, media / "speech.jsonl", out, batch_size=3)
    assert (summary.total, summary.written, summary.failed) == (8, 4, 4)
    lines = read_jsonl(out)
    assert [r["text"] for r in lines] == [t for _, t in GOOD]
    assert all(list(r) == ["text", "speech"] for r in lines)  # the format of data/pretrain
    # each line holds exactly what the bundle's tokenizer makes of the file
    bundle = Bundle(debug_bundle, device="cpu")
    tok = bundle.modality("speech")
    codes = tok.encode([tok.load(media / p) for p, _ in GOOD]).unbatch()
    assert [r["speech"] for r in lines] == [bundle.layout.segment_text("speech", c) for c in codes]
    assert "🗣️" in out.read_text(encoding="utf-8")  # ensure_ascii=False
    errors = read_jsonl(tmp_path / "speech.errors.jsonl")
    assert [(e["row"], e["kind"]) for e in errors] == [
        (1, "missing file"),
        (3, "unreadable file"),
        (4, "empty audio"),
        (7, "no text"),
    ]
    assert errors[0]["path"] == "missing.wav" and errors[0]["id"] == 1
    assert summary.reasons == {
        "missing file": 1,
        "unreadable file": 1,
        "empty audio": 1,
        "no text": 1,
    }


def test_resume_after_a_crash_loses_and_repeats_nothing(debug_bundle, media, tmp_path):
    whole = tmp_path / "whole.jsonl"
    run(debug_bundle, media / "speech.jsonl", whole, batch_size=2)
    out = tmp_path / "part.jsonl"
    first, _ = run(debug_bundle, media / "speech.jsonl", out, batch_size=2, limit=3)
    assert first.written == 2 and first.failed == 1
    # a crash while the next batch was being written leaves a half line behind
    with out.open("ab") as f:
        f.write(b'{"text": "half a li')
    with (tmp_path / "part.errors.jsonl").open("ab") as f:
        f.write(b'{"row": 99')
    second, _ = run(debug_bundle, media / "speech.jsonl", out, batch_size=2)
    assert second.skipped == 3 and (second.written, second.failed) == (4, 4)
    assert out.read_bytes() == whole.read_bytes()
    assert (tmp_path / "part.errors.jsonl").read_bytes() == (
        tmp_path / "whole.errors.jsonl"
    ).read_bytes()
    third, _ = run(debug_bundle, media / "speech.jsonl", out, batch_size=2)  # nothing left to do
    assert third.skipped == 8 and out.read_bytes() == whole.read_bytes()


def test_changed_manifest_or_stray_output_needs_overwrite(debug_bundle, media, tmp_path):
    from anygpt.train.config import TrainError

    out = tmp_path / "o.jsonl"
    run(debug_bundle, media / "speech.jsonl", out, limit=2)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"speech": str(media / "good0.wav"), "text": "x"}) + "\n")
    with pytest.raises(TrainError, match="another manifest"):
        run(debug_bundle, other, out)
    summary, _ = run(debug_bundle, other, out, overwrite=True)
    assert summary.written == 1 and len(read_jsonl(out)) == 1
    stray = tmp_path / "stray.jsonl"
    stray.write_text("{}\n")
    with pytest.raises(TrainError, match="without its progress file"):
        run(debug_bundle, other, stray)


def test_csv_manifest_for_music(debug_bundle, media, tmp_path):
    summary, _ = run(debug_bundle, media / "music.csv", tmp_path / "music.jsonl", max_seconds=1.0)
    assert (summary.written, summary.failed) == (4, 4)
    line = read_jsonl(tmp_path / "music.jsonl")[0]
    assert line["text"] == "hello world" and line["music"].startswith("<somu><🎶")
    assert line["music"].count("<🎶") % 4 == 0  # whole frames of 4 codebooks


def test_datasets_folder_with_arrays_and_audio_files(debug_bundle, media, tmp_path):
    import datasets

    wav, rate = sf.read(media / "good1.wav", dtype="float32")
    ds = datasets.Dataset.from_dict(
        {
            "text": ["from an array", "empty array"],
            "speech": [
                {"array": wav.tolist(), "sampling_rate": rate},
                {"array": [], "sampling_rate": 16000},
            ],
        }
    )
    ds.save_to_disk(str(tmp_path / "arrays"))
    summary, _ = run(debug_bundle, tmp_path / "arrays", tmp_path / "a.jsonl")
    assert (summary.written, summary.failed) == (1, 1)
    mono = read_jsonl(tmp_path / "a.jsonl")[0]["speech"]
    ref, _ = run(debug_bundle, media / "speech.jsonl", tmp_path / "ref.jsonl", limit=3)
    assert mono == read_jsonl(tmp_path / "ref.jsonl")[1]["speech"]  # same as from the file
    stereo = np.stack([wav, -wav], 1).tolist()  # [T, 2]
    ds = datasets.Dataset.from_dict(
        {"text": ["stereo"], "speech": [{"array": stereo, "sampling_rate": rate}]}
    )
    ds.save_to_disk(str(tmp_path / "stereo"))
    run(debug_bundle, tmp_path / "stereo", tmp_path / "s.jsonl")
    assert read_jsonl(tmp_path / "s.jsonl")[0]["speech"] == mono  # speech keeps channel 0

    # an Audio feature is read without torchcodec (bytes/paths decoded here)
    files = [str(media / "good0.wav"), str(media / "corrupt.wav")]
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "speech": files})
    ds = ds.cast_column("speech", datasets.Audio())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "audio"))
    summary, _ = run(debug_bundle, tmp_path / "audio", tmp_path / "b.jsonl")
    assert (summary.written, summary.failed) == (1, 1)


def test_command_line(debug_bundle, media, tmp_path):
    out = tmp_path / "cli.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "anygpt", "tokenize", str(media / "speech.jsonl"),
         "--model", str(debug_bundle), "-o", str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "8 rows: 4 written" in r.stdout and "4 failed" in r.stdout


def test_command_line_error_is_one_line(debug_bundle, media, tmp_path, capsys):
    from anygpt.cli import main

    argv = ["tokenize", str(media / "speech.jsonl"), "--model", str(debug_bundle)]
    assert main([*argv, "-o", str(tmp_path / "x.jsonl"), "--modality", "image"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
