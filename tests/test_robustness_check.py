"""``anygpt check --model M``: every file a model needs, in place or not, and where it comes from."""

from __future__ import annotations

import json
import shutil

import pytest

from anygpt.cli import main


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_complete_bundle_is_all_in_place(debug_bundle, capsys):
    rc, out, _ = run(["check", "--model", debug_bundle, "--json"], capsys)
    report = json.loads(out)
    assert rc == 0 and all(f["status"] == "ok" for f in report["files"])
    parts = {f["part"] for f in report["files"]}
    assert parts == {"llm", "speech", "music", "audio", "image"}


def test_missing_damaged_and_misfit_files_are_named(debug_bundle, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(debug_bundle, broken)
    (broken / "speechtokenizer" / "ckpt.dev").unlink()
    seed = broken / "seed" / "model.safetensors"
    seed.write_bytes(seed.read_bytes()[:500])
    import torch
    from safetensors.torch import load_file, save_file

    storm = broken / "soundstorm" / "soundstorm.safetensors"
    state = load_file(str(storm))
    state[sorted(state)[3]] = torch.zeros(3, 3)
    save_file(state, str(storm))

    rc, out, _ = run(["check", "--model", broken], capsys)
    assert rc == 1
    assert "[MISSING] checkpoint:" in out and "--speech-tokenizer-path" in out
    assert "fnlp/AnyGPT-speech-modules" in out and "models/speechtokenizer/ckpt.dev" in out
    assert "[DAMAGED] model:" in out
    assert "size mismatch" not in out  # shapes are only seen when loading
    shutil.copy(debug_bundle / "speechtokenizer" / "ckpt.dev", broken / "speechtokenizer")
    rc, out, _ = run(["check", "--model", broken, "--load"], capsys)
    assert rc == 1 and "[UNUSABLE] loading" in out and "size mismatch" in out


def test_paths_resolve_against_the_bundle_not_the_working_directory(
    debug_bundle, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(["check", "--model", debug_bundle], capsys)
    assert rc == 0 and str(debug_bundle) in out


def test_every_released_file_is_listed_for_an_anygpt_folder(debug_bundle, tmp_path, capsys):
    """An AnyGPT LLM folder alone: all eight modality files are missing, each with its flag."""
    rc, out, _ = run(["check", "--model", debug_bundle / "llm", "--json"], capsys)
    files = [f for f in json.loads(out)["files"] if f["part"] != "llm"]
    assert rc == 1 and len(files) == 8 and all(f["status"] == "missing" for f in files)
    assert all(f["flag"] and f["released_as"] and f["expected_at"] for f in files)
    vit = next(f for f in files if f["key"] == "vit")
    assert vit["flag"] == "--eva-vit-path" and "eva_vit_g.pth" in vit["expected_at"]


def test_file_flags_point_the_check_elsewhere(debug_bundle, tmp_path, capsys):
    rc, out, _ = run(["check", "--model", debug_bundle / "llm", "--json",
                      "--eva-vit-path", tmp_path / "eva_vit_g.pth"], capsys)  # fmt: skip
    vit = next(f for f in json.loads(out)["files"] if f["key"] == "vit")
    assert vit["path"] == str(tmp_path / "eva_vit_g.pth")


@pytest.mark.parametrize("model", ["missing", "a_file"])
def test_check_of_no_model_is_one_line(tmp_path, capsys, model):
    (tmp_path / "a_file").write_text("x")
    rc, _, err = run(["check", "--model", tmp_path / model], capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1
