"""Unit HiFi-GAN: a vocoder from discrete speech units (mHuBERT k-means ids) to 16 kHz audio.

Compatible with fairseq's released unit vocoders (``CodeHiFiGANVocoder`` /
``CodeGenerator``, trained with facebookresearch/speech-resynthesis): the state dict has the
same names and shapes, so the released ``g_00500000`` files (``{'generator': state_dict}``)
load strictly, and the config dataclass reads and writes the same ``config.json`` keys.

Computation, for unit ids ``[B,T]``:

1. ``dict``: unit embedding ``[B,T,E]``.
2. Optional duration predictor (for de-duplicated units): two conv+ReLU+LayerNorm blocks and a
   linear head give ``log(1+d)`` per unit; ``d = max(1, round(exp(x) - 1))``; each embedding
   frame is repeated ``d`` times.
3. HiFi-GAN V1 generator: pre-conv (k7) -> for each upsampling stage: LeakyReLU(0.1),
   transposed conv (channels halved, length times the rate), mean of the ResBlock1 modules
   -> LeakyReLU(0.01) -> post-conv (k7, to one channel) -> tanh.

Unlike fairseq, which only vocodes one utterance at a time with durations, :meth:`UnitHifigan.vocode`
takes a padded batch of utterances of different lengths.  Padded frames are zeroed before every
convolution, so each utterance sees exactly the zero padding it would see alone, and each output
is trimmed to its own length: batched results equal one-at-a-time results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anygpt.checkpoint import (
    CheckpointError,
    load_strict,
    missing_file_error,
    read_state_dict,
    unwrap,
)

__all__ = [
    "UnitHifiganConfig",
    "UNIT_HIFIGAN_OFFICIAL",
    "UNIT_HIFIGAN_TINY",
    "WeightNormConv1d",
    "ResBlock1",
    "DurationPredictor",
    "UnitHifigan",
    "build_unit_hifigan",
    "load_unit_hifigan",
    "save_unit_hifigan",
    "durations_from_log",
]

LRELU_SLOPE = 0.1  # inside the generator; the last activation uses torch's default 0.01
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitHifiganConfig:
    """Sizes of a unit HiFi-GAN.  Field names follow fairseq's vocoder ``config.json``.

    ``to_dict`` writes a fairseq-compatible config (nested ``dur_predictor_params``);
    ``from_dict`` reads it back, as well as the released configs (training-only keys such as
    ``segment_size`` are ignored; f0 or speaker conditioning is refused, since no such
    vocoder is supported here).
    """

    num_embeddings: int = 1000
    embedding_dim: int = 128
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (5, 4, 4, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 8, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    dur_predictor: bool = True
    var_pred_hidden_dim: int = 128
    var_pred_kernel_size: int = 3
    var_pred_dropout: float = 0.5
    sampling_rate: int = 16000

    def __post_init__(self) -> None:
        # Normalise list inputs to tuples so that configs compare and hash by value.
        object.__setattr__(self, "upsample_rates", tuple(int(r) for r in self.upsample_rates))
        object.__setattr__(
            self, "upsample_kernel_sizes", tuple(int(k) for k in self.upsample_kernel_sizes)
        )
        object.__setattr__(
            self, "resblock_kernel_sizes", tuple(int(k) for k in self.resblock_kernel_sizes)
        )
        object.__setattr__(
            self,
            "resblock_dilation_sizes",
            tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes),
        )
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if (k - u) % 2:
                # Padding (k-u)/2 on both sides is what makes each stage multiply the length by u.
                raise ValueError(f"upsample kernel {k} and rate {u} must differ by an even number")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError("upsample_initial_channel must be divisible by 2**num_upsamples")

    @property
    def hop_length(self) -> int:
        """Waveform samples per unit frame (320 for the released 50 Hz / 16 kHz vocoder)."""
        return math.prod(self.upsample_rates)

    @property
    def frame_rate(self) -> float:
        """Unit frames per second."""
        return self.sampling_rate / self.hop_length

    def to_dict(self) -> dict[str, Any]:
        """A fairseq-compatible ``config.json`` dictionary."""
        out: dict[str, Any] = {
            "resblock": "1",
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "upsample_initial_channel": self.upsample_initial_channel,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "model_in_dim": self.embedding_dim,
            "code_hop_size": self.hop_length,
            "f0": False,
            "sampling_rate": self.sampling_rate,
        }
        if self.dur_predictor:
            out["dur_predictor_params"] = {
                "encoder_embed_dim": self.embedding_dim,
                "var_pred_hidden_dim": self.var_pred_hidden_dim,
                "var_pred_kernel_size": self.var_pred_kernel_size,
                "var_pred_dropout": self.var_pred_dropout,
            }
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitHifiganConfig:
        """Read a dictionary written by :meth:`to_dict` or a fairseq vocoder ``config.json``."""
        if str(d.get("resblock", "1")) != "1":
            raise ValueError(f"only ResBlock type '1' is supported, got {d.get('resblock')!r}")
        for key in ("f0", "multispkr", "embedder_params"):
            if d.get(key):
                raise ValueError(f"vocoders with '{key}' conditioning are not supported")
        if int(d.get("f0_quant_num_bin", 0) or 0) > 0:
            raise ValueError("vocoders with quantised f0 input are not supported")
        emb = int(d["embedding_dim"])
        if int(d.get("model_in_dim", emb)) != emb:
            raise ValueError("model_in_dim must equal embedding_dim without f0/speaker inputs")
        dp = d.get("dur_predictor_params")
        kwargs: dict[str, Any] = {
            "num_embeddings": int(d["num_embeddings"]),
            "embedding_dim": emb,
            "upsample_initial_channel": int(d["upsample_initial_channel"]),
            "upsample_rates": tuple(d["upsample_rates"]),
            "upsample_kernel_sizes": tuple(d["upsample_kernel_sizes"]),
            "resblock_kernel_sizes": tuple(d["resblock_kernel_sizes"]),
            "resblock_dilation_sizes": tuple(tuple(x) for x in d["resblock_dilation_sizes"]),
            "sampling_rate": int(d.get("sampling_rate", 16000)),
            "dur_predictor": bool(dp),
        }
        if dp:
            if int(dp.get("encoder_embed_dim", emb)) != emb:
                raise ValueError("dur_predictor_params.encoder_embed_dim must equal embedding_dim")
            kwargs["var_pred_hidden_dim"] = int(dp["var_pred_hidden_dim"])
            kwargs["var_pred_kernel_size"] = int(dp["var_pred_kernel_size"])
            kwargs["var_pred_dropout"] = float(dp.get("var_pred_dropout", 0.5))
        cfg = cls(**kwargs)
        hop = d.get("code_hop_size")
        if hop is not None and int(hop) != cfg.hop_length:
            raise ValueError(f"code_hop_size {hop} != product of upsample_rates {cfg.hop_length}")
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> UnitHifiganConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# The released fairseq vocoder for mHuBERT (VoxPopuli En/Es/Fr, layer 11) km1000 units, LJSpeech
# voice, with a duration predictor: 13,485,443 parameters.
UNIT_HIFIGAN_OFFICIAL = UnitHifiganConfig()

# A tiny vocoder with the same unit space (1000 ids) and the same 320-sample hop, for debug
# bundles and tests (about 227 k parameters, most in the first upsampling stage).
UNIT_HIFIGAN_TINY = UnitHifiganConfig(
    num_embeddings=1000,
    embedding_dim=16,
    upsample_initial_channel=64,
    var_pred_hidden_dim=16,
)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class WeightNormConv1d(nn.Module):
    """Conv1d (or ConvTranspose1d) with weight norm stored as ``weight_g`` / ``weight_v``.

    The effective weight is ``g * v / ||v||`` with the norm over every dim but 0, as in
    ``torch.nn.utils.weight_norm(dim=0)``; for a transposed conv dim 0 is the input channels,
    so ``weight_g`` is ``[in,1,1]``.  :meth:`fold` caches the effective weight (a buffer that is
    not saved) for inference, as fairseq does with ``remove_weight_norm``.

    Input ``[B, C_in, T]`` -> output ``[B, C_out, T']``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        transposed: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.transposed = transposed
        shape = (
            (in_channels, out_channels, kernel_size)
            if transposed
            else (out_channels, in_channels, kernel_size)
        )
        # Registration order (bias, g, v) matches the released state dicts.
        self.bias = nn.Parameter(torch.empty(out_channels, device=device))
        self.weight_g = nn.Parameter(torch.empty(shape[0], 1, 1, device=device))
        self.weight_v = nn.Parameter(torch.empty(shape, device=device))
        self.register_buffer("folded_weight", None, persistent=False)
        if not self.weight_v.is_meta:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.weight_v.shape[1] * self.weight_v.shape[2]
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight_v.normal_(0.0, bound)
            self.weight_g.copy_(self._norm_v())
            self.bias.uniform_(-bound, bound)
        self.folded_weight = None

    def _norm_v(self) -> torch.Tensor:
        return self.weight_v.norm(dim=(1, 2), keepdim=True)

    def weight(self) -> torch.Tensor:
        """The effective weight ``[C_out, C_in, K]`` (``[C_in, C_out, K]`` if transposed)."""
        if self.folded_weight is not None:
            return self.folded_weight
        # The same kernel as torch.nn.utils.weight_norm, so folded weights are bit-identical
        # to those of fairseq's remove_weight_norm().
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    @torch.no_grad()
    def fold(self) -> None:
        """Cache the effective weight; later changes to g/v are ignored until :meth:`unfold`."""
        self.folded_weight = None
        self.folded_weight = self.weight().detach()

    def unfold(self) -> None:
        self.folded_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose1d(x, self.weight(), self.bias, self.stride, self.padding)
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x * mask`` (zero padded frames), or ``x`` itself when there is no mask."""
    return x if mask is None else x * mask


def _zero_tails(x: torch.Tensor, lengths: Sequence[int] | None) -> torch.Tensor:
    """Zero, in place, the frames of ``x [B,C,T]`` at and after ``lengths[b]``.

    Only the padded tails are touched, which is much cheaper than a full mask multiply on the
    long tensors of the last upsampling stages.
    """
    if lengths is not None:
        T = x.shape[-1]
        for b, n in enumerate(lengths):
            if n < T:
                x[b, :, n:] = 0
    return x


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock1: units of LReLU -> dilated conv -> LReLU -> conv -> residual add.

    ``[B,C,T] -> [B,C,T]``; every conv uses "same" zero padding ``(k*d - d) // 2``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        dilations: Sequence[int],
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WeightNormConv1d(
                channels,
                channels,
                kernel_size,
                dilation=d,
                padding=(kernel_size * d - d) // 2,
                device=device,
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WeightNormConv1d(
                channels, channels, kernel_size, padding=(kernel_size - 1) // 2, device=device
            )
            for _ in dilations
        )

    def forward(self, x: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """``lengths``: valid frames per item; padded frames are zeroed before each conv."""
        for c1, c2 in zip(self.convs1, self.convs2):
            # leaky_relu(0) == 0, so zeroing after the activation equals zero-padding its input.
            xt = c1(_zero_tails(F.leaky_relu(x, LRELU_SLOPE), lengths))
            xt = c2(_zero_tails(F.leaky_relu(xt, LRELU_SLOPE), lengths))
            x = xt.add_(x)  # xt is fresh: adding in place saves a large allocation
        return x


class DurationPredictor(nn.Module):
    """fairseq's ``VariancePredictor`` used as a unit duration predictor.

    ``[B,T,E]`` (and an optional validity mask ``[B,T]``) -> ``log(1 + duration)`` ``[B,T]``.
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int,
        kernel_size: int,
        dropout: float,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv1 = nn.Sequential(
            nn.Conv1d(embed_dim, hidden_dim, kernel_size, padding=pad, device=device), nn.ReLU()
        )
        self.ln1 = nn.LayerNorm(hidden_dim, device=device)
        self.conv2 = nn.Sequential(
            nn.Conv1d(hidden_dim, hidden_dim, kernel_size, padding=pad, device=device), nn.ReLU()
        )
        self.ln2 = nn.LayerNorm(hidden_dim, device=device)
        self.proj = nn.Linear(hidden_dim, 1, device=device)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = None if mask is None else mask[:, :, None].to(x.dtype)  # [B,T,1]
        x = _masked(x, m)
        x = self.conv1(x.transpose(1, 2)).transpose(1, 2)
        x = _masked(self.dropout(self.ln1(x)), m)  # zero padding again before the next conv
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = self.dropout(self.ln2(x))
        return self.proj(x).squeeze(-1)


def durations_from_log(log_dur: torch.Tensor) -> torch.LongTensor:
    """``max(1, round(exp(x) - 1))`` with round-half-to-even, as fairseq rounds."""
    return torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)


