"""Discrete speech units: HuBERT features of one layer, quantised by k-means (50 Hz at 16 kHz).

This is the unit pipeline of fairseq's textless speech-to-speech work (mHuBERT base trained on
VoxPopuli En/Es/Fr, layer 11, 1000 k-means clusters), whose units the unit HiFi-GAN vocoder
(:mod:`anygpt.models.unit_hifigan`) turns back into speech.

* :class:`UnitExtractor` runs a Hugging Face ``HubertModel`` on waveforms of any sample rate
  and returns one unit id per 20 ms frame.
* :func:`convert_fairseq_hubert` turns a fairseq HuBERT checkpoint into a Hugging Face folder.
* :func:`convert_kmeans` turns the released k-means model (a pickled scikit-learn estimator,
  usually written by joblib) into ``centroids.safetensors`` without importing scikit-learn.
* :func:`collapse_repeats` / :func:`expand_repeats` de-duplicate units and undo it.

Layer numbering.  fairseq's ``extract_features(output_layer=L)`` stops after the L-th transformer
layer (1-based) and returns its output with no further LayerNorm.  In transformers,
``hidden_states[0]`` is the input of the first layer (after the positional conv and, for
post-LN models, the encoder LayerNorm) and ``hidden_states[L]`` is the output of layer L
(``encoder.layers[L-1]``).  So fairseq's "layer 11" is ``hidden_states[11]``; this module runs
only the first ``layer`` transformer layers and never applies the final LayerNorm of pre-LN
(``do_stable_layer_norm``) models, matching fairseq for both kinds.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import math
import pickle
import re
import types
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anygpt.checkpoint import CheckpointError, load_strict, missing_file_error

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

if TYPE_CHECKING:  # pragma: no cover
    from transformers import HubertModel

__all__ = [
    "SAMPLE_RATE",
    "UnitExtractorConfig",
    "MHUBERT_BASE_UNITS",
    "MHUBERT_BASE_HF_CONFIG",
    "TINY_HUBERT_HF_CONFIG",
    "UnitExtractor",
    "build_hubert",
    "collapse_repeats",
    "expand_repeats",
    "write_tiny_unit_extractor",
    "load_centroids",
    "save_centroids",
    "convert_fairseq_hubert",
    "fairseq_hubert_to_hf_state",
    "hf_hubert_to_fairseq_state",
    "hubert_config_from_fairseq",
    "convert_kmeans",
    "read_kmeans_centroids",
    "UntrustedPickleError",
]

SAMPLE_RATE = 16000  # HuBERT's input rate
CENTROIDS_NAME = "centroids.safetensors"
CENTROIDS_KEY = "centroids"
EXTRACTOR_CONFIG_NAME = "unit_extractor.json"
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"


class UntrustedPickleError(CheckpointError):
    """A file can only be read by unpickling it, and that was not explicitly allowed."""


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitExtractorConfig:
    """How units are read from a HuBERT model.

    ``layer``: transformer layer whose output is quantised (1-based, fairseq numbering).
    ``normalize``: layer-normalise each waveform first (fairseq's ``task.normalize``; False for
    the base models).  ``max_chunk_samples``: long inputs are cut into chunks of this many
    16 kHz samples, each encoded on its own, as fairseq's feature reader does (100 s).
    """

    layer: int = 11
    normalize: bool = False
    max_chunk_samples: int = 1_600_000

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError("layer is 1-based and must be >= 1")
        if self.max_chunk_samples < 400:
            raise ValueError("max_chunk_samples is too small to hold one frame")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitExtractorConfig:
        return cls(
            layer=int(d.get("layer", 11)),
            normalize=bool(d.get("normalize", False)),
            max_chunk_samples=int(d.get("max_chunk_samples", 1_600_000)),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> UnitExtractorConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# mHuBERT base (VoxPopuli En/Es/Fr) units: layer 11, 1000 clusters.
MHUBERT_BASE_UNITS = UnitExtractorConfig()

# transformers.HubertConfig arguments of mHuBERT base (fairseq "default" extractor mode:
# group norm on the first conv only; post-LN transformer; positional conv k128 in 16 groups).
MHUBERT_BASE_HF_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False,
    "feat_proj_layer_norm": True,
    "layer_norm_eps": 1e-5,
}

# The same layout at a tiny size (same conv strides, so still 50 frames/s).
TINY_HUBERT_HF_CONFIG: dict[str, Any] = {
    **MHUBERT_BASE_HF_CONFIG,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}


def build_hubert(hf_config: Mapping[str, Any]) -> HubertModel:
    """A randomly initialised ``transformers.HubertModel`` in eval mode."""
    from transformers import HubertConfig, HubertModel

    return HubertModel(HubertConfig(**dict(hf_config))).eval()


# --------------------------------------------------------------------------------------------
# Unit de-duplication
# --------------------------------------------------------------------------------------------


def collapse_repeats(units: torch.Tensor) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Collapse runs of equal units: ``[T] -> (deduped [N], durations [N])``, sum(durations) = T.

    >>> collapse_repeats(torch.tensor([5, 5, 7, 5, 5, 5]))
    (tensor([5, 7, 5]), tensor([2, 1, 3]))
    """
    if units.dim() != 1:
        raise ValueError("collapse_repeats takes a 1-D unit sequence")
    deduped, counts = torch.unique_consecutive(units, return_counts=True)
    return deduped.long(), counts.long()


