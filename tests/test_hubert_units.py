"""Speech units: unit extraction on a tiny HuBERT, fairseq conversion, k-means conversion."""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

from anygpt.checkpoint import CheckpointError
from anygpt.models.hubert_units import (
    TINY_HUBERT_HF_CONFIG,
    UnitExtractor,
    UnitExtractorConfig,
    UntrustedPickleError,
    build_hubert,
    collapse_repeats,
    convert_fairseq_hubert,
    convert_kmeans,
    expand_repeats,
    fairseq_hubert_to_hf_state,
    hf_hubert_to_fairseq_state,
    load_centroids,
    read_kmeans_centroids,
    save_centroids,
    write_tiny_unit_extractor,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: one thread is faster and avoids OpenMP spinning on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_unit_extractor(
        tmp_path_factory.mktemp("units") / "tiny", num_clusters=50, seed=0
    )


@pytest.fixture(scope="module")
def extractor(tiny_dir) -> UnitExtractor:
    return UnitExtractor.from_pretrained(tiny_dir)


def _speechlike(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    f = 120 + 200 * torch.rand(1, generator=g)
    return 0.4 * torch.sin(2 * math.pi * f * t * (1 + 2 * t)) + 0.05 * torch.randn(n, generator=g)


# ---------------------------------------------------------------------------------------------
# collapse / expand
# ---------------------------------------------------------------------------------------------


def test_collapse_expand_are_exact_inverses():
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 2, 50, 333):
        units = torch.randint(0, 4, (n,), generator=g)  # few values: many runs
        deduped, durations = collapse_repeats(units)
        assert int(durations.sum()) == n
        assert bool((deduped[1:] != deduped[:-1]).all())
        assert torch.equal(expand_repeats(deduped, durations), units)
    deduped = torch.tensor([3, 9, 3, 0])
    durations = torch.tensor([2, 1, 4, 1])
    expanded = expand_repeats(deduped, durations)
    assert expanded.tolist() == [3, 3, 9, 3, 3, 3, 3, 0]
    back = collapse_repeats(expanded)
    assert torch.equal(back[0], deduped) and torch.equal(back[1], durations)


# ---------------------------------------------------------------------------------------------
# Unit extraction
# ---------------------------------------------------------------------------------------------


def test_tiny_folder_loads_with_its_config(tiny_dir, extractor):
    assert json.loads((tiny_dir / "unit_extractor.json").read_text())["layer"] == 2
    assert extractor.cfg.layer == 2 and extractor.num_units == 50
    assert extractor.frame_rate == 50.0 and extractor.hop_length == 320
    assert extractor.num_frames(16000) == 49 and extractor.num_frames(399) == 0


def test_features_are_hf_hidden_states_of_the_layer(extractor):
    wav = _speechlike(8000, 1)
    ours = extractor.hidden_states([wav])[0]
    with torch.no_grad():
        ref = extractor.hubert(wav[None], output_hidden_states=True).hidden_states[
            extractor.cfg.layer
        ][0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_quantize_is_nearest_centroid(extractor):
    feats = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    brute = torch.cdist(feats.double(), extractor.centroids.double()).argmin(1)
    assert torch.equal(extractor.quantize(feats), brute)


def test_padded_batch_equals_one_by_one(extractor):
    wavs = [_speechlike(n, seed) for seed, n in enumerate((16000, 5000, 12345, 640, 300))]
    batched = extractor.extract(wavs, 16000, batch_size=8)
    assert [u.numel() for u in batched] == [49, 15, 38, 1, 0]
    for wav, units in zip(wavs, batched):
        assert torch.equal(units, extractor.extract_one(wav, 16000))
    # Other groupings (two per batch; a sample budget that splits the batch) agree too.
    for kwargs in ({"batch_size": 2}, {"max_batch_samples": 20000}):
        for a, b in zip(batched, extractor.extract(wavs, 16000, **kwargs)):
            assert torch.equal(a, b)
    assert len(set(batched[0].tolist())) > 5  # varied units, not one cluster
    # The padded path really normalises per item: features match within float error.
    feats = extractor.hidden_states(wavs[:3])
    for wav, f in zip(wavs[:3], feats):
        torch.testing.assert_close(f, extractor.hidden_states([wav])[0], atol=1e-4, rtol=0)


def test_resampling_and_stereo(extractor):
    sr = 22050
    n = int(1.3 * sr)
    left = _speechlike(n, 4).numpy()
    right = _speechlike(n, 5).numpy()
    stereo = np.stack([left, right])  # [C, T]
    units = extractor.extract_one(stereo, sr)
    mono16 = soxr.resample((left + right) / 2, sr, 16000, quality="HQ").astype(np.float32)
    assert torch.equal(units, extractor.extract_one(torch.from_numpy(mono16), 16000))
    assert units.numel() == extractor.num_frames(len(mono16)) == 64  # 1.3 s at 50 Hz
    with pytest.raises(ValueError, match="channels first"):
        extractor.extract_one(stereo.T, sr)


def test_long_inputs_are_chunked_like_fairseq(tiny_dir, extractor):
    chunked = UnitExtractor(
        extractor.hubert, extractor.centroids, UnitExtractorConfig(layer=2, max_chunk_samples=8000)
    )
    wav = _speechlike(20000, 6)
    units = chunked.extract_one(wav, 16000)
    parts = [extractor.extract_one(wav[s : s + 8000], 16000) for s in range(0, 20000, 8000)]
    assert torch.equal(units, torch.cat(parts))
    assert units.numel() == 24 + 24 + 12


def test_normalize_option(extractor):
    norm = UnitExtractor(
        extractor.hubert, extractor.centroids, UnitExtractorConfig(layer=2, normalize=True)
    )
    wav = _speechlike(8000, 7)
    assert torch.equal(norm.extract_one(wav * 3.0, 16000), norm.extract_one(wav, 16000))


def test_clear_errors(tmp_path, extractor):
    with pytest.raises(CheckpointError, match="not found"):
        UnitExtractor.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="layer 3"):
        UnitExtractor(extractor.hubert, extractor.centroids, UnitExtractorConfig(layer=3))
    with pytest.raises(ValueError, match="centroids"):
        UnitExtractor(extractor.hubert, torch.zeros(10, 7), UnitExtractorConfig(layer=2))


# ---------------------------------------------------------------------------------------------
# fairseq HuBERT conversion
# ---------------------------------------------------------------------------------------------

_TINY_FAIRSEQ_MODEL_CFG = {
    "_name": "hubert",
    "extractor_mode": "default",
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    "conv_bias": False,
    "conv_pos": 16,
    "conv_pos_groups": 4,
}


@pytest.fixture(scope="module")
def tiny_hf():
    torch.manual_seed(11)
    return build_hubert(TINY_HUBERT_HF_CONFIG)


def _fairseq_state(hf_model) -> dict[str, torch.Tensor]:
    state = hf_hubert_to_fairseq_state(hf_model.state_dict())
    # Pre-training heads are in real checkpoints and must be dropped by the converter.
    state["final_proj.weight"] = torch.randn(16, 32)
    state["final_proj.bias"] = torch.randn(16)
    state["label_embs_concat"] = torch.randn(100, 16)
    return state


def _outputs_equal(hf_model, out_dir: Path):
    from transformers import HubertModel

    converted = HubertModel.from_pretrained(str(out_dir), local_files_only=True).eval()
    wav = _speechlike(6000, 9)[None]
    with torch.no_grad():
        a = hf_model(wav, output_hidden_states=True).hidden_states
        b = converted(wav, output_hidden_states=True).hidden_states
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    return converted


def test_fairseq_names_are_the_released_ones(tiny_hf):
    state = hf_hubert_to_fairseq_state(tiny_hf.state_dict())
    for key in (
        "feature_extractor.conv_layers.0.0.weight",
        "feature_extractor.conv_layers.0.2.weight",
        "feature_extractor.conv_layers.6.0.weight",
        "layer_norm.weight",
        "post_extract_proj.weight",
        "mask_emb",
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "encoder.layer_norm.bias",
        "encoder.layers.1.self_attn.k_proj.weight",
        "encoder.layers.1.self_attn_layer_norm.weight",
        "encoder.layers.1.fc1.weight",
        "encoder.layers.1.final_layer_norm.bias",
    ):
        assert key in state, key
    assert tuple(state["encoder.pos_conv.0.weight_g"].shape) == (1, 1, 16)  # weight norm over dim 2
    assert len(state) == len(tiny_hf.state_dict())


def test_convert_fairseq_round_trip(tmp_path, tiny_hf):
    ckpt = {
        "model": _fairseq_state(tiny_hf),
        "cfg": {"model": _TINY_FAIRSEQ_MODEL_CFG, "task": {"normalize": False}},
    }
    torch.save(ckpt, tmp_path / "hubert.pt")
    out = convert_fairseq_hubert(tmp_path / "hubert.pt", tmp_path / "hf")
    converted = _outputs_equal(tiny_hf, out)
    assert converted.config.num_attention_heads == 2
    assert json.loads((out / "preprocessor_config.json").read_text())["do_normalize"] is False


def test_convert_rejects_unknown_keys(tmp_path, tiny_hf):
    state = _fairseq_state(tiny_hf)
    state["encoder.layers.0.adapter.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="adapter"):
        fairseq_hubert_to_hf_state(state)
    torch.save({"model": state, "cfg": {"model": _TINY_FAIRSEQ_MODEL_CFG}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unknown keys"):
        convert_fairseq_hubert(tmp_path / "bad.pt", tmp_path / "out")


def test_convert_checks_config_against_shapes(tmp_path, tiny_hf):
    cfg = dict(_TINY_FAIRSEQ_MODEL_CFG, encoder_ffn_embed_dim=128)
    torch.save({"model": _fairseq_state(tiny_hf), "cfg": {"model": cfg}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="encoder_ffn_embed_dim"):
        convert_fairseq_hubert(tmp_path / "x.pt", tmp_path / "out")


def test_pickled_namespace_needs_trust_pickle(tmp_path, tiny_hf):
    args = argparse.Namespace(**_TINY_FAIRSEQ_MODEL_CFG, normalize=True)
    torch.save({"model": _fairseq_state(tiny_hf), "args": args}, tmp_path / "old.pt")
    with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
        convert_fairseq_hubert(tmp_path / "old.pt", tmp_path / "out")
    out = convert_fairseq_hubert(tmp_path / "old.pt", tmp_path / "out", trust_pickle=True)
    _outputs_equal(tiny_hf, out)
    assert json.loads((out / "preprocessor_config.json").read_text())["do_normalize"] is True


def _fake_module(monkeypatch, name: str, **classes) -> None:
    """Register ``name`` (and its parent packages) so that pickle can name these classes."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    mod = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__, cls.__name__ = name, cls_name, cls_name
        setattr(mod, cls_name, cls)
    monkeypatch.setitem(sys.modules, name, mod)


def test_pickled_omegaconf_style_config(tmp_path, monkeypatch, tiny_hf):
    # Objects shaped like omegaconf's containers (config under _content, values in nodes
    # under _val), pickled under omegaconf's names; omegaconf itself is not needed to read them.
    class DictConfig:
        def __init__(self, content):
            self._metadata = None
            self._parent = None
            self._content = content

    class AnyNode:
        def __init__(self, value, parent=None):
            self._val = value
            self._parent = parent

    _fake_module(monkeypatch, "omegaconf.dictconfig", DictConfig=DictConfig)
    _fake_module(monkeypatch, "omegaconf.nodes", AnyNode=AnyNode)
    model_cfg = DictConfig({k: AnyNode(v) for k, v in _TINY_FAIRSEQ_MODEL_CFG.items()})
    model_cfg._content["encoder_attention_heads"]._parent = model_cfg  # a cycle, as in omegaconf
    cfg = DictConfig({"model": model_cfg, "task": DictConfig({"normalize": AnyNode(False)})})
    torch.save({"model": _fairseq_state(tiny_hf), "cfg": cfg}, tmp_path / "hydra.pt")
    with pytest.raises(UntrustedPickleError):
        convert_fairseq_hubert(tmp_path / "hydra.pt", tmp_path / "out")
    out = convert_fairseq_hubert(tmp_path / "hydra.pt", tmp_path / "out", trust_pickle=True)
    assert _outputs_equal(tiny_hf, out).config.num_attention_heads == 2


def test_converted_folder_gives_the_same_units(tmp_path, tiny_hf):
    torch.save(
        {"model": _fairseq_state(tiny_hf), "cfg": {"model": _TINY_FAIRSEQ_MODEL_CFG}},
        tmp_path / "h.pt",
    )
    out = convert_fairseq_hubert(tmp_path / "h.pt", tmp_path / "hf")
    centroids = torch.randn(20, 32, generator=torch.Generator().manual_seed(1))
    cfg = UnitExtractorConfig(layer=2)
    a = UnitExtractor(tiny_hf, centroids, cfg).extract_one(_speechlike(9000, 3), 16000)
    save_centroids(centroids, out / "centroids.safetensors")
    b = UnitExtractor.from_pretrained(out, cfg=cfg).extract_one(_speechlike(9000, 3), 16000)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# k-means conversion
# ---------------------------------------------------------------------------------------------


class _KMeansLike:
    pass


@pytest.fixture
def fake_sklearn(monkeypatch):
    _fake_module(monkeypatch, "sklearn.cluster._kmeans", MiniBatchKMeans=_KMeansLike)
    return _KMeansLike


def _kmeans(cls, centers: np.ndarray):
    km = cls()
    km.n_clusters = centers.shape[0]
    km.cluster_centers_ = centers
    km.labels_ = np.arange(10)
    km.inertia_ = 1.5
    km._sklearn_version = "1.0.2"
    return km


def test_kmeans_pickle_needs_trust(tmp_path, fake_sklearn):
    centers = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    path = tmp_path / "km.pkl"
    path.write_bytes(pickle.dumps(_kmeans(fake_sklearn, centers), protocol=4))
    with pytest.raises(UntrustedPickleError, match="trust=True"):
        convert_kmeans(path, tmp_path / "centroids.safetensors")
    out = convert_kmeans(path, tmp_path / "centroids.safetensors", trust=True)
    loaded = load_centroids(out)
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded, torch.from_numpy(centers))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_kmeans_plain_pickle_protocols(tmp_path, fake_sklearn, protocol):
    centers = np.random.default_rng(protocol).standard_normal(
        (5, 3)
    )  # float64, like sklearn's default
    path = tmp_path / "km.pkl"
    path.write_bytes(pickle.dumps(_kmeans(fake_sklearn, centers), protocol=protocol))
    got = read_kmeans_centroids(path, trust=True)
    assert got.dtype == np.float64 and np.array_equal(got, centers)


class _JoblibLikePickler(pickle._Pickler):
    """Writes numpy arrays the way joblib.dump does: a NumpyArrayWrapper record, then an
    alignment byte + padding, then the raw bytes, inline in the pickle stream."""

    def __init__(self, file, wrapper_cls, protocol):
        super().__init__(file, protocol=protocol)
        self.file_handle = file
        self.wrapper_cls = wrapper_cls

    def save(self, obj, save_persistent_id=True):
        if type(obj) is np.ndarray:
            wrapper = self.wrapper_cls()
            wrapper.subclass = np.ndarray
            wrapper.shape = obj.shape
            wrapper.order = "F" if (obj.flags.f_contiguous and not obj.flags.c_contiguous) else "C"
            wrapper.dtype = obj.dtype
            wrapper.allow_mmap = True
            wrapper.numpy_array_alignment_bytes = 16
            super().save(wrapper)
            if self.proto >= 4:
                self.framer.commit_frame(force=True)
            pos = self.file_handle.tell() + 1
            pad = 16 - pos % 16
            self.file_handle.write(bytes([pad]) + b"\xff" * pad)
            self.file_handle.write(obj.tobytes(order=wrapper.order))
            return
        super().save(obj, save_persistent_id)


@pytest.mark.parametrize("protocol", [2, 4])
def test_kmeans_joblib_format(tmp_path, monkeypatch, fake_sklearn, protocol):
    class NumpyArrayWrapper:
        pass

    _fake_module(monkeypatch, "joblib.numpy_pickle", NumpyArrayWrapper=NumpyArrayWrapper)
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((7, 4)).astype(np.float32)
    fortran = np.asfortranarray(rng.standard_normal((3, 5)))
    km = _kmeans(fake_sklearn, centers)
    km.extra_ = fortran
    buf = io.BytesIO()
    _JoblibLikePickler(buf, NumpyArrayWrapper, protocol).dump(km)
    path = tmp_path / "km.bin"
    path.write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(buf.getvalue())  # not a plain pickle
    assert np.array_equal(read_kmeans_centroids(path, trust=True), centers)


def test_kmeans_unpickler_runs_no_code(tmp_path):
    flag = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {flag}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="cluster_centers_"):
        read_kmeans_centroids(path, trust=True)
    assert not flag.exists()
