"""A transformers LLaMA model run with a preallocated KV cache, one slot per sequence.

The weights and every layer's arithmetic are the transformers modules' own (embedding, rotary
embedding, norms, projections, MLP, LM head); only the attention's cache is ours: keys and values
live in two preallocated tensors ``[layers, slots, kv_heads, max_length, head_dim]`` and each
sequence owns one slot.  Sequences in a decode batch occupy slots ``0..S-1`` and may have different
lengths (a per-row position and a key mask), so requests can join and leave a running batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class UnsupportedModel(ValueError):
    """The model is not a LLaMA-style transformers model this cache can drive."""


def supports(model) -> bool:
    """Whether ``model`` has the LLaMA module layout :class:`CachedLM` reads."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head") or len(layers) == 0:
        return False
    attn = getattr(layers[0], "self_attn", None)
    return all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) and hasattr(
        inner, "rotary_emb"
    )


class CachedLM:
    """Prefill and one-token decode steps of a ``LlamaForCausalLM`` over a static KV cache.

    Args:
        model: a transformers LLaMA causal LM (eval mode; any device and dtype).
        slots: sequences the cache holds at once.
        max_length: tokens per slot (prompt + generated).
        compile: compile the one-token step with ``torch.compile`` (shapes vary with the batch, so
            it is compiled with dynamic shapes).
    """

    def __init__(self, model, slots: int, max_length: int, *, compile: bool = False) -> None:
        if not supports(model):
            raise UnsupportedModel(f"{type(model).__name__} is not a LLaMA-style causal LM")
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self._rope = apply_rotary_pos_emb
        cfg = model.config
        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers)
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.vocab_size = model.lm_head.weight.shape[0]
        self.slots, self.max_length = slots, max_length
        shape = (len(self.layers), slots, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._step = self._decode_impl
        if compile:
            self._step = torch.compile(self._decode_impl, dynamic=True)

    @property
    def cache_bytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def _attention(self, layer, cache, x, cos, sin, write, kv_length, mask, causal):
        """One attention block; ``write(cache, k, v)`` stores the new keys/values in the layer's
        ``cache = (keys, values)``, each ``[slots, kv_heads, max_length, head_dim]``."""
        attn = layer.self_attn
        rows, length, _ = x.shape
        q = attn.q_proj(x).view(rows, length, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(rows, length, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(rows, length, -1, self.head_dim).transpose(1, 2)
        q, k = self._rope(q, k, cos, sin)
        keys, values = write(*cache, k, v)
        out = F.scaled_dot_product_attention(
            q,
            keys[:, :, :kv_length],
            values[:, :, :kv_length],
            attn_mask=mask,
            is_causal=causal,
            scale=attn.scaling,
            enable_gqa=self.kv_heads != self.heads,
        )
        return attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))

    def _layers(self, ids, positions, write, kv_length, mask, causal):
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, positions)
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            x = x + self._attention(
                layer,
                (keys, values),
                layer.input_layernorm(x),
                cos,
                sin,
                write,
                kv_length,
                mask,
                causal,
            )
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.inner.norm(x)

    @torch.inference_mode()
    def prefill(self, slot: int, ids: torch.Tensor) -> torch.Tensor:
        """Run a prompt ``ids [T]`` into ``slot`` (positions ``0..T-1``); returns the logits of the
        next token ``[V]`` (float32)."""
        length = ids.shape[0]
        if length > self.max_length:
            raise ValueError(
                f"a prompt of {length} tokens does not fit the cache ({self.max_length})"
            )

        def write(keys, values, k, v):
            keys[slot, :, :length] = k[0]
            values[slot, :, :length] = v[0]
            return keys[slot : slot + 1], values[slot : slot + 1]

        positions = torch.arange(length, device=self.device).unsqueeze(0)
        hidden = self._layers(
            ids.to(self.device).unsqueeze(0), positions, write, length, None, True
        )
        return self.model.lm_head(hidden[0, -1]).float()

    def _decode_impl(self, tokens, positions, kv_length: int, mask):
        rows = tokens.shape[0]
        index = torch.arange(rows, device=tokens.device)
        at = kv_length - 1  # every row's position when the batch is not ragged

        def write(keys, values, k, v):
            if mask is None:  # one position for all rows: a plain slice copy
                keys[:rows, :, at] = k[:, :, 0]
                values[:rows, :, at] = v[:, :, 0]
            else:
                keys[index, :, positions] = k[:, :, 0]
                values[index, :, positions] = v[:, :, 0]
            return keys[:rows], values[:rows]

        hidden = self._layers(
            tokens.unsqueeze(1), positions.unsqueeze(1), write, kv_length, mask, False
        )
        return self.model.lm_head(hidden[:, 0]).float()

    @torch.inference_mode()
    def decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, lengths: list[int]
    ) -> torch.Tensor:
        """One token for the sequences in slots ``0..S-1``.

        Args:
            tokens: the last token of each sequence ``[S]``.
            positions: where each goes (its sequence's length so far) ``[S]``.
            lengths: the same positions as Python ints (no device sync is needed to size the
                attention window).

        Returns:
            logits of the next token ``[S, V]`` (float32).
        """
        kv_length = max(lengths) + 1
        mask = None
        if min(lengths) != kv_length - 1:  # ragged batch: each row sees only its own keys
            keys_at = torch.arange(kv_length, device=self.device)
            mask = (keys_at.unsqueeze(0) <= positions.unsqueeze(1))[:, None, None, :]
        return self._step(tokens, positions, kv_length, mask)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` cached tokens of slot ``source`` into slot ``target`` (to keep
        a batch's slots contiguous)."""
        self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
        self.values[:, target, :, :length] = self.values[:, source, :, :length]
