"""SoundStorm: semantic speech tokens -> acoustic RVQ levels, as used by AnyGPT.

AnyGPT speaks through SpeechTokenizer codes.  The language model only produces RVQ level 1
("semantic" tokens, 50 per second); SoundStorm (Borsos et al., 2023, in the variant of
``ZhangXInFD/soundstorm-speechtokenizer`` that AnyGPT vendors) predicts the 7 remaining levels
(RVQ 2..8) by confidence-based parallel decoding, optionally continuing the voice of a prompt.
This module is compatible with AnyGPT's released checkpoint
``fnlp/AnyGPT-speech-modules: soundstorm/speechtokenizer_soundstorm_mls.pt`` (a plain state
dict, loaded strictly) and reproduces its generation procedure token for token.

Network (``SoundStorm.net``, shapes for the official size in brackets):

* codes ``[B, N, Q]`` (Q = 7 levels, values ``0..K-1``, ``K`` = 1024 is the mask id) are looked
  up in one shared table ``code_embeds`` [(K+1)*Q, D] at row ``q*(K+1) + v`` and summed over the
  levels, giving ``[B, N, D]``; the semantic condition ``semantic_token_emb(ids)`` is added;
* a Conformer of ``depth`` blocks (half FF, rotary self-attention, conv module, half FF,
  post-LayerNorm) maps ``[B, N, D] -> [B, N, D]``;
* ``heads`` (Linear D -> Q*D) and ``to_logits`` (LayerNorm, then one D x K projection per level)
  give logits ``[B, N*Q, K]`` in frame-major order (row ``n*Q + q`` = frame n, level q).

Generation (:func:`generate`) follows AnyGPT's call ``generate(semantic, prompt, steps=3,
greedy=True)`` with ``num_full_sampling_levels=1`` and ``topk_pres=0.7``.  By default it
reproduces the released implementation exactly, including these quirks:

1. **Re-masking over all levels.**  After each level-0 pass the ``c_i`` least confident of
   all ``N*Q`` flattened positions are re-masked, where ``c_i = floor(cos(pi*i/(2*steps)) * N)``
   (computed in float32).  Confidences come from the new prediction at every position, so
   level-0 tokens fixed in earlier passes can be re-masked, and the budget is shared with the
   upper levels, which are re-masked anyway.
2. **All levels are written.**  Each level-0 pass writes its choice into every position that is
   currently masked, at all Q levels, so after the last level-0 pass the upper levels hold that
   pass's guesses (they are the next pass's input), not mask tokens.
3. **Prompt frames are overwritten at upper levels.**  Each greedy pass for level ``q >= 1``
   writes levels ``q..Q-1`` of *every* frame, the voice-prompt frames included.  The prompt's
   upper levels are therefore only seen by the network until the level-1 pass.
4. **Noise is drawn even when it cannot matter.**  Every sampling pass (level 0, ``i < steps``)
   draws one float32 uniform tensor ``[B, N*Q, K]`` (``N`` counts the prompt frames) and turns
   it into Gumbel noise ``-log(-log(u + 1e-10) + 1e-10)``, also in pass 0, where the
   temperature ``i/steps`` is floored to ``1e-10`` and the noise cannot change the argmax.
   Nothing else consumes random numbers, so ``torch.manual_seed(s)`` before the call fixes the
   result.  Sampling keeps the ``ceil((1 - topk_pres) * K)`` largest logits of each row.
5. **Ranking.**  Positions are ranked with ``argsort(descending=True)`` of ``1 - p(choice)``,
   the probability being the softmax of the top-k filtered logits *without* temperature.  Ties
   are broken the way torch's (unstable) CPU sort breaks them.
6. The last level-0 pass (``c = 0``) is a plain argmax and does not re-mask; the levels
   ``q >= 1`` get one argmax pass each: ``steps + Q`` network calls in total.

Additions that leave the default results unchanged:

* **Batches of different lengths.**  ``semantic_lengths`` / ``prompt_lengths`` describe padded
  batches.  Each item is laid out as ``[prompt | target | padding]``; padded frames are removed
  from attention by a key mask and zeroed around the depthwise convolution, so a valid frame
  never sees a padded one.  Mask counts, top-k, sampling and ranking are done per item on its
  valid positions, exactly as in a call with that item alone.  Random numbers are drawn per
  item, in batch order, ``[N_b*Q, K]`` each: for a batch without padding that is the very same
  stream as one ``[B, N*Q, K]`` draw.  With ``generator=[g_0, ..., g_{B-1}]`` (one generator per
  item) item ``b`` of a batched call equals the single-item call with generator ``g_b`` in the
  same state.  Equality is exact for the integer decisions unless a float decision margin is
  at the level of float rounding noise (the batched network runs on padded shapes).
* **Errors instead of crashes.**  An empty semantic sequence, ids out of range, or a prompt of
  the wrong width raise ``ValueError`` (the original code fails deep inside or silently indexes
  the wrong embedding row).
* **Long voice prompts.**  ``max_prompt_frames`` (default ``None`` = whole prompt, as AnyGPT
  does) keeps only the *last* ``max_prompt_frames`` frames of a longer prompt, i.e. the part
  that is closest to the target, matching how the model was trained (prompt = the frames that
  precede the target).
* **Speed.**  Attention uses ``torch.nn.functional.scaled_dot_product_attention``; the
  convolution module runs channels-last (pointwise convolutions as matrix products, the
  depthwise convolution as a channels-last 1 x k conv2d, the channel norm from one fused
  layer-norm kernel); the semantic condition embedding and the rotary tables are computed once
  per call; passes for level ``q >= 1`` only project the levels they keep.  The original
  formulation stays available (``set_kernels(model, "reference")``) to check and measure this.
  The model may be cast to bf16/fp16 (``load_soundstorm(dtype=...)``); rotary tables,
  sampling and ranking stay in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anygpt.checkpoint import load_strict, missing_file_error, read_state_dict

__all__ = [
    "SOUNDSTORM_OFFICIAL",
    "SOUNDSTORM_TINY",
    "SOUNDSTORM_CHECKPOINT_SOURCE",
    "SoundStorm",
    "SoundStormConfig",
    "SoundStormNet",
    "build_soundstorm",
    "generate",
    "load_soundstorm",
    "mask_counts",
    "set_kernels",
]

SOUNDSTORM_CHECKPOINT_SOURCE = (
    "fnlp/AnyGPT-speech-modules: soundstorm/speechtokenizer_soundstorm_mls.pt"
)


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class SoundStormConfig:
    """Sizes of a SoundStorm model.

    ``codebook_size`` (K) is the number of codes per acoustic level; the id ``K`` is the mask
    token.  ``num_quantizers`` (Q) counts the acoustic levels predicted (RVQ 2..Q+1).
    """

    codebook_size: int = 1024
    num_quantizers: int = 7
    dim: int = 1024
    depth: int = 12
    heads: int = 8
    dim_head: int = 128
    ff_mult: int = 4
    conv_expansion: int = 2
    conv_kernel: int = 31
    num_semantic_tokens: int = 1024
    rotary_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value <= 0:
                raise ValueError(f"SoundStormConfig.{f.name} must be positive, got {value}")
        if self.dim_head % 2:
            raise ValueError("dim_head must be even for the rotary embedding")

    @property
    def mask_id(self) -> int:
        """Id of the mask token at every acoustic level (= ``codebook_size``)."""
        return self.codebook_size

    @property
    def inner_dim(self) -> int:
        """Width of the attention projections, ``heads * dim_head``."""
        return self.heads * self.dim_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SoundStormConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SoundStormConfig fields: {unknown}")
        return cls(**data)


#: The model AnyGPT releases (351.4 M parameters).
SOUNDSTORM_OFFICIAL = SoundStormConfig()

#: A tiny model with the shapes of the reference test fixtures (for tests and debugging).
SOUNDSTORM_TINY = SoundStormConfig(
    codebook_size=64,
    num_quantizers=4,
    dim=64,
    depth=2,
    heads=2,
    dim_head=16,
    num_semantic_tokens=64,
)


# --------------------------------------------------------------------------------------------
# building blocks.  Attribute names and ``nn.Sequential`` positions follow the released
# checkpoint's key names; the placeholders (``nn.Identity``) stand where the original has
# dropout or a rearrange, and forward passes use the real layers directly.


class Scaled(nn.Module):
    """``fn(x) * scale`` (the Conformer's half-step feed-forward)."""

    def __init__(self, scale: float, fn: nn.Module) -> None:
        super().__init__()
        self.scale = scale
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) * self.scale


