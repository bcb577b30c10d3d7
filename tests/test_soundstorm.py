"""SoundStorm: checkpoint layout, reference fixtures, batching and argument handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anygpt.checkpoint import CheckpointError, load_manifest, state_manifest
from anygpt.models.soundstorm import (
    SOUNDSTORM_OFFICIAL,
    SOUNDSTORM_TINY,
    SoundStormConfig,
    build_soundstorm,
    generate,
    load_soundstorm,
    mask_counts,
    set_kernels,
)

ASSETS = Path(__file__).parent / "assets"
WEIGHTS = ASSETS / "upstream" / "soundstorm.weights.safetensors"
IO = ASSETS / "upstream" / "soundstorm.io.safetensors"
SIDECAR = ASSETS / "upstream" / "soundstorm.json"
MANIFEST = ASSETS / "manifests" / "soundstorm.json"

GEN_CASES = {"gen_noprompt": 1234, "gen_prompt": 4321, "gen_noprompt_b2": 777}
Q, K = SOUNDSTORM_TINY.num_quantizers, SOUNDSTORM_TINY.codebook_size


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return load_soundstorm(WEIGHTS, SOUNDSTORM_TINY)


@pytest.fixture(scope="module")
def io():
    return load_file(str(IO))


def _rand_ids(gen: torch.Generator, *shape: int, high: int = K) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=gen)


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ------------------------------------------------------------------------------- config/layout


def test_config_roundtrip_and_official_values():
    cfg = SOUNDSTORM_OFFICIAL
    assert (cfg.codebook_size, cfg.num_quantizers, cfg.dim, cfg.depth) == (1024, 7, 1024, 12)
    assert (cfg.heads, cfg.dim_head, cfg.num_semantic_tokens, cfg.mask_id) == (8, 128, 1024, 1024)
    data = json.loads(json.dumps(SOUNDSTORM_TINY.to_dict()))
    assert SoundStormConfig.from_dict(data) == SOUNDSTORM_TINY
    with pytest.raises(ValueError, match="unknown"):
        SoundStormConfig.from_dict({**data, "nope": 1})
    with pytest.raises(ValueError):
        SoundStormConfig(depth=0)


def test_official_state_dict_matches_manifest():
    with torch.device("meta"):
        model = build_soundstorm(SOUNDSTORM_OFFICIAL)
    assert state_manifest(model) == load_manifest(MANIFEST)
    raw = json.loads(MANIFEST.read_text())
    dtypes = {name: dtype for name, _, dtype, *_ in raw["keys"]}
    assert all(
        str(t.dtype).removeprefix("torch.") == dtypes[k] for k, t in model.state_dict().items()
    )
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == raw["num_params"] == 351_378_432
    # derived buffers exist but are not saved
    buffers = dict(model.named_buffers())
    assert {"net.quantizer_offsets", "net.conformer.rotary_emb.inv_freq"} <= set(buffers)
    assert not set(buffers) & set(model.state_dict())


def test_fixture_weights_load_strictly_and_buffers_are_derived(model, tmp_path):
    sidecar = json.loads(SIDECAR.read_text())
    assert state_manifest(model) == {k: s for k, s, _ in sidecar["weights"]["keys"]}
    assert model.net.quantizer_offsets.tolist() == [0, 65, 130, 195]
    inv = model.net.conformer.rotary_emb.inv_freq
    assert inv.dtype == torch.float32 and inv.device.type == "cpu"
    torch.testing.assert_close(inv, 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16))
    # a wrong key set is refused
    from safetensors.torch import save_file

    state = load_file(str(WEIGHTS))
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_soundstorm(bad, SOUNDSTORM_TINY)
    with pytest.raises(CheckpointError, match="AnyGPT-speech-modules"):
        load_soundstorm(tmp_path / "missing.pt", SOUNDSTORM_TINY)


# ------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("case", ["forward", "forward_padded"])
@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_forward_matches_fixture(model, io, case, kernels):
    set_kernels(model, kernels)
    try:
        out = model(
            io["forward.semantic_ids"],
            io["forward.acoustic_codes"],
            mask=io[f"{case}.seq_mask"],
            return_intermediates=True,
        )
    finally:
        set_kernels(model, "fast")
    tol = {"atol": 1e-5, "rtol": 0}
    torch.testing.assert_close(out["cond"], io[f"{case}.cond"], **tol)
    assert len(out["conformer_blocks"]) == 2
    for i, block in enumerate(out["conformer_blocks"]):
        torch.testing.assert_close(block, io[f"{case}.conformer_block{i}_out"], **tol)
    torch.testing.assert_close(out["head_embeds"], io[f"{case}.head_embeds"], **tol)
    torch.testing.assert_close(out["logits"], io[f"{case}.logits"], **tol)


def test_padded_frames_do_not_leak_into_valid_frames(model, io):
    """Item 1 of forward_padded has 7 valid frames: same logits as the 7-frame sequence."""
    mask = io["forward_padded.seq_mask"]
    full = model(io["forward.semantic_ids"], io["forward.acoustic_codes"], mask=mask)
    alone = model(io["forward.semantic_ids"][1:, :7], io["forward.acoustic_codes"][1:, :7])
    torch.testing.assert_close(full[1, : 7 * Q], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", [4, 5])
def test_fast_conv_module_matches_reference_for_any_kernel(kernel):
    cfg = SoundStormConfig(**{**SOUNDSTORM_TINY.to_dict(), "conv_kernel": kernel, "depth": 1})
    torch.manual_seed(0)
    block = build_soundstorm(cfg).net.conformer.layers[0].conv
    with torch.no_grad():
        block.net2[1].gamma.normal_()
    x = torch.randn(2, 9, cfg.dim)
    mask = torch.arange(9)[None, :] < torch.tensor([[9], [6]])
    for m in (None, mask):
        fast = block(x, mask=m)
        set_kernels(block, "reference")
        ref = block(x, mask=m)
        set_kernels(block, "fast")
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    assert block.ds_conv.padding == ((kernel // 2, kernel // 2 - 1) if kernel == 4 else (2, 2))
    with pytest.raises(ValueError):
        set_kernels(block, "turbo")


def test_level_slice_projection_matches_full(model, io):
    net = model.net
    cond = model.semantic_token_emb(io["forward.semantic_ids"])
    h = net.conformer(net.embed(io["forward.acoustic_codes"], cond))
    full = net.project(h)
    torch.testing.assert_close(net.project(h, first_level=2), full[:, :, 2:], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------- generate


def test_mask_counts_match_sidecar():
    sidecar = json.loads(SIDECAR.read_text())["generate_cases"]
    for case in sidecar.values():
        n = case["semantic_len"] + case["prompt_frames"]
        assert mask_counts(3, [n])[:, 0].tolist() == case["mask_counts_per_pass"]
    assert mask_counts(3, [1])[:, 0].tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize("case", sorted(GEN_CASES))
def test_generate_matches_fixture(model, io, case):
    seed = GEN_CASES[case]
    semantic = io[f"{case}.semantic_ids"]
    prompt = io.get(f"{case}.prompt_tokens")
    inputs = []
    torch.manual_seed(seed)
    out = generate(
        model, semantic, prompt, steps=3, greedy=True, pass_hook=lambda q, i, t: inputs.append(t)
    )
    rng_after = torch.get_rng_state()
    assert out.dtype == torch.int64
    assert torch.equal(out, io[f"{case}.output"])
    assert torch.equal(torch.stack(inputs), io[f"{case}.pass_inputs"])
    # exactly `steps` uniform draws of [B, N*Q, K] from the global generator
    b, n = semantic.shape
    n_total = n + (0 if prompt is None else prompt.shape[1])
    torch.manual_seed(seed)
    for _ in range(3):
        torch.rand(b, n_total * Q, K)
    assert torch.equal(rng_after, torch.get_rng_state())


def test_explicit_generator_reproduces_global_seed_without_touching_it(model, io):
    case = "gen_noprompt_b2"
    torch.manual_seed(0)
    before = torch.get_rng_state()
    gen = torch.Generator().manual_seed(GEN_CASES[case])
    out = generate(model, io[f"{case}.semantic_ids"], generator=gen)
    assert torch.equal(out, io[f"{case}.output"])
    assert torch.equal(before, torch.get_rng_state())
    # one generator per item gives other streams than one shared generator
    per_item = generate(model, io[f"{case}.semantic_ids"], generator=_gens([1, 2]))
    assert not torch.equal(per_item, out)


def test_seed_changes_random_passes(model, io):
    semantic = io["gen_noprompt.semantic_ids"]
    a = generate(model, semantic, generator=torch.Generator().manual_seed(1234))
    b = generate(model, semantic, generator=torch.Generator().manual_seed(1235))
    assert torch.equal(a[..., 0], b[..., 0]) and not torch.equal(a, b)


def test_batched_with_different_lengths_equals_unbatched(model):
    g = torch.Generator().manual_seed(5)
    lengths = [9, 1, 14, 4]
    semantic = _rand_ids(g, 4, max(lengths))
    seeds = [11, 12, 13, 14]
    batched = generate(model, semantic, semantic_lengths=lengths, generator=_gens(seeds))
    assert batched.shape == (4, 14, Q + 1)
    for b, (n, s) in enumerate(zip(lengths, seeds)):
        alone = generate(model, semantic[b : b + 1, :n], generator=_gens([s]))
        assert torch.equal(batched[b, :n], alone[0])
        assert (batched[b, n:] == -1).all()


def test_batched_prompts_of_different_lengths_equal_unbatched(model):
    g = torch.Generator().manual_seed(6)
    sem_len, prompt_len = [6, 10, 3], [5, 0, 2]
    semantic = _rand_ids(g, 3, 10)
    prompt = _rand_ids(g, 3, 5, Q + 1)
    seeds = [21, 22, 23]
    batched = generate(
        model,
        semantic,
        prompt,
        semantic_lengths=sem_len,
        prompt_lengths=prompt_len,
        generator=_gens(seeds),
    )
    for b in range(3):
        p = prompt[b : b + 1, : prompt_len[b]] if prompt_len[b] else None
        alone = generate(model, semantic[b : b + 1, : sem_len[b]], p, generator=_gens([seeds[b]]))
        assert torch.equal(batched[b, : sem_len[b]], alone[0])


def test_batched_greedy_passes_equal_unbatched_on_the_global_rng(model):
    """steps=1: pass 0 runs at temperature 1e-10 (argmax), the rest are argmax passes."""
    g = torch.Generator().manual_seed(10)
    lengths = [3, 11, 7, 1, 11]
    semantic = _rand_ids(g, 5, 11)
    batched = generate(model, semantic, steps=1, semantic_lengths=lengths)
    for b, n in enumerate(lengths):
        assert torch.equal(batched[b, :n], generate(model, semantic[b : b + 1, :n], steps=1)[0])


def test_unpadded_batch_on_one_generator_equals_upstream_batch(model, io):
    """semantic_lengths all full changes nothing (same RNG stream as the reference batch)."""
    case = "gen_noprompt_b2"
    torch.manual_seed(GEN_CASES[case])
    out = generate(model, io[f"{case}.semantic_ids"], semantic_lengths=[6, 6])
    assert torch.equal(out, io[f"{case}.output"])


def test_greedy_false_and_more_full_levels_consume_documented_randomness(model):
    semantic = _rand_ids(torch.Generator().manual_seed(7), 1, 5)
    torch.manual_seed(3)
    generate(model, semantic, greedy=False)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    for _ in range(3 + 1 + (Q - 1)):  # every pass samples when greedy=False
        torch.rand(1, 5 * Q, K)
    assert torch.equal(after, torch.get_rng_state())

    torch.manual_seed(3)
    out = generate(model, semantic, num_full_sampling_levels=2)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    for _ in range(2 * 3):
        torch.rand(1, 5 * Q, K)
    assert torch.equal(after, torch.get_rng_state())
    assert out.shape == (1, 5, Q + 1) and int(out[..., 1:].max()) < K


# ------------------------------------------------------------------------- argument handling


def test_empty_semantic_sequence_is_a_clear_error(model):
    with pytest.raises(ValueError, match="empty semantic"):
        generate(model, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty semantic"):
        generate(model, torch.zeros(2, 4, dtype=torch.long), semantic_lengths=[4, 0])
    prompt = torch.zeros(1, 3, Q + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="empty semantic"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), prompt)


def test_bad_ids_and_shapes_are_refused(model):
    sem = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="semantic ids"):
        generate(model, sem + 64)
    bad_prompt = torch.full((1, 2, Q + 1), K)
    bad_prompt[..., 0] = 0
    with pytest.raises(ValueError, match="prompt acoustic"):
        generate(model, sem, bad_prompt)
    with pytest.raises(ValueError, match="prompt semantic"):
        generate(model, sem, torch.full((1, 2, Q + 1), 64))
    with pytest.raises(ValueError, match="prompt must be"):
        generate(model, sem, torch.zeros(1, 2, Q, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        generate(model, sem, steps=0)


def test_long_prompt_keeps_its_last_frames(model):
    g = torch.Generator().manual_seed(8)
    semantic = _rand_ids(g, 1, 6)
    prompt = _rand_ids(g, 1, 9, Q + 1)
    seen = []
    trimmed = generate(
        model,
        semantic,
        prompt,
        max_prompt_frames=4,
        generator=_gens([1]),
        pass_hook=lambda q, i, t: seen.append(t),
    )
    assert seen[0].shape == (1, (4 + 6) * Q)
    assert torch.equal(seen[0].view(1, 10, Q)[0, :4], prompt[0, 5:, 1:])
    explicit = generate(model, semantic, prompt[:, 5:], generator=_gens([1]))
    assert torch.equal(trimmed, explicit)
    # prompts within the limit, and the default, use every frame
    whole = generate(model, semantic, prompt, max_prompt_frames=9, generator=_gens([1]))
    assert torch.equal(whole, generate(model, semantic, prompt, generator=_gens([1])))


def test_low_precision_model_runs_and_keeps_float32_rotary():
    half = load_soundstorm(WEIGHTS, SOUNDSTORM_TINY, dtype=torch.bfloat16)
    assert half.net.code_embeds.weight.dtype == torch.bfloat16
    assert half.net.conformer.rotary_emb.inv_freq.dtype == torch.float32
    ref = load_soundstorm(WEIGHTS, SOUNDSTORM_TINY)
    g = torch.Generator().manual_seed(9)
    sem, codes = _rand_ids(g, 2, 8), _rand_ids(g, 2, 8, Q)
    a, b = ref(sem, codes), half(sem, codes).float()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos > 0.99
    out = generate(half, sem, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8, Q + 1) and 0 <= int(out[..., 1:].min()) <= int(out.max()) < K


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", sorted(GEN_CASES))
def test_gpu_generate_with_cpu_generator_matches_fixture(io, case):
    model = load_soundstorm(WEIGHTS, SOUNDSTORM_TINY, device="cuda")
    prompt = io.get(f"{case}.prompt_tokens")
    out = generate(
        model,
        io[f"{case}.semantic_ids"].cuda(),
        None if prompt is None else prompt.cuda(),
        generator=torch.Generator().manual_seed(GEN_CASES[case]),
    )
    assert torch.equal(out.cpu(), io[f"{case}.output"])
    for dtype in (torch.bfloat16, torch.float16):
        low = load_soundstorm(WEIGHTS, SOUNDSTORM_TINY, device="cuda", dtype=dtype)
        res = generate(low, io[f"{case}.semantic_ids"].cuda())
        assert math.prod(res.shape[:2]) == io[f"{case}.semantic_ids"].numel()
