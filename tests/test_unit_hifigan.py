"""Unit HiFi-GAN vocoder: key layout, golden fixtures from fairseq, batching, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anygpt.checkpoint import CheckpointError, load_manifest, state_manifest
from anygpt.models.unit_hifigan import (
    UNIT_HIFIGAN_OFFICIAL,
    UNIT_HIFIGAN_TINY,
    UnitHifiganConfig,
    build_unit_hifigan,
    durations_from_log,
    load_unit_hifigan,
    save_unit_hifigan,
)

ASSETS = Path(__file__).parent / "assets"
FIX = ASSETS / "upstream"
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: one thread is faster and avoids OpenMP spinning on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sidecar() -> dict:
    return json.loads((FIX / "unit_hifigan.json").read_text())


@pytest.fixture(scope="module")
def io_tensors() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "unit_hifigan.io.safetensors"))


@pytest.fixture(scope="module")
def fixture_model(sidecar):
    cfg = UnitHifiganConfig.from_dict(sidecar["config"])
    return load_unit_hifigan(FIX / "unit_hifigan.weights.safetensors", cfg)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_unit_hifigan(UNIT_HIFIGAN_TINY).eval()
    with torch.no_grad():  # make durations vary between 1 and about 5
        model.dur_predictor.proj.bias.fill_(1.0)
    return model


# ---------------------------------------------------------------------------------------------
# Layout and config
# ---------------------------------------------------------------------------------------------


def test_official_state_dict_matches_manifest_key_for_key():
    manifest_path = ASSETS / "manifests" / "unit_hifigan.json"
    model = build_unit_hifigan(UNIT_HIFIGAN_OFFICIAL, device="meta")
    ours = state_manifest(model)
    expected = load_manifest(manifest_path)
    assert list(ours) == list(expected)  # same order, too
    assert ours == expected
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == json.loads(manifest_path.read_text())["num_params"] == 13_485_443


def test_official_config_equals_manifest_config():
    manifest = json.loads((ASSETS / "manifests" / "unit_hifigan.json").read_text())
    assert UnitHifiganConfig.from_dict(manifest["config"]) == UNIT_HIFIGAN_OFFICIAL
    assert UNIT_HIFIGAN_OFFICIAL.hop_length == 320
    assert UNIT_HIFIGAN_OFFICIAL.frame_rate == 50.0


@pytest.mark.parametrize("cfg", [UNIT_HIFIGAN_OFFICIAL, UNIT_HIFIGAN_TINY])
def test_config_dict_round_trip(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert UnitHifiganConfig.from_dict(d) == cfg
    assert d["code_hop_size"] == cfg.hop_length == 320


def test_config_rejects_unsupported_vocoders(sidecar):
    base = dict(sidecar["config"])
    for bad in ({"f0": True}, {"resblock": "2"}, {"multispkr": True}, {"code_hop_size": 41}):
        with pytest.raises(ValueError):
            UnitHifiganConfig.from_dict({**base, **bad})


def test_strict_load_reports_missing_keys(tmp_path, sidecar):
    from safetensors.torch import save_file

    state = load_file(str(FIX / "unit_hifigan.weights.safetensors"))
    del state["conv_post.bias"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match="conv_post.bias"):
        load_unit_hifigan(tmp_path / "broken.safetensors", sidecar["config"])


# ---------------------------------------------------------------------------------------------
# Golden fixtures (fairseq CodeHiFiGANVocoder on the same weights)
# ---------------------------------------------------------------------------------------------


def _record(model):
    """Forward hooks that store the intermediates named as in the fixture file."""
    rec: dict[str, torch.Tensor] = {}
    hooks = []

    def out_hook(name):
        return lambda m, i, o: rec.__setitem__(name, o.detach().clone())

    def in_hook(name):
        return lambda m, i, o: rec.__setitem__(name, i[0].detach().clone())

    hooks.append(model.dict.register_forward_hook(out_hook("unit_embed")))
    hooks.append(model.dur_predictor.register_forward_hook(out_hook("log_dur_pred")))
    hooks.append(model.conv_pre.register_forward_hook(in_hook("conv_pre_in")))
    hooks.append(model.conv_pre.register_forward_hook(out_hook("conv_pre_out")))
    for i, up in enumerate(model.ups):
        hooks.append(up.register_forward_hook(out_hook(f"ups{i}_out")))
    for j, block in enumerate(model.resblocks):
        hooks.append(block.register_forward_hook(out_hook(f"resblock{j}_out")))
    hooks.append(model.conv_post.register_forward_hook(in_hook("conv_post_in")))
    hooks.append(model.conv_post.register_forward_hook(out_hook("conv_post_out")))
    return rec, hooks


@pytest.mark.parametrize(
    "case,dur_prediction", [("full_rate", False), ("dedup_dur", True), ("neg_dropped", False)]
)
def test_golden_fixture(fixture_model, io_tensors, case, dur_prediction):
    code = io_tensors[f"{case}.code"]
    rec, hooks = _record(fixture_model)
    try:
        wav = fixture_model.vocode(code, dur_prediction=dur_prediction)[0]
    finally:
        for h in hooks:
            h.remove()
    expected_wav = io_tensors[f"{case}.wav"]
    assert wav.shape == expected_wav.shape
    torch.testing.assert_close(wav, expected_wav, atol=ATOL, rtol=0)

    stored = {k.split(".", 1)[1] for k in io_tensors if k.startswith(case + ".")}
    intermediates = stored - {"code", "wav", "durations"}
    assert {"unit_embed", "conv_pre_in", "conv_post_out"} <= intermediates
    for name in sorted(intermediates):
        torch.testing.assert_close(
            rec[name], io_tensors[f"{case}.{name}"], atol=ATOL, rtol=0, msg=name
        )
    if case == "full_rate":
        assert len(intermediates) == 17  # every stage of the generator was compared


def test_golden_durations_exact(fixture_model, io_tensors, sidecar):
    code = io_tensors["dedup_dur.code"]
    emb = fixture_model.dict(code)
    log_dur, dur = fixture_model.predict_durations(emb)
    torch.testing.assert_close(log_dur, io_tensors["dedup_dur.log_dur_pred"], atol=ATOL, rtol=0)
    assert (
        dur[0].tolist()
        == io_tensors["dedup_dur.durations"].tolist()
        == sidecar["dedup_dur_durations"]
    )
    # log(1 + d) domain, at least one repeat per unit
    assert durations_from_log(torch.log(torch.tensor([0.5, 1.0, 2.0, 9.0]))).tolist() == [
        1,
        1,
        1,
        8,
    ]


def test_negative_ids_dropped_everywhere(fixture_model, io_tensors):
    code = io_tensors["neg_dropped.code"][0]
    ref = io_tensors["neg_dropped.wav"]
    kept = code[code >= 0]
    assert kept.numel() == 11
    torch.testing.assert_close(fixture_model.vocode([kept])[0], ref, atol=ATOL, rtol=0)
    # -1 as right padding in a [B,T] batch works the same way.
    other = io_tensors["full_rate.code"][0]
    batch = torch.full((2, 20), -1, dtype=torch.long)
    batch[0, :14] = code
    batch[1] = other
    wavs = fixture_model.vocode(batch)
    torch.testing.assert_close(wavs[0], ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(wavs[1], io_tensors["full_rate.wav"], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dur_prediction", [False, True])
def test_batched_equals_one_by_one(tiny_model, dur_prediction):
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 1000, (n,), generator=g) for n in (9, 17, 4, 1)]
    batched = tiny_model.vocode(seqs, dur_prediction=dur_prediction)
    for seq, wav in zip(seqs, batched):
        alone = tiny_model.vocode([seq], dur_prediction=dur_prediction)[0]
        assert wav.shape == alone.shape
        torch.testing.assert_close(wav, alone, atol=1e-5, rtol=0)
        assert wav.abs().max() > 1e-3  # a real signal, not silence
    if dur_prediction:
        lens = [w.numel() // 320 for w in batched]
        assert lens != [s.numel() for s in seqs]  # durations really expanded the units
    else:
        assert [w.numel() for w in batched] == [320 * s.numel() for s in seqs]


def test_length_groups_do_not_change_results(tiny_model):
    from anygpt.models.unit_hifigan import _length_groups

    assert _length_groups([5, 1, 9, 4], 12) == [[1, 3], [0], [2]]  # 2*4 <= 12 < 3*5
    assert sorted(sum(_length_groups([3] * 7, 10), [])) == list(range(7))
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 1000, (n,), generator=g) for n in (6, 2, 11, 3, 8)]
    one_group = tiny_model.vocode(seqs, dur_prediction=True)
    small_groups = tiny_model.vocode(seqs, dur_prediction=True, max_batch_frames=12)
    for a, b in zip(one_group, small_groups):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_padded_tensor_with_lengths_equals_list(tiny_model):
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 1000, (3, 12), generator=g)
    lengths = [12, 7, 3]
    from_tensor = tiny_model.vocode(codes, lengths=lengths, dur_prediction=True)
    from_list = tiny_model.vocode(
        [codes[i, :n] for i, n in enumerate(lengths)], dur_prediction=True
    )
    for a, b in zip(from_tensor, from_list):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_masking_is_what_makes_batches_exact(tiny_model):
    # Without masks, the padded frames would leak into the end of the shorter item.
    g = torch.Generator().manual_seed(7)
    short = torch.randint(0, 1000, (5,), generator=g)
    padded = torch.cat([short, torch.randint(0, 1000, (6,), generator=g)])
    alone = tiny_model.vocode([short])[0]
    in_batch = tiny_model.vocode([short, padded])[0]
    unmasked = tiny_model.generate(tiny_model.dict(padded)[None].transpose(1, 2))[
        0, 0, : alone.numel()
    ]
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=0)
    assert (unmasked - alone).abs().max() > 1e-3


def test_empty_and_out_of_range(tiny_model):
    out = tiny_model.vocode([torch.tensor([-1, -1]), torch.tensor([3, 4])])
    assert out[0].numel() == 0 and out[1].numel() == 640
    with pytest.raises(ValueError, match="num_embeddings"):
        tiny_model.vocode([torch.tensor([1000])])


# ---------------------------------------------------------------------------------------------
# Weight norm, save / load
# ---------------------------------------------------------------------------------------------


def test_fold_does_not_change_output(tiny_model):
    units = torch.arange(0, 40, 3)
    a = tiny_model.vocode([units])[0]
    tiny_model.fold_weight_norm()
    try:
        b = tiny_model.vocode([units])[0]
        assert tiny_model.conv_pre.folded_weight is not None
        assert "conv_pre.folded_weight" not in tiny_model.state_dict()
    finally:
        tiny_model.unfold_weight_norm()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path, tiny_model):
    out = save_unit_hifigan(tiny_model, tmp_path / "vocoder")
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text()) == UNIT_HIFIGAN_TINY.to_dict()
    loaded = load_unit_hifigan(out)
    assert loaded.config == UNIT_HIFIGAN_TINY
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    units = [torch.tensor([5, 6, 7, 900])]
    torch.testing.assert_close(
        loaded.vocode(units, dur_prediction=True)[0],
        tiny_model.vocode(units, dur_prediction=True)[0],
        atol=1e-6,
        rtol=0,
    )


def test_loads_fairseq_generator_file(tmp_path, tiny_model, sidecar):
    # Released checkpoints are torch pickles of {'generator': state_dict}.
    state = load_file(str(FIX / "unit_hifigan.weights.safetensors"))
    torch.save({"generator": state}, tmp_path / "g_00000001")
    model = load_unit_hifigan(tmp_path / "g_00000001", sidecar["config"])
    ref = load_unit_hifigan(FIX / "unit_hifigan.weights.safetensors", sidecar["config"])
    units = [torch.tensor([1, 2, 3, 49])]
    assert torch.equal(model.vocode(units)[0], ref.vocode(units)[0])
    with pytest.raises(CheckpointError, match="config"):
        load_unit_hifigan(tmp_path / "g_00000001")  # no config.json beside it
    with pytest.raises(CheckpointError, match="not found"):
        load_unit_hifigan(tmp_path / "missing", UNIT_HIFIGAN_TINY)