class PreNorm(nn.Module):
    """``fn(LayerNorm(x), ...)``."""

    def __init__(self, dim: int, fn: nn.Module, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fn = fn

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(self.norm(x), **kwargs)


class FeedForward(nn.Module):
    """Linear D -> mult*D, Swish, Linear -> D.  ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult), nn.SiLU(), nn.Identity(), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RotaryEmbedding(nn.Module):
    """Rotary position tables for the half-split layout, always computed in float32."""

    inv_freq: Tensor

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.register_buffer("inv_freq", self._inv_freq(None), persistent=False)

    def _inv_freq(self, device: torch.device | None) -> Tensor:
        exponent = torch.arange(0, self.dim, 2, device=device).float() / self.dim
        return 1.0 / (self.theta**exponent)

    def reset_buffers(self, device: torch.device | str) -> None:
        self.inv_freq = self._inv_freq(torch.device(device))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> RotaryEmbedding:
        super()._apply(fn, recurse)
        # A dtype cast of the model (bf16/fp16) must not degrade the frequencies.
        if not self.inv_freq.is_meta and self.inv_freq.dtype != torch.float32:
            self.reset_buffers(self.inv_freq.device)
        return self

    def tables(self, seq_len: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """cos and sin tables, each ``[seq_len, dim]`` float32."""
        inv_freq = self.inv_freq if device is None else self.inv_freq.to(device)
        t = torch.arange(seq_len, device=inv_freq.device).type_as(inv_freq)
        freqs = torch.outer(t, inv_freq)
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, H, N, dh] by position; computed in float32, returned in x's dtype."""
    xf = x.float()
    return ((xf * cos) + (_rotate_half(xf) * sin)).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with rotary q/k.  ``[B, N, D] -> [B, N, D]``.

    ``reference=True`` computes softmax(QK^T / sqrt(dh)) V explicitly, as the original does;
    otherwise ``F.scaled_dot_product_attention`` is used.
    """

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.reference = False
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(
        self, x: Tensor, *, rotary: tuple[Tensor, Tensor], key_mask: Tensor | None = None
    ) -> Tensor:
        b, n, _ = x.shape
        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        # (B, N, H*dh) -> (B, H, N, dh)
        q, k, v = (t.view(b, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        cos, sin = rotary
        q = _apply_rotary(q, cos, sin)
        k = _apply_rotary(k, cos, sin)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
        if self.reference:
            sim = (q @ k.transpose(-1, -2)) * self.dim_head**-0.5
            if mask is not None:
                sim = sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)
            out = sim.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class GLU(nn.Module):
    """First half * sigmoid(second half) along ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        out, gate = x.chunk(2, dim=self.dim)
        return out * gate.sigmoid()


class DepthwiseConv1d(nn.Module):
    """Depthwise conv over time with zero 'same' padding (odd kernels: k//2 each side).

    With a key mask ``[B, N]`` padded frames are zeroed before and after the convolution, so
    they contribute exactly what the zero padding of a shorter sequence would.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.padding = (pad, pad - (kernel_size + 1) % 2)
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Channels-last ``[B, N, C] -> [B, N, C]``.

        The tensor is viewed (no copy) as a channels-last ``[B, C, 1, N]`` image and convolved
        as a 1 x k depthwise conv2d, which oneDNN runs several times faster than a
        channels-first conv1d.
        """
        keep = None if mask is None else mask[:, :, None]  # (B, N, 1)
        if keep is not None:
            x = x.masked_fill(~keep, 0.0)
        left, right = self.padding
        if left != right:
            x, left = F.pad(x, (0, 0, left, right)), 0
        image = x.transpose(1, 2).unsqueeze(2)  # (B, C, 1, N), channels-last strides
        weight = self.conv.weight.unsqueeze(2)  # (C, 1, 1, k)
        out = F.conv2d(image, weight, self.conv.bias, padding=(0, left), groups=x.shape[-1])
        out = out.squeeze(2).transpose(1, 2)  # (B, N, C)
        if keep is not None:
            out = out.masked_fill(~keep, 0.0)
        return out

    def forward_channels_first(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Reference formulation on ``[B, C, N]``: pad, then conv1d."""
        keep = None if mask is None else mask[:, None, :]  # (B, 1, N)
        if keep is not None:
            x = x.masked_fill(~keep, 0.0)
        out = self.conv(F.pad(x, self.padding))
        if keep is not None:
            out = out.masked_fill(~keep, 0.0)
        return out


class ChanLayerNorm(nn.Module):
    """Gain-only layer norm over channels, ``var`` clamped (not offset) by eps.

    ``gamma`` keeps the checkpoint's [1, C, 1] shape.  eps is 1e-6 in float32 and 1e-4 in
    lower precision, as in the original.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))

    @staticmethod
    def _eps(x: Tensor) -> float:
        return 1e-6 if x.dtype == torch.float32 else 1e-4

    def forward(self, x: Tensor) -> Tensor:
        """Channels-last ``[B, N, C] -> [B, N, C]``."""
        # Mean and 1/std come from one fused layer-norm kernel run with eps 0 (much faster
        # than torch.var); clamping 1/std at eps**-0.5 is the original's max(var, eps).
        _, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), None, None, 0.0)
        scale = rstd.clamp(max=self._eps(x) ** -0.5)
        return (x - mean.to(x.dtype)) * scale.to(x.dtype) * self.gamma.view(-1)

    def forward_channels_first(self, x: Tensor) -> Tensor:
        """Reference formulation on ``[B, C, N]``."""
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * var.clamp(min=self._eps(x)).rsqrt() * self.gamma


