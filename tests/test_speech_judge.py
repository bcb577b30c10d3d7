"""Speech judges: PocketSphinx closed-set sentences, the speaker-embedding judge."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from anygpt.checkpoint import CheckpointError
from anygpt.eval import speech_judge as sj

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng absent")
SENTENCES = ["a big red circle", "it is a small blue star", "play a slow happy piano melody"]


@needs_espeak
def test_sentence_judge_picks_the_sentence_said():
    from anygpt.world.speech import speak

    judge = sj.SentenceJudge(SENTENCES)
    heard = [judge.recognise(speak(s, "en-us", 160), 16000) for s in SENTENCES]
    assert heard == SENTENCES
    # resampled input works the same
    import soxr

    wav = soxr.resample(speak(SENTENCES[1], "en+m3", 150), 16000, 22050)
    assert judge.recognise(wav, 22050) == SENTENCES[1]
    assert judge.recognise(np.zeros(100, np.float32), 16000) is None


def test_sentence_judge_refuses_unknown_words_and_no_input():
    with pytest.raises(ValueError, match="qzxv"):
        sj.SentenceJudge(["a qzxv circle"])
    with pytest.raises(ValueError):
        sj.SentenceJudge([])


def test_speaker_judge_missing_weights_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="train-judge speech"):
        sj.SpeakerJudge(tmp_path)


def test_speaker_judge_trains_and_scores_voices(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(16000) / 16000
    for i in range(12):
        f0 = (100.0, 240.0)[i % 2]
        buzz = np.sign(np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6))) * 0.3
        sf.write(tmp_path / f"{i}.wav", buzz + 0.01 * rng.standard_normal(len(t)), 16000)
        rows.append({"text": "x", "speech": f"{i}.wav", "voice": f"v{i % 2}"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = argparse.ArgumentParser()
    sj.add_args(p)
    args = p.parse_args(
        [
            str(tmp_path / "m.jsonl"),
            "--out",
            str(tmp_path / "j"),
            "--steps",
            "30",
            "--batch-size",
            "8",
            "--crop-s",
            "0.5",
        ]
    )
    assert sj.main(args) == 0
    judge = sj.SpeakerJudge(tmp_path / "j")
    w = [sf.read(tmp_path / f"{i}.wav", dtype="float32")[0] for i in range(4)]
    same = judge.similarity(w[0], w[2], 16000)
    other = judge.similarity(w[0], w[1], 16000)
    assert -1.0 <= other < same <= 1.0 + 1e-6
