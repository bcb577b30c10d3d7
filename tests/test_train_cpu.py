"""Training a small model on a CPU: readable progress lines with tokens/s, thread count, notes
on settings that work but are probably not meant, AdamW betas."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from anygpt.train.config import DataSpec, PretrainConfig, SFTConfig, build_config
from anygpt.train.engine import run_notes, run_training, training_arguments


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def speech_bundle(tmp_path_factory) -> Path:
    from anygpt.debug_bundle import write_debug_bundle

    root = tmp_path_factory.mktemp("cpu") / "speech-bundle"
    return write_debug_bundle(root, modalities=("speech",), soundstorm=False, seed=2)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("cpu-pairs") / "speech.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(6):
            seg = "<sosp>" + "".join(f"<🗣️{rng.randrange(1024)}>" for _ in range(10)) + "<eosp>"
            f.write(json.dumps({"speech": seg, "text": f"a red circle {i}"}) + "\n")
    return path


def test_progress_lines_tokens_per_second_and_threads(speech_bundle, pairs, tmp_path, capsys):
    cfg = PretrainConfig(
        model=str(speech_bundle), output_dir=str(tmp_path / "run"), datasets=[DataSpec(str(pairs))],
        precision="fp32", block_size=256, max_steps=3, logging_steps=1, save_steps=100,
        eval_steps=2, val_set_size=1, pack=False, warmup_ratio=0.0, num_threads=2,
    )  # fmt: skip
    result = run_training(cfg)
    assert torch.get_num_threads() == 2
    captured = capsys.readouterr()
    err = captured.err
    line = re.search(r"step 2/3 \(66%\)  loss \d+\.\d{4}  lr \S+  grad \S+  ([\d,]+) tok/s  "
                     r"0:\d\d:\d\d elapsed, 0:\d\d:\d\d left", err)  # fmt: skip
    assert line, err
    assert "step 2/3  eval_loss " in err and "done: 3 steps in 0:" in err
    assert "{'loss'" not in captured.out + err  # no raw Trainer dicts
    logged = [h for h in result.log_history if "loss" in h]
    assert len(logged) == 3 and all(h["tokens_per_second"] > 0 for h in logged)
    assert int(line.group(1).replace(",", "")) == round(logged[1]["tokens_per_second"])


def test_notes_for_settings_a_small_cpu_run_does_not_want():
    small = SimpleNamespace(max_position_embeddings=512)
    cfg = PretrainConfig(model="m", datasets=[DataSpec("x")], gradient_checkpointing=True)
    notes = run_notes(cfg, small, train_rows=4)
    assert any("block_size 4500 is longer than the model's context (512" in n for n in notes)
    assert any("--block-size 512" in n for n in notes)
    assert any("4096 steps of 1 rows over 4 training rows are 1024 epochs" in n for n in notes)
    if not torch.cuda.is_available():
        assert any("--no-gradient-checkpointing" in n for n in notes)
    batch = PretrainConfig(model="m", datasets=[DataSpec("x")], per_device_train_batch_size=8,
                           block_size=512, max_steps=100)  # fmt: skip
    assert run_notes(batch, small, train_rows=2) == [
        "100 steps of 2 rows over 2 training rows are 100 epochs: the model will memorise them "
        "(more data, or fewer steps)"
    ]
    sft = SFTConfig(model="m", datasets=[DataSpec("x")], max_steps=10)
    assert any("--model-max-length 512" in n for n in run_notes(sft, small, train_rows=100))
    fitting = PretrainConfig(model="m", datasets=[DataSpec("x")], block_size=512, max_steps=100)
    assert run_notes(fitting, small, train_rows=50) == []


def test_adam_betas_and_threads_reach_the_trainer(tmp_path):
    cfg = build_config(
        PretrainConfig, None,
        {"model": "m", "datasets": ["x"], "adam_beta2": 0.95, "num_threads": 1,
         "output_dir": str(tmp_path)},
    )  # fmt: skip
    args = training_arguments(cfg, has_eval=False)
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.95) and args.disable_tqdm
    with pytest.raises(ValueError, match="num_threads must be at least 1"):
        build_config(PretrainConfig, None, {"model": "m", "datasets": ["x"], "num_threads": 0})
