"""Nothing lost, nothing mixed: ``anygpt tokenize`` outputs and training resumes under misuse."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from anygpt.cli import main


@pytest.fixture()
def manifest(tmp_path) -> Path:
    """Five speech rows over two distinct clips."""
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    sf.write(tmp_path / "b.wav", 0.3 * np.sin(2 * np.pi * 330 * t[:12000]), 16000)
    path = tmp_path / "m.jsonl"
    rows = [{"text": f"row {i}", "speech": "ab"[i % 2] + ".wav"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(argv, capsys) -> tuple[int, str, str]:
    """Run the command in-process; ``err`` keeps only the lines that are not progress bars."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln and "row/s" not in ln]
    return rc, out, "".join(ln + "\n" for ln in lines)


def tokenize(manifest, bundle, output, *extra):
    return ["tokenize", manifest, "--model", bundle, "-o", output, *extra]


# ---------------------------------------------------------------------- item 1: output = input
@pytest.mark.parametrize("how", ["same path", "other spelling", "symlink", "hard link"])
def test_tokenize_refuses_to_write_onto_its_manifest(debug_bundle, manifest, capsys, how):
    before = manifest.read_bytes()
    target = {
        "same path": manifest,
        "other spelling": manifest.parent / "." / manifest.name,
        "symlink": manifest.parent / "link.jsonl",
        "hard link": manifest.parent / "hard.jsonl",
    }[how]
    if how == "symlink":
        target.symlink_to(manifest)
    elif how == "hard link":
        os.link(manifest, target)
    rc, _, err = run(tokenize(manifest, debug_bundle, target, "--overwrite"), capsys)
    assert rc == 1
    assert err.count("\n") == 1 and "is the manifest itself" in err
    assert manifest.read_bytes() == before


def test_tokenize_errors_file_onto_manifest_is_refused(debug_bundle, manifest, capsys, tmp_path):
    before = manifest.read_bytes()
    argv = tokenize(manifest, debug_bundle, tmp_path / "o.jsonl", "--errors", manifest)
    rc, _, err = run(argv, capsys)
    assert rc == 1 and "errors file" in err and manifest.read_bytes() == before


@pytest.mark.parametrize("case", ["folder", "folder overwrite", "parent is a file"])
def test_tokenize_unusable_output_is_one_line(debug_bundle, manifest, capsys, tmp_path, case):
    (tmp_path / "a_file").write_text("x")
    target = {
        "folder": tmp_path,
        "folder overwrite": tmp_path,
        "parent is a file": tmp_path / "a_file" / "o.jsonl",
    }[case]
    extra = ["--overwrite"] if "overwrite" in case else []
    rc, _, err = run(tokenize(manifest, debug_bundle, target, *extra), capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert (tmp_path / "a_file").read_text() == "x" and manifest.is_file()


# ---------------------------------------------------------------------- item 2: settings
@pytest.mark.parametrize(
    "change",
    [["--max-seconds", "0.5"], ["--text-column", "speech"], "other model"],
)
def test_tokenize_resume_with_other_settings_is_refused(
    debug_bundle, manifest, capsys, tmp_path, change
):
    out = tmp_path / "o.jsonl"
    rc, _, _ = run(tokenize(manifest, debug_bundle, out, "--limit", "2"), capsys)
    assert rc == 0
    before = out.read_bytes()
    if change == "other model":
        other = tmp_path / "other"
        other.mkdir()
        config = json.loads((debug_bundle / "bundle.json").read_text())
        config["llm"] = str(debug_bundle / config["llm"])
        for entry in config["modalities"].values():
            entry["files"] = {k: str(debug_bundle / v) for k, v in entry["files"].items()}
        entry["options"] = {**entry["options"], "changed": 1}
        (other / "bundle.json").write_text(json.dumps(config))
        argv = tokenize(manifest, other, out)
    else:
        argv = tokenize(manifest, debug_bundle, out, *change)
    rc, _, err = run(argv, capsys)
    assert rc == 1 and "other settings" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    # the same settings still resume
    rc, text, _ = run(tokenize(manifest, debug_bundle, out), capsys)
    assert rc == 0 and "5 written" in text and "2 already done" in text
    assert len(out.read_text().splitlines()) == 5


def test_tokenize_disk_full_is_one_line_and_resumes_exactly(
    debug_bundle, manifest, capsys, tmp_path, monkeypatch
):
    from anygpt.train import tokenize_media

    whole = tmp_path / "whole.jsonl"
    assert run(tokenize(manifest, debug_bundle, whole, "--batch-size", "2"), capsys)[0] == 0

    real = tokenize_media._write_json_atomic
    calls = []

    def full_after_one_batch(path, obj):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj)

    monkeypatch.setattr(tokenize_media, "_write_json_atomic", full_after_one_batch)
    out = tmp_path / "o.jsonl"
    rc, _, err = run(tokenize(manifest, debug_bundle, out, "--batch-size", "2"), capsys)
    assert rc == 1 and err.count("\n") == 1
    assert "No space left on device" in err and "first 2 rows" in err
    monkeypatch.setattr(tokenize_media, "_write_json_atomic", real)
    rc, _, _ = run(tokenize(manifest, debug_bundle, out, "--batch-size", "2"), capsys)
    assert rc == 0 and out.read_bytes() == whole.read_bytes()


