"""``anygpt extend-vocab``: AnyGPT's token order, resized embeddings and head, new-row init."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anygpt.cli import main
from anygpt.layout import ANYGPT_MUSIC, ANYGPT_SPEECH, extended_vocabulary
from anygpt.train.vocab import ExtendVocabConfig, extend_vocab, init_new_rows

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def plain_llama(tmp_path_factory) -> Path:
    """A tiny LLaMA folder with a SentencePiece tokenizer and no AnyGPT tokens (untied head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt.paths import tokenizers_dir

    path = tmp_path_factory.mktemp("plain") / "llama"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    shutil.copy(tokenizers_dir() / "debug-spm.model", path / "tokenizer.model")
    return path


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_tokens_rows_and_bundle(plain_llama, debug_bundle, tmp_path):
    from anygpt.bundle import Bundle

    out, report = extend_vocab(
        ExtendVocabConfig(
            str(plain_llama), str(tmp_path / "b"), modalities=("music", "speech"),
            modality_files=str(debug_bundle), seed=3,
        )
    )  # fmt: skip
    added = json.loads((out / "llm" / "added_tokens.json").read_text(encoding="utf-8"))
    # AnyGPT's order: tags, SFT tags, then speech before music whatever order was asked
    assert list(added) == extended_vocabulary([ANYGPT_SPEECH, ANYGPT_MUSIC])
    assert list(added.values()) == list(range(600, 600 + len(added)))
    new_vocab = 600 + len(added)
    before, after = _weights(plain_llama), _weights(out / "llm")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert after[name].shape == (new_vocab, 32)
        assert torch.equal(after[name][:600], before[name][:600])
        old, new = before[name].double(), after[name][600:].double()
        # drawn from the old rows' mean and covariance
        spread = old.std(0)
        assert ((new.mean(0) - old.mean(0)).abs() < 0.15 * spread).all()
        ratio = new.var(0) / old.var(0)
        assert ((ratio > 0.75) & (ratio < 1.3)).all()
    assert report.methods == {"embed_tokens": "mean_cov", "lm_head": "mean_cov"}
    assert all(after[k].equal(before[k]) for k in before if "embed" not in k and "lm_head" not in k)

    bundle = Bundle(out, device="cpu")
    assert set(bundle.layout.modalities) == {"speech", "music"}
    assert bundle.llm.config.vocab_size == new_vocab
    speech = bundle.config.modalities["speech"].files["checkpoint"]
    assert Path(speech).is_absolute() and Path(speech).is_file()  # referenced, not copied
    code = main(["chat", "--model", str(out), "--seed", "0", "--max-new-tokens", "4",
                 "--output-dir", str(tmp_path / "o"), "hi there"])  # fmt: skip
    assert code == 0


def test_command_line_copy_and_existing_tokens(plain_llama, debug_bundle, tmp_path, capsys):
    out = tmp_path / "copied"
    r = subprocess.run(
        [sys.executable, "-m", "anygpt", "extend-vocab", str(plain_llama), str(out),
         "--modalities", "speech", "--modality-files", str(debug_bundle), "--copy-modalities",
         "--no-sft-tags"],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "vocabulary 600 -> 1630 tokens" in r.stdout
    cfg = json.loads((out / "bundle.json").read_text())
    assert cfg["modalities"]["speech"]["files"]["checkpoint"] == "speechtokenizer/ckpt.dev"
    assert (out / "speechtokenizer" / "ckpt.dev").is_file()
    # extending the result again adds only what is missing (<-Res->, <-Ins->), at the end
    again, report = extend_vocab(
        ExtendVocabConfig(str(out / "llm"), str(tmp_path / "again"), modalities=("speech",),
                          modality_files=str(debug_bundle))
    )  # fmt: skip
    added = json.loads((again / "llm" / "added_tokens.json").read_text(encoding="utf-8"))
    assert report.new_rows == 2 and list(added)[-2:] == ["<-Res->", "<-Ins->"]
    assert added["<-Res->"] == 1630
    assert main(["extend-vocab", str(plain_llama), str(out)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err


def test_degenerate_rows_fall_back_to_mean_and_noise():
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(40, 64)
    w[:20] = torch.randn(20, 64)  # fewer rows than dimensions: covariance is singular
    assert init_new_rows(w, 20, 40, gen) == "mean_noise"
    mean = w[:20].mean(0)
    noise = (w[20:] - mean).abs().max()
    assert 0 < noise < 0.1 * w[:20].std()
    w2 = torch.randn(300, 8)
    assert init_new_rows(w2, 200, 300, gen, cov_scale=0.0) == "mean_noise"
    assert torch.allclose(w2[200:], w2[:200].mean(0).expand(100, 8), atol=1e-6)  # scale 0: mean
