"""Memory options of a bundle: int8 weight-only LLM loading and offloaded modality models."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from anygpt.bundle import Bundle
from anygpt.memory import (
    OffloadedModality,
    QuantizeError,
    _held_models,
    quantize_llm,
    weight_bytes,
)
from anygpt.world.text import SAMPLE_REQUESTS

ROOT = Path(__file__).resolve().parent.parent
NANO = ROOT / "models" / "anygpt-nano"
shipped = pytest.mark.skipif(
    not (NANO / "bundle.json").is_file(), reason="models/anygpt-nano is not in this tree"
)
PICTURE = NANO / "demo" / "picture.png"
QUESTIONS = list(SAMPLE_REQUESTS[:8])  # the world's own requests (see anygpt.world.text)


def greedy_replies(bundle: Bundle, questions: list[str]) -> list[list[int]]:
    """The engine's greedy text reply ids to each question (one fresh chat each)."""
    from anygpt.config import DecodingConfig
    from anygpt.generation import generate
    from anygpt.prompts import Conversation

    tok = bundle.tokenizer
    prompts = []
    for q in questions:
        conversation = Conversation(bundle.template)
        conversation.add_user(q)
        prompts.append(tok.encode(conversation.render()))
    greedy = DecodingConfig(do_sample=False, max_new_tokens=24)
    return [generate(bundle.llm, bundle.layout, [p], greedy, stop_ids=[2])[0] for p in prompts]


# ---------------------------------------------------------------------------- int8


@shipped
def test_int8_bundle_has_int8_linear_weights_a_quarter_the_size_and_same_greedy_replies():
    pytest.importorskip("torchao")
    plain = Bundle(NANO, device="cpu")
    int8 = Bundle(NANO, device="cpu", quantize="int8")
    linears = {n: m for n, m in int8.llm.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "lm_head" in linears and len(linears) == 1 + 7 * 6  # 7 projections in 6 layers
    for name, module in linears.items():
        assert module.weight.qdata.dtype == torch.int8, name
        assert module.weight.qdata.shape == module.weight.shape, name
    # the embedding and the norms keep the model's dtype
    assert type(int8.llm.get_input_embeddings().weight) is torch.nn.Parameter
    assert int8.llm.get_input_embeddings().weight.dtype == torch.float32

    fp32_linear = weight_bytes(plain.llm, linear_only=True)
    int8_linear = weight_bytes(int8.llm, linear_only=True)
    assert fp32_linear / int8_linear >= 1.8
    assert weight_bytes(int8.llm) < weight_bytes(plain.llm)

    ref, got = greedy_replies(plain, QUESTIONS), greedy_replies(int8, QUESTIONS)
    assert all(ref) and all(got)
    # measured 7 of 8 (24 tokens); int8 rounding may flip a close call, not most replies
    assert sum(a == b for a, b in zip(ref, got, strict=True)) >= len(QUESTIONS) - 2


@shipped
def test_int8_chat_turn_still_answers_a_picture_question():
    pytest.importorskip("torchao")
    import anygpt

    engine = anygpt.load(NANO, device="cpu", seed=0, quantize="int8")
    reply = engine.chat().turn(f"interleaved|what is in the picture?|||{PICTURE}")
    assert reply.ok, reply.error
    assert reply.text.strip() and "<soim>" not in reply.text


def test_int8_leaves_a_tied_lm_head_alone():
    pytest.importorskip("torchao")
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    quantize_llm(model)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still tied, still fp32
    assert model.model.layers[0].mlp.up_proj.weight.qdata.dtype == torch.int8


def test_int8_without_torchao_is_one_line_naming_pip_install(monkeypatch, debug_bundle):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a)
    )
    with pytest.raises(QuantizeError, match="pip install torchao") as err:
        Bundle(debug_bundle, device="cpu", quantize="int8")
    assert "\n" not in str(err.value)
    with pytest.raises(QuantizeError, match="unknown quantize mode"):
        Bundle(debug_bundle, device="cpu", quantize="int4")