class ConvModule(nn.Module):
    """Conformer convolution module.  ``[B, N, D] -> [B, N, D]``.

    LayerNorm -> pointwise D -> 2*E (E = expansion*D) -> GLU -> depthwise conv k -> Swish ->
    ChanLayerNorm(E) -> pointwise E -> D.  By default everything runs channels-last (the
    pointwise convolutions as matrix products, no transposes); ``reference=True`` runs the
    original channels-first formulation.
    """

    def __init__(self, dim: int, expansion: int, kernel_size: int, eps: float) -> None:
        super().__init__()
        inner = dim * expansion
        self.reference = False
        self.net1 = nn.Sequential(
            nn.LayerNorm(dim, eps=eps), nn.Identity(), nn.Conv1d(dim, inner * 2, 1), GLU(dim=1)
        )
        self.ds_conv = DepthwiseConv1d(inner, kernel_size)
        self.net2 = nn.Sequential(nn.SiLU(), ChanLayerNorm(inner), nn.Conv1d(inner, dim, 1))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        norm, _, pw_in, glu = self.net1
        _, chan_norm, pw_out = self.net2
        if self.reference:
            h = glu(pw_in(norm(x).transpose(1, 2)))  # (B, E, N)
            h = self.ds_conv.forward_channels_first(h, mask=mask)
            h = chan_norm.forward_channels_first(h * h.sigmoid())
            return pw_out(h).transpose(1, 2)
        h = F.linear(norm(x), pw_in.weight[..., 0], pw_in.bias)  # (B, N, 2E)
        out, gate = h.chunk(2, dim=-1)
        h = out * gate.sigmoid()  # (B, N, E)
        h = self.ds_conv(h, mask=mask)
        h = chan_norm(F.silu(h))
        return F.linear(h, pw_out.weight[..., 0], pw_out.bias)  # (B, N, D)