def expand_repeats(deduped: torch.Tensor, durations: torch.Tensor) -> torch.LongTensor:
    """Inverse of :func:`collapse_repeats`: repeat ``deduped[i]`` ``durations[i]`` times."""
    if deduped.shape != durations.shape or deduped.dim() != 1:
        raise ValueError("deduped and durations must be 1-D tensors of the same length")
    return torch.repeat_interleave(deduped.long(), durations.to(deduped.device).long())


# --------------------------------------------------------------------------------------------
# Unit extraction
# --------------------------------------------------------------------------------------------


def _to_mono(wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[T]`` or ``[C,T]`` (channels first) -> float32 ``[T]``; channels are averaged."""
    x = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav)
    x = x.detach().to("cpu", torch.float32)
    if x.dim() == 2:
        if x.shape[0] > x.shape[1]:
            raise ValueError(
                f"waveform of shape {tuple(x.shape)} looks like [time, channels]; "
                "pass channels first ([C,T], e.g. wav.T for soundfile output)"
            )
        x = x.mean(0)  # stereo is averaged, as fairseq's feature reader does
    if x.dim() != 1:
        raise ValueError(f"waveform must be [T] or [C,T], got shape {tuple(x.shape)}")
    return x


def _resample(x: torch.Tensor, sample_rate: int) -> torch.Tensor:
    if sample_rate == SAMPLE_RATE:
        return x
    import soxr

    y = soxr.resample(x.numpy(), sample_rate, SAMPLE_RATE, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


def _masked_channel_norm(h: torch.Tensor, lengths: torch.Tensor, gn: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one channel per group over the valid frames of each item only.

    ``h [B,C,T]``; statistics use frames ``< lengths[b]``, so a padded batch is normalised as
    each item would be alone.
    """
    T = h.shape[-1]
    m = (torch.arange(T, device=h.device)[None, :] < lengths[:, None]).to(h.dtype)[:, None, :]
    n = lengths.to(h.dtype)[:, None, None]
    mean = (h * m).sum(-1, keepdim=True) / n
    var = (((h - mean) * m) ** 2).sum(-1, keepdim=True) / n
    out = (h - mean) * torch.rsqrt(var + gn.eps)
    return out * gn.weight[None, :, None] + gn.bias[None, :, None]


class UnitExtractor(nn.Module):
    """Waveforms -> HuBERT layer features -> nearest k-means centroid ids (50 Hz).

    ``hubert``: a ``transformers.HubertModel``; ``centroids``: ``[K, D]`` with D the hidden size.
    Distances are squared L2 computed as fairseq's ``ApplyKmeans`` does
    (``|x|^2 - 2 x.c + |c|^2``, argmin, first index on ties).
    """

    def __init__(
        self, hubert: HubertModel, centroids: torch.Tensor, cfg: UnitExtractorConfig
    ) -> None:
        super().__init__()
        hc = hubert.config
        if not 1 <= cfg.layer <= hc.num_hidden_layers:
            raise ValueError(
                f"layer {cfg.layer} is outside 1..{hc.num_hidden_layers} of this HuBERT"
            )
        if centroids.dim() != 2 or centroids.shape[1] != hc.hidden_size:
            raise ValueError(
                f"centroids must be [K, {hc.hidden_size}], got {tuple(centroids.shape)}"
            )
        self.hubert = hubert.eval()
        self.cfg = cfg
        c = centroids.detach().float()
        self.register_buffer("centroids", c, persistent=False)
        self.register_buffer("centroid_sq", c.pow(2).sum(1), persistent=False)
        self.conv_kernel = tuple(int(k) for k in hc.conv_kernel)
        self.conv_stride = tuple(int(s) for s in hc.conv_stride)

    # -- properties ---------------------------------------------------------------------------

    @property
    def num_units(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def hop_length(self) -> int:
        return math.prod(self.conv_stride)

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames the conv feature encoder makes from ``num_samples`` 16 kHz samples."""
        n = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1
            if n <= 0:
                return 0
        return n

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        hubert_dir: str | Path,
        centroids: str | Path | None = None,
        cfg: UnitExtractorConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> UnitExtractor:
        """Load a local Hugging Face HuBERT folder and a centroids file (nothing is downloaded).

        ``centroids`` defaults to ``hubert_dir/centroids.safetensors``.  ``cfg`` defaults to
        ``hubert_dir/unit_extractor.json`` when present, else :data:`MHUBERT_BASE_UNITS` with
        ``normalize`` taken from ``preprocessor_config.json`` (``do_normalize``) if there is one.
        """
        hubert_dir = Path(hubert_dir)
        if not (hubert_dir / "config.json").is_file():
            raise missing_file_error(
                hubert_dir / "config.json",
                "HuBERT model folder (Hugging Face format)",
                "a fairseq checkpoint converted with convert_fairseq_hubert",
            )
        cfg = cfg or _default_extractor_config(hubert_dir)
        centroids_path = Path(centroids) if centroids is not None else hubert_dir / CENTROIDS_NAME
        hubert = _load_hf_hubert(hubert_dir)
        return cls(hubert, load_centroids(centroids_path), cfg).to(device)

    # -- pieces -------------------------------------------------------------------------------

    def prepare(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """One waveform (``[T]`` or ``[C,T]``, any rate) -> mono float32 ``[T']`` at 16 kHz."""
        x = _resample(_to_mono(wav), int(sample_rate))
        if self.cfg.normalize:
            x = F.layer_norm(x, x.shape)
        return x

    @torch.inference_mode()
    def hidden_states(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """16 kHz mono waveforms (each ``[L_i]``, at least one frame long) -> ``[T_i, D]`` each.

        One padded batch, no chunking.  Padding never changes a result: the group norm of the
        first conv uses each item's own frames, padded frames are zeroed before the positional
        conv and masked as attention keys.
        """
        hub = self.hubert
        device = self.centroids.device
        dtype = next(hub.parameters()).dtype
        lengths = torch.tensor([int(w.shape[0]) for w in wavs], device=device)
        x = nn.utils.rnn.pad_sequence([w.to(device, dtype) for w in wavs], batch_first=True)
        padded = bool((lengths < x.shape[1]).any())

        h = x[:, None, :]
        frames = lengths.clone()
        for layer in hub.feature_extractor.conv_layers:
            norm = getattr(layer, "layer_norm", None)
            k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
            frames = torch.div(frames - k, s, rounding_mode="floor") + 1
            if padded and isinstance(norm, nn.GroupNorm):
                h = layer.activation(_masked_channel_norm(layer.conv(h), frames, norm))
            else:
                h = layer(h)  # conv without padding: valid frames never see padded samples
        T = h.shape[-1]
        fmask = torch.arange(T, device=device)[None, :] < frames[:, None]  # [B,T]

        out = hub.feature_projection(h.transpose(1, 2))
        hid = out[0] if isinstance(out, tuple) else out
        enc = hub.encoder
        attn_mask = None
        if padded:
            hid = hid * fmask[..., None].to(hid.dtype)
            attn_mask = torch.zeros(hid.shape[0], 1, 1, T, dtype=hid.dtype, device=device)
            attn_mask.masked_fill_(~fmask[:, None, None, :], torch.finfo(hid.dtype).min)
        hid = hid + enc.pos_conv_embed(hid)
        if not hub.config.do_stable_layer_norm:
            hid = enc.layer_norm(hid)
        for layer in enc.layers[: self.cfg.layer]:
            res = layer(hid, attention_mask=attn_mask)
            hid = res[0] if isinstance(res, tuple) else res
        return [hid[b, : int(frames[b])] for b in range(hid.shape[0])]

    @torch.inference_mode()
    def quantize(self, feats: torch.Tensor) -> torch.LongTensor:
        """Features ``[N, D]`` -> nearest-centroid ids ``[N]``."""
        x = feats.to(self.centroids)
        dist = x.pow(2).sum(1, keepdim=True) - 2 * (x @ self.centroids.T) + self.centroid_sq
        return dist.argmin(dim=1)

    # -- main entry points --------------------------------------------------------------------

    def extract(
        self,
        wavs: Sequence[torch.Tensor | np.ndarray],
        sample_rate: int,
        *,
        batch_size: int = 8,
        max_batch_samples: int = 40 * SAMPLE_RATE,
    ) -> list[torch.LongTensor]:
        """Several utterances (each ``[T]`` or ``[C,T]`` at ``sample_rate``) -> unit ids, each ``[N_i]``.

        ``N_i`` is the number of 20 ms frames of the 16 kHz signal (0 for inputs shorter than
        one 25 ms window).  Inputs are sorted by length and encoded in padded batches of at
        most ``batch_size`` items and ``max_batch_samples`` padded samples (the first conv
        output alone is about 400 bytes per sample at base size); a longer input runs alone.
        Results do not depend on the batching or on the other utterances.
        """
        prepared = [self.prepare(w, sample_rate) for w in wavs]
        # Chunk long inputs exactly as fairseq's reader does; every chunk is encoded alone.
        # pieces: (utterance index, chunk index, samples)
        step = self.cfg.max_chunk_samples
        pieces = [
            (i, j, x[start : start + step])
            for i, x in enumerate(prepared)
            for j, start in enumerate(range(0, x.shape[0], step))
            if self.num_frames(min(step, x.shape[0] - start)) > 0
        ]
        feats: list[list[torch.Tensor | None]] = [
            [None] * len(range(0, x.shape[0], step)) for x in prepared
        ]
        pieces.sort(key=lambda p: p[2].shape[0])  # similar lengths in a batch: less padding
        groups: list[list[tuple[int, int, torch.Tensor]]] = []
        for piece in pieces:
            n = piece[2].shape[0]  # the longest so far, as pieces are sorted
            if (
                groups
                and len(groups[-1]) < batch_size
                and (len(groups[-1]) + 1) * n <= max_batch_samples
            ):
                groups[-1].append(piece)
            else:
                groups.append([piece])
        for group in groups:
            for (i, j, _), f in zip(group, self.hidden_states([g[2] for g in group])):
                feats[i][j] = f
        out: list[torch.LongTensor] = []
        for parts in feats:
            kept = [f for f in parts if f is not None]
            if kept:
                out.append(self.quantize(torch.cat(kept, 0)))
            else:
                out.append(torch.zeros(0, dtype=torch.long, device=self.centroids.device))
        return out

    def extract_one(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> torch.LongTensor:
        """One utterance -> unit ids ``[N]``."""
        return self.extract([wav], sample_rate)[0]

    def forward(self, wavs: Sequence[torch.Tensor], sample_rate: int) -> list[torch.LongTensor]:
        return self.extract(wavs, sample_rate)


def _default_extractor_config(hubert_dir: Path) -> UnitExtractorConfig:
    own = hubert_dir / EXTRACTOR_CONFIG_NAME
    if own.is_file():
        return UnitExtractorConfig.from_file(own)
    pre = hubert_dir / PREPROCESSOR_CONFIG_NAME
    if pre.is_file():
        normalize = bool(json.loads(pre.read_text()).get("do_normalize", False))
        return UnitExtractorConfig(normalize=normalize)
    return MHUBERT_BASE_UNITS


def _load_hf_hubert(hubert_dir: Path) -> HubertModel:
    from transformers import HubertModel

    model, info = HubertModel.from_pretrained(
        str(hubert_dir), local_files_only=True, output_loading_info=True
    )
    # masked_spec_embed is a training-only parameter; anything else missing is an error.
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("masked_spec_embed")]
    bad = missing + list(info.get("mismatched_keys", []))
    if bad:
        raise CheckpointError(f"HuBERT folder '{hubert_dir}' does not fit its config: {bad[:8]}")
    return model.eval()


def load_centroids(path: str | Path) -> torch.Tensor:
    """Read ``[K, D]`` centroids from a safetensors file (key ``centroids``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise missing_file_error(
            path, "k-means centroids", "a k-means model converted with convert_kmeans"
        )
    tensors = load_file(str(path))
    if CENTROIDS_KEY not in tensors:
        raise CheckpointError(f"'{path}' has no '{CENTROIDS_KEY}' tensor (found {sorted(tensors)})")
    return tensors[CENTROIDS_KEY]


def save_centroids(centroids: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write ``[K, D]`` centroids as float32 safetensors (key ``centroids``)."""
    from safetensors.torch import save_file

    c = torch.as_tensor(np.asarray(centroids)).float().contiguous()
    if c.dim() != 2:
        raise ValueError(f"centroids must be 2-D, got shape {tuple(c.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({CENTROIDS_KEY: c}, str(path), metadata={"num_clusters": str(c.shape[0])})
    return path


def write_tiny_unit_extractor(
    out_dir: str | Path,
    *,
    num_clusters: int = 50,
    hf_config: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny random HuBERT folder + centroids + ``unit_extractor.json`` (for debug bundles).

    The centroids are features of a synthetic seeded signal at the last layer, so that
    different inputs give varied units.  Load the result with
    ``UnitExtractor.from_pretrained(out_dir)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config = dict(hf_config or TINY_HUBERT_HF_CONFIG)
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        hubert = build_hubert(hf_config)
    hubert.save_pretrained(str(out_dir))
    cfg = UnitExtractorConfig(layer=hubert.config.num_hidden_layers)
    (out_dir / EXTRACTOR_CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    _write_preprocessor_config(out_dir, normalize=False)

    gen = torch.Generator().manual_seed(seed)
    n = SAMPLE_RATE * max(1, math.ceil(num_clusters / 40))
    t = torch.arange(n) / SAMPLE_RATE
    f0 = 100 + 300 * torch.rand(1, generator=gen)
    signal = 0.3 * torch.sin(2 * math.pi * f0 * t * (1 + t)) + 0.1 * torch.randn(n, generator=gen)
    probe = UnitExtractor(hubert, torch.zeros(1, hubert.config.hidden_size), cfg)
    feats = probe.hidden_states([signal])[0]
    idx = torch.randperm(feats.shape[0], generator=gen)[:num_clusters]
    cents = feats[idx]
    if cents.shape[0] < num_clusters:
        extra = num_clusters - cents.shape[0]
        cents = torch.cat(
            [cents, cents[:extra] + 0.01 * torch.randn(extra, cents.shape[1], generator=gen)]
        )
    save_centroids(cents, out_dir / CENTROIDS_NAME)
    return out_dir


def _write_preprocessor_config(out_dir: Path, *, normalize: bool) -> None:
    pre = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": normalize,
        "return_attention_mask": False,
    }
    (out_dir / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(pre, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Restricted unpickling (fairseq configs, scikit-learn k-means)
# --------------------------------------------------------------------------------------------


class _Opaque:
    """Inert stand-in for a pickled class that is never imported.

    Whatever the pickle does with it (construct, set state, add items) is only recorded, so no
    code from the file's classes can run.
    """

    _origin = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        obj = super().__new__(cls)
        obj._args, obj._kwargs, obj._state = args, kwargs, None
        obj._items, obj._list = {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self._items[key] = value

    def append(self, value: Any) -> None:
        self._list.append(value)

    def extend(self, values: Any) -> None:
        self._list.extend(values)

    def attrs(self) -> dict[str, Any]:
        """The attribute dictionary the pickle set (``__dict__`` state), or ``{}``."""
        st = self._state
        if isinstance(st, tuple) and len(st) == 2:  # (dict state, slot state)
            merged = dict(st[0] or {})
            merged.update(st[1] or {})
            return merged
        return dict(st) if isinstance(st, dict) else {}

    def __repr__(self) -> str:
        return f"<unpickled {self._origin}>"


_OPAQUE_CLASSES: dict[tuple[str, str], type] = {}


def _opaque_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _OPAQUE_CLASSES:
        _OPAQUE_CLASSES[key] = type(
            name, (_Opaque,), {"_origin": f"{module}.{name}", "__module__": "anygpt.opaque"}
        )
    return _OPAQUE_CLASSES[key]


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor, restricted to inert stand-ins.
    if isinstance(cls, type) and issubclass(cls, _Opaque):
        obj = cls.__new__(cls)
        if state is not None:
            obj._args = (state,)
        return obj
    raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")


def _safe_codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, 'latin1').
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return str(obj).encode("latin1", errors)


def _allowed_global(module: str, name: str) -> Any | None:
    """The real object for the few globals a weights/array pickle needs, else ``None``."""
    if module in ("collections",) and name == "OrderedDict":
        return OrderedDict
    if module in ("builtins", "__builtin__") and name in (
        "set",
        "frozenset",
        "slice",
        "complex",
        "bytearray",
        "object",
    ):
        return getattr(__import__("builtins"), name)
    if module == "copyreg" and name == "_reconstructor":
        return _safe_reconstructor
    if module == "_codecs" and name == "encode":
        return _safe_codecs_encode
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
        "_reconstruct",
        "scalar",
    ):
        return getattr(_np_multiarray, name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return _np_numeric._frombuffer  # pickle protocol 5 arrays
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType") and hasattr(np.dtypes, name):
        return getattr(np.dtypes, name)
    if module == "torch._utils" and name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
    ):
        return getattr(torch._utils, name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return torch._tensor._rebuild_from_type_v2
    if module == "torch" and name in ("Size", "Tensor", "device"):
        return getattr(torch, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "torch.nn.parameter" and name == "Parameter":
        return torch.nn.Parameter
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that imports nothing: tensors and arrays are rebuilt, every other class
    becomes an inert :class:`_Opaque` record of its state."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_global(module, name)
        return obj if obj is not None else _opaque_class(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# A module-like object for torch.load(pickle_module=...).
_RESTRICTED_PICKLE_MODULE = types.SimpleNamespace(
    __name__="anygpt_restricted_pickle", Unpickler=_RestrictedUnpickler, load=_restricted_load
)


class _RestrictedArrayUnpickler(pickle._Unpickler):
    """Pure-Python restricted unpickler that also reads joblib's inline numpy arrays.

    joblib writes each array as a ``NumpyArrayWrapper`` record followed by the raw array bytes
    in the same stream; after the wrapper's BUILD, the bytes are read here and the wrapper is
    replaced by the array, as joblib's own loader does.
    """

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file)
        self._raw = file

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_global(module, name)
        return obj if obj is not None else _opaque_class(module, name)

    def _load_build(self) -> None:
        pickle._Unpickler.load_build(self)
        top = self.stack[-1]
        if isinstance(top, _Opaque) and top._origin.startswith("joblib."):
            if not top._origin.endswith("NumpyArrayWrapper"):
                raise CheckpointError(
                    f"unsupported joblib array record {top._origin} (file written by joblib < 0.10?)"
                )
            self.stack[-1] = self._read_joblib_array(top.attrs())

    def _read_joblib_array(self, a: Mapping[str, Any]) -> np.ndarray:
        dtype, shape, order = np.dtype(a["dtype"]), tuple(a["shape"]), a.get("order", "C")
        if dtype.hasobject:
            raise CheckpointError("object arrays in a joblib file are not supported")
        if a.get("numpy_array_alignment_bytes") is not None:
            pad = self._raw.read(1)[0]
            self._raw.read(pad)
        count = math.prod(shape)
        data = self._raw.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise CheckpointError("truncated array data in joblib file")
        arr = np.frombuffer(data, dtype=dtype, count=count)
        arr = arr.reshape(shape[::-1]).T if order == "F" else arr.reshape(shape)
        return np.array(arr, dtype=dtype.newbyteorder("="))

    dispatch = pickle._Unpickler.dispatch.copy()
    dispatch[pickle.BUILD[0]] = _load_build


def _plain(obj: Any, depth: int = 0) -> Any:
    """Turn unpickled config objects (omegaconf containers, argparse Namespaces, recorded as
    :class:`_Opaque`) into plain dicts, lists and scalars."""
    if depth > 40:
        return None
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, _Opaque):
        a = obj.attrs()
        if "_content" in a:  # omegaconf DictConfig / ListConfig
            return _plain(a["_content"], depth + 1)
        if "_val" in a:  # omegaconf value node
            return _plain(a["_val"], depth + 1)
        if obj._items:
            return _plain(obj._items, depth + 1)
        if obj._list:
            return _plain(obj._list, depth + 1)
        if a:  # e.g. argparse.Namespace: its attributes
            return {k: _plain(v, depth + 1) for k, v in a.items() if not k.startswith("_")}
        return _plain(obj._args[0], depth + 1) if len(obj._args) == 1 else None
    return obj


# --------------------------------------------------------------------------------------------
# k-means conversion
# --------------------------------------------------------------------------------------------


def read_kmeans_centroids(path: str | Path, *, trust: bool = False) -> np.ndarray:
    """``cluster_centers_`` ``[K, D]`` of a pickled (or joblib-dumped) scikit-learn k-means.

    The file is unpickled with an unpickler that imports nothing (scikit-learn classes become
    plain attribute records), so scikit-learn is not needed and no code from the file runs;
    still, unpickling is only done when ``trust=True``.
    """
    path = Path(path)
    if not trust:
        raise UntrustedPickleError(
            f"'{path}' is a pickle (scikit-learn k-means). Reading it means unpickling, which can "
            "run code from the file with ordinary tools; it is done here with a restricted "
            "unpickler, but only when you confirm that you trust the file: pass trust=True "
            "(command line: --trust). Do it once and keep the centroids.safetensors it writes."
        )
    if not path.is_file():
        raise missing_file_error(
            path, "k-means model", "e.g. mhubert_base_vp_en_es_fr_it3_L11_km1000.bin"
        )
    blob = path.read_bytes()
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    elif blob[:1] == b"\x78":  # joblib's zlib compression
        blob = zlib.decompress(blob)
    try:
        obj = _RestrictedArrayUnpickler(io.BytesIO(blob)).load()
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported the same way
        raise CheckpointError(f"cannot read k-means model '{path}': {exc}") from exc
    centers = _find_centers(obj)
    if centers is None:
        raise CheckpointError(f"'{path}' holds {obj!r}, which has no cluster_centers_")
    centers = np.asarray(centers)
    if centers.ndim != 2 or not np.issubdtype(centers.dtype, np.floating):
        raise CheckpointError(f"cluster_centers_ in '{path}' is not a 2-D float array")
    return centers


def _find_centers(obj: Any) -> np.ndarray | None:
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, _Opaque):
        obj = obj.attrs()
    if isinstance(obj, Mapping) and isinstance(obj.get("cluster_centers_"), np.ndarray):
        return obj["cluster_centers_"]
    return None


def convert_kmeans(pkl_path: str | Path, out_path: str | Path, trust: bool = False) -> Path:
    """Convert a scikit-learn k-means pickle to ``centroids.safetensors`` (key ``centroids``).

    Refuses unless ``trust=True`` (see :func:`read_kmeans_centroids`).
    """
    centers = read_kmeans_centroids(pkl_path, trust=trust)
    return save_centroids(centers.astype(np.float32), out_path)


# --------------------------------------------------------------------------------------------
# fairseq HuBERT conversion
# --------------------------------------------------------------------------------------------

# fairseq name pattern -> transformers name ({G}/{V}: the HF names of weight-norm g and v).
_FAIRSEQ_TO_HF: list[tuple[str, str]] = [
    (
        r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.conv.\2",
    ),
    (
        r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)",
        r"feature_extractor.conv_layers.0.layer_norm.\1",
    ),
    (
        r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"mask_emb", r"masked_spec_embed"),
    (r"encoder\.pos_conv\.0\.bias", r"encoder.pos_conv_embed.conv.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", r"encoder.pos_conv_embed.conv.{G}"),
    (r"encoder\.pos_conv\.0\.weight_v", r"encoder.pos_conv_embed.conv.{V}"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
        r"encoder.layers.\1.attention.\2_proj.\3",
    ),
    (
        r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)",
        r"encoder.layers.\1.layer_norm.\2",
    ),
    (
        r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)",
        r"encoder.layers.\1.feed_forward.intermediate_dense.\2",
    ),
    (
        r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)",
        r"encoder.layers.\1.feed_forward.output_dense.\2",
    ),
    (
        r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)",
        r"encoder.layers.\1.final_layer_norm.\2",
    ),
]

_HF_TO_FAIRSEQ: list[tuple[str, str]] = [
    (
        r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.0.\2",
    ),
    (r"feature_projection\.layer_norm\.(weight|bias)", r"layer_norm.\1"),
    (r"feature_projection\.projection\.(weight|bias)", r"post_extract_proj.\1"),
    (r"masked_spec_embed", r"mask_emb"),
    (r"encoder\.pos_conv_embed\.conv\.bias", r"encoder.pos_conv.0.bias"),
    (
        r"encoder\.pos_conv_embed\.conv\.(?:weight_g|parametrizations\.weight\.original0)",
        r"encoder.pos_conv.0.weight_g",
    ),
    (
        r"encoder\.pos_conv_embed\.conv\.(?:weight_v|parametrizations\.weight\.original1)",
        r"encoder.pos_conv.0.weight_v",
    ),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.attention\.(q|k|v|out)_proj\.(weight|bias)",
        r"encoder.layers.\1.self_attn.\2_proj.\3",
    ),
    (
        r"encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)",
        r"encoder.layers.\1.self_attn_layer_norm.\2",
    ),
    (
        r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)",
        r"encoder.layers.\1.fc1.\2",
    ),
    (
        r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)",
        r"encoder.layers.\1.fc2.\2",
    ),
    (
        r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)",
        r"encoder.layers.\1.final_layer_norm.\2",
    ),
]