def test_cli_without_torchao_says_pip_install(debug_bundle, tmp_path):
    # hide the installed torchao from the subprocess, as if it were not installed
    hide = tmp_path / "sitecustomize.py"
    hide.write_text(
        "import importlib.util as u\n"
        "_real = u.find_spec\n"
        "u.find_spec = lambda n, *a: None if n == 'torchao' else _real(n, *a)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "anygpt", "chat", "--model", str(debug_bundle), "--device", "cpu"]
        + ["--quantize", "int8", "--output-dir", str(tmp_path / "out"), "interleaved|hi"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: int8 loading needs torchao: pip install torchao (or pip install -e .[quant])"
    ]


# ---------------------------------------------------------------------------- offloading


class WhereModule(torch.nn.Module):
    """A parameterless module that records where ``.to`` sends it (CPU-only machines cannot move
    a real module between two devices)."""

    def __init__(self) -> None:
        super().__init__()
        self.where = torch.device("cpu")
        self.moves: list[str] = []

    def to(self, device):  # type: ignore[override]
        self.where = torch.device(device)
        self.moves.append(str(self.where))
        return self


class FakeAdapter:
    """A modality tokenizer whose model loads lazily on its (pretend CUDA) device."""

    def __init__(self) -> None:
        self.device = torch.device("cuda")  # a device object needs no GPU
        self._model: WhereModule | None = None
        self.seen_during_call: list[str] = []
        self.release = threading.Event()

    @property
    def model(self) -> WhereModule:
        if self._model is None:
            self._model = WhereModule().to(self.device)
        return self._model

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        self.model  # noqa: B018 - as real adapters do, reading sizes loads the model
        return (8,)

    def encode(self, media):
        self.seen_during_call.append(str(self.model.where))
        if media == "fail":
            raise ValueError("bad media")
        if media == "wait":
            self.release.wait(5)
        return len(media)

    def load(self, path):
        return str(path)


@pytest.fixture
def cache_frees(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    return calls


def test_offloaded_model_visits_the_device_only_during_a_call(cache_frees):
    fake = FakeAdapter()
    tok = OffloadedModality(fake, "cpu")
    assert tok.encode("ab") == 2
    assert fake.seen_during_call == ["cuda"]
    assert fake.model.where == torch.device("cpu")
    assert fake.model.moves == ["cuda", "cpu"]  # loaded on the device, parked after the call
    assert cache_frees == [1]
    tok.encode("abc")
    assert fake.seen_during_call == ["cuda", "cuda"]
    assert fake.model.moves == ["cuda", "cpu", "cuda", "cpu"]


def test_offloaded_model_goes_back_when_the_call_raises(cache_frees):
    fake = FakeAdapter()
    tok = OffloadedModality(fake, "cpu")
    with pytest.raises(ValueError, match="bad media"):
        tok.encode("fail")
    assert fake.seen_during_call == ["cuda"]
    assert fake.model.where == torch.device("cpu")
    assert tok._calls == 0


def test_offloaded_property_that_loads_the_model_parks_it(cache_frees):
    fake = FakeAdapter()
    tok = OffloadedModality(fake, "cpu")
    assert tok.codebook_sizes == (8,)
    assert fake.model.where == torch.device("cpu")
    assert tok.load("x.wav") == "x.wav"  # media-only methods move nothing
    assert fake.model.moves == ["cuda", "cpu"]


def test_overlapping_calls_keep_the_model_until_the_last_ends(cache_frees):
    fake = FakeAdapter()
    tok = OffloadedModality(fake, "cpu")
    slow = threading.Thread(target=tok.encode, args=("wait",))
    slow.start()
    while not fake.seen_during_call:
        pass
    tok.encode("ab")  # starts and ends while the slow call runs
    assert fake.model.where == torch.device("cuda")
    fake.release.set()
    slow.join(5)
    assert fake.model.where == torch.device("cpu")
    assert fake.model.moves == ["cuda", "cpu"]


def test_setting_an_attribute_reaches_the_adapter():
    fake = FakeAdapter()
    tok = OffloadedModality(fake, "cpu")
    tok.channels = "first"
    assert fake.channels == "first"


@shipped
def test_offloaded_nano_bundle_gives_the_same_codes_and_media(monkeypatch):
    plain = Bundle(NANO, device="cpu")
    offloaded = Bundle(NANO, device="cpu", offload="cpu")
    moved = []
    real_move = OffloadedModality._move
    monkeypatch.setattr(
        OffloadedModality,
        "_move",
        lambda self, device: (
            moved.append((self.adapter.name, str(device))) or real_move(self, device)
        ),
    )
    for name in ("image", "speech"):
        a, b = plain.modality(name, checked=True), offloaded.modality(name, checked=True)
        assert isinstance(b, OffloadedModality) and not isinstance(a, OffloadedModality)
        media = NANO / "demo" / ("picture.png" if name == "image" else "question.wav")
        codes_a, codes_b = a.encode([a.load(media)]), b.encode([b.load(media)])
        assert torch.equal(codes_a.codes, codes_b.codes)
        # the real adapter's models are found, so they would leave a GPU after the call
        held = _held_models(b.adapter)
        assert held and all(isinstance(m, torch.nn.Module) for m in held)
        if name == "speech":
            gen_a, gen_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
            wave_a = a.decode(codes_a, generator=gen_a)[0]
            wave_b = b.decode(codes_b, generator=gen_b)[0]
            assert torch.equal(torch.as_tensor(wave_a), torch.as_tensor(wave_b))
    assert ("speech", "cpu") in moved and ("image", "cpu") in moved


@shipped
def test_offloaded_chat_turn_through_the_engine():
    import anygpt

    engine = anygpt.load(NANO, device="cpu", seed=0, offload="cpu")
    reply = engine.chat().turn(f"interleaved|what is in the picture?|||{PICTURE}")
    assert reply.ok, reply.error
    assert reply.text.strip()


@shipped
def test_serve_flags_reach_the_bundle():
    pytest.importorskip("torchao")
    pytest.importorskip("fastapi")
    import argparse

    from anygpt.serve.cli import build, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "--model", str(NANO), "--device", "cpu", "--quantize", "int8"]
        + ["--offload-modalities"]
    )
    app, _ = build(args)
    bundle = app.app.state.anygpt.engine.bundle
    assert bundle.quantize == "int8" and bundle.offload == torch.device("cpu")
    assert bundle.llm.lm_head.weight.qdata.dtype == torch.int8
    assert isinstance(bundle.modality("speech"), OffloadedModality)
    args.backend = "vllm"
    with pytest.raises(ValueError, match="transformers backend"):
        build(args)
