"""Training runs on the Hugging Face ``Trainer`` (accelerate underneath): setup, train, save.

Recipe (both stages):

1. **Setup.**  Read the input bundle (or an AnyGPT LLM folder), add missing tags to its vocabulary
   (stage 2: ``<-Res->``/``<-Ins->`` when the model lacks them, rows initialised as in
   :mod:`anygpt.train.vocab`), build or read the cached datasets (main process first), load the
   LLM, apply LoRA or row freezing, and make ``TrainingArguments`` from the config.
2. **Train.**  ``Trainer.train``, resuming from the latest ``checkpoint-N`` of the output folder
   by default.  A checkpoint holds weights, optimizer, scheduler, RNG states and the data position,
   so a resumed run continues exactly where it stopped; every checkpoint is also a loadable
   bundle (``bundle.json`` + tokenizer files beside the weights).
3. **Save.**  ``OUTPUT/final`` is a bundle: ``bundle.json`` from the input bundle (modality files
   referenced by absolute path, or copied), ``llm/`` the trained model and tokenizer, and the
   resolved config as ``train_config.json``.  It is written under a temporary name and renamed.

Distributed runs: ``accelerate launch --config_file config/train/...`` (FSDP, or DeepSpeed via
``--deepspeed config/train/ds_zero*.json``); see the README section "Training".
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from anygpt.train.config import PretrainConfig, SFTConfig, TrainConfig, TrainError


@dataclass
class TrainResult:
    """What a run produced: the final bundle, per-step losses (when recorded) and data stats."""

    final: Path
    losses: list[float] = field(default_factory=list)
    data_stats: dict = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)
    padding_fraction: float | None = None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- what is trained
def _zero_old_rows(grad: torch.Tensor, start: int) -> torch.Tensor:
    grad = grad.clone()
    grad[:start] = 0
    return grad


def freeze_to_new_rows(model: Any, start: int) -> list[str]:
    """Train only rows >= ``start`` of the input embeddings and LM head; freeze everything else.

    A gradient hook zeroes the rows below ``start``; the returned parameter names must also be
    kept out of weight decay (decay would move the frozen rows).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    weights = {
        id(m.weight): m.weight
        for m in (model.get_input_embeddings(), model.get_output_embeddings())
        if m is not None
    }
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in weights:
            names.append(name)
    for p in weights.values():
        p.requires_grad_(True)
        p.register_hook(partial(_zero_old_rows, start=start))
    return names


