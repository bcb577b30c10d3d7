"""The music judge: its API, save/load, and that a few steps of training on world music help."""

import argparse
import random

import numpy as np
import pytest
import torch

from anygpt.eval import music_judge as J
from anygpt.world import music as M


def test_filterbank_puts_a_note_in_its_band():
    cfg = J.MusicJudgeConfig()
    net = J.MusicJudgeNet(cfg).eval()
    t = np.arange(48000) / 16000
    for midi in (48, 60, 84):
        wave = torch.tensor(0.5 * np.sin(2 * np.pi * M.midi_hz(midi) * t), dtype=torch.float32)
        spec = net.spectrogram(wave[None])[0, 0]  # [bands, frames]
        assert int(spec.mean(1).argmax()) + cfg.midi_lo == midi


def test_predict_score_save_load(tmp_path):
    torch.manual_seed(0)
    judge = J.MusicJudge(J.MusicJudgeNet(J.MusicJudgeConfig()))
    m = M.random_melody(random.Random(0))
    wave = M.render(m)
    preds = judge.predict([wave, torch.from_numpy(wave[:20000])], 16000)
    assert len(preds) == 2 and set(preds[0]) == set(M.ATTRIBUTES)
    assert all(preds[0][a] in M.VALUES[a] for a in M.ATTRIBUTES)
    res = judge.score(wave, 16000, M.caption(m))
    assert set(res) == {"correct", "total", "all_correct"} and res["total"] == 4
    assert res["all_correct"] == (res["correct"] == 4)
    # another sample rate is resampled, not misread
    import soxr

    w22 = soxr.resample(wave, 16000, 22050).astype(np.float32)
    assert judge.predict([w22], 22050)[0] == judge.predict([wave], 16000)[0]
    with pytest.raises(ValueError):
        judge.score(wave, 16000, "a slow melody")
    judge.save(tmp_path / "j", {"heldout_accuracy": {"all": 0.5}})
    again = J.MusicJudge.load(tmp_path / "j")
    p1 = judge.probabilities([wave], 16000)[0]
    p2 = again.probabilities([wave], 16000)[0]
    for a in M.ATTRIBUTES:
        assert np.allclose(p1[a], p2[a], atol=2e-2)  # weights are stored in float16
    assert (tmp_path / "j" / "model.safetensors").stat().st_size < 2_000_000


def test_augment_keeps_shape_and_changes_the_clip():
    x = torch.from_numpy(np.stack([M.render(M.random_melody(random.Random(i))) for i in range(4)]))
    y = J.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(x, y)


def test_short_training_learns_something(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    J.add_args(parser)
    args = parser.parse_args(
        ["--out", str(tmp_path / "judge"), "--steps", "30", "--batch-size", "16"]
        + ["--val-size", "16", "--save-every", "1000"]
    )
    assert J.main(args) == 0
    judge = J.MusicJudge.load(tmp_path / "judge")
    waves, caps = J.render_batch(random.Random(11), 48)
    acc = J.accuracy(judge, waves, caps)
    # register and tempo are the easiest cues; chance is 0.5 each
    assert acc["register"] > 0.7 and acc["tempo"] > 0.6, acc