# Pre-training heads of fairseq's HubertModel; not part of the feature encoder.
_FAIRSEQ_TRAINING_ONLY = re.compile(
    r"(final_proj\..*|label_embs_concat|label_embs|label_embs\.\d+)"
)

_DEFAULT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"


def fairseq_hubert_to_hf_state(
    state: Mapping[str, torch.Tensor],
    *,
    weight_norm_names: tuple[str, str] = (
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    ),
) -> dict[str, torch.Tensor]:
    """Rename a fairseq HuBERT state dict to ``transformers.HubertModel`` names.

    Pre-training heads (``final_proj``, ``label_embs_concat``) are dropped; any other key that
    no rule knows raises :class:`CheckpointError`.  ``weight_norm_names``: the HF names of the
    positional conv's g and v (``weight_g``/``weight_v`` for older transformers).
    """
    g, v = weight_norm_names
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if _FAIRSEQ_TRAINING_ONLY.fullmatch(key):
            continue
        for pattern, repl in _FAIRSEQ_TO_HF:
            m = re.fullmatch(pattern, key)
            if m:
                out[m.expand(repl.replace("{G}", g).replace("{V}", v))] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unknown keys in the fairseq HuBERT checkpoint: {unknown[:10]}")
    return out


def hf_hubert_to_fairseq_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`fairseq_hubert_to_hf_state` (group-norm extractor of the base models)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "feature_extractor.conv_layers.0.layer_norm.weight":
            out["feature_extractor.conv_layers.0.2.weight"] = value
            continue
        if key == "feature_extractor.conv_layers.0.layer_norm.bias":
            out["feature_extractor.conv_layers.0.2.bias"] = value
            continue
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", key)
        if m:  # layer-norm extractor mode
            out[f"feature_extractor.conv_layers.{m.group(1)}.2.1.{m.group(2)}"] = value
            continue
        for pattern, repl in _HF_TO_FAIRSEQ:
            m = re.fullmatch(pattern, key)
            if m:
                out[m.expand(repl)] = value
                break
        else:
            raise CheckpointError(f"no fairseq name for HuBERT key '{key}'")
    return out