def apply_lora(model: Any, cfg: TrainConfig) -> Any:
    """Wrap ``model`` with LoRA adapters (peft); embeddings and head train fully if asked."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        modules_to_save=["embed_tokens", "lm_head"] if cfg.lora_train_embeddings else None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing and not cfg.lora_train_embeddings:
        model.enable_input_require_grads()  # checkpointed blocks need an input that wants grads
    return model


# ---------------------------------------------------------------------- Trainer pieces
def _trainer_class():
    from transformers import Trainer

    class AnyGPTTrainer(Trainer):
        """``Trainer`` with parameters kept out of weight decay and optional loss recording."""

        def __init__(
            self,
            *args,
            no_decay: tuple[str, ...] = (),
            record_losses: bool = False,
            throughput=None,
            **kw,
        ):
            super().__init__(*args, **kw)
            self._no_decay = set(no_decay)
            self.record_losses = record_losses
            self.loss_history: list[float] = []
            self.throughput = throughput  # progress.Throughput: real tokens per step

        def get_decay_parameter_names(self, model) -> list[str]:
            names = super().get_decay_parameter_names(model)
            return [n for n in names if n not in self._no_decay]

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.throughput is not None:
                self.throughput.count(inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            if self.record_losses:
                self.loss_history.append(float(loss))
            return loss

        def log(self, logs, start_time=None):
            if self.throughput is not None and "loss" in logs:
                rate = self.throughput.take()
                if rate is not None:
                    logs["tokens_per_second"] = round(rate, 1)
            super().log(logs, start_time)

    return AnyGPTTrainer


def _bundle_callback(bundle, tokenizer, chat_template: str | None):
    from transformers import TrainerCallback

    class CheckpointBundle(TrainerCallback):
        """Make each full-weights checkpoint a loadable bundle (``llm`` is the folder itself)."""

        def on_save(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            full = (ckpt / "model.safetensors").is_file() or (
                ckpt / "model.safetensors.index.json"
            ).is_file()
            if full:
                _enable_cache_in_config(ckpt)
                tokenizer.save(ckpt)
                derived_bundle_config(bundle, ".", ckpt, False, chat_template).save(ckpt)

    return CheckpointBundle()


def training_arguments(cfg: TrainConfig, has_eval: bool) -> Any:
    """``TrainingArguments`` from a config (AnyGPT's hyper-parameters are the config defaults)."""
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    bf16, fp16 = half_precision(cfg)
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise TrainError("warmup_ratio must lie in [0, 1)")
    report_to = [r for r in cfg.report_to.split(",") if r and r != "none"] or "none"
    return TrainingArguments(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a value below 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        bf16=bf16,
        fp16=fp16,
        **_checkpointing_args(cfg.gradient_checkpointing),
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps,
        logging_steps=cfg.logging_steps,
        disable_tqdm=True,  # progress.ProgressLog prints one line per logging step instead
        report_to=report_to,
        run_name=cfg.run_name or None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        deepspeed=cfg.deepspeed,
        fsdp=cfg.fsdp or None,
        fsdp_config=cfg.fsdp_config,
        ddp_timeout=cfg.ddp_timeout,
        # without it, processes launched on a machine without a GPU each train alone
        use_cpu=not cuda and launched_processes() > 1,
        # a stream's batches differ in length: each process reads the stream and keeps its
        # share of every global batch, instead of process 0 sending them out
        accelerator_config={"dispatch_batches": False} if cfg.streaming else None,
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,  # the collator needs seq_lens
        prediction_loss_only=True,  # never keep [B, L, vocab] logits around in evaluation
    )


def launched_processes() -> int:
    """Processes of this run as the launcher (torchrun, ``accelerate launch``) announced them."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def half_precision(cfg: TrainConfig) -> tuple[bool, bool]:
    """(bf16, fp16) for this machine: half precision needs a GPU that supports it."""
    cuda = torch.cuda.is_available()
    bf16 = cfg.precision == "bf16" and cuda and torch.cuda.is_bf16_supported()
    fp16 = cfg.precision == "fp16" and cuda
    return bf16, fp16


def _checkpointing_args(enabled: bool) -> dict:
    """Activation checkpointing under the name this transformers release uses."""
    from transformers import TrainingArguments

    if not enabled:
        return {}
    fields = TrainingArguments.__dataclass_fields__
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def _enable_cache_in_config(folder: Path) -> None:
    """Saved models generate with a KV cache (training turns it off, see run_training)."""
    path = folder / "config.json"
    if path.is_file():
        data = json.loads(path.read_text())
        data["use_cache"] = True
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def resolve_resume(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: ``auto`` = latest in the output folder, ``never`` = none.

    With ``auto``, a latest checkpoint that is damaged (a crash or a full disk while saving) is
    skipped with a note and the one before is used.  A checkpoint made for another ``max_steps``
    is refused: its learning-rate schedule was built for that length and would be continued as
    it is (a larger ``max_steps`` would run the new steps at the old schedule's final rate).
    """
    if cfg.resume in ("never", "", "none"):
        return None
    if cfg.resume == "auto":
        out = Path(cfg.output_dir)
        found = sorted(
            (p for p in out.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
            key=lambda p: int(p.name[11:]),
            reverse=True,
        )
        if not found:
            return None
        problems = []
        for ckpt in found:
            problem = checkpoint_problem(ckpt)
            if problem is None:
                break
            problems.append(f"{ckpt.name}: {problem}")
            _log(f"note: {ckpt.name} cannot be resumed from ({problem}); trying the one before")
        else:
            raise TrainError(
                f"no checkpoint in {out} can be resumed from ({'; '.join(problems)}); "
                "use --resume never (or another --output-dir) to start again"
            )
    else:
        ckpt = Path(cfg.resume)
        problem = checkpoint_problem(ckpt)
        if problem is not None:
            raise TrainError(f"cannot resume from {ckpt}: {problem}")
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    planned = state.get("max_steps")
    if cfg.max_steps > 0 and planned and planned != cfg.max_steps:
        raise TrainError(
            f"{ckpt} belongs to a run of max_steps={planned}; resuming it with "
            f"max_steps={cfg.max_steps} would keep the old learning-rate schedule (after step "
            f"{planned} the rate stays at its final value). Resume with max_steps={planned}, or "
            "start a new run (--resume never, or another --output-dir), or start from its weights "
            f"(--model {ckpt})"
        )
    return str(ckpt)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (missing or damaged files), or ``None`` when it can.

    Cheap checks only: the state parses, safetensors headers cover their files, and each torch
    file's zip directory (written last) is present.
    """
    import zipfile

    state_file = ckpt / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"trainer_state.json is unreadable ({exc})"
    weights = sorted(ckpt.glob("*.safetensors")) + sorted(ckpt.glob("*.bin"))
    if not weights:
        return "no weights file"
    for f in weights:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), "pt") as handle:
                    handle.keys()
            except Exception as exc:  # noqa: BLE001 - any parse failure means damaged
                return f"{f.name} is damaged ({str(exc).splitlines()[0]})"
    for f in [*ckpt.glob("*.pt"), *ckpt.glob("*.pth"), *ckpt.glob("*.bin")]:
        if f.name == "training_args.bin":
            continue
        if not zipfile.is_zipfile(f):
            return f"{f.name} is damaged (incomplete file)"
    return None


# ---------------------------------------------------------------------- bundles out
def derived_bundle_config(
    bundle, llm_rel: str, dest: Path, copy: bool, chat_template: str | None = None
):
    """The input bundle's config for a new folder ``dest``: LLM at ``llm_rel``, modality files
    referenced by absolute path (``copy=False``) or copied into ``dest``; stage 2 records the
    chat template it trained with."""
    import copy as _copy

    from anygpt.train.vocab import place_modality_files

    cfg = _copy.deepcopy(bundle.config)
    cfg.llm = llm_rel
    if chat_template:
        cfg.chat_template = chat_template.lower()
    cfg.modalities = {
        name: place_modality_files(e, bundle.root, dest, copy) for name, e in cfg.modalities.items()
    }
    if cfg.decoding:
        cfg.decoding = str(bundle.path(cfg.decoding).resolve())
    return cfg


def _template_of(cfg: TrainConfig) -> str | None:
    return cfg.template if isinstance(cfg, SFTConfig) else None


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an older ``final`` is removed only after the move succeeds."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_final_bundle(trainer, cfg: TrainConfig, bundle, tokenizer, final: Path) -> Path:
    """Save the trained model as a bundle at ``final`` (temporary name, then rename)."""
    tmp = final.with_name(f".{final.name}.partial")
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if cfg.lora:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if main:
            merged = model.merge_and_unload()  # plain LLaMA weights: no peft needed to load them
            merged.save_pretrained(str(tmp / "llm"))
    else:
        trainer.save_model(str(tmp / "llm"))  # gathers sharded (FSDP/ZeRO-3) weights
    trainer.accelerator.wait_for_everyone()
    if main:
        (tmp / "llm" / "training_args.bin").unlink(missing_ok=True)
        _enable_cache_in_config(tmp / "llm")
        tokenizer.save(tmp / "llm")
        copy = cfg.final_modalities == "copy"
        derived_bundle_config(bundle, "llm", tmp, copy, _template_of(cfg)).save(tmp)
        cfg.save(tmp / "train_config.json")
        _replace_dir(tmp, final)
    trainer.accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------- the run
def run_notes(cfg: TrainConfig, model_config: Any, train_rows: int, processes: int = 1) -> list:
    """Settings that work but are probably not what was meant, as one-line notes."""
    notes = []
    context = getattr(model_config, "max_position_embeddings", None)
    if context and cfg.max_length > context:
        key = "block_size" if isinstance(cfg, PretrainConfig) else "model_max_length"
        notes.append(
            f"{key} {cfg.max_length} is longer than the model's context ({context} positions, "
            f"max_position_embeddings): longer rows run past the positions it was made for; "
            f"a small model wants --{key.replace('_', '-')} {context}"
        )
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes
    if train_rows:
        per_step = min(per_step, train_rows)  # a batch never holds a row twice
        epochs = cfg.max_steps * per_step / train_rows
        if epochs > 10:
            notes.append(
                f"{cfg.max_steps} steps of {per_step} rows over {train_rows} training rows are "
                f"{epochs:.0f} epochs: the model will memorise them (more data, or fewer steps)"
            )
    if (cfg.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")) and (
        not torch.cuda.is_available()
    ):
        notes.append(
            "FSDP needs GPUs: on a CPU accelerate trains every process with the whole model "
            "(DDP), so nothing is sharded"
        )
    if cfg.gradient_checkpointing and not torch.cuda.is_available():
        notes.append(
            "gradient checkpointing recomputes activations (about 30% slower); a small model on "
            "a CPU does not need it (--no-gradient-checkpointing)"
        )
    return notes


def run_training(
    cfg: TrainConfig, *, callbacks: list | None = None, record_losses: bool = False
) -> TrainResult:
    """Train one stage as configured; returns where the final bundle is."""
    from transformers import LlamaForCausalLM, set_seed
    from transformers.trainer_callback import PrinterCallback

    from anygpt.bundle import Bundle
    from anygpt.layout import ROLE_TAGS, SFT_TAGS, TokenLayout
    from anygpt.prompts import chat_template
    from anygpt.train.data import prepare_data
    from anygpt.train.packing import PackedCollator
    from anygpt.train.pretrain_data import PretrainExamples
    from anygpt.train.progress import ProgressLog, Throughput
    from anygpt.train.sft_data import SFTExamples
    from anygpt.train.vocab import extend_model, extend_tokenizer

    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    bundle = Bundle(cfg.model, device="cpu")
    base_tok = bundle.tokenizer
    modalities = bundle.layout.modalities
    if isinstance(cfg, PretrainConfig) and not modalities:
        raise TrainError(f"{cfg.model} has no modality tokens; run 'anygpt extend-vocab' first")
    # stage 2 adds <-Res->/<-Ins-> when missing (as AnyGPT's SFT script did); both need the tags
    required = list(ROLE_TAGS) + (list(SFT_TAGS) if isinstance(cfg, SFTConfig) else [])
    tokenizer, added = extend_tokenizer(base_tok, required)
    layout = TokenLayout(modalities.values(), tokenizer)

    if cfg.precision != "fp32" and not any(half_precision(cfg)):
        _log(f"note: {cfg.precision} needs a GPU that supports it; training in fp32 here")
    has_eval_guess = cfg.val_set_size > 0
    args = training_arguments(cfg, has_eval_guess)
    out = Path(cfg.output_dir)
    if args.process_index == 0:
        cfg.save(out / "train_config.json")

    if isinstance(cfg, SFTConfig):
        # stage-1 rows among the SFT data are replayed with answer-only loss
        replay = PretrainExamples(tokenizer, layout.modalities, cfg.max_length, False)
        fn = SFTExamples(tokenizer, chat_template(cfg.template), cfg.max_length, replay)
        extra = {"template": cfg.template, "replay": "stage-1 pairs, answer-only loss"}
    else:
        fn = PretrainExamples(tokenizer, layout.modalities, cfg.max_length, cfg.train_on_prompt)
        extra = {"train_on_prompt": cfg.train_on_prompt}
    with args.main_process_first(desc="building the training data", local=False):
        if cfg.streaming:
            from anygpt.train.streaming import prepare_streaming

            data = prepare_streaming(cfg, tokenizer, fn, log=_log)
        else:
            data = prepare_data(cfg, tokenizer, fn, extra_key=extra, log=_log)
    if data.validation is None and has_eval_guess:
        args = training_arguments(cfg, has_eval=False)

    set_seed(cfg.seed)
    model = LlamaForCausalLM.from_pretrained(
        str(bundle.llm_dir),
        dtype=torch.float32,  # fp32 master weights; bf16/fp16 run under autocast
        attn_implementation=cfg.attn_implementation,
        local_files_only=True,
    )
    if added:
        rep = extend_model(model, base_tok.vocab_size, tokenizer.vocab_size, seed=cfg.seed)
        _log(f"added {len(added)} tokens ({', '.join(added)}); new rows: {rep.methods}")
    if model.get_input_embeddings().weight.shape[0] < tokenizer.vocab_size:
        raise TrainError("the LLM has fewer embedding rows than its tokenizer has tokens")
    model.config.use_cache = False  # a cache would also disable the packed-sequence masks
    train_rows = 0 if cfg.streaming else len(data.train)  # a stream's length is not known
    for note in run_notes(cfg, model.config, train_rows, args.world_size):
        _log(f"note: {note}")

    no_decay: tuple[str, ...] = ()
    if cfg.freeze == "new_embeddings":
        sharded = (
            cfg.deepspeed
            or cfg.fsdp
            or any(
                os.environ.get(v, "").lower() in ("1", "true")
                for v in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
            )
        )
        if sharded:
            raise TrainError("freeze=new_embeddings works on one device or DDP, not FSDP/DeepSpeed")
        start = cfg.new_token_start if cfg.new_token_start is not None else base_tok.base_size
        no_decay = tuple(freeze_to_new_rows(model, start))
        _log(f"training only embedding and LM-head rows >= {start}")
    elif cfg.lora:
        model = apply_lora(model, cfg)

    collator = PackedCollator(tokenizer.pad_id, cfg.pad_to_multiple_of)
    throughput = Throughput(tokenizer.pad_id)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=collator,
        callbacks=[
            _bundle_callback(bundle, tokenizer, _template_of(cfg)),
            ProgressLog(throughput),
            *(callbacks or []),
        ],
        no_decay=no_decay,
        record_losses=record_losses,
        throughput=throughput,
    )
    trainer.remove_callback(PrinterCallback)  # raw dicts; ProgressLog prints readable lines
    resume = resolve_resume(cfg)
    if resume:
        _log(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    final = write_final_bundle(trainer, cfg, bundle, tokenizer, out / "final")
    stats_path = out / "data_stats.json"
    if trainer.is_world_process_zero():
        tmp = stats_path.with_name(stats_path.name + ".tmp")
        tmp.write_text(json.dumps(data.stats, indent=2) + "\n")
        tmp.replace(stats_path)
    return TrainResult(
        final,
        trainer.loss_history,
        data.stats,
        list(trainer.state.log_history),
        collator.padding_fraction if cfg.dataloader_num_workers == 0 else None,
    )