class ConformerBlock(nn.Module):
    """x += FF/2; x += Attn; x += Conv; x += FF/2; LayerNorm.  ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, cfg: SoundStormConfig) -> None:
        super().__init__()
        d, eps = cfg.dim, cfg.norm_eps
        self.ff1 = Scaled(0.5, PreNorm(d, FeedForward(d, cfg.ff_mult), eps))
        self.attn = PreNorm(d, Attention(d, cfg.heads, cfg.dim_head), eps)
        self.conv = ConvModule(d, cfg.conv_expansion, cfg.conv_kernel, eps)
        self.ff2 = Scaled(0.5, PreNorm(d, FeedForward(d, cfg.ff_mult), eps))
        self.post_norm = nn.LayerNorm(d, eps=eps)

    def forward(
        self, x: Tensor, *, rotary: tuple[Tensor, Tensor], key_mask: Tensor | None = None
    ) -> Tensor:
        x = self.ff1(x) + x
        x = self.attn(x, rotary=rotary, key_mask=key_mask) + x
        x = self.conv(x, mask=key_mask) + x
        x = self.ff2(x) + x
        return self.post_norm(x)


class Conformer(nn.Module):
    """Stack of Conformer blocks sharing one rotary table."""

    def __init__(self, cfg: SoundStormConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.depth))
        self.rotary_emb = RotaryEmbedding(cfg.dim_head, cfg.rotary_theta)

    def forward(
        self,
        x: Tensor,
        *,
        key_mask: Tensor | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
        intermediates: list[Tensor] | None = None,
    ) -> Tensor:
        """``[B, N, D] -> [B, N, D]``; block outputs are appended to ``intermediates``."""
        if rotary is None:
            rotary = self.rotary_emb.tables(x.shape[1])
        for block in self.layers:
            x = block(x, rotary=rotary, key_mask=key_mask)
            if intermediates is not None:
                intermediates.append(x)
        return x


class LevelProjection(nn.Module):
    """One D -> K projection per acoustic level.  ``[B, N, L, D] -> [B, N, L, K]``.

    ``weight`` [Q, D, K] and ``bias`` [1, 1, Q, K] have the layout of the einops ``EinMix``
    layer of the released checkpoint.
    """

    def __init__(self, levels: int, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(levels, dim, codebook_size))
        self.bias = nn.Parameter(torch.zeros(1, 1, levels, codebook_size))
        nn.init.uniform_(self.weight, -(dim**-0.5), dim**-0.5)

    def forward(self, x: Tensor, first_level: int = 0) -> Tensor:
        w = self.weight[first_level:]
        return torch.einsum("bnqd,qdl->bnql", x, w) + self.bias[:, :, first_level:]


class SoundStormNet(nn.Module):
    """Code embedding + Conformer + per-level heads (the checkpoint's ``net.*``)."""

    quantizer_offsets: Tensor

    def __init__(self, cfg: SoundStormConfig) -> None:
        super().__init__()
        self.config = cfg
        q, k, d = cfg.num_quantizers, cfg.codebook_size, cfg.dim
        self.conformer = Conformer(cfg)
        self.code_embeds = nn.Embedding((k + 1) * q, d)
        self.heads = nn.Sequential(nn.Linear(d, d * q))
        self.to_logits = nn.Sequential(
            nn.LayerNorm(d, eps=cfg.norm_eps), nn.Identity(), LevelProjection(q, d, k)
        )
        self.register_buffer("quantizer_offsets", self._offsets(None), persistent=False)

    def _offsets(self, device: torch.device | None) -> Tensor:
        cfg = self.config
        return torch.arange(cfg.num_quantizers, device=device) * (cfg.codebook_size + 1)

    def reset_buffers(self, device: torch.device | str) -> None:
        """Recompute the derived (non-persistent) buffers, e.g. after a meta-device build."""
        self.quantizer_offsets = self._offsets(torch.device(device))
        self.conformer.rotary_emb.reset_buffers(device)

    def embed(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """Summed level embeddings plus condition: codes ``[B, N, Q]`` -> ``[B, N, D]``."""
        x = self.code_embeds(codes + self.quantizer_offsets).sum(dim=2)
        return x if cond is None else x + cond

    def project(self, h: Tensor, first_level: int = 0, head_embeds: list | None = None) -> Tensor:
        """Conformer output ``[B, N, D]`` -> logits ``[B, N, L, K]`` for levels ``first_level..Q-1``.

        Only the rows of ``heads`` for the requested levels are computed.
        """
        b, n, d = h.shape
        lin = self.heads[0]
        w, bias = lin.weight, lin.bias
        if first_level:
            w, bias = w[first_level * d :], bias[first_level * d :]
        e = F.linear(h, w, bias).view(b, n, -1, d)  # (B, N, L, D)
        if head_embeds is not None:
            head_embeds.append(e.reshape(b, -1, d))
        norm, _, proj = self.to_logits
        return proj(norm(e), first_level)

    def forward(
        self,
        codes: Tensor,
        *,
        cond: Tensor | None = None,
        mask: Tensor | None = None,
        return_intermediates: bool = False,
    ) -> Tensor | dict[str, Any]:
        """Logits for a flattened code grid.

        Args:
            codes: ``[B, N*Q]`` int64, frame-major (index ``n*Q + q``), mask id = K.
            cond: ``[B, N, D]`` condition added to every frame (or ``[B, D]``).
            mask: ``[B, N]`` bool key mask, True = valid frame.
        Returns:
            logits ``[B, N*Q, K]``; with ``return_intermediates``, a dict with ``logits``,
            ``conformer_blocks`` (list of ``[B, N, D]``) and ``head_embeds`` ``[B, N*Q, D]``.
        """
        q = self.config.num_quantizers
        b, nq = codes.shape
        if nq % q:
            raise ValueError(f"sequence length {nq} is not a multiple of {q} quantizers")
        if cond is not None and cond.ndim == 2:
            cond = cond[:, None, :]
        x = self.embed(codes.view(b, nq // q, q), cond)
        blocks: list[Tensor] | None = [] if return_intermediates else None
        heads: list[Tensor] | None = [] if return_intermediates else None
        h = self.conformer(x, key_mask=mask, intermediates=blocks)
        logits = self.project(h, head_embeds=heads).reshape(b, nq, -1)
        if not return_intermediates:
            return logits
        return {"logits": logits, "conformer_blocks": blocks, "head_embeds": heads[0]}


class SoundStorm(nn.Module):
    """Semantic-conditioned masked acoustic token model (checkpoint root).

    ``net`` is the :class:`SoundStormNet`; ``semantic_token_emb`` embeds RVQ-1 ids.
    Use :func:`generate` to produce acoustic tokens.
    """

    def __init__(self, cfg: SoundStormConfig) -> None:
        super().__init__()
        self.config = cfg
        self.net = SoundStormNet(cfg)
        self.semantic_token_emb = nn.Embedding(cfg.num_semantic_tokens, cfg.dim)

    @property
    def device(self) -> torch.device:
        return self.semantic_token_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.semantic_token_emb.weight.dtype

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute derived buffers on ``device`` (default: where the weights are)."""
        self.net.reset_buffers(self.device if device is None else device)

    def forward(
        self,
        semantic_ids: Tensor,
        codes: Tensor,
        mask: Tensor | None = None,
        return_intermediates: bool = False,
    ) -> Tensor | dict[str, Any]:
        """One network call as made by each generation pass.

        Args:
            semantic_ids: ``[B, N]`` int64 RVQ-1 ids (the condition of each frame).
            codes: ``[B, N, Q]`` int64 acoustic grid, mask id K where unknown.
            mask: optional ``[B, N]`` bool key mask (True = valid frame).
        Returns:
            logits ``[B, N*Q, K]``, or a dict that adds ``cond`` ``[B, N, D]``,
            ``conformer_blocks`` and ``head_embeds`` (see :meth:`SoundStormNet.forward`).
        """
        cond = self.semantic_token_emb(semantic_ids)
        b, n, q = codes.shape
        out = self.net(
            codes.reshape(b, n * q), cond=cond, mask=mask, return_intermediates=return_intermediates
        )
        if return_intermediates:
            assert isinstance(out, dict)
            out["cond"] = cond
        return out


# --------------------------------------------------------------------------------------------
# builders and loading


def build_soundstorm(cfg: SoundStormConfig = SOUNDSTORM_OFFICIAL) -> SoundStorm:
    """Build an (untrained) SoundStorm; build under ``torch.device('meta')`` for shapes only."""
    return SoundStorm(cfg)


def set_kernels(model: nn.Module, kind: str) -> None:
    """Select the kernels of every block: ``"fast"`` (default) or ``"reference"``.

    ``"reference"`` is the original formulation (explicit softmax attention, channels-first
    convolution module with a two-pass variance); it gives the same numbers up to float
    rounding and is kept to check and measure the fast path.
    """
    if kind not in ("fast", "reference"):
        raise ValueError(f"unknown kernels {kind!r}; use 'fast' or 'reference'")
    for m in model.modules():
        if isinstance(m, (Attention, ConvModule)):
            m.reference = kind == "reference"


def load_soundstorm(
    path: str | Path,
    cfg: SoundStormConfig = SOUNDSTORM_OFFICIAL,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SoundStorm:
    """Load a SoundStorm checkpoint (plain state dict; safetensors or ``.pt``) strictly.

    The model is built on the meta device, filled from the file, then moved to ``device`` and
    cast to ``dtype`` (float32 reproduces AnyGPT; bf16/fp16 are for GPUs).  Returned in eval
    mode.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path, "SoundStorm checkpoint", SOUNDSTORM_CHECKPOINT_SOURCE)
    state = read_state_dict(path, what="SoundStorm checkpoint")
    with torch.device("meta"):
        model = build_soundstorm(cfg)
    load_strict(model, state, what="SoundStorm checkpoint")
    model.reset_buffers("cpu")
    return model.to(device=device, dtype=dtype).eval()


# --------------------------------------------------------------------------------------------
# generation


def mask_counts(steps: int, lengths: Sequence[int]) -> Tensor:
    """Tokens kept masked after each level-0 pass: ``[steps+1, B]`` int64.

    ``floor(cos(pi/2 * i/steps) * N_b)`` evaluated in float32 exactly as the original (the
    last value is 0 because cos(pi/2) is slightly negative in float32).
    """
    times = torch.linspace(0.0, 1.0, steps + 1)
    probs = torch.cos(times * math.pi / 2)
    n = torch.tensor(list(lengths), dtype=torch.long)
    return (probs[:, None] * n[None, :]).long()


def _top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest values of each row, the rest become -inf."""
    val, ind = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, ind, val)


def _gumbel_(u: Tensor) -> Tensor:
    """In place: uniform -> Gumbel noise, ``-log(-log(u + 1e-10) + 1e-10)``."""
    return u.add_(1e-10).log_().neg_().add_(1e-10).log_().neg_()


def _lengths(lengths: Sequence[int] | Tensor | None, batch: int, full: int, name: str) -> list:
    if lengths is None:
        return [full] * batch
    out = [int(v) for v in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
    if len(out) != batch:
        raise ValueError(f"{name} has {len(out)} entries for a batch of {batch}")
    if any(v < 0 or v > full for v in out):
        raise ValueError(f"{name} {out} must lie in 0..{full}")
    return out


def _generators(generator: Any, batch: int) -> list[torch.Generator | None]:
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * batch
    gens = list(generator)
    if len(gens) != batch or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError("generator must be None, a torch.Generator or one per batch item")
    return gens


def _check_range(t: Tensor, high: int, what: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= high):
        raise ValueError(f"{what} must lie in 0..{high - 1}, got {int(t.min())}..{int(t.max())}")


@torch.inference_mode()
def generate(
    model: SoundStorm,
    semantic: Tensor,
    prompt: Tensor | None = None,
    steps: int = 3,
    greedy: bool = True,
    topk_pres: float = 0.7,
    semantic_lengths: Sequence[int] | Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    *,
    prompt_lengths: Sequence[int] | Tensor | None = None,
    num_full_sampling_levels: int = 1,
    max_prompt_frames: int | None = None,
    pass_hook: Callable[[int, int, Tensor], None] | None = None,
) -> Tensor:
    """Predict the acoustic levels for semantic tokens, optionally in a prompt's voice.

    Args:
        model: a :class:`SoundStorm`.
        semantic: ``[B, n]`` int64 RVQ-1 ids (padded when ``semantic_lengths`` is given).
        prompt: optional ``[B, n_p, 1+Q]`` voice prompt, column 0 = its RVQ-1 ids, then its Q
            acoustic levels (padded when ``prompt_lengths`` is given).
        steps: level-0 refinement steps (AnyGPT uses 3): ``steps + 1`` passes at level 0.
        greedy: argmax in the deterministic passes (AnyGPT: True).  With False every pass
            samples, as in the original.
        topk_pres: sampling keeps the ``ceil((1 - topk_pres) * K)`` best logits.
        semantic_lengths: ``[B]`` valid lengths of ``semantic`` rows (default: all ``n``).
        generator: ``None`` = the global RNG of the model's device (reproduces the original
            under ``torch.manual_seed``); one ``torch.Generator`` used for all items in batch
            order; or one generator per item.  A CPU generator may drive a GPU model: the
            noise is then drawn on the CPU and copied.
        prompt_lengths: ``[B]`` valid prompt frames per item (0 = no prompt for that item).
        num_full_sampling_levels: levels refined iteratively (AnyGPT: 1).
        max_prompt_frames: keep only the last this-many frames of longer prompts
            (``None`` = whole prompt, as AnyGPT).
        pass_hook: called as ``hook(level, pass_index, tokens[B, N*Q])`` before each network
            call, with the flattened input grid (prompt frames first, mask id = K).

    Returns:
        ``[B, n, 1+Q]`` int64: column 0 = the semantic ids, then levels RVQ 2..Q+1.  With
        ``semantic_lengths``, rows at or beyond an item's length are filled with -1.

    Raises:
        ValueError: empty semantic sequence, ids out of range, or inconsistent shapes.
    """
    cfg = model.config
    nq, k_codes, mask_id = cfg.num_quantizers, cfg.codebook_size, cfg.mask_id
    device = model.device
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= topk_pres < 1.0:
        raise ValueError(f"topk_pres must lie in [0, 1), got {topk_pres}")
    if max_prompt_frames is not None and max_prompt_frames < 0:
        raise ValueError("max_prompt_frames must be >= 0")
    if semantic.ndim != 2:
        raise ValueError(f"semantic must be [B, n], got shape {tuple(semantic.shape)}")
    batch, n_max = semantic.shape
    if batch == 0:
        raise ValueError("semantic has an empty batch")
    sem_len = _lengths(semantic_lengths, batch, n_max, "semantic_lengths")
    if n_max == 0 or min(sem_len) == 0:
        raise ValueError(
            "empty semantic sequence: SoundStorm needs at least one semantic token per item"
        )
    semantic = semantic.long()

    prompts: list[Tensor] = []
    if prompt is not None:
        if prompt.ndim != 3 or prompt.shape[0] != batch or prompt.shape[2] != nq + 1:
            raise ValueError(
                f"prompt must be [B={batch}, n_p, 1+Q={nq + 1}], got {tuple(prompt.shape)}"
            )
        p_len = _lengths(prompt_lengths, batch, prompt.shape[1], "prompt_lengths")
        for b in range(batch):
            start = 0
            if max_prompt_frames is not None:
                start = max(0, p_len[b] - max_prompt_frames)
            prompts.append(prompt[b, start : p_len[b]].long())
    elif prompt_lengths is not None:
        raise ValueError("prompt_lengths given without a prompt")
    else:
        prompts = [semantic.new_zeros(0, nq + 1)] * batch

    for b in range(batch):
        _check_range(semantic[b, : sem_len[b]], cfg.num_semantic_tokens, "semantic ids")
        _check_range(prompts[b][:, 0], cfg.num_semantic_tokens, "prompt semantic ids")
        _check_range(prompts[b][:, 1:], k_codes, "prompt acoustic ids")

    # Layout per item: [prompt | target | padding].
    p_frames = [int(p.shape[0]) for p in prompts]
    lengths = [p + s for p, s in zip(p_frames, sem_len)]
    n_total = max(lengths)
    padded = min(lengths) != n_total
    cond_ids = torch.zeros(batch, n_total, dtype=torch.long)
    grid = torch.full((batch, n_total, nq), mask_id, dtype=torch.long)
    editable = torch.zeros(batch, n_total, dtype=torch.bool)
    for b in range(batch):
        p, n_b = p_frames[b], lengths[b]
        cond_ids[b, :p] = prompts[b][:, 0].cpu()
        cond_ids[b, p:n_b] = semantic[b, : sem_len[b]].cpu()
        grid[b, :p] = prompts[b][:, 1:].cpu()
        editable[b, p:n_b] = True
    cond_ids, grid, editable = cond_ids.to(device), grid.to(device), editable.to(device)
    key_mask = None
    if padded:
        key_mask = (
            torch.arange(n_total, device=device)[None, :]
            < torch.tensor(lengths, device=device)[:, None]
        )

    net = model.net
    # Constant over all passes: condition embedding and rotary tables.
    cond = model.semantic_token_emb(cond_ids)
    rotary = net.conformer.rotary_emb.tables(n_total)

    def logits_for(first_level: int) -> Tensor:
        x = net.embed(grid, cond)
        h = net.conformer(x, key_mask=key_mask, rotary=rotary)
        return net.project(h, first_level).float()  # (B, N, L, K)

    gens = _generators(generator, batch)
    counts = mask_counts(steps, lengths).tolist()  # [steps+1][B]
    top_k = math.ceil((1 - topk_pres) * k_codes)
    to_fill = editable[:, :, None].expand(batch, n_total, nq).clone()

    for q in range(nq):
        full = q < num_full_sampling_levels
        schedule = counts if full else [[0] * batch]
        for i, count in enumerate(schedule):
            if pass_hook is not None:
                pass_hook(q, i, grid.reshape(batch, -1).clone())
            sample = [not greedy or c > 0 for c in count]
            if not full and not any(sample):
                # Greedy pass for one upper level: only levels q.. are needed.
                choice = logits_for(q).argmax(dim=-1)  # (B, N, Q-q)
                grid[:, :, q:] = choice
                continue

            logits = logits_for(0).reshape(batch, n_total * nq, k_codes)
            choice = logits.argmax(dim=-1) if not all(sample) else None
            filtered = None
            if any(sample):
                filtered = _top_k(logits, top_k)
                noise = _draw_uniform(filtered, lengths, nq, sample, gens)
                temperature = 1.0 * i / steps
                sampled = (filtered / max(temperature, 1e-10) + _gumbel_(noise)).argmax(dim=-1)
                if choice is None:
                    choice = sampled
                else:
                    pick = torch.tensor(sample, device=device)[:, None]
                    choice = torch.where(pick, sampled, choice)
            assert choice is not None
            choice = choice.view(batch, n_total, nq)
            if not full:
                grid[:, :, q:] = choice[:, :, q:]
                continue

            grid = torch.where(to_fill, choice, grid)
            remask = [c > 0 for c in count]
            if not any(remask):
                continue
            assert filtered is not None  # c > 0 always takes the sampling branch
            probs = filtered.softmax(dim=-1)
            scores = 1 - probs.gather(-1, choice.view(batch, -1, 1)).squeeze(-1)  # (B, N*Q)
            for b in range(batch):
                if not remask[b]:
                    continue
                n_b = lengths[b]
                order = scores[b, : n_b * nq].argsort(dim=-1, descending=True)
                marked = torch.zeros(n_b * nq, dtype=torch.bool, device=device)
                marked[order[: count[b]]] = True
                marked = marked.view(n_b, nq)
                marked[:, q + 1 :] = True
                marked &= editable[b, :n_b, None]
                to_fill[b] = False
                to_fill[b, :n_b] = marked
                grid[b, :n_b] = grid[b, :n_b].masked_fill(marked, mask_id)

    out = torch.full((batch, n_max, nq + 1), -1, dtype=torch.long, device=device)
    for b in range(batch):
        p, n_b = p_frames[b], sem_len[b]
        out[b, :n_b, 0] = semantic[b, :n_b].to(device)
        out[b, :n_b, 1:] = grid[b, p : p + n_b]
    return out


def _draw_uniform(
    like: Tensor,
    lengths: Sequence[int],
    nq: int,
    sample: Sequence[bool],
    gens: Sequence[torch.Generator | None],
) -> Tensor:
    """Uniform [0, 1) noise shaped like ``like`` [B, N*Q, K], drawn item by item.

    Item b (if ``sample[b]``) takes ``N_b*Q*K`` consecutive values from its generator; for an
    unpadded batch on one generator that is exactly one ``[B, N*Q, K]`` draw.  Padded and
    non-sampling rows hold 0.5 (they are never used).
    """
    noise = torch.full_like(like, 0.5)
    for b, gen in enumerate(gens):
        if not sample[b]:
            continue
        rows = lengths[b] * nq
        if gen is not None and gen.device != like.device:
            part = torch.empty(rows, like.shape[-1], device=gen.device)
            noise[b, :rows] = part.uniform_(0, 1, generator=gen).to(like.device)
        else:
            noise[b, :rows].uniform_(0, 1, generator=gen)
    return noise
