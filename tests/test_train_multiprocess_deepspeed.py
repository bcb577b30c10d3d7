"""DeepSpeed ZeRO-2/3: our configs as DeepSpeed itself reads them, and a ZeRO run on GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is the 'train' extra")


def _resolved(name: str, micro_batch: int = 2, accumulation: int = 4) -> dict:
    """``config/train/NAME`` with its "auto" values filled as the Trainer fills them."""
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(
        output_dir="unused",
        report_to="none",
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=1.0,
    )
    hf = HfTrainerDeepSpeedConfig(str(ROOT / "config" / "train" / name))
    hf.trainer_config_process(args)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=300,
        )
    )  # fmt: skip
    hf.trainer_config_finalize(args, model, num_training_steps=10)
    return hf.config


@pytest.mark.parametrize("name,stage", [("ds_zero2.json", 2), ("ds_zero3.json", 3)])
def test_deepspeed_accepts_our_zero_configs(name, stage):
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = _resolved(name)
    assert "auto" not in json.dumps(raw)  # every "auto" was filled
    cfg = DeepSpeedConfig(raw)  # DeepSpeed's own parsing and validation
    assert cfg.zero_optimization_stage == stage
    assert (cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps) == (2, 4)
    assert cfg.train_batch_size == 8 and cfg.gradient_clipping == 1.0
    broken = dict(raw, zero_optimization=dict(raw["zero_optimization"], stage=7))
    with pytest.raises(Exception, match="stage"):
        DeepSpeedConfig(broken)  # the check can fail


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a ZeRO run needs a GPU (none here)")
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_on_gpus(stage, debug_bundle, tmp_path):
    data = ROOT / "data" / "pretrain"
    files = sorted(data.rglob("*.jsonl"))[:1]
    assert files, "no stage-1 sample data"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "config" / "train" / f"accelerate_deepspeed_zero{stage}.yaml"),
        "--num_processes", str(torch.cuda.device_count()),
        "-m", "anygpt", "pretrain", "--model", str(debug_bundle), "--data", str(files[0]),
        "--output-dir", str(tmp_path / "run"), "--max-steps", "4", "--save-steps", "4",
        "--block-size", "512", "--val-set-size", "0", "--precision", "bf16",
        "--deepspeed", str(ROOT / "config" / "train" / f"ds_zero{stage}.json"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "bundle.json").is_file()
