"""The engine's own decode loop against transformers' generate, on the debug bundle's random LLM."""

import copy

import pytest
import torch

from anygpt.bundle import Bundle
from anygpt.config import DecodingConfig
from anygpt.generation import SpanConstraint, generate, hf_generate
from anygpt.generation.sampling import top_k_filter, top_p_filter, uniform_noise
from anygpt.generation.spans import SpanMachine
from anygpt.runtime.scheduler import RepetitionGuard


@pytest.fixture(scope="module")
def bundle(debug_bundle):
    return Bundle(debug_bundle, device="cpu")


def _prompt(bundle, start_tag=""):
    tok = bundle.tokenizer
    ids = tok.encode("[Human]: go<eoh> [MMGPT]:")
    return ids + (tok.encode(": " + start_tag, add_bos=False)[2:] if start_tag else [])


def _mixed_prompts(bundle):
    tok = bundle.tokenizer
    return [
        _prompt(bundle),
        _prompt(bundle, "<sosp>"),
        _prompt(bundle, "<somu>"),
        tok.encode("[Human]: hello there, how are you today<eoh> [MMGPT]:"),
        _prompt(bundle, "<soim>"),
    ]


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_equals_transformers_generate_token_for_token(bundle, penalty):
    prompts = _mixed_prompts(bundle)
    cfg = DecodingConfig(do_sample=False, max_new_tokens=40, repetition_penalty=penalty)
    ours = generate(bundle.llm, bundle.layout, prompts, cfg, stop_ids=[2])
    theirs = hf_generate(bundle.llm, bundle.layout, prompts, cfg, stop_ids=[2])
    assert ours == theirs
    assert sum(len(r) for r in ours) > 100, "rows ran long enough to compare"


def test_unconstrained_greedy_equals_transformers_generate(bundle):
    prompts = _mixed_prompts(bundle)[:2]
    cfg = DecodingConfig(do_sample=False, max_new_tokens=24)
    kw = dict(stop_ids=[2], constrain=False)
    ours = generate(bundle.llm, bundle.layout, prompts, cfg, **kw)
    assert ours == hf_generate(bundle.llm, bundle.layout, prompts, cfg, **kw)


def test_state_machine_bans_exactly_what_the_logits_processor_bans(bundle):
    lay, tok = bundle.layout, bundle.tokenizer
    vocab = bundle.llm.config.vocab_size
    machine = SpanMachine(lay, vocab, "cpu")
    processor = SpanConstraint(lay)
    music = lay.code_ids["music"]
    sequences = [
        tok.encode("[Human]: hi<eoh> [MMGPT]:"),
        tok.encode("x<sosp>"),
        tok.encode("x<sosp><🗣️3>"),
        tok.encode("x<sosp><🗣️3><eosp> and"),
        tok.encode("x<soim>") + lay.code_ids["image"][:5].tolist(),
        tok.encode("x<soim>") + lay.code_ids["image"][:32].tolist(),
        tok.encode("x<somu>") + music[[0, 2048, 4096]].tolist(),
        tok.encode("x<somu>") + music[[0, 2048, 4096, 6144]].tolist(),
        tok.encode("x<somu><🎶1> [Human]"),
    ]
    for ids in sequences:
        expected = torch.isinf(processor(torch.tensor([ids]), torch.zeros(1, vocab)))[0]
        state = machine.initial_state(ids)
        assert torch.equal(machine.banned[state], expected), tok.decode(ids)
        # stepping token by token from the start reaches the same state
        walked = torch.zeros(1, dtype=torch.long)
        for i in ids:
            walked = machine.next_state(walked, torch.tensor([i]))
        assert int(walked) == state


def test_filters_match_transformers_warpers():
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=gen) * 3
    for k in (1, 5, 50):
        ours = top_k_filter(logits, torch.full((3,), k), k)
        assert torch.equal(ours, TopKLogitsWarper(k)(None, logits.clone()))
    mixed = top_k_filter(logits, torch.tensor([0, 2, 7]), 7)
    assert torch.isinf(mixed).sum(1).tolist() == [0, 48, 43]
    for p in (0.3, 0.9):
        ours = top_p_filter(logits, torch.full((3,), p))
        assert torch.equal(ours, TopPLogitsWarper(p)(None, logits.clone()))


def test_counter_noise_is_uniform_and_depends_on_seed_and_step():
    seeds = torch.arange(20000)
    u = uniform_noise(seeds, torch.zeros_like(seeds))
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    counts = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (counts - 0.1).abs().max() < 0.01
    steps = uniform_noise(torch.full((20000,), 7), torch.arange(20000))
    assert (torch.histc(steps, bins=10, min=0, max=1) / 20000 - 0.1).abs().max() < 0.01
    again = uniform_noise(seeds, torch.zeros_like(seeds))
    later = uniform_noise(seeds, torch.ones_like(seeds))
    assert torch.equal(u, again) and not torch.equal(u, later)


