"""``anygpt init-llm``: a SentencePiece tokenizer and a random LLaMA that extend-vocab accepts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from anygpt.cli import main
from anygpt.train.config import TrainError
from anygpt.train.init_llm import InitLLMConfig, init_llm, read_corpus
from anygpt.world.vocab import COLOURS, INSTRUMENTS, MOODS, REGISTERS, RELATIONS, SHAPES, SIZES

TINY = dict(vocab_size=400, hidden=32, layers=2, heads=4, kv_heads=2, max_context=256)


def world_sentences(n: int, seed: int = 0) -> list[str]:
    """Captions, questions and requests in the nano world's words (lower case, no punctuation)."""
    rng = random.Random(seed)

    def obj() -> str:
        return f"{rng.choice(SIZES)} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"

    kinds = [
        lambda: f"a {obj()}",
        lambda: f"a {obj()} {rng.choice(RELATIONS)} a {obj()}",
        lambda: f"what colour is the {rng.choice(SHAPES)}",
        lambda: f"the {rng.choice(SHAPES)} is {rng.choice(COLOURS)}",
        lambda: f"draw a {obj()}",
        lambda: (
            f"please play a {rng.choice(('slow', 'fast'))} {rng.choice(MOODS)} "
            f"{rng.choice(INSTRUMENTS)} melody in a {rng.choice(REGISTERS)} register"
        ),
        lambda: "how many objects are there",
        lambda: f"there are {rng.choice(('one', 'two'))} objects",
    ]
    return [rng.choice(kinds)() for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "world.txt"
    path.write_text("\n".join(world_sentences(600)) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def llm(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llm") / "a"
    init_llm(InitLLMConfig(str(out), (str(corpus),), seed=3, **TINY))
    return out


def test_deterministic_under_the_seed(corpus, llm, tmp_path):
    again = init_llm(InitLLMConfig(str(tmp_path / "b"), (str(corpus),), seed=3, **TINY)).output
    other = init_llm(InitLLMConfig(str(tmp_path / "c"), (str(corpus),), seed=4, **TINY)).output
    for name in ("tokenizer.model", "model.safetensors", "config.json", "added_tokens.json"):
        assert (llm / name).read_bytes() == (again / name).read_bytes(), name
    assert (llm / "tokenizer.model").read_bytes() == (other / "tokenizer.model").read_bytes()
    assert (llm / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*partial"))  # written under a temporary name, renamed


def test_loads_with_text_tokenizer_and_transformers(llm):
    from transformers import LlamaForCausalLM

    from anygpt.text_tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(llm)
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.added == {}
    assert tok.sp.id_to_piece(3) == "<0x00>"  # byte fallback pieces follow the specials
    model = LlamaForCausalLM.from_pretrained(str(llm), local_files_only=True)
    c = model.config
    assert c.vocab_size == tok.vocab_size == 400
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (32, 2, 4)
    assert (c.num_key_value_heads, c.max_position_embeddings, c.intermediate_size) == (2, 256, 256)
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (1, 2, 0)
    assert not c.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([tok.encode("a big red circle")])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 400) and torch.isfinite(logits).all()
    # small initial weights: the untrained model is close to uniform over the vocabulary
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert abs(float(loss) - torch.log(torch.tensor(400.0)).item()) < 0.5
    record = json.loads((llm / "init_llm.json").read_text())
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["corpus_stats"]["sentences"] == 600


def test_world_sentences_round_trip(llm):
    from anygpt.text_tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(llm)
    unseen = world_sentences(200, seed=99)
    words = 0
    pieces = 0
    for s in unseen:
        ids = tok.encode(s)
        assert ids[0] == tok.bos_id and tok.unk_id not in ids
        assert tok.decode(ids) == s
        words += len(s.split())
        pieces += len(ids) - 1
    assert pieces < 1.6 * words  # the world's words are (nearly) single pieces
    # characters the corpus never had fall back to bytes and still decode exactly
    odd = "a purple ß star 🎶 at 42°"
    ids = tok.encode(odd)
    assert tok.unk_id not in ids and tok.decode(ids) == odd
    assert tok.decode(tok.encode("  two  spaces ")) == "  two  spaces "  # whitespace kept


def test_llama_sentencepiece_settings(llm):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString((llm / "tokenizer.model").read_bytes())
    t, n = m.trainer_spec, m.normalizer_spec
    assert t.model_type == pb.TrainerSpec.BPE and t.byte_fallback and t.split_digits
    assert (t.unk_id, t.bos_id, t.eos_id, t.pad_id) == (0, 1, 2, -1)
    assert n.name == "identity" and n.add_dummy_prefix and not n.remove_extra_whitespaces
    assert not t.input  # trained from memory: the file does not depend on where the corpus was


def test_extend_vocab_accepts_it(llm, tmp_path):
    from anygpt.bundle import Bundle
    from anygpt.debug_bundle import write_debug_bundle
    from anygpt.train.vocab import ExtendVocabConfig, extend_vocab

    tokenizers = write_debug_bundle(tmp_path / "dbg", modalities=("speech",), soundstorm=False)
    out, report = extend_vocab(
        ExtendVocabConfig(str(llm), str(tmp_path / "b"), modalities=("speech",),
                          modality_files=str(tokenizers))
    )  # fmt: skip
    assert report.old_rows == 400 and report.methods["lm_head"] in ("mean_cov", "mean_noise")
    bundle = Bundle(out, device="cpu")
    assert bundle.tokenizer.token_to_id("[Human]") == 400  # new ids follow the SentencePiece ones
    assert bundle.llm.config.vocab_size == bundle.tokenizer.vocab_size
    # the bundle's context is the model's (it was 4096 whatever the model had)
    assert json.loads((out / "bundle.json").read_text())["max_context"] == 256


def test_jsonl_corpus_reads_text_fields(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"text": "a red circle", "image": "<soim><👀1><eoim>"},
        {"conversation": []},
        {"text": "  the star is blue "},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    from anygpt.train.init_llm import CorpusStats

    stats = CorpusStats()
    assert read_corpus([path], stats) == ["a red circle", "the star is blue"]
    assert (stats.sentences, stats.skipped) == (2, 1)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(TrainError, match=r"bad.jsonl:2: not a JSON line"):
        read_corpus([tmp_path / "bad.jsonl"])
    (tmp_path / "none.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(TrainError, match="no 'text' fields"):
        read_corpus([tmp_path / "none.jsonl"])


def test_command_line_and_errors(corpus, tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["init-llm", str(out), "--corpus", str(corpus), "--vocab-size", "2000", "--hidden",
            "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "48"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # a small corpus gives fewer pieces than asked (soft limit), and says so
    assert "parameters" in printed and "(asked 2000; the corpus supports no more)" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["intermediate_size"] == 48 and cfg["num_key_value_heads"] == 1
    assert main(argv) == 1  # exists
    assert "exists and is not empty (use --overwrite)" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    capsys.readouterr()
    bad = [
        (["--corpus", str(tmp_path / "missing.txt")], "corpus file not found"),
        (["--corpus", str(corpus), "--hidden", "30", "--heads", "4"], "not a multiple of --heads"),
        (["--corpus", str(corpus), "--heads", "8", "--kv-heads", "3"], "not a multiple of --kv-heads"),
        (["--corpus", str(corpus), "--vocab-size", "200"], "leaves no room for text pieces"),
    ]  # fmt: skip
    for extra, message in bad:
        assert main(["init-llm", str(tmp_path / "x"), *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*partial"))


@pytest.mark.slow
def test_nano_chain_on_the_command_line(corpus, tmp_path):
    """init-llm -> extend-vocab -> pretrain and sft with the nano configs -> chat, as a user runs it."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*argv):
        r = subprocess.run([sys.executable, "-m", "anygpt", *argv], capture_output=True,
                           text=True, env=env, timeout=900, cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    from anygpt.debug_bundle import write_debug_bundle

    tokenizers = write_debug_bundle(tmp_path / "dbg", modalities=("speech",), soundstorm=False)
    run("init-llm", str(tmp_path / "llm"), "--corpus", str(corpus), "--hidden", "64", "--layers",
        "2", "--heads", "4", "--kv-heads", "2")  # fmt: skip
    run("extend-vocab", str(tmp_path / "llm"), str(tmp_path / "b"), "--modalities", "speech",
        "--modality-files", str(tokenizers))  # fmt: skip
    rng = random.Random(0)
    pairs, convs = tmp_path / "pairs.jsonl", tmp_path / "conv.jsonl"
    sentences = world_sentences(60, seed=5)
    with pairs.open("w") as f, convs.open("w") as g:
        for s in sentences:
            seg = "<sosp>" + "".join(f"<🗣️{rng.randrange(1024)}>" for _ in range(30)) + "<eosp>"
            f.write(json.dumps({"speech": seg, "text": s}, ensure_ascii=False) + "\n")
            conv = [{"role": "user", "message": f"{seg} what did i say"},
                    {"role": "assistant", "message": s}]  # fmt: skip
            g.write(json.dumps({"conversation": conv}, ensure_ascii=False) + "\n")
    common = ["--max-steps", "3", "--save-steps", "2", "--eval-steps", "2", "--logging-steps", "1"]
    r = run("pretrain", "--config", str(root / "config/train/nano_pretrain.yaml"), "--model",
            str(tmp_path / "b"), "--data", str(pairs), "--output-dir", str(tmp_path / "s1"),
            *common)  # fmt: skip
    assert "step 3/3 (100%)" in r.stderr and "note:" not in r.stderr
    assert (tmp_path / "s1" / "checkpoint-2" / "bundle.json").is_file()
    r = run("sft", "--config", str(root / "config/train/nano_sft.yaml"), "--model",
            str(tmp_path / "s1" / "final"), "--data", str(convs), "--output-dir",
            str(tmp_path / "s2"), *common)  # fmt: skip
    assert "step 3/3 (100%)" in r.stderr
    r = run("chat", "--model", str(tmp_path / "s2" / "final"), "--seed", "0", "--max-new-tokens",
            "8", "--output-dir", str(tmp_path / "o"), "hello")  # fmt: skip
    assert "results: " in r.stdout
