"""SEED tokenizer v2: images to 32 discrete codes and codes to an unCLIP image embedding.

A from-scratch implementation of the image tokenizer AnyGPT uses (SEED-2, AILab-CVC), compatible
with the released checkpoints:

* ``seed_quantizer.pt`` (``AILab-CVC/seed-tokenizer-2``): causal Q-Former, codebook and decoder
  side.  The file also holds 146 training-time tensors that inference does not use; they are
  dropped and reported.
* ``eva_vit_g.pth`` (LAVIS): the EVA ViT-g/14 image encoder (39 blocks), stored without the
  ``visual_encoder.`` prefix it has inside the SEED model.

Encode (:meth:`SeedTokenizer.encode`)::

    pixels [B,3,224,224] -> EVA ViT-g [B,257,1408] -> ln_vision -> causal Q-Former (32 queries)
    [B,32,768] -> encode head [B,32,32] -> nearest of 8192 codebook rows -> codes [B,32]

Decode (:meth:`SeedTokenizer.decode_embedding`)::

    codes [B,32] -> codebook rows [B,32,32] -> decode head [B,32,768] -> + pos_embed_image
    -> 4 ViT blocks -> image_down [B,32,32] -> flatten [B,1024] -> distill_image_proj [B,1024]

The 1024-d result is a CLIP ViT-H/14 image embedding for Stable Diffusion 2.1 unCLIP
(see :mod:`anygpt.models.unclip`).  Module and parameter names follow the original code so
that state-dict keys match the released files key for key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anygpt.checkpoint import CheckpointError, load_strict, read_state_dict

logger = logging.getLogger(__name__)

#: CLIP normalisation constants used by SEED's image transform.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Prefix of the EVA ViT keys inside the whole SEED model (absent in ``eva_vit_g.pth``).
VIT_PREFIX = "visual_encoder."

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class SeedConfig:
    """Every size of the SEED tokenizer.  Defaults are the released (official) sizes."""

    # EVA ViT image encoder
    image_size: int = 224
    patch_size: int = 14
    vit_width: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16
    vit_mlp_hidden: int = 6144  # int(1408 * 4.3637)
    vit_ln_eps: float = 1e-6
    ln_vision_eps: float = 1e-5
    # causal Q-Former (BERT-base layout, post-LN)
    num_queries: int = 32
    qformer_hidden: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_ffn: int = 3072
    qformer_ln_eps: float = 1e-12
    cross_attention_freq: int = 2  # cross-attention in layers 0, f, 2f, ...
    qformer_max_positions: int = 512  # length of the stored position_ids buffer
    # vector quantiser
    codebook_size: int = 8192
    codebook_dim: int = 32
    # decoder side
    decode_depth: int = 4  # blocks_image (and the unused reconstruction blocks)
    decode_heads: int = 12
    decode_mlp_hidden: int = 3072
    decode_ln_eps: float = 1e-6
    image_down_dims: tuple[int, ...] = (256, 128, 32)
    image_feature_dim: int = 1024  # unCLIP image-embedding width
    # derived
    num_patches: int = field(init=False)
    vit_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.image_down_dims = tuple(int(d) for d in self.image_down_dims)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.patch_size}")
        for width, heads, what in (
            (self.vit_width, self.vit_heads, "vit"),
            (self.qformer_hidden, self.qformer_heads, "qformer"),
            (self.qformer_hidden, self.decode_heads, "decode"),
        ):
            if width % heads:
                raise ValueError(f"{what}: width {width} is not divisible by {heads} heads")
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.vit_tokens = self.num_patches + 1

    @property
    def distill_in_dim(self) -> int:
        """Input width of ``distill_image_proj``: the flattened ``image_down`` output."""
        return self.num_queries * self.image_down_dims[-1]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        d["image_down_dims"] = list(self.image_down_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeedConfig:
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(d) - known - {"num_patches", "vit_tokens"})
        if unknown:
            raise ValueError(f"unknown SeedConfig fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in known})


#: The released SEED-2 tokenizer as used by AnyGPT.
SEED_OFFICIAL = SeedConfig()

#: A tiny SEED with the official layout (32 queries, 12 decode heads, image_down 256/128/32);
#: the same sizes as the golden fixtures.  For tests and debug bundles.
SEED_TINY = SeedConfig(
    image_size=56,
    vit_width=48,
    vit_depth=2,
    vit_heads=4,
    vit_mlp_hidden=209,  # int(48 * 4.3637)
    qformer_hidden=48,
    qformer_layers=2,
    qformer_heads=4,
    qformer_ffn=96,
    codebook_size=128,
    decode_depth=2,
    decode_mlp_hidden=192,
    image_feature_dim=32,
)


# --------------------------------------------------------------------------------------------
# EVA ViT
# --------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv: [B,3,H,W] -> [B,(H/p)*(W/p),width], row-major."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class EvaAttention(nn.Module):
    """Multi-head self-attention with a fused, key-bias-free qkv projection.

    The qkv bias is ``cat(q_bias, 0, v_bias)``: keys have no bias.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x [B,N,C] -> [B,N,C]."""
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d), scale d^-0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EvaBlock(nn.Module):
    """Pre-norm transformer block of EVA ViT-g (no layer-scale, no relative position bias)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = EvaAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaViT(nn.Module):
    """EVA ViT as used by BLIP-2 / SEED: all tokens out, no final norm.

    [B,3,S,S] -> [B,1+(S/p)^2,width].  Key names equal those of LAVIS ``eva_vit_g.pth``.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        mlp_hidden: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        num_tokens = (image_size // patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        self.patch_embed = PatchEmbed(patch_size, width)
        self.blocks = nn.ModuleList(EvaBlock(width, heads, mlp_hidden, eps) for _ in range(depth))

    def forward(self, x: Tensor, record: dict[str, Tensor] | None = None) -> Tensor:
        patches = self.patch_embed(x)  # (B, P, C)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        h = torch.cat((cls, patches), dim=1) + self.pos_embed
        if record is not None:
            record["vit_patch_embed"] = patches
            record["vit_tokens_in"] = h
        for i, block in enumerate(self.blocks):
            h = block(h)
            if record is not None:
                record[f"vit_block{i}_out"] = h
        return h


# --------------------------------------------------------------------------------------------
# Causal Q-Former (query side of a BERT encoder with cross-attention)
# --------------------------------------------------------------------------------------------


class BertSelfAttention(nn.Module):
    """query/key/value projections; keys and values may come from a wider encoder (cross)."""

    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, x: Tensor, context: Tensor | None = None, causal: bool = False) -> Tensor:
        """x [B,Q,H], context [B,N,W] or None (self-attention) -> [B,Q,H]."""
        kv = x if context is None else context
        b, q_len, hidden = x.shape
        d = hidden // self.heads
        q = self.query(x).view(b, q_len, self.heads, d).transpose(1, 2)
        k = self.key(kv).view(b, kv.shape[1], self.heads, d).transpose(1, 2)
        v = self.value(kv).view(b, kv.shape[1], self.heads, d).transpose(1, 2)
        # The original adds (1 - mask) * -10000 before the softmax; exp(-10000) is exactly 0
        # in every float format, so a boolean causal mask gives the same probabilities.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return out.transpose(1, 2).reshape(b, q_len, hidden)


class DenseLayerNorm(nn.Module):
    """dense -> (+ residual) -> LayerNorm (BERT's post-LN output sub-layer)."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads, kv_width)
        self.output = DenseLayerNorm(hidden, hidden, eps)

    def forward(self, x: Tensor, context: Tensor | None = None, causal: bool = False) -> Tensor:
        return self.output(self.self(x, context, causal), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class QFormerLayer(nn.Module):
    """Self-attention -> [cross-attention to the image] -> query FFN, each post-LN."""

    def __init__(
        self, hidden: int, heads: int, ffn: int, eps: float, encoder_width: int, cross: bool
    ) -> None:
        super().__init__()
        self.has_cross_attention = cross
        self.attention = BertAttention(hidden, heads, hidden, eps)
        if cross:
            self.crossattention = BertAttention(hidden, heads, encoder_width, eps)
        self.intermediate_query = BertIntermediate(hidden, ffn)
        self.output_query = DenseLayerNorm(ffn, hidden, eps)

    def forward(self, x: Tensor, image: Tensor, causal: bool) -> Tensor:
        """x [B,Q,H], image [B,N,W] -> [B,Q,H]."""
        x = self.attention(x, causal=causal)
        if self.has_cross_attention:
            x = self.crossattention(x, context=image)
        return self.output_query(self.intermediate_query(x), x)


class QFormerEmbeddings(nn.Module):
    """Only a LayerNorm on the query tokens (the text embeddings are not part of SEED)."""

    def __init__(self, hidden: int, eps: float, max_positions: int) -> None:
        super().__init__()
        # Unused at inference but stored in the released file (a persistent buffer there).
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0))
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, queries: Tensor) -> Tensor:
        return self.LayerNorm(queries)


