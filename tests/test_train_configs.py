"""Every shipped training config parses, and the wrappers pass settings through."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from anygpt.train.config import (
    DataSpec,
    PretrainConfig,
    SFTConfig,
    TrainError,
    add_config_args,
    build_config,
    config_from_args,
)

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "config" / "train"
SHIPPED = sorted(p.name for p in TRAIN.iterdir())
# "auto" values that transformers fills in a DeepSpeed config from the training arguments
HF_FILLED = {
    "bf16.enabled",
    "fp16.enabled",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
}


def _autos(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _autos(v, key + ".")
        elif v == "auto":
            out.add(key)
    return out


def test_every_file_is_covered():
    assert SHIPPED == sorted(
        [
            "accelerate_deepspeed_zero2.yaml",
            "accelerate_deepspeed_zero3.yaml",
            "accelerate_fsdp.yaml",
            "accelerate_multinode_zero3.yaml",
            "accelerate_single_gpu.yaml",
            "ds_zero2.json",
            "ds_zero3.json",
            "nano_pretrain.yaml",
            "nano_sft.yaml",
            "stage1_pretrain.yaml",
            "stage2_sft.yaml",
        ]
    )


def test_stage_files_hold_anygpts_values():
    data = {"model": "m", "datasets": ["x.jsonl"]}
    s1 = build_config(PretrainConfig, str(TRAIN / "stage1_pretrain.yaml"), data)
    assert (s1.learning_rate, s1.lr_scheduler_type, s1.warmup_ratio, s1.weight_decay) == (
        3e-5,
        "cosine",
        0.03,
        0.0,
    )
    assert (s1.max_steps, s1.block_size, s1.precision, s1.per_device_train_batch_size) == (
        4096,
        4500,
        "bf16",
        1,
    )
    assert (s1.save_steps, s1.eval_steps, s1.save_total_limit, s1.val_set_size) == (500, 500, 8, 5)
    assert s1.per_device_eval_batch_size == 4 and s1.train_on_prompt and s1.pack
    assert s1.mixture == {
        "image-caption": 0.2,
        "image-generation": 0.22,
        "speech": 0.3,
        "music": 0.28,
    }
    s2 = build_config(SFTConfig, str(TRAIN / "stage2_sft.yaml"), data)
    assert (s2.learning_rate, s2.max_steps, s2.model_max_length, s2.val_set_size) == (
        2e-5,
        5000,
        4096,
        10,
    )
    assert (s2.warmup_ratio, s2.weight_decay, s2.save_total_limit, s2.pack) == (
        0.03,
        0.0,
        10,
        False,
    )
    assert s2.template == "mmgpt" and s2.precision == "bf16"
    # the dataclass defaults are the same values, so a run without --config matches
    assert PretrainConfig(model="m", datasets=[DataSpec("x")]).max_steps == 4096
    assert SFTConfig().learning_rate == 2e-5


def test_nano_files_suit_a_small_model_on_a_cpu():
    from types import SimpleNamespace

    from anygpt.train.engine import run_notes
    from anygpt.train.init_llm import InitLLMConfig

    data = {"model": "m", "datasets": ["x.jsonl"]}
    context = InitLLMConfig("", ()).max_context  # what 'anygpt init-llm' makes by default
    model = SimpleNamespace(max_position_embeddings=context)
    s1 = build_config(PretrainConfig, str(TRAIN / "nano_pretrain.yaml"), data)
    s2 = build_config(SFTConfig, str(TRAIN / "nano_sft.yaml"), data)
    assert s1.block_size == s2.model_max_length == context == 512
    assert (s1.learning_rate, s1.lr_scheduler_type, s1.warmup_ratio) == (1e-3, "cosine", 0.05)
    # stage 2 replays stage 1's pairs, so it may train as fast without forgetting them
    assert s2.learning_rate == s1.learning_rate and s2.lr_scheduler_type == "cosine"
    assert (s1.max_steps, s2.max_steps) == (800, 1400)
    for cfg in (s1, s2):
        assert cfg.precision == "fp32" and not cfg.gradient_checkpointing and cfg.pack
        assert cfg.adam_beta2 == 0.95 and cfg.val_set_size >= 20 and cfg.mixture == {}
        assert cfg.per_device_train_batch_size == 8
        # several checkpoints and evaluations in a run, few enough to keep
        assert cfg.save_steps == cfg.eval_steps and 5 <= cfg.max_steps // cfg.save_steps <= 10
        assert cfg.logging_steps == 10 and cfg.save_total_limit == 3
        assert run_notes(cfg, model, train_rows=10_000) == []  # nothing to warn about
    assert s2.template == "mmgpt" and s2.weight_decay == 0.0 and s1.weight_decay == 0.1
    assert (s1.output_dir, s2.output_dir) == ("runs/nano_pretrain", "runs/nano_sft")


@pytest.mark.parametrize("name", ["ds_zero2.json", "ds_zero3.json"])
def test_deepspeed_configs(name):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    raw = json.loads((TRAIN / name).read_text())
    cfg = HfDeepSpeedConfig(str(TRAIN / name))
    stage = int(name[len("ds_zero")])
    assert cfg.get_value("zero_optimization.stage") == stage and cfg.is_zero3() == (stage == 3)
    assert _autos(raw) <= HF_FILLED  # every "auto" is one the Trainer fills in
    if stage == 3:  # the final bundle needs full weights gathered on save
        assert raw["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.startswith("accelerate_")])
def test_accelerate_configs(name):
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    cfg = ClusterConfig.from_yaml_file(str(TRAIN / name))  # raises on unknown keys
    raw = yaml.safe_load((TRAIN / name).read_text())
    known = {a.dest for a in launch_command_parser()._actions}
    for key in raw.get("fsdp_config", {}):
        assert key in known, f"accelerate launch does not know {key}"
    if name == "accelerate_fsdp.yaml":
        from transformers.models.llama import modeling_llama

        assert str(cfg.distributed_type) in ("FSDP", "DistributedType.FSDP")
        layer = raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
        assert layer == "LlamaDecoderLayer" and hasattr(modeling_llama, layer)
        assert raw["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if "deepspeed" in name:
        ds = raw["deepspeed_config"]["deepspeed_config_file"]
        assert (ROOT / ds).is_file()


def test_flags_override_the_file():
    p = argparse.ArgumentParser()
    add_config_args(p, PretrainConfig)
    args = p.parse_args(
        [
            "--config", str(TRAIN / "stage1_pretrain.yaml"),
            "--model", "b",
            "--data", "a.jsonl,group=speech,x2t=0.25",
            "--data", "img.jsonl,name=caps",
            "--max-steps", "3",
            "--no-pack",
            "--mixture", "speech=1,caps=2",
            "--pad-to-multiple-of", "none",
            "--lora-target-modules", "q_proj,v_proj",
        ]
    )  # fmt: skip
    cfg = config_from_args(PretrainConfig, args)
    assert cfg.max_steps == 3 and not cfg.pack and cfg.learning_rate == 3e-5
    assert cfg.datasets == [
        DataSpec("a.jsonl", name="a", group="speech", x2t_prob=0.25),
        DataSpec("img.jsonl", name="caps", group="caps"),
    ]
    assert cfg.mixture == {"speech": 1.0, "caps": 2.0} and cfg.pad_to_multiple_of is None
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]


def test_config_round_trip_and_errors(tmp_path):
    cfg = SFTConfig(model="m", datasets=[DataSpec("c.jsonl")], template="anygpt")
    cfg.save(tmp_path / "c.json")
    again = build_config(SFTConfig, str(tmp_path / "c.json"), {})
    assert again == cfg
    (tmp_path / "bad.yaml").write_text("learning_rat: 1\n")
    with pytest.raises(TrainError, match="unknown keys.*learning_rat"):
        build_config(SFTConfig, str(tmp_path / "bad.yaml"), {"model": "m"})
    with pytest.raises(TrainError, match="no training data"):
        build_config(SFTConfig, None, {"model": "m"})
    with pytest.raises(TrainError, match="bad option"):
        DataSpec.parse("a.jsonl,weight=3")
    with pytest.raises(TrainError, match="LoRA or freeze"):
        build_config(
            SFTConfig,
            None,
            {"model": "m", "datasets": ["x"], "lora": True, "freeze": "new_embeddings"},
        )


@pytest.mark.parametrize("script", ["stage1_pretrain.sh", "stage2_sft.sh"])
def test_wrapper_scripts_pass_settings_through(script):
    env = {**os.environ, "DRY_RUN": "1", "MAX_STEPS": "4", "LR": "1e-4", "MODEL": "/m"}
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), "--save-steps", "2", "--data", "extra.jsonl"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    argv = shlex.split(r.stdout)
    stage = "pretrain" if "stage1" in script else "sft"
    assert argv[1:4] == ["-m", "anygpt", stage]
    assert argv[argv.index("--config") + 1].endswith(f"config/train/{script[:-3]}.yaml")
    for flag, value in [
        ("--max-steps", "4"),
        ("--learning-rate", "1e-4"),
        ("--model", "/m"),
        ("--save-steps", "2"),
    ]:
        assert argv[argv.index(flag) + 1] == value
    data = [argv[i + 1] for i, a in enumerate(argv) if a == "--data"]
    assert data[-1] == "extra.jsonl" and all(Path(d.split(",")[0]).is_file() for d in data[:-1])
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / script)],
        capture_output=True, text=True, check=True,
        env={**env, "ACCELERATE_CONFIG": "config/train/accelerate_fsdp.yaml"},
    )  # fmt: skip
    assert (
        "accelerate.commands.launch --config_file config/train/accelerate_fsdp.yaml -m anygpt"
        in r.stdout
    )
