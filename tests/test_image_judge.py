"""The image judge: targets, API, a short training run, and the shipped judge's accuracy."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest
import torch

from anygpt.eval import image_judge as ij
from anygpt.world.images import caption, parse_caption, random_scene, render

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "nano-judges" / "image"


def test_targets_follow_the_canonical_order():
    t = ij.targets(parse_caption("a small blue square to the right of a big yellow star"))
    assert t["count"] == 1 and t["axis"] == 0
    assert (t["shape0"], t["shape1"]) == (ij.SHAPES.index("star"), ij.SHAPES.index("square"))
    t = ij.targets(parse_caption("a big red circle"))
    assert t["count"] == 0 and t["axis"] == -1 and t["colour1"] == -1


def test_loss_skips_missing_second_object():
    logits = torch.zeros(2, sum(n for _, n in ij._HEADS), requires_grad=True)
    tgt = ij._targets_tensor(["a big red circle", "a big red circle"])
    loss = ij.judge_loss(logits, tgt)
    loss.backward()
    heads = ij.split_logits(logits.grad)
    assert heads["colour1"].abs().sum() == 0 and heads["colour0"].abs().sum() > 0


def test_train_save_load_describe_score(tmp_path):
    p = argparse.ArgumentParser()
    ij.add_args(p)
    out = tmp_path / "judge"
    args = p.parse_args(f"--out {out} --steps 3 --batch-size 8 --log-every 1".split())
    assert ij.main(args) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "heldout" in json.loads((out / "training.json").read_text())
    judge = ij.ImageJudge.load(out)
    pics = [render(random_scene(random.Random(i))) for i in range(3)]
    descs = judge.describe(pics)
    assert len(descs) == 3 and all(1 <= len(d.objects) <= 2 for d in descs)
    r = judge.score(pics[0], "a big red circle")
    assert set(r) >= {"objects", "objects_correct", "all_correct"} and r["objects"] == 1
    with pytest.raises(ValueError):
        judge.score(pics[0], "nothing of the world")


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no shipped judge")
def test_shipped_judge_reads_fresh_world_pictures():
    judge = ij.ImageJudge.load(SHIPPED)
    rng = random.Random(424242)
    scenes = [random_scene(rng) for _ in range(200)]
    acc = ij.accuracy(judge, [render(s) for s in scenes], [caption(s) for s in scenes])
    for k in ("count", "size", "colour", "shape", "relation"):
        assert acc[k] >= 0.95, acc
    r = judge.score(render(scenes[0]), caption(scenes[0]))
    assert r["objects"] == len(scenes[0].objects)