class QFormerEncoder(nn.Module):
    def __init__(self, layers: list[QFormerLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class QFormerBert(nn.Module):
    def __init__(self, embeddings: QFormerEmbeddings, encoder: QFormerEncoder) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder

    def forward(
        self, queries: Tensor, image: Tensor, record: dict[str, Tensor] | None = None
    ) -> Tensor:
        """queries [B,Q,H], image [B,N,W] -> last hidden state [B,Q,H].

        Self-attention among the queries is causal (query i sees queries 0..i).
        """
        h = self.embeddings(queries)
        if record is not None:
            record["qformer_embeddings_out"] = h
        for i, layer in enumerate(self.encoder.layer):
            h = layer(h, image, causal=True)
            if record is not None:
                record[f"qformer_layer{i}_out"] = h
        return h


class QFormer(nn.Module):
    """Holder so that keys read ``Qformer.bert.*`` as in the released checkpoint."""

    def __init__(self, bert: QFormerBert) -> None:
        super().__init__()
        self.bert = bert


# --------------------------------------------------------------------------------------------
# Quantiser and decoder side
# --------------------------------------------------------------------------------------------


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook (squared L2, no normalisation)."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def indices(self, z: Tensor) -> Tensor:
        """z [..., D] -> LongTensor [...] of argmin_k ||z||^2 + ||e_k||^2 - 2 z.e_k.

        Computed in float32 even for a half-precision model, so that near-ties are decided
        as in a float32 run; ``argmin`` keeps the first index on exact ties.
        """
        flat = z.reshape(-1, z.shape[-1]).float()
        codebook = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        return dist.argmin(dim=1).view(z.shape[:-1])

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [...] -> codebook rows [..., D]."""
        return self.embedding(codes)


class DecodeAttention(nn.Module):
    """timm-style attention: fused qkv with bias, scale d^-0.5."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DecodeBlock(nn.Module):
    """Pre-norm ViT block of the SEED decoder side (``blocks`` and ``blocks_image``)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = DecodeAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _mlp_head(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear -> Tanh -> Linear (indices 0 and 2, as the checkpoint names them)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, d_out))


def _image_down(d_in: int, dims: Sequence[int]) -> nn.Sequential:
    """Bias-free Linear stack with ReLU between: d_in -> dims[0] -> ... -> dims[-1]."""
    layers: list[nn.Module] = []
    prev = d_in
    for i, d in enumerate(dims):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(prev, d, bias=False))
        prev = d
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# Whole tokenizer
# --------------------------------------------------------------------------------------------


class SeedTokenizer(nn.Module):
    """SEED-2 image tokenizer.  Build it with :func:`build_seed`, load it with :func:`load_seed`.

    Attribute names (and their registration order) reproduce the released state-dict keys:
    ``query_tokens``, ``pos_embed``, ``pos_embed_image``, ``visual_encoder.*``, ``ln_vision.*``,
    ``Qformer.bert.*``, ``quantize.*``, ``encode_task_layer.*``, ``decode_task_layer.*``,
    ``blocks.*``, ``blocks_image.*``, ``image_down.*``, ``distill_image_proj.*``.
    ``pos_embed`` and ``blocks`` (a reconstruction branch) are stored in the checkpoint but
    unused at inference.
    """

    def __init__(
        self,
        cfg: SeedConfig,
        *,
        visual_encoder: EvaViT,
        qformer: QFormer,
        quantize: VectorQuantizer,
        blocks: nn.ModuleList,
        blocks_image: nn.ModuleList,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        q, h = cfg.num_queries, cfg.qformer_hidden
        self.query_tokens = nn.Parameter(torch.zeros(1, q, h))
        self.pos_embed = nn.Parameter(torch.zeros(1, q, h))
        self.pos_embed_image = nn.Parameter(torch.zeros(1, q, h))
        self.visual_encoder = visual_encoder
        self.ln_vision = nn.LayerNorm(cfg.vit_width, eps=cfg.ln_vision_eps)
        self.Qformer = qformer
        self.quantize = quantize
        self.encode_task_layer = _mlp_head(h, h, cfg.codebook_dim)
        self.decode_task_layer = _mlp_head(cfg.codebook_dim, cfg.codebook_dim, h)
        self.blocks = blocks
        self.blocks_image = blocks_image
        self.image_down = _image_down(h, cfg.image_down_dims)
        self.distill_image_proj = nn.Linear(cfg.distill_in_dim, cfg.image_feature_dim)

    # --- properties ---------------------------------------------------------------------

    @property
    def codes_per_image(self) -> int:
        return self.cfg.num_queries

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def embed_dim(self) -> int:
        """Width of the unCLIP image embedding that :meth:`decode_embedding` returns."""
        return self.cfg.image_feature_dim

    # --- encode -------------------------------------------------------------------------

    def _ln_vision(self, x: Tensor) -> Tensor:
        # Computed in float32 whatever the model dtype, as the original does.
        w, b = self.ln_vision.weight, self.ln_vision.bias
        out = F.layer_norm(
            x.float(), w.shape, w.float(), b.float() if b is not None else None, self.ln_vision.eps
        )
        return out.to(x.dtype)

    @torch.no_grad()
    def encode(
        self, pixel_values: Tensor, *, intermediates: dict[str, Tensor] | None = None
    ) -> Tensor:
        """pixel_values [B,3,S,S] (CLIP-normalised, S = ``cfg.image_size``) -> codes [B,32] int64.

        If ``intermediates`` is a dict, it is filled with the internal tensors (``vit_*``,
        ``ln_vision_out``, ``qformer_*``, ``pre_quant``, ``quant``, ``query_output_up``).
        """
        s = self.cfg.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"expected pixel_values of shape [B,3,{s},{s}], got {list(pixel_values.shape)}; "
                "use preprocess_images() to resize and normalise images"
            )
        dtype = self.query_tokens.dtype
        x = pixel_values.to(device=self.query_tokens.device, dtype=dtype)
        rec = intermediates
        vit_out = self.visual_encoder(x, rec)  # (B, 1+P, W)
        image = self._ln_vision(vit_out)
        queries = self.query_tokens.expand(x.shape[0], -1, -1)
        q_out = self.Qformer.bert(queries, image, rec)  # (B, Q, H)
        pre_quant = self.encode_task_layer(q_out)  # (B, Q, D)
        codes = self.quantize.indices(pre_quant)  # (B, Q)
        if rec is not None:
            rec["vit_out"] = vit_out
            rec["ln_vision_out"] = image
            rec["qformer_out"] = q_out
            rec["pre_quant"] = pre_quant
            # straight-through value z + (e - z), as the original returns it
            quant = pre_quant + (self.quantize.lookup(codes) - pre_quant)
            rec["quant"] = quant
            rec["query_output_up"] = self.decode_task_layer(quant)
            rec["codes"] = codes
        return codes

    # --- decode -------------------------------------------------------------------------

    def check_codes(self, codes: Tensor) -> Tensor:
        """Validate codes [B,Q] (Q = ``cfg.num_queries``, values in [0, codebook_size))."""
        if not isinstance(codes, Tensor):
            codes = torch.as_tensor(codes)
        if codes.ndim == 1:
            raise ValueError(
                f"expected codes of shape [B,{self.cfg.num_queries}], got a 1-D tensor; "
                "add a batch dimension (codes[None])"
            )
        if codes.ndim != 2 or codes.shape[1] != self.cfg.num_queries:
            raise ValueError(
                f"SEED decodes exactly {self.cfg.num_queries} codes per image, got shape "
                f"{list(codes.shape)}; use fit_codes() to pad or truncate explicitly"
            )
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise TypeError(f"codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cfg.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.cfg.codebook_size}), got range "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        return codes.long()

    @torch.no_grad()
    def decode_embedding(
        self, codes: Tensor, *, intermediates: dict[str, Tensor] | None = None
    ) -> Tensor:
        """codes [B,32] -> unCLIP image embedding [B,image_feature_dim] (1024 at full size).

        If ``intermediates`` is a dict, it is filled with ``codebook_entry``,
        ``decode_task_out``, ``blocks_image_in``, ``blocks_image{i}_out``, ``image_down_out``.
        """
        codes = self.check_codes(codes).to(self.query_tokens.device)
        rec = intermediates
        entry = self.quantize.lookup(codes)  # (B, Q, D)
        up = self.decode_task_layer(entry)  # (B, Q, H)
        h = up + self.pos_embed_image
        if rec is not None:
            rec["codebook_entry"] = entry
            rec["decode_task_out"] = up
            rec["blocks_image_in"] = h
        for i, block in enumerate(self.blocks_image):
            h = block(h)
            if rec is not None:
                rec[f"blocks_image{i}_out"] = h
        down = self.image_down(h)  # (B, Q, 32)
        out = self.distill_image_proj(down.flatten(1))  # (B, image_feature_dim)
        if rec is not None:
            rec["image_down_out"] = down
            rec["image_embed"] = out
        return out

    # --- state-dict parts ---------------------------------------------------------------

    def vit_state_dict(self) -> dict[str, Tensor]:
        """The EVA ViT weights with keys as in ``eva_vit_g.pth`` (no ``visual_encoder.``)."""
        return self.visual_encoder.state_dict()

    def quantizer_state_dict(self) -> dict[str, Tensor]:
        """Everything except the ViT, with keys as in ``seed_quantizer.pt``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(VIT_PREFIX)}


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def build_seed(cfg: SeedConfig = SEED_OFFICIAL) -> SeedTokenizer:
    """Build a SEED tokenizer with random weights (use ``with torch.device('meta'):`` for shapes).

    Embedding-like parameters get a N(0, 0.02) init so that a random model is not degenerate.
    """
    vit = EvaViT(
        cfg.image_size,
        cfg.patch_size,
        cfg.vit_width,
        cfg.vit_depth,
        cfg.vit_heads,
        cfg.vit_mlp_hidden,
        cfg.vit_ln_eps,
    )
    layers = [
        QFormerLayer(
            cfg.qformer_hidden,
            cfg.qformer_heads,
            cfg.qformer_ffn,
            cfg.qformer_ln_eps,
            cfg.vit_width,
            cross=i % cfg.cross_attention_freq == 0,
        )
        for i in range(cfg.qformer_layers)
    ]
    qformer = QFormer(
        QFormerBert(
            QFormerEmbeddings(cfg.qformer_hidden, cfg.qformer_ln_eps, cfg.qformer_max_positions),
            QFormerEncoder(layers),
        )
    )

    def decode_blocks() -> nn.ModuleList:
        return nn.ModuleList(
            DecodeBlock(
                cfg.qformer_hidden, cfg.decode_heads, cfg.decode_mlp_hidden, cfg.decode_ln_eps
            )
            for _ in range(cfg.decode_depth)
        )

    model = SeedTokenizer(
        cfg,
        visual_encoder=vit,
        qformer=qformer,
        quantize=VectorQuantizer(cfg.codebook_size, cfg.codebook_dim),
        blocks=decode_blocks(),
        blocks_image=decode_blocks(),
    )
    if not model.query_tokens.is_meta:
        with torch.no_grad():
            for p in (
                model.query_tokens,
                model.pos_embed,
                model.pos_embed_image,
                vit.cls_token,
                vit.pos_embed,
            ):
                p.normal_(0.0, 0.02)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------


@dataclass
class SeedLoadReport:
    """What :func:`load_seed` read and what it left out."""

    quantizer_path: str
    vit_path: str | None
    loaded: int  # number of tensors loaded into the model
    dropped_quantizer_keys: list[str]  # tensors of the quantizer file that SEED does not use
    dropped_vit_keys: list[str]  # tensors of the ViT file that SEED does not use

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cast(t: Tensor, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


def load_seed(
    quantizer_path: str | Path,
    vit_path: str | Path | None,
    cfg: SeedConfig = SEED_OFFICIAL,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[SeedTokenizer, SeedLoadReport]:
    """Load the released SEED tokenizer strictly.

    ``quantizer_path``: ``seed_quantizer.pt`` (or a safetensors copy).  Tensors that SEED does
    not have (AnyGPT's file holds 146 such training-time tensors) are dropped, logged and listed
    in the report.  ``vit_path``: LAVIS ``eva_vit_g.pth`` (keys without ``visual_encoder.``);
    may be ``None`` when the quantizer file already holds ``visual_encoder.*`` keys.
    Any expected tensor that is missing raises :class:`CheckpointError`.

    Returns ``(model, report)``; the model is in eval mode, on ``device``, floating tensors in
    ``dtype`` (``ln_vision`` and the codebook search still compute in float32).
    """
    with torch.device("meta"):
        model = build_seed(cfg)
    expected = model.state_dict()
    vit_expected = {k[len(VIT_PREFIX) :] for k in expected if k.startswith(VIT_PREFIX)}
    quant_expected = {k for k in expected if not k.startswith(VIT_PREFIX)}

    state: dict[str, Tensor] = {}
    raw = read_state_dict(quantizer_path, what="SEED quantizer weights")
    dropped_q = sorted(k for k in raw if k not in expected)
    for k in quant_expected:
        if k in raw:
            state[k] = _cast(raw[k], device, dtype)
    # a whole-model file may carry the ViT as well
    for k in raw:
        if k.startswith(VIT_PREFIX) and k in expected:
            state[k] = _cast(raw[k], device, dtype)
    del raw
    if dropped_q:
        logger.info(
            "SEED: ignored %d tensors of %s that inference does not use (e.g. %s)",
            len(dropped_q),
            quantizer_path,
            ", ".join(dropped_q[:3]),
        )

    dropped_v: list[str] = []
    if vit_path is not None:
        vit_raw = read_state_dict(vit_path, what="EVA ViT-g weights")
        # accept a file that kept the prefix as well as LAVIS' bare names
        vit_raw = {
            (k[len(VIT_PREFIX) :] if k.startswith(VIT_PREFIX) else k): v for k, v in vit_raw.items()
        }
        dropped_v = sorted(k for k in vit_raw if k not in vit_expected)
        for k in vit_expected:
            if k in vit_raw:
                state[VIT_PREFIX + k] = _cast(vit_raw[k], device, dtype)
        del vit_raw
        if dropped_v:
            logger.info(
                "SEED: ignored %d tensors of %s (e.g. %s)",
                len(dropped_v),
                vit_path,
                ", ".join(dropped_v[:3]),
            )

    missing = [k for k in expected if k not in state]
    if missing:
        missing_vit = [k for k in missing if k.startswith(VIT_PREFIX)]
        hint = (
            " The ViT weights come from a separate file (LAVIS eva_vit_g.pth): pass vit_path."
            if missing_vit and vit_path is None
            else ""
        )
        raise CheckpointError(
            f"SEED: {len(missing)} expected tensors are missing "
            f"({len(missing_vit)} of the ViT), e.g. {missing[:6]}.{hint}"
        )
    load_strict(model, state, what="SEED tokenizer")
    model.requires_grad_(False)
    report = SeedLoadReport(
        quantizer_path=str(quantizer_path),
        vit_path=None if vit_path is None else str(vit_path),
        loaded=len(state),
        dropped_quantizer_keys=dropped_q,
        dropped_vit_keys=dropped_v,
    )
    return model.eval(), report


def save_seed(model: SeedTokenizer, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (the whole state dict) to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "model": "seed"})
    return directory


def load_seed_dir(
    directory: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SeedTokenizer:
    """Load a folder written by :func:`save_seed` (config beside the weights), strictly."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"no SEED {CONFIG_FILE} in '{directory}'")
    cfg = SeedConfig.from_dict(json.loads(cfg_path.read_text()))
    model, _ = load_seed(directory / WEIGHTS_FILE, None, cfg=cfg, device=device, dtype=dtype)
    return model


# --------------------------------------------------------------------------------------------
# Pre- and post-processing helpers
# --------------------------------------------------------------------------------------------


def preprocess_images(images: Sequence[Any], size: int = 224) -> Tensor:
    """PIL images -> CLIP-normalised batch [B,3,size,size] float32.

    Each image is converted to RGB (alpha is dropped, as in the original), stretched to exactly
    ``size x size`` with PIL bicubic (no crop, aspect ratio not kept), scaled to [0,1] and
    normalised with the CLIP mean and std.
    """
    import numpy as np
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    if len(images) == 0:
        raise ValueError("preprocess_images() needs at least one image")
    # numpy keeps this single-threaded and cheap; torch's thread pool only adds overhead here
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise TypeError(f"image {i} is a {type(img).__name__}, not a PIL image")
        rgb = _to_rgb(img).resize((size, size), Image.BICUBIC)
        arr = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)  # (size, size, 3)
        # same operation order as torchvision's ToTensor + Normalize
        out[i] = ((arr - mean) / std).transpose(2, 0, 1)
    return torch.from_numpy(out)


def _to_rgb(img: Any) -> Any:
    """PIL image of any mode -> 8-bit RGB.

    8-bit modes go through ``convert('RGB')`` exactly as in the original.  Wider grey modes,
    which ``convert`` would clip at 255, are scaled instead: ``I;16*`` by 65535, ``I`` by 255
    or 65535 (whichever range holds its values) or else its maximum, ``F`` by its min-max range.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np
        from PIL import Image

        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
        else:
            top = float(arr.max()) if arr.size else 0.0
            if img.mode.startswith("I;16") or 255.0 < top <= 65535.0:
                scale = 65535.0
            elif top <= 255.0:
                scale = 255.0
            else:
                scale = top
            arr = np.clip(arr, 0.0, None) / scale
        grey = Image.fromarray((arr * 255.0).round().astype(np.uint8), mode="L")
        return grey.convert("RGB")
    return img.convert("RGB")


def fit_codes(codes: Sequence[int] | Tensor, length: int = 32) -> tuple[Tensor, int]:
    """Make a 1-D code list exactly ``length`` long; returns ``(codes[length], change)``.

    Policy: extra codes are cut off at the end; a short list is padded by repeating its last
    code (an empty list cannot be fitted).  ``change`` is ``len(codes) - length`` (positive:
    truncated, negative: padded, 0: unchanged) so that callers can report it.
    """
    t = torch.as_tensor(codes, dtype=torch.long).flatten()
    n = t.numel()
    if n == 0:
        raise ValueError("cannot fit an empty code list")
    if n >= length:
        return t[:length].clone(), n - length
    pad = t[-1:].expand(length - n)
    return torch.cat((t, pad)), n - length
