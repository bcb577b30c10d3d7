"""Typed training configs: defaults < config file (``--config``, YAML or JSON) < command line.

Every run saves its resolved config as ``train_config.json`` beside its outputs, so a run can be
repeated exactly (``--config OUT/train_config.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TrainError(ValueError):
    """A training or data-preparation problem, reported as one line."""


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class DataSpec:
    """One dataset file (JSON Lines).

    Attributes:
        path: the ``.jsonl`` file.
        name: dataset name (default: the file name without extension); AnyGPT's image rule looks
            for ``caption`` in it.
        group: mixture group (default: ``name``).  Datasets of one group are pooled and sampled
            uniformly, as AnyGPT pooled its three speech datasets; ``mixture`` weights groups.
        x2t_prob: stage-1 pairs (and their replay in stage 2): probability of the modality -> text direction (default: AnyGPT's
            rule, see :func:`anygpt.train.pretrain_data.default_x2t_prob`).
    """

    path: str
    name: str = ""
    group: str = ""
    x2t_prob: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            self.name = Path(self.path).name.split(".")[0]
        if not self.group:
            self.group = self.name
        if self.x2t_prob is not None and not 0.0 <= float(self.x2t_prob) <= 1.0:
            raise TrainError(f"x2t_prob of dataset '{self.name}' must lie in [0, 1]")

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        """``PATH[,name=N][,group=G][,x2t=P]`` -> a spec."""
        path, *opts = [p.strip() for p in text.split(",")]
        if not path:
            raise TrainError(f"dataset spec '{text}' has no path")
        kw: dict[str, Any] = {}
        for opt in opts:
            key, sep, value = opt.partition("=")
            key = {"x2t": "x2t_prob"}.get(key.strip(), key.strip())
            if not sep or key not in ("name", "group", "x2t_prob"):
                raise TrainError(
                    f"bad option '{opt}' in dataset spec '{text}' (use name=, group=, x2t=)"
                )
            kw[key] = float(value) if key == "x2t_prob" else value.strip()
        return cls(path, **kw)

    @classmethod
    def coerce(cls, value: Any) -> DataSpec:
        if isinstance(value, DataSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise TrainError(f"unknown dataset keys {sorted(unknown)}")
            return cls(**value)
        raise TrainError(f"a dataset must be a path string or a mapping, got {value!r}")


@dataclass
class TrainConfig:
    """Settings shared by both stages (AnyGPT's stage-1 values as defaults)."""

    # ---- model and data
    model: str = ""  # input bundle (or a Hugging Face LLaMA folder with AnyGPT's vocabulary)
    output_dir: str = "runs/train"
    datasets: list[DataSpec] = field(default_factory=list)
    mixture: dict[str, float] = field(default_factory=dict)  # group -> weight; {}: each row once
    num_examples: int | None = None  # draws by weight (default: number of training rows)
    val_set_size: int = 5  # held out per dataset (at most half of it)
    val_seed: int = 42
    pack: bool = True
    packing: str = "first_fit"  # "first_fit" (fills gaps, low padding) or "greedy" (AnyGPT)
    pack_window: int = 64  # open blocks first-fit packing may fill
    streaming: bool = False  # build and pack training rows while training (no cached dataset)
    pad_to_multiple_of: int | None = 8
    preprocessing_num_workers: int = 1
    cache_dir: str | None = None  # default OUTPUT_DIR/data_cache
    # ---- optimisation (Hugging Face Trainer)
    seed: int = 42
    max_steps: int = 4096
    learning_rate: float = 3e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999  # 0.95 is steadier for a small model trained from scratch
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    precision: str = "bf16"  # bf16 | fp16 | fp32; half precision needs a GPU (else fp32, noted)
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    # ---- what is trained
    freeze: str = "none"  # "none" or "new_embeddings": only embedding/head rows >= new_token_start
    new_token_start: int | None = None  # default: the SentencePiece vocabulary size
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    lora_train_embeddings: bool = True  # train embed_tokens and lm_head fully beside LoRA
    # ---- checkpoints, evaluation, logging, distribution
    save_steps: int = 500
    eval_steps: int = 500
    save_total_limit: int = 8
    logging_steps: int = 1
    resume: str = "auto"  # "auto" (latest checkpoint in output_dir), "never", or a checkpoint
    report_to: str = "none"
    run_name: str = ""
    deepspeed: str | None = None  # a DeepSpeed JSON config (config/train/ds_zero*.json)
    fsdp: str = ""  # Trainer FSDP options, e.g. "full_shard auto_wrap"
    fsdp_config: str | None = None
    ddp_timeout: int = 7200
    dataloader_num_workers: int = 0
    num_threads: int | None = None  # torch CPU threads per process (None: torch's default)
    final_modalities: str = "reference"  # final bundle: "reference" or "copy" modality files

    @property
    def max_length(self) -> int:
        raise NotImplementedError

    def validate(self) -> None:
        """Raise :class:`TrainError` for settings that cannot work together."""
        if not self.model:
            raise TrainError("no input model: pass --model BUNDLE")
        if not self.datasets:
            raise TrainError("no training data: pass --data FILE.jsonl (repeatable)")
        if self.packing not in ("first_fit", "greedy"):
            raise TrainError("packing must be 'first_fit' or 'greedy'")
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise TrainError("precision must be bf16, fp16 or fp32")
        if self.freeze not in ("none", "new_embeddings"):
            raise TrainError("freeze must be 'none' or 'new_embeddings'")
        if self.freeze != "none" and self.lora:
            raise TrainError("choose LoRA or freeze=new_embeddings, not both")
        if self.final_modalities not in ("reference", "copy"):
            raise TrainError("final_modalities must be 'reference' or 'copy'")
        if self.num_threads is not None and self.num_threads < 1:
            raise TrainError("num_threads must be at least 1 (or none for torch's default)")
        if self.max_length < 8:
            raise TrainError("the maximum sequence length must be at least 8 tokens")
        for group, w in self.mixture.items():
            if w < 0:
                raise TrainError(f"mixture weight of '{group}' is negative")

    def to_dict(self) -> dict:
        return {"stage": self.stage, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        """Write the config as JSON (temporary name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path)

    stage: typing.ClassVar[str] = ""


@dataclass
class PretrainConfig(TrainConfig):
    """Stage 1: modality-text pairs as x2t / t2x prompts, packed into blocks."""

    output_dir: str = "runs/stage1_pretrain"
    block_size: int = 4500
    train_on_prompt: bool = True  # AnyGPT: labels = inputs; False: loss on the answer only

    stage: typing.ClassVar[str] = "pretrain"

    @property
    def max_length(self) -> int:
        return self.block_size


@dataclass
class SFTConfig(TrainConfig):
    """Stage 2: multi-turn conversations, loss on the assistant turns only."""

    output_dir: str = "runs/stage2_sft"
    model_max_length: int = 4096
    template: str = "mmgpt"  # "mmgpt" (what AnyGPT's chat command uses) or "anygpt"
    pack: bool = False  # AnyGPT: concatenating False
    val_set_size: int = 10
    max_steps: int = 5000
    learning_rate: float = 2e-5
    save_total_limit: int = 10

    stage: typing.ClassVar[str] = "sft"

    @property
    def max_length(self) -> int:
        return self.model_max_length

    def validate(self) -> None:
        super().validate()
        if self.template.lower() not in ("mmgpt", "anygpt"):
            raise TrainError("template must be 'mmgpt' or 'anygpt'")


# ---------------------------------------------------------------------- loading and merging
def _read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise TrainError(f"config file {path} must hold a mapping")
    data.pop("stage", None)
    return data


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a config-file or command-line value to the field's type."""
    if name == "datasets":
        return [DataSpec.coerce(v) for v in (value or [])]
    if name == "mixture":
        return parse_mixture(value)
    if name == "lora_target_modules" and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def parse_mixture(value: Any) -> dict[str, float]:
    """``"speech=0.3,music=0.28"``, a mapping, or empty/``none`` (-> ``{}``) -> ``{group: weight}``."""
    if value in (None, "", "none"):
        return {}
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    out = {}
    for part in str(value).split(","):
        key, sep, w = part.partition("=")
        if not sep:
            raise TrainError(f"bad mixture entry '{part}' (use GROUP=WEIGHT)")
        try:
            out[key.strip()] = float(w)
        except ValueError:
            raise TrainError(f"bad mixture weight in '{part}'") from None
    return out


def build_config(cls: type[TrainConfig], file: str | None, overrides: dict[str, Any]):
    """Dataclass defaults, then the config file, then explicit overrides."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if file:
        data = _read_file(file)
        unknown = sorted(set(data) - names)
        if unknown:
            raise TrainError(f"unknown keys in {file}: {', '.join(unknown)}")
        values.update(data)
    values.update(overrides)
    values = {k: _coerce(cls, k, v) for k, v in values.items()}
    cfg = cls(**values)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------- command-line options
HELP = {
    "model": "input bundle (or an AnyGPT LLM folder)",
    "output_dir": "checkpoints, data cache and OUTPUT_DIR/final (the trained bundle)",
    "num_examples": "training examples drawn by mixture weight (None: every row once, shuffled)",
    "val_set_size": "validation rows held out per dataset (seed val_seed; at most half)",
    "pack": "pack several examples per row (they never attend to each other)",
    "packing": "first_fit (low padding) or greedy (AnyGPT's order-keeping rule)",
    "pad_to_multiple_of": "round row lengths up to this ('none': no rounding)",
    "streaming": "build and pack training rows as training reads them, in build order "
    "(nothing cached; memory holds the draw order and the open blocks only)",
    "preprocessing_num_workers": "processes that tokenize the data",
    "cache_dir": "where built datasets are kept (default: OUTPUT_DIR/data_cache)",
    "precision": "bf16, fp16 or fp32 (half precision needs a GPU; else fp32 with a note)",
    "attn_implementation": "sdpa, eager or flash_attention_2",
    "freeze": "'new_embeddings': train only embedding/LM-head rows >= new_token_start",
    "new_token_start": "first trainable row with --freeze new_embeddings (default: SentencePiece size)",
    "lora_train_embeddings": "with --lora, also train embed_tokens and lm_head fully",
    "resume": "'auto' (latest checkpoint in output_dir), 'never', or a checkpoint folder",
    "deepspeed": "DeepSpeed JSON (config/train/ds_zero2.json, ds_zero3.json)",
    "fsdp": "Trainer FSDP options, e.g. 'full_shard auto_wrap' (or use an accelerate config)",
    "final_modalities": "final bundle: 'reference' modality files by path, or 'copy' them",
    "num_threads": "torch CPU threads per process ('none': torch's default, all cores)",
    "adam_beta2": "AdamW beta2 (0.95 steadies a small model trained from scratch)",
    "block_size": "tokens per packed row; longer examples are dropped (counted)",
    "train_on_prompt": "loss on every token (AnyGPT) or, with --no-train-on-prompt, the answer only",
    "model_max_length": "longer conversations lose their latest turns (counted)",
    "template": "chat template: mmgpt (AnyGPT's chat command) or anygpt (its SFT script)",
}


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; other annotations unchanged."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _optional_number(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)

    return parse


def add_config_args(parser: argparse.ArgumentParser, cls: type[TrainConfig]) -> None:
    """One option per config field (``--learning-rate``, ``--pack/--no-pack``, ...).

    Options default to "not given" so that a config file is only overridden explicitly.
    """
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        base = _base_type(tp)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = HELP.get(f.name, "")
        if not isinstance(default, list):
            help_text = f"{help_text} (default: {default!r})".strip()
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.name == "datasets":
            parser.add_argument(
                "--data",
                action="append",
                metavar="PATH[,name=N][,group=G][,x2t=P]",
                help="a JSON Lines dataset (repeatable; replaces the config file's list)",
                **kw,
            )
        elif f.name == "mixture":
            parser.add_argument(
                "--mixture",
                metavar="GROUP=W,...",
                help="sampling weight per group; 'none': every training row once, shuffled",
                **kw,
            )
        elif base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **kw)
        elif base in (int, float):
            parse = _optional_number(base) if base is not tp else base
            parser.add_argument(flag, type=parse, help=help_text, **kw)
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, metavar="A,B,...", help=f"comma-separated {default}", **kw)
        else:
            parser.add_argument(flag, type=str, help=help_text, **kw)
        if f.name == "model":
            parser.add_argument("--model-name-or-path", help=argparse.SUPPRESS, **kw)


def config_from_args(cls: type[TrainConfig], args: argparse.Namespace):
    """Build a config from parsed options (see :func:`add_config_args`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return build_config(cls, getattr(args, "config", None), overrides)
