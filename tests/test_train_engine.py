"""Training on the Hugging Face Trainer with tiny models on the CPU: learning, exact resume,
row freezing, LoRA, and final bundles that load."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anygpt.train.config import DataSpec, PretrainConfig, SFTConfig
from anygpt.train.engine import run_training

ROOT = Path(__file__).resolve().parent.parent


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def speech_bundle(tmp_path_factory) -> Path:
    from anygpt.debug_bundle import write_debug_bundle

    root = tmp_path_factory.mktemp("train") / "speech-bundle"
    return write_debug_bundle(root, modalities=("speech",), soundstorm=False, seed=1)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pairs") / "speech-pairs.jsonl"
    words = ["hello", "world", "speech", "token", "music", "model", "train", "test"]
    with path.open("w", encoding="utf-8") as f:
        for i in range(8):
            text = " ".join(rng.choice(words) for _ in range(4))
            seg = "<sosp>" + "".join(f"<🗣️{rng.randrange(1024)}>" for _ in range(12)) + "<eosp>"
            f.write(json.dumps({"id": i, "speech": seg, "text": text}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def conversations(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "conv.jsonl"
    sample = (ROOT / "data" / "instruction" / "anyinstruct_speech.jsonl").read_text().strip()
    lines = [sample]
    for i in range(5):
        conv = [
            {"role": "user", "message": f"what is {i} plus {i}"},
            {"role": "assistant", "message": f"it is {2 * i}"},
            {"role": "user", "message": "say it aloud"},
            {"role": "assistant", "message": f"<sosp><🗣️{i}><🗣️{i + 1}><eosp> "},
        ]
        lines.append(json.dumps({"id": i, "conversation": conv}, ensure_ascii=False))
    lines.append(json.dumps({"id": 9, "conversation": [{"role": "assistant", "message": "x"}]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def small(cls, bundle, data, out, **kw):
    """A config for a few quick CPU steps."""
    base = dict(
        model=str(bundle),
        output_dir=str(out),
        datasets=[DataSpec(str(p)) for p in data],
        precision="fp32",
        warmup_ratio=0.0,
        logging_steps=1000,
        save_steps=1000,
        eval_steps=1000,
        val_set_size=0,
        per_device_eval_batch_size=2,
    )
    if cls is PretrainConfig:
        base["block_size"] = 512
    else:
        base["model_max_length"] = 512
    base.update(kw)
    return cls(**base)


def test_a_tiny_model_overfits_a_handful_of_pairs(speech_bundle, pairs, tmp_path):
    cfg = small(
        PretrainConfig, speech_bundle, [pairs], tmp_path / "run",
        max_steps=40, learning_rate=3e-3, lr_scheduler_type="constant",
    )  # fmt: skip
    result = run_training(cfg, record_losses=True)
    losses = result.losses
    assert len(losses) == 40
    assert losses[-1] < 0.25 * losses[0], losses  # from ~7.4 (uniform) to well below
    assert result.data_stats["train"]["kept"] == 8 and result.data_stats["train_rows"] == 1


def test_resume_reproduces_the_next_steps(speech_bundle, pairs, tmp_path):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == self.step:
                control.should_training_stop = True

    kw = dict(
        max_steps=5, save_steps=2, pack=False, per_device_train_batch_size=2, learning_rate=1e-3
    )
    whole = run_training(
        small(PretrainConfig, speech_bundle, [pairs], tmp_path / "a", **kw), record_losses=True
    )
    cut = small(PretrainConfig, speech_bundle, [pairs], tmp_path / "b", **kw)
    first = run_training(cut, callbacks=[StopAt(2)], record_losses=True)
    assert (tmp_path / "b" / "checkpoint-2").is_dir() and len(first.losses) == 2
    rest = run_training(cut, record_losses=True)  # resume="auto": the latest checkpoint
    assert len(whole.losses) == 5 and len(rest.losses) == 3
    assert first.losses == pytest.approx(whole.losses[:2], abs=1e-6)
    assert rest.losses == pytest.approx(whole.losses[2:], abs=1e-6)
    assert whole.losses[2] != pytest.approx(whole.losses[3])  # different batches: a real check
    wa = _weights(tmp_path / "a" / "final")
    wb = _weights(tmp_path / "b" / "final")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(bundle / "llm" / "model.safetensors"))


def test_freeze_trains_only_the_new_rows(speech_bundle, pairs, tmp_path):
    from anygpt.text_tokenizer import TextTokenizer

    cfg = small(
        PretrainConfig, speech_bundle, [pairs], tmp_path / "f",
        max_steps=3, learning_rate=1e-2, weight_decay=0.1, freeze="new_embeddings",
    )  # fmt: skip
    result = run_training(cfg)
    before = _weights(speech_bundle)
    after = _weights(result.final)
    start = TextTokenizer.from_dir(speech_bundle / "llm").base_size
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(before[name][:start], after[name][:start]), name
        changed = (before[name][start:] != after[name][start:]).any(dim=1)
        assert changed.sum() > 10, name
    for name in before:
        if name not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(before[name], after[name]), name


def test_lora_final_bundle_holds_plain_merged_weights(speech_bundle, pairs, tmp_path):
    cfg = small(
        PretrainConfig, speech_bundle, [pairs], tmp_path / "l",
        max_steps=2, learning_rate=1e-2, lora=True, lora_r=4, gradient_checkpointing=True,
    )  # fmt: skip
    result = run_training(cfg)
    before, after = _weights(speech_bundle), _weights(result.final)
    assert set(after) == set(before)  # no adapter keys: merged into LLaMA weights
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[q], after[q])
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_sft_adds_missing_tags_and_the_bundles_load(debug_bundle, conversations, tmp_path):
    """Stage 2 from a bundle without <-Ins->/<-Res->: they are added, and the result chats."""
    from anygpt.bundle import Bundle
    from anygpt.train.vocab import ExtendVocabConfig, extend_vocab

    plain = tmp_path / "plain-llama"
    _plain_llama(plain)
    no_tags, _ = extend_vocab(
        ExtendVocabConfig(
            str(plain), str(tmp_path / "no-tags"), modalities=("speech",),
            modality_files=str(debug_bundle), sft_tags=False,
        )
    )  # fmt: skip
    cfg = small(
        SFTConfig,
        no_tags,
        [conversations],
        tmp_path / "sft",
        max_steps=2,
        save_steps=2,
        val_set_size=1,
    )
    result = run_training(cfg, record_losses=True)
    st = result.data_stats
    assert st["train"]["skipped"] == {"roles do not alternate starting with user": 1}
    assert st["validation"]["kept"] + st["train"]["kept"] == 6
    final = Bundle(result.final, device="cpu")
    assert final.tokenizer.has_token("<-Ins->") and final.tokenizer.has_token("<-Res->")
    assert final.llm.get_input_embeddings().weight.shape[0] == final.tokenizer.vocab_size
    assert final.llm.config.use_cache  # saved for generation, not with the training setting
    assert final.config.chat_template == "mmgpt"  # the template it was trained with
    ckpt = Bundle(tmp_path / "sft" / "checkpoint-2", device="cpu")  # checkpoints are bundles too
    assert ckpt.tokenizer.vocab_size == final.tokenizer.vocab_size and ckpt.llm is not None
    saved = json.loads((result.final / "train_config.json").read_text())
    assert saved["stage"] == "sft" and saved["max_steps"] == 2
    r = subprocess.run(
        [sys.executable, "-m", "anygpt", "chat", "--model", str(result.final), "--seed", "0",
         "--max-new-tokens", "4", "--output-dir", str(tmp_path / "chat"), "hello"],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def _plain_llama(path: Path) -> None:
    """A tiny LLaMA folder with only a SentencePiece tokenizer (no AnyGPT tokens)."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt.paths import tokenizers_dir

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    shutil.copy(tokenizers_dir() / "debug-spm.model", path / "tokenizer.model")