def test_tokenize_where_every_row_fails_exits_1(debug_bundle, tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "a", "speech": "missing.wav"}\n{"text": "b", "speech": ""}\n')
    rc, out, _ = run(tokenize(path, debug_bundle, tmp_path / "o.jsonl"), capsys)
    assert rc == 1 and "0 written" in out and "2 failed" in out


# ---------------------------------------------------------------------- training resume
def _checkpoint(folder: Path, step: int, max_steps: int, damaged: str | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "max_steps": max_steps, "log_history": []})
    )
    save_file({"w": torch.zeros(64, 64)}, str(ckpt / "model.safetensors"))
    torch.save({"state": {}}, ckpt / "optimizer.pt")
    if damaged == "weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damaged == "optimizer":
        data = (ckpt / "optimizer.pt").read_bytes()
        (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif damaged == "state":
        (ckpt / "trainer_state.json").write_text('{"global_st')
    return ckpt


def _cfg(folder: Path, max_steps: int = 8, resume: str = "auto"):
    return SimpleNamespace(output_dir=str(folder), max_steps=max_steps, resume=resume)


@pytest.mark.parametrize("damaged", ["weights", "optimizer", "state"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, damaged):
    from anygpt.train.engine import resolve_resume

    good = _checkpoint(tmp_path, 4, 8)
    _checkpoint(tmp_path, 6, 8, damaged=damaged)
    assert resolve_resume(_cfg(tmp_path)) == str(good)
    assert "checkpoint-6 cannot be resumed from" in capsys.readouterr().err


def test_no_usable_checkpoint_is_one_clear_error(tmp_path):
    from anygpt.train.config import TrainError
    from anygpt.train.engine import resolve_resume

    _checkpoint(tmp_path, 2, 8, damaged="weights")
    with pytest.raises(TrainError, match="no checkpoint .* can be resumed from"):
        resolve_resume(_cfg(tmp_path))
    with pytest.raises(TrainError, match="cannot resume from"):
        resolve_resume(_cfg(tmp_path, resume=str(tmp_path / "checkpoint-2")))


def test_resume_with_another_max_steps_is_refused(tmp_path):
    from anygpt.train.config import TrainError
    from anygpt.train.engine import resolve_resume

    ckpt = _checkpoint(tmp_path, 4, 8)
    assert resolve_resume(_cfg(tmp_path, max_steps=8)) == str(ckpt)
    with pytest.raises(TrainError, match="max_steps=8.*max_steps=16"):
        resolve_resume(_cfg(tmp_path, max_steps=16))


# ---------------------------------------------------------------------- item 7: training data
@pytest.mark.parametrize(
    "segment, says",
    [
        ("<sosp><🗣️3><🗣️1024><eosp>", "code 1024, out of range"),
        ("<sosp><🗣️3><👀5><eosp>", "not a speech code"),
        ("<sosp><🗣️3>hello<eosp>", "text after its last code"),
        ("<sosp><eosp>", "is empty"),
    ],
)
def test_pretraining_rows_with_codes_out_of_range_are_skipped(debug_bundle, segment, says):
    import random

    from anygpt.bundle import Bundle
    from anygpt.train.config import DataSpec
    from anygpt.train.data import SkipExample
    from anygpt.train.pretrain_data import PretrainExamples

    bundle = Bundle(debug_bundle, device="cpu")
    build = PretrainExamples(bundle.tokenizer, bundle.layout.modalities, 4096)
    spec, rng = DataSpec("x.jsonl", name="x"), random.Random(0)
    assert len(build({"text": "hi", "speech": "<sosp><🗣️3><🗣️1023><eosp>"}, spec, rng).ids)
    with pytest.raises(SkipExample, match=says):
        build({"text": "hi", "speech": segment}, spec, rng)
