"""``anygpt world`` and ``anygpt tokenize-chat``: deterministic splits, answers, token dialogues."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anygpt.cli import main
from anygpt.world import images, music, speech
from anygpt.world import text as wt

SPLITS = ("train", "heldout")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("worlds") / "w"
    assert main(["world", str(out), "--tiny", "--seed", "7", "--quiet"]) == 0
    return out


def test_same_seed_same_bytes_and_another_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    assert main(["world", str(again), "--tiny", "--seed", "7", "--quiet"]) == 0
    first, second = tree_hashes(world), tree_hashes(again)
    assert first == second
    assert any(k.endswith(".wav") for k in first) and any(k.endswith(".png") for k in first)
    other = tmp_path / "other"
    assert main(["world", str(other), "--tiny", "--seed", "8", "--quiet"]) == 0
    third = tree_hashes(other)
    for name in ("train/image.jsonl", "train/music.jsonl", "heldout/speech.jsonl"):
        assert third[name] != first[name]


def test_worker_processes_write_the_same_files(tmp_path):
    # enough speech and music for the process pool to be used
    args = ["--speech", "34", "--music", "33", "--images", "2", "--dialogues", "0"]
    args += ["--videos", "0", "--background", "40"]
    args += ["--heldout", "0", "--seed", "1", "--quiet"]
    assert main(["world", str(tmp_path / "a"), *args, "--workers", "2"]) == 0
    assert main(["world", str(tmp_path / "b"), *args, "--workers", "1"]) == 0
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")


def test_layout_counts_and_world_json(world):
    meta = json.loads((world / "world.json").read_text())
    assert meta["seed"] == 7 and meta["settings"]["images"] == 6
    assert meta["vocabulary"]["sentences"]["question"] == 49
    for split in SPLITS:
        d = world / split
        rows = {m: read_jsonl(d / f"{m}.jsonl") for m in ("image", "speech", "music")}
        n = meta["counts"][split]
        assert len(rows["image"]) == n["images"] and len(rows["music"]) == n["music"]
        assert len(rows["speech"]) == n["speech"] + n["dialogue_speech"]
        assert len(read_jsonl(d / "dialogues.jsonl")) == n["dialogues"] > 0
        clip_rows = read_jsonl(d / "video_dialogues.jsonl")
        assert len(clip_rows) == 2 * n["videos"] > 0
        assert {r["turns"][0]["video"] for r in clip_rows} == {
            r["video"] for r in read_jsonl(d / "video.jsonl")
        }
        for m, folder, suffix in (
            ("image", "images", ".png"),
            ("speech", "speech", ".wav"),
            ("music", "music", ".wav"),
        ):
            assert [r[m] for r in rows[m]] == [
                f"{folder}/{i + 1:06d}{suffix}" for i in range(len(rows[m]))
            ]
            assert all((d / r[m]).is_file() and r["text"] for r in rows[m])
        assert sorted(p.name for p in (d / "speech").iterdir()) == sorted(
            Path(r["speech"]).name for r in rows["speech"]
        )
    assert not list(world.parent.glob(".w.*"))  # no partial or old folder left


def test_heldout_speech_uses_heldout_voices_only(world):
    for split, voices, rates in (
        ("train", speech.VOICES_TRAIN, speech.RATES_TRAIN),
        ("heldout", speech.VOICES_HELDOUT, speech.RATES_HELDOUT),
    ):
        rows = read_jsonl(world / split / "speech.jsonl")
        assert rows
        assert {r["voice"] for r in rows} <= set(voices)
        assert {r["rate"] for r in rows} <= set(rates)
    assert not set(speech.VOICES_TRAIN) & set(speech.VOICES_HELDOUT)
    wav, rate = sf.read(world / "heldout" / "speech" / "000001.wav", dtype="float32")
    assert rate == 16000 and wav.ndim == 1 and np.abs(wav).max() > 0.05


def test_media_match_their_manifests(world):
    d = world / "train"
    for r in read_jsonl(d / "image.jsonl"):
        s = images.Scene.from_dict(r["scene"])
        assert r["text"] == images.caption(s)
        png = np.asarray(Image.open(d / r["image"]))
        assert png.shape == (64, 64, 3)
        # the rounded scene metadata draws (almost) the same picture
        diff = np.abs(png.astype(int) - np.asarray(images.render(s)).astype(int))
        assert diff.mean() < 2.0
    for r in read_jsonl(d / "music.jsonl"):
        m = music.Melody.from_dict(r["melody"])
        assert r["text"] == music.caption(m)
        wav, rate = sf.read(d / r["music"], dtype="float32")
        assert rate == 16000 and wav.shape == (48000,)
        assert np.abs(wav - music.render(m)).max() < 1e-3  # PCM16 rounding only


def test_dialogue_answers_match_scenes(world, tmp_path):
    # a bigger dialogue set than --tiny gives, to see every kind
    out = tmp_path / "w"
    args = ["--images", "20", "--music", "4", "--speech", "0", "--dialogues", "120"]
    args += ["--videos", "4", "--background", "4"]
    assert main(["world", str(out), *args, "--heldout", "0", "--quiet"]) == 0
    d = out / "train"
    scenes = {r["image"]: images.Scene.from_dict(r["scene"]) for r in read_jsonl(d / "image.jsonl")}
    captions = {r["music"]: r["text"] for r in read_jsonl(d / "music.jsonl")}
    spoken = {r["speech"]: r for r in read_jsonl(d / "speech.jsonl")}
    rows = read_jsonl(d / "dialogues.jsonl")
    assert {r["kind"] for r in rows} == set(wt_kinds())
    checked = 0
    for row in rows:
        conv = row["conversation"]
        assistants = [t["message"] for t in conv if t["role"] == "assistant"]
        assert [t["role"] for t in conv] == ["user", "assistant"] * (len(conv) // 2)
        assert len(assistants) == len(row["turns"])
        for msg in (t["message"] for t in conv):
            for modality, path in placeholders(msg):
                folders = {"image": ("images/",), "speech": ("speech/", "background/")}
                folders |= {"music": ("music/",), "video": ("videos/",)}
                assert (d / path).is_file() and path.startswith(folders[modality])
        for reply, turn in zip(assistants, row["turns"]):
            if "question_kind" in turn:
                scene = scenes[turn["image"]]
                assert wt.answer(scene, turn["question"]) == turn["answer"]
                checked += 1
            if turn["kind"] in ("image_qa",):
                assert reply == turn["answer"]
            elif turn["kind"] in ("spoken_image_qa", "spoken_qa"):
                a = turn["answer_speech"]
                assert reply == (
                    f"<-Ins-> {turn['question']}\n <-Res-> {turn['answer']} {{speech:{a}}} "
                )
                assert spoken[a]["text"] == turn["answer"]
                assert spoken[turn["question_speech"]]["text"] == turn["question"]
                assert spoken[a]["kind"] == "dialogue_answer"
            elif turn["kind"] == "draw":
                assert reply == f"{{image:{turn['image']}}}"
                caption = images.caption(scenes[turn["image"]])
                assert turn["request"] in {wt.draw_request(caption, p) for p in wt.DRAW_PREFIXES}
            elif turn["kind"] == "music_request":
                assert reply == f"{{music:{turn['music']}}}"
                assert turn["request"].endswith(captions[turn["music"]])
            elif turn["kind"] == "music_caption":
                assert reply == captions[turn["music"]]
            elif turn["kind"] == "image_caption":
                assert reply == images.caption(scenes[turn["image"]])
    assert checked > 50
    spoken_user = next(r for r in rows if r["kind"] == "spoken_image_qa")["conversation"][0]
    assert spoken_user["message"].startswith("{image:images/")
    assert spoken_user["message"].endswith(
        "}  Please recognize the voice command and give reply and voice"
    )


def wt_kinds():
    from anygpt.world.dialogues import KIND_WEIGHTS

    return KIND_WEIGHTS


def placeholders(text):
    from anygpt.train.tokenize_chat import placeholders as found

    return found(text)


def test_refuses_a_non_empty_folder_and_overwrites_on_request(world, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    small = ["--quiet", "--images", "1", "--speech", "1", "--music", "1", "--heldout", "0"]
    small += ["--dialogues", "1", "--videos", "1", "--background", "1"]
    assert main(["world", str(out), *small]) != 0
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["world", str(out), *small, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "world.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["world", str(empty), *small]) == 0


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch, capsys):
    def broken(text, voice, rate):
        raise speech.SpeechSynthesisError("espeak-ng failed for voice 'x': test")

    monkeypatch.setattr(speech, "speak", broken)
    out = tmp_path / "w"
    assert main(["world", str(out), "--tiny", "--quiet", "--workers", "1"]) != 0
    assert "espeak-ng failed" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- token form
def test_manifests_load_with_tokenize(world, debug_bundle, tmp_path):
    from anygpt.train.tokenize_media import TokenizeConfig, tokenize_manifest

    for modality in ("image", "speech", "music"):
        out = tmp_path / f"{modality}.jsonl"
        cfg = TokenizeConfig(
            manifest=str(world / "heldout" / f"{modality}.jsonl"),
            model=str(debug_bundle),
            output=str(out),
            device="cpu",
            limit=2,
        )
        summary = tokenize_manifest(cfg)
        assert (summary.written, summary.failed) == (2, 0), modality
        rows = read_jsonl(out)
        start = {"image": "<soim>", "speech": "<sosp>", "music": "<somu>"}[modality]
        assert all(r[modality].startswith(start) and r["text"] for r in rows)


def test_tokenize_chat_rows_train_with_sft(world, debug_bundle, tmp_path, capsys):
    from anygpt.bundle import Bundle
    from anygpt.prompts import MMGPT_TEMPLATE
    from anygpt.train.config import DataSpec
    from anygpt.train.sft_data import SFTExamples

    src = read_jsonl(world / "train" / "dialogues.jsonl")
    # one row of each media kind, and one whose file is gone
    pick = []
    for want in ("{image:", "{speech:", "{music:"):
        pick.append(next(r for r in src if want in json.dumps(r, ensure_ascii=False)))
    broken = json.loads(json.dumps(pick[0]))
    broken["id"] = "broken"
    broken["conversation"][0]["message"] = "{image:images/999999.png} what colour is the circle"
    dialogues = tmp_path / "picked.jsonl"
    with dialogues.open("w") as f:
        for r in [*pick, broken]:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    out = tmp_path / "chat.jsonl"
    argv = ["tokenize-chat", str(dialogues), "--model", str(debug_bundle), "-o", str(out)]
    argv += ["--media-root", str(world / "train"), "--device", "cpu"]
    assert main([*argv, "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert "row 3 (id broken): missing image file" in captured.err
    assert "3 written" in captured.out and "1 skipped" in captured.out
    assert json.loads((tmp_path / "chat.errors.jsonl").read_text())["kind"] == "missing file"
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [r["id"] for r in pick]
    bundle = Bundle(str(debug_bundle), device="cpu")
    sft = SFTExamples(bundle.tokenizer, MMGPT_TEMPLATE, 4096)
    seen = set()
    for row, orig in zip(rows, pick):
        text = json.dumps(row["conversation"], ensure_ascii=False)
        assert "{image:" not in text and "{speech:" not in text and "{music:" not in text
        ex = sft(row, DataSpec("x"), random.Random(0))
        assert ex.loss.any() and not ex.loss.all()
        segs = bundle.layout.find_segments(ex.ids.tolist())
        assert segs and all(s.end is not None for s in segs)
        seen |= {s.modality for s in segs}
        n_refs = len(placeholders(json.dumps(orig["conversation"], ensure_ascii=False)))
        assert len(segs) == n_refs
    assert seen == {"image", "speech", "music"}
    # refuses to replace its output unless told
    assert main(argv) != 0
    assert "exists" in capsys.readouterr().err