def _parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``conv_feature_layers`` string (lists of tuples joined by + and *)
    without ``eval``."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported expression in conv_feature_layers: {ast.dump(node)}")

    layers = ev(ast.parse(spec, mode="eval"))
    if not isinstance(layers, list) or not all(
        isinstance(t, tuple) and len(t) == 3 for t in layers
    ):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride): {spec!r}")
    return [tuple(int(x) for x in t) for t in layers]


_ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_accurate": "gelu_new",
    "gelu_fast": "gelu_new",
}


def hubert_config_from_fairseq(
    model_cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """``transformers.HubertConfig`` arguments for a fairseq HuBERT (fairseq key names).

    Sizes are read from the tensor shapes and checked against the fairseq config; what shapes
    cannot tell (strides, heads, LayerNorm placement) comes from the config, with fairseq's
    defaults where it is silent.
    """

    def get(name: str, default: Any) -> Any:
        value = model_cfg.get(name, default)
        if value is None or (isinstance(value, str) and (value == "???" or value.startswith("${"))):
            return default
        return value

    if get("layer_type", "transformer") != "transformer":
        raise CheckpointError(f"unsupported HuBERT layer_type {get('layer_type', '')!r}")
    convs = _parse_conv_layers(str(get("conv_feature_layers", _DEFAULT_CONV_LAYERS)))
    n_conv = 1 + max(
        int(m.group(1))
        for k in state
        if (m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.0\.weight", k))
    )
    if n_conv != len(convs):
        raise CheckpointError(f"checkpoint has {n_conv} conv layers, config lists {len(convs)}")
    for i, (dim, k, _) in enumerate(convs):
        shape = tuple(state[f"feature_extractor.conv_layers.{i}.0.weight"].shape)
        if shape[0] != dim or shape[2] != k:
            raise CheckpointError(f"conv layer {i} has shape {shape}, config says ({dim}, _, {k})")

    group_norm = "feature_extractor.conv_layers.0.2.weight" in state
    layer_norm = "feature_extractor.conv_layers.0.2.1.weight" in state
    mode = get("extractor_mode", "default")
    if (mode == "default") != group_norm or (mode == "layer_norm") != layer_norm:
        raise CheckpointError(
            f"extractor_mode {mode!r} does not match the checkpoint's norm layers"
        )

    hidden = int(state["post_extract_proj.weight"].shape[0])
    n_layers = 1 + max(
        int(m.group(1))
        for k in state
        if (m := re.fullmatch(r"encoder\.layers\.(\d+)\.fc1\.weight", k))
    )
    ffn = int(state["encoder.layers.0.fc1.weight"].shape[0])
    pos_v = state["encoder.pos_conv.0.weight_v"].shape
    heads = int(get("encoder_attention_heads", 12))
    for name, expected, got in (
        ("encoder_embed_dim", get("encoder_embed_dim", hidden), hidden),
        ("encoder_layers", get("encoder_layers", n_layers), n_layers),
        ("encoder_ffn_embed_dim", get("encoder_ffn_embed_dim", ffn), ffn),
        ("conv_pos", get("conv_pos", pos_v[2]), pos_v[2]),
    ):
        if int(expected) != int(got):
            raise CheckpointError(f"config {name}={expected} but the weights say {got}")
    if hidden % heads:
        raise CheckpointError(f"hidden size {hidden} is not divisible by {heads} heads")
    act = str(get("activation_fn", "gelu"))
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"unsupported activation_fn {act!r}")
    return {
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "hidden_act": _ACTIVATIONS[act],
        "conv_dim": [c[0] for c in convs],
        "conv_kernel": [c[1] for c in convs],
        "conv_stride": [c[2] for c in convs],
        "conv_bias": "feature_extractor.conv_layers.0.0.bias" in state,
        "feat_extract_norm": "group" if group_norm else "layer",
        "feat_extract_activation": "gelu",
        "num_conv_pos_embeddings": int(pos_v[2]),
        "num_conv_pos_embedding_groups": hidden // int(pos_v[1]),
        "do_stable_layer_norm": bool(get("layer_norm_first", False)),
        "feat_proj_layer_norm": True,
        "layer_norm_eps": 1e-5,
        # masked_spec_embed only exists when masking is configured; keep it iff the file has it.
        "mask_time_prob": 0.05 if "mask_emb" in state else 0.0,
    }


def _read_fairseq_checkpoint(path: Path, trust_pickle: bool) -> Mapping[str, Any]:
    if not path.is_file():
        raise missing_file_error(
            path, "fairseq HuBERT checkpoint", "e.g. mhubert_base_vp_en_es_fr_it3.pt"
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # noqa: BLE001
        if not trust_pickle:
            raise UntrustedPickleError(
                f"'{path}' cannot be read as weights only ({type(exc).__name__}): fairseq "
                "checkpoints usually pickle their config as argparse/omegaconf objects. "
                "Converting it needs unpickling those objects; call again with "
                "trust_pickle=True (command line: --trust-pickle) if you trust the file. They "
                "are then read with a restricted unpickler that imports none of their classes."
            ) from exc
    try:
        return torch.load(
            str(path),
            map_location="cpu",
            weights_only=False,
            pickle_module=_RESTRICTED_PICKLE_MODULE,
        )
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read fairseq checkpoint '{path}': {exc}") from exc


def convert_fairseq_hubert(
    fairseq_ckpt_path: str | Path, out_dir: str | Path, *, trust_pickle: bool = False
) -> Path:
    """Convert a fairseq HuBERT checkpoint to a Hugging Face ``HubertModel`` folder.

    Writes ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``
    (``do_normalize`` = fairseq's ``task.normalize``).  The checkpoint is read with
    ``weights_only=True``; if its config is pickled as Python objects, ``trust_pickle=True``
    is required (see :class:`UntrustedPickleError`).
    """
    from transformers import HubertConfig, HubertModel

    path = Path(fairseq_ckpt_path)
    ckpt = _read_fairseq_checkpoint(path, trust_pickle)
    if "model" not in ckpt:
        raise CheckpointError(f"'{path}' has no 'model' entry (keys: {sorted(ckpt)[:8]})")
    state = ckpt["model"]
    if isinstance(state, _Opaque) or not isinstance(state, Mapping):
        raise CheckpointError(f"'{path}': 'model' is not a state dict")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    cfg = _plain(ckpt.get("cfg")) if ckpt.get("cfg") is not None else None
    if isinstance(cfg, Mapping):
        model_cfg = cfg.get("model") or {}
        task_cfg = cfg.get("task") or {}
    else:
        model_cfg = task_cfg = _plain(ckpt.get("args")) or {}
    if not isinstance(model_cfg, Mapping) or not isinstance(task_cfg, Mapping):
        raise CheckpointError(f"'{path}': cannot read the model config")

    hf_kwargs = hubert_config_from_fairseq(model_cfg, state)
    model = HubertModel(HubertConfig(**hf_kwargs)).eval()
    own_keys = model.state_dict().keys()
    if "encoder.pos_conv_embed.conv.weight_g" in own_keys:
        names = ("weight_g", "weight_v")
    else:
        names = ("parametrizations.weight.original0", "parametrizations.weight.original1")
    load_strict(
        model, fairseq_hubert_to_hf_state(state, weight_norm_names=names), what=f"HuBERT '{path}'"
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    _write_preprocessor_config(out_dir, normalize=bool(task_cfg.get("normalize", False)))
    return out_dir
