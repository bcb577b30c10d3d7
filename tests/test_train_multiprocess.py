"""Training in two processes (DDP over gloo, launched by ``accelerate launch``) on the CPU.

Each check compares a 2-process run (1 row per process and step) with a 1-process run of the
same global batch (2 rows per step): the losses of every step agree within 1e-5 and the final
weights within 1e-5 (float32 sums in another order; LoRA dropout is off, its draws differ).
A 2-process checkpoint resumes in one process; row freezing, LoRA and streamed training rows
work under DDP.  Tiny model: 2 layers, hidden 32.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anygpt.train.config import DataSpec, PretrainConfig, SFTConfig
from anygpt.train.engine import run_training

LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-5  # Adam steps of lr 1e-2 turn float32 summation-order noise into ~1e-6
STEPS = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from anygpt.debug_bundle import write_debug_bundle

    root = tmp_path_factory.mktemp("mp") / "bundle"
    return write_debug_bundle(root, modalities=("speech",), soundstorm=False, seed=1, hidden=32)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("mp-data") / "pairs.jsonl"
    words = ["hello", "world", "speech", "token", "music", "model", "train", "test"]
    with path.open("w", encoding="utf-8") as f:
        for i in range(16):
            text = " ".join(rng.choice(words) for _ in range(4))
            units = "".join(f"<🗣️{rng.randrange(1024)}>" for _ in range(rng.randrange(6, 20)))
            row = {"id": i, "speech": f"<sosp>{units}<eosp>", "text": text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def conversations(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mp-sft") / "conv.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(10):
            conv = [
                {"role": "user", "message": f"what is {i} plus {i + 1}"},
                {"role": "assistant", "message": f"it is {2 * i + 1}"},
                {"role": "user", "message": "say it aloud" + " please" * (i % 3)},
                {"role": "assistant", "message": f"<sosp><🗣️{i}><🗣️{i + 7}><eosp>"},
            ]
            f.write(json.dumps({"id": i, "conversation": conv}, ensure_ascii=False) + "\n")
    return path


SETTINGS = dict(
    precision="fp32",
    warmup_ratio=0.0,
    val_set_size=0,
    max_steps=STEPS,
    save_steps=2,
    logging_steps=1,
    learning_rate=1e-3,
    num_threads=1,
)


def _flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(stage: str, out: Path, settings: dict) -> dict:
    """``accelerate launch`` 2 processes of ``anygpt STAGE``; returns the last checkpoint's state."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "anygpt", stage, *_flags({**settings, "output_dir": str(out)}),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = out / f"checkpoint-{STEPS}"
    # one RNG file per process: the run really had two
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    assert (out / "final" / "bundle.json").is_file()
    return json.loads((ckpt / "trainer_state.json").read_text())


def losses_of(log_history: list[dict]) -> list[float]:
    return [h["loss"] for h in log_history if "loss" in h and "train_loss" not in h]


def weights(bundle_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(bundle_dir / "llm" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, tol: float = WEIGHT_TOL) -> None:
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        gap = float((wa[k] - wb[k]).abs().max())
        assert gap <= tol, (k, gap)


def one_process(cls, out: Path, settings: dict):
    return run_training(cls(output_dir=str(out), **settings))


def test_pretrain_two_processes_match_one_and_resume_in_one(bundle, pairs, tmp_path):
    base = dict(
        SETTINGS, model=str(bundle), block_size=128, pack=True, pad_to_multiple_of=8
    )  # packed rows of different lengths per process
    state = launch_two("pretrain", tmp_path / "ddp", {**base, "data": str(pairs)})
    ddp_losses = losses_of(state["log_history"])
    ref = one_process(
        PretrainConfig,
        tmp_path / "one",
        {**base, "datasets": [DataSpec(str(pairs))], "per_device_train_batch_size": 2},
    )
    one_losses = losses_of(ref.log_history)
    assert len(ddp_losses) == len(one_losses) == STEPS
    assert ddp_losses == pytest.approx(one_losses, abs=LOSS_TOL, rel=0)
    assert abs(one_losses[0] - one_losses[-1]) > 100 * LOSS_TOL  # the steps differ: a real check
    assert_same_weights(tmp_path / "ddp" / "final", ref.final)

    # the 2-process checkpoint at step 2 continues in one process (2 rows per step)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "ddp" / "checkpoint-2", resumed / "checkpoint-2")
    rest = one_process(
        PretrainConfig,
        resumed,
        {**base, "datasets": [DataSpec(str(pairs))], "per_device_train_batch_size": 2},
    )
    assert losses_of(rest.log_history)[2:] == pytest.approx(one_losses[2:], abs=LOSS_TOL, rel=0)
    assert len(losses_of(rest.log_history)) == STEPS  # steps 1-2 from the checkpoint's history
    assert_same_weights(rest.final, ref.final)


def test_sft_with_lora_in_two_processes_matches_one(bundle, conversations, tmp_path):
    # no LoRA dropout: its draws differ between 1 and 2 processes
    base = dict(
        SETTINGS, model=str(bundle), model_max_length=128, lora=True, lora_r=4,
        lora_dropout=0.0, learning_rate=1e-2,
    )  # fmt: skip
    state = launch_two("sft", tmp_path / "ddp", {**base, "data": str(conversations)})
    ref = one_process(
        SFTConfig,
        tmp_path / "one",
        {**base, "datasets": [DataSpec(str(conversations))], "per_device_train_batch_size": 2},
    )
    ddp_losses, one_losses = losses_of(state["log_history"]), losses_of(ref.log_history)
    assert len(ddp_losses) == STEPS
    assert ddp_losses == pytest.approx(one_losses, abs=LOSS_TOL, rel=0)
    final = tmp_path / "ddp" / "final"
    before, after = weights(bundle), weights(final)
    assert set(after) == set(before)  # adapters merged into plain LLaMA weights
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[q], after[q])
    assert_same_weights(final, ref.final)


def test_row_freezing_on_streamed_rows_in_two_processes(bundle, pairs, tmp_path):
    from anygpt.text_tokenizer import TextTokenizer

    base = dict(
        SETTINGS,
        model=str(bundle),
        block_size=128,
        pack=False,
        learning_rate=1e-2,
        weight_decay=0.1,
        freeze="new_embeddings",
        streaming=True,
    )  # fmt: skip  (streamed rows: each process reads the stream and keeps its share)
    state = launch_two("pretrain", tmp_path / "ddp", {**base, "data": str(pairs)})
    ref = one_process(
        PretrainConfig,
        tmp_path / "one",
        {**base, "datasets": [DataSpec(str(pairs))], "per_device_train_batch_size": 2},
    )
    assert losses_of(state["log_history"]) == pytest.approx(
        losses_of(ref.log_history), abs=LOSS_TOL, rel=0
    )
    before, after = weights(bundle), weights(tmp_path / "ddp" / "final")
    start = TextTokenizer.from_dir(bundle / "llm").base_size
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(before[name][:start], after[name][:start]), name
        assert (before[name][start:] != after[name][start:]).any(dim=1).sum() > 10, name
    for name in before:
        if name not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(before[name], after[name]), name
    assert_same_weights(tmp_path / "ddp" / "final", ref.final)