class UnitHifigan(nn.Module):
    """Unit-to-waveform vocoder (HiFi-GAN V1 generator with a unit embedding).

    State dict (no prefix): ``conv_pre``, ``ups.{i}``, ``resblocks.{i*R+j}``, ``conv_post``,
    ``dict``, and ``dur_predictor`` when present, exactly as fairseq's ``CodeGenerator``.
    """

    def __init__(
        self,
        *,
        num_embeddings: int,
        embedding_dim: int,
        upsample_initial_channel: int,
        upsample_rates: Sequence[int],
        upsample_kernel_sizes: Sequence[int],
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        dur_predictor_hidden_dim: int | None,
        dur_predictor_kernel_size: int = 3,
        dur_predictor_dropout: float = 0.5,
        sampling_rate: int = 16000,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.upsample_rates = tuple(upsample_rates)
        self.num_kernels = len(resblock_kernel_sizes)
        self.sampling_rate = sampling_rate
        self.hop_length = math.prod(self.upsample_rates)

        ch = upsample_initial_channel
        self.conv_pre = WeightNormConv1d(embedding_dim, ch, 7, padding=3, device=device)
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            self.ups.append(
                WeightNormConv1d(
                    ch // 2**i,
                    ch // 2 ** (i + 1),
                    k,
                    stride=u,
                    padding=(k - u) // 2,
                    transposed=True,
                    device=device,
                )
            )
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            c = ch // 2 ** (i + 1)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(c, k, d, device=device))
        self.conv_post = WeightNormConv1d(ch // 2 ** len(self.ups), 1, 7, padding=3, device=device)
        self.dict = nn.Embedding(num_embeddings, embedding_dim, device=device)
        self.dur_predictor = (
            DurationPredictor(
                embedding_dim,
                dur_predictor_hidden_dim,
                dur_predictor_kernel_size,
                dur_predictor_dropout,
                device=device,
            )
            if dur_predictor_hidden_dim
            else None
        )

    # -- weight norm ------------------------------------------------------------------------

    def fold_weight_norm(self) -> UnitHifigan:
        """Cache every conv's effective weight (inference speed-up; state dict unchanged)."""
        for m in self.modules():
            if isinstance(m, WeightNormConv1d):
                m.fold()
        return self

    def unfold_weight_norm(self) -> UnitHifigan:
        for m in self.modules():
            if isinstance(m, WeightNormConv1d):
                m.unfold()
        return self

    # -- pieces -----------------------------------------------------------------------------

    def generate(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Generator: features ``[B,E,T]`` -> waveform ``[B,1,T*hop]`` in (-1, 1).

        ``lengths [B]`` gives each item's valid frames; frames past it are treated as absent
        (zeroed before every conv).  Samples past ``lengths*hop`` in the output are garbage.
        """
        T = x.shape[-1]
        lens: list[int] | None = None
        if lengths is not None and bool((lengths < T).any()):
            lens = [int(n) for n in lengths]
            x = _zero_tails(x.clone(), lens)

        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(_zero_tails(F.leaky_relu(x, LRELU_SLOPE), lens))
            if lens is not None:
                lens = [n * self.upsample_rates[i] for n in lens]
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x, lens)
            for block in blocks[1:]:
                xs = xs.add_(block(x, lens))
            x = xs.div_(self.num_kernels)
        x = F.leaky_relu(x)  # default slope 0.01, as in the released generator
        x = self.conv_post(_zero_tails(x, lens))
        return torch.tanh(x)

    def predict_durations(
        self, emb: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Unit embeddings ``[B,T,E]`` -> (``log(1+d)`` ``[B,T]``, durations ``[B,T]``).

        Durations of padded units (``mask`` False) are 0.
        """
        if self.dur_predictor is None:
            raise RuntimeError("this vocoder has no duration predictor")
        log_dur = self.dur_predictor(emb, mask)
        dur = durations_from_log(log_dur)
        if mask is not None:
            dur = dur * mask.long()
        return log_dur, dur

    def unit_features(
        self, codes: torch.Tensor, lengths: torch.Tensor, dur_prediction: bool = False
    ) -> list[torch.Tensor]:
        """Padded ids ``[B,T]`` + ``lengths [B]`` -> generator inputs, one ``[T'_b, E]`` per item.

        ``T'_b`` is ``lengths[b]``, or the sum of the predicted durations with ``dur_prediction``.
        """
        B, T = codes.shape
        valid = torch.arange(T, device=codes.device)[None, :] < lengths[:, None]
        emb = self.dict(codes.masked_fill(~valid, 0))  # [B,T,E]
        if not dur_prediction:
            return [emb[b, : lengths[b]] for b in range(B)]
        _, dur = self.predict_durations(emb, valid if bool((lengths < T).any()) else None)
        return [
            torch.repeat_interleave(emb[b, : lengths[b]], dur[b, : lengths[b]], dim=0)
            for b in range(B)
        ]

    def forward(
        self,
        codes: torch.Tensor,
        lengths: torch.Tensor | None = None,
        dur_prediction: bool = False,
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Padded unit ids ``[B,T]`` (valid ids, no negatives) -> (wav ``[B,T'*hop]``, samples ``[B]``).

        ``lengths [B]`` counts the valid units of each row (all ``T`` if omitted).  With
        ``dur_prediction`` each unit is repeated by its predicted duration first, per item.
        """
        B, T = codes.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=codes.device)
        rows = self.unit_features(codes, lengths.to(codes.device), dur_prediction)
        frames = torch.tensor([r.shape[0] for r in rows], dtype=torch.long, device=codes.device)
        emb = nn.utils.rnn.pad_sequence(rows, batch_first=True)  # [B,T',E]
        wav = self.generate(emb.transpose(1, 2), frames).squeeze(1)
        return wav, frames * self.hop_length

    @torch.inference_mode()
    def vocode(
        self,
        units: torch.Tensor | Sequence[torch.Tensor],
        lengths: torch.Tensor | Sequence[int] | None = None,
        dur_prediction: bool = False,
        *,
        max_batch_frames: int = 1000,
    ) -> list[torch.Tensor]:
        """Unit ids -> one 1-D float waveform per utterance at :attr:`sampling_rate`.

        ``units``: a LongTensor ``[B,T]`` (with optional ``lengths [B]``; positions past a length
        are ignored) or a list of 1-D LongTensors.  Negative ids are dropped wherever they are,
        as fairseq does, so ``-1`` also works as padding.  Set ``dur_prediction`` for
        de-duplicated units (runs of equal units collapsed).  Output ``i`` has
        ``hop * n_i`` samples, ``n_i`` being the number of (expanded) units of utterance ``i``.

        Utterances are sorted by length and run through the generator in groups of at most
        ``max_batch_frames`` padded frames (an utterance longer than that runs alone): each
        generator activation takes about 20 KB per frame at the official size, and keeping
        them small avoids costly fresh allocations on the CPU.  Results do not depend on it.
        """
        seqs = _as_sequences(units, lengths)
        device = self.dict.weight.device
        kept = [s[s >= 0].to(device=device, dtype=torch.long) for s in seqs]
        for s in kept:
            if s.numel() and int(s.max()) >= self.dict.num_embeddings:
                raise ValueError(
                    f"unit id {int(s.max())} >= num_embeddings {self.dict.num_embeddings}"
                )
        out: list[torch.Tensor] = [
            torch.zeros(0, dtype=self.dict.weight.dtype, device=device) for _ in kept
        ]
        idx = [i for i, s in enumerate(kept) if s.numel()]
        if not idx:
            return out
        codes = nn.utils.rnn.pad_sequence([kept[i] for i in idx], batch_first=True)
        lens = torch.tensor([kept[i].numel() for i in idx], dtype=torch.long, device=device)
        rows = self.unit_features(codes, lens, dur_prediction)  # durations for all at once
        for group in _length_groups([r.shape[0] for r in rows], max_batch_frames):
            frames = torch.tensor([rows[g].shape[0] for g in group], device=device)
            x = nn.utils.rnn.pad_sequence([rows[g] for g in group], batch_first=True)
            wav = self.generate(x.transpose(1, 2), frames).squeeze(1)
            for row, g in enumerate(group):
                out[idx[g]] = wav[row, : int(frames[row]) * self.hop_length].clone()
        return out


def _length_groups(lengths: Sequence[int], max_frames: int) -> list[list[int]]:
    """Indices sorted by length, cut into groups whose padded size ``n * max_len`` stays
    within ``max_frames`` (a longer item forms a group of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        # Sorted ascending, so the new item is the longest of its group.
        if groups and (len(groups[-1]) + 1) * lengths[i] <= max_frames:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _as_sequences(
    units: torch.Tensor | Sequence[torch.Tensor], lengths: torch.Tensor | Sequence[int] | None
) -> list[torch.Tensor]:
    if isinstance(units, torch.Tensor):
        if units.dim() == 1:
            units = units[None]
        if units.dim() != 2:
            raise ValueError(
                f"units must be [B,T] or a list of 1-D tensors, got shape {tuple(units.shape)}"
            )
        if lengths is None:
            return list(units)
        lengths = [int(n) for n in lengths]
        if len(lengths) != units.shape[0]:
            raise ValueError("lengths must have one entry per row of units")
        return [units[b, :n] for b, n in enumerate(lengths)]
    if lengths is not None:
        raise ValueError("lengths is only used with a padded [B,T] tensor")
    seqs = [torch.as_tensor(u) for u in units]
    for s in seqs:
        if s.dim() != 1:
            raise ValueError("each unit sequence must be 1-D")
    return seqs


# --------------------------------------------------------------------------------------------
# Builders, loading, saving
# --------------------------------------------------------------------------------------------


def build_unit_hifigan(
    cfg: UnitHifiganConfig, device: torch.device | str | None = None
) -> UnitHifigan:
    """Build a (randomly initialised, or empty on ``device='meta'``) vocoder from a config."""
    model = UnitHifigan(
        num_embeddings=cfg.num_embeddings,
        embedding_dim=cfg.embedding_dim,
        upsample_initial_channel=cfg.upsample_initial_channel,
        upsample_rates=cfg.upsample_rates,
        upsample_kernel_sizes=cfg.upsample_kernel_sizes,
        resblock_kernel_sizes=cfg.resblock_kernel_sizes,
        resblock_dilation_sizes=cfg.resblock_dilation_sizes,
        dur_predictor_hidden_dim=cfg.var_pred_hidden_dim if cfg.dur_predictor else None,
        dur_predictor_kernel_size=cfg.var_pred_kernel_size,
        dur_predictor_dropout=cfg.var_pred_dropout,
        sampling_rate=cfg.sampling_rate,
        device=device,
    )
    model.config = cfg
    return model


def _resolve_config(
    cfg: UnitHifiganConfig | Mapping[str, Any] | str | Path | None, weights: Path
) -> UnitHifiganConfig:
    if isinstance(cfg, UnitHifiganConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return UnitHifiganConfig.from_dict(cfg)
    if cfg is not None:
        return UnitHifiganConfig.from_file(cfg)
    beside = weights.parent / CONFIG_NAME
    if not beside.is_file():
        raise CheckpointError(
            f"no config given for the unit vocoder '{weights}' and no {CONFIG_NAME} beside it; "
            "pass cfg= (e.g. UNIT_HIFIGAN_OFFICIAL or the path of the vocoder's config.json)"
        )
    return UnitHifiganConfig.from_file(beside)


def load_unit_hifigan(
    path: str | Path,
    cfg: UnitHifiganConfig | Mapping[str, Any] | str | Path | None = None,
    device: torch.device | str = "cpu",
    *,
    fold: bool = True,
) -> UnitHifigan:
    """Load a vocoder strictly and return it in eval mode (weight norm folded by default).

    ``path``: a folder written by :func:`save_unit_hifigan`, a ``.safetensors`` file, or a
    released fairseq checkpoint (``g_00500000``, read with ``weights_only=True``) holding
    ``{'generator': state_dict}``.  ``cfg``: a config, a config dict or JSON path, or ``None``
    to read ``config.json`` beside the weights.
    """
    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise missing_file_error(weights, "unit vocoder weights")
    else:
        weights = path
        if not weights.is_file():
            raise missing_file_error(
                weights,
                "unit vocoder weights",
                "fairseq code_hifigan/mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj/g_00500000",
            )
    cfg = _resolve_config(cfg, weights)
    raw = read_state_dict(weights, what="unit vocoder checkpoint")
    state = unwrap(raw, "generator") if "generator" in raw else raw
    model = build_unit_hifigan(cfg, device="meta")
    load_strict(model, state, what=f"unit vocoder '{weights}'")
    model = model.to(device).eval()
    if fold:
        model.fold_weight_norm()
    return model


def save_unit_hifigan(
    model: UnitHifigan, directory: str | Path, cfg: UnitHifiganConfig | None = None
) -> Path:
    """Write ``model.safetensors`` (flat state dict, fairseq names) and ``config.json``."""
    from safetensors.torch import save_file

    cfg = cfg or getattr(model, "config", None)
    if cfg is None:
        raise ValueError("pass cfg: this model carries no config")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return directory
