"""Growing a trained LLaMA deeper: same logits, a trainable result, and refusals of bad requests."""

from __future__ import annotations

import json

import pytest
import torch


def test_layer_sources_keep_order_and_mark_copies():
    from anygpt.train.grow_llm import layer_sources

    assert layer_sources(2, 4) == [(0, False), (0, True), (1, False), (1, True)]
    assert layer_sources(3, 3) == [(0, False), (1, False), (2, False)]
    # an uneven growth still keeps every original layer exactly once, in order
    sources = layer_sources(3, 5)
    assert [s for s, copy in sources if not copy] == [0, 1, 2]
    assert [s for s, _ in sources] == sorted(s for s, _ in sources)


@pytest.mark.parametrize("old,new", [(2, 1), (0, 3)])
def test_layer_sources_refuse_shrinking(old, new):
    from anygpt.train.config import TrainError
    from anygpt.train.grow_llm import layer_sources

    with pytest.raises(TrainError, match="cannot grow"):
        layer_sources(old, new)


def test_grown_bundle_computes_the_same_logits_and_trains(debug_bundle, tmp_path):
    from transformers import LlamaForCausalLM

    from anygpt.bundle import Bundle
    from anygpt.train.grow_llm import grow

    src = Bundle(debug_bundle, device="cpu")
    old_layers = json.loads((src.llm_dir / "config.json").read_text())["num_hidden_layers"]
    new_layers = 2 * old_layers + 1
    out = tmp_path / "grown"
    old_count, new_count = grow(debug_bundle, out, new_layers)
    assert new_count > old_count

    a = LlamaForCausalLM.from_pretrained(str(src.llm_dir)).eval()
    b = LlamaForCausalLM.from_pretrained(str(out / "llm")).eval()
    assert b.config.num_hidden_layers == new_layers
    ids = torch.randint(0, a.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(b(ids).logits, a(ids).logits, rtol=1e-5, atol=1e-5)

    # the new layers learn: one optimiser step moves the grown model's loss and its zeroed outputs
    b.train()
    opt = torch.optim.SGD(b.parameters(), lr=0.1)
    loss = b(ids, labels=ids).loss
    loss.backward()
    opt.step()
    assert b.model.layers[1].self_attn.o_proj.weight.abs().sum() > 0

    # the grown folder is a bundle whose modality files resolve from anywhere
    grown = Bundle(out, device="cpu")
    assert set(grown.config.modalities) == set(src.config.modalities)
    for entry in grown.config.modalities.values():
        assert all(grown.path(v).exists() for v in entry.files.values())
    assert (grown.llm_dir / "tokenizer.model").is_file()


def test_grow_refuses_an_existing_output_and_leaves_nothing_on_failure(debug_bundle, tmp_path):
    from anygpt.train.config import TrainError
    from anygpt.train.grow_llm import grow

    (tmp_path / "taken").mkdir()
    with pytest.raises(TrainError, match="exists"):
        grow(debug_bundle, tmp_path / "taken", 4)
    with pytest.raises(TrainError, match="cannot grow"):
        grow(debug_bundle, tmp_path / "shrunk", 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(TrainError, match="neither"):
        grow(tmp_path / "taken", tmp_path / "x", 4)


def test_cli_grow_llm(debug_bundle, tmp_path, capsys):
    from anygpt.cli import main

    assert main(["grow-llm", str(debug_bundle), str(tmp_path / "g"), "--layers", "4"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert main(["grow-llm", str(debug_bundle), str(tmp_path / "g"), "--layers", "4"]) != 0
    assert "exists" in capsys.readouterr().err