def test_sampling_follows_the_distribution():
    from anygpt.generation.sampling import sample

    rows = 6000
    probs = torch.tensor([0.0, 0.5, 0.3, 0.0, 0.15, 0.05, 0.0])  # banned ids have probability 0
    logits = probs.log().expand(rows, -1)
    drawn = sample(
        logits,
        greedy=None,
        temperature=torch.ones(rows),
        top_k=None,
        largest_k=0,
        top_p=None,
        seeds=torch.arange(rows),
        steps=torch.zeros(rows, dtype=torch.long),
    )
    freq = torch.bincount(drawn, minlength=7).float() / rows
    assert (freq - probs).abs().max() < 0.025
    assert freq[[0, 3, 6]].sum() == 0


def test_seeded_sampling_is_reproducible_and_batch_independent(bundle):
    prompts = _mixed_prompts(bundle)
    cfg = DecodingConfig(max_new_tokens=20, top_k=30, top_p=0.9, temperature=0.8)
    a = generate(bundle.llm, bundle.layout, prompts, cfg, stop_ids=[2], seed=3)
    b = generate(bundle.llm, bundle.layout, prompts, cfg, stop_ids=[2], seed=3)
    c = generate(bundle.llm, bundle.layout, prompts, cfg, stop_ids=[2], seed=4)
    assert a == b and a != c
    greedy = generate(
        bundle.llm, bundle.layout, prompts, cfg.with_overrides(do_sample=False), stop_ids=[2]
    )
    assert a != greedy


def test_span_configs_sample_speech_and_keep_text_greedy(bundle):
    lay = bundle.layout
    greedy = DecodingConfig(do_sample=False, max_new_tokens=30)
    speech = DecodingConfig(do_sample=True, temperature=1.0, max_new_tokens=30)
    spans = {"speech": speech}
    opened = [_prompt(bundle, "<sosp>")]
    one = generate(bundle.llm, lay, opened, greedy, stop_ids=[2], seed=1, span_decoding=spans)
    two = generate(bundle.llm, lay, opened, greedy, stop_ids=[2], seed=2, span_decoding=spans)
    plain = generate(bundle.llm, lay, opened, greedy, stop_ids=[2])
    assert one != two and one != plain, "speech codes are sampled"
    # outside spans the text config (greedy) applies: same ids as greedy up to the first span
    starts = set(lay.start_ids.values())
    texts = [_prompt(bundle), bundle.tokenizer.encode("[Human]: hello<eoh> [MMGPT]:")]
    plain = generate(bundle.llm, lay, texts, greedy, stop_ids=[2])
    mixed = generate(bundle.llm, lay, texts, greedy, stop_ids=[2], seed=5, span_decoding=spans)
    for p, m in zip(plain, mixed, strict=True):
        cut = next((i + 1 for i, t in enumerate(p) if t in starts), len(p))
        assert m[:cut] == p[:cut]


@pytest.fixture(scope="module")
def flat_llm(bundle):
    """The debug LLM with a zero final norm: every logit is 0, so greedy decoding picks the first
    allowed id forever (a looping span)."""
    model = copy.deepcopy(bundle.llm)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    return model


@pytest.mark.parametrize("modality", ["speech", "music"])
def test_repetition_guard_closes_a_looping_span(bundle, flat_llm, modality):
    lay = bundle.layout
    cfg = DecodingConfig(do_sample=False, max_new_tokens=40)
    prompt = [_prompt(bundle, lay.spec(modality).start_tag)]
    looping = generate(flat_llm, lay, prompt, cfg, stop_ids=[2])[0]
    assert len(looping) == 40 and lay.end_ids[modality] not in looping
    guard = RepetitionGuard(max_period=2, repeats=6)
    guarded = generate(flat_llm, lay, prompt, cfg, stop_ids=[2], guard=guard)[0]
    frame = lay.spec(modality).num_codebooks
    end = guarded.index(lay.end_ids[modality])
    assert guarded[:end] == looping[:end]
    assert end == 6 * frame, "closed after six repeats of a one-frame loop, at a frame boundary"


def test_engine_runs_span_configs_and_guard_reproducibly(debug_bundle):
    from anygpt.runtime.engine import Engine
    from anygpt.runtime.scheduler import span_configs

    bundle = Bundle(debug_bundle, device="cpu")
    configs = span_configs(bundle, chat=True)
    assert configs["speech"] == bundle.decoding("speech", True)
    assert set(configs) == {"text", *bundle.modality_names}
    assert all(c.num_beams == 1 for c in configs.values())
    texts = []
    for _ in range(2):
        engine = Engine(bundle, seed=3, max_new_tokens=16)
        engine.generate_options = {"span_decoding": configs, "guard": RepetitionGuard()}
        outcome = engine.run_base(["text|speech|hello", "speech|text|x"])[0]
        assert outcome.ok, outcome.error
        texts.append([m.data.numpy().tobytes() for m in outcome.media])
    assert texts[0] == texts[1]


def test_beam_search_still_goes_through_transformers(bundle):
    prompts = _mixed_prompts(bundle)[:2]
    beams = DecodingConfig(do_sample=False, num_beams=2, max_new_tokens=6)
    ours = generate(bundle.llm, bundle.layout, prompts, beams, stop_ids=[2])
    assert ours == hf_generate(bundle.llm, bundle.layout, prompts, beams, stop_ids=[2])
