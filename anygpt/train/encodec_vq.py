"""Codebook learning for transformers' EnCodec quantizer: EMA k-means with dead-code restarts.

transformers' ``EncodecResidualVectorQuantizer`` only encodes and decodes: its codebooks are
buffers (``embed``, ``embed_avg``, ``cluster_size``) that no gradient reaches.  This module trains
them the way EnCodec was trained: each codebook is the exponential moving average of the vectors
assigned to it (k-means in expectation), codes that fall out of use are restarted on vectors of
the current batch, and the encoder is pulled towards its codes by a commitment loss.  The decoder
receives the quantized vectors through a straight-through estimator.

The buffers are updated in place, so the model saves with ``save_pretrained`` as is, and
``EncodecModel.encode`` / ``decode`` use the learned codebooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VQOutput:
    """What one pass of :class:`EmaResidualQuantizer` gives.

    Attributes:
        quantized: [B, D, T] sum of the chosen codebook vectors, with straight-through gradients
            to the encoder output.
        codes: [K, B, T] int64 (K = codebooks used in this pass).
        commitment: scalar, mean squared distance between each residual and its code.
        perplexity: [K] exp(entropy) of code usage in this batch (how many codes are in use).
        restarted: dead codes restarted in this pass (all codebooks).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    commitment: torch.Tensor
    perplexity: torch.Tensor
    restarted: int


class EmaResidualQuantizer:
    """Trains the first ``num_codebooks`` codebooks of an ``EncodecResidualVectorQuantizer``.

    Args:
        quantizer: ``model.quantizer`` of a transformers ``EncodecModel``.
        num_codebooks: codebooks trained and used (the rest are left alone).
        decay: EMA decay of counts and sums (EnCodec: 0.99).
        dead_fraction: a code whose EMA count falls below this fraction of the average count
            (vectors per batch / codebook size) is restarted on a random vector of the batch.
        dropout: probability of using only the first ``k < num_codebooks`` codebooks in a
            training pass (k uniform), so earlier codebooks learn to stand alone.
        eps: Laplace smoothing of the counts.
    """

    def __init__(
        self,
        quantizer: torch.nn.Module,
        num_codebooks: int,
        *,
        decay: float = 0.99,
        dead_fraction: float = 0.1,
        dropout: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        layers = list(quantizer.layers)
        if not 1 <= num_codebooks <= len(layers):
            raise ValueError(f"the quantizer has {len(layers)} codebooks, not {num_codebooks}")
        self.books = [layer.codebook for layer in layers[:num_codebooks]]
        self.num_codebooks = num_codebooks
        self.decay = decay
        self.dead_fraction = dead_fraction
        self.dropout = dropout
        self.eps = eps

    @property
    def codebook_size(self) -> int:
        return int(self.books[0].embed.shape[0])

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_kmeans(
        self, z: torch.Tensor, iters: int = 10, generator: torch.Generator | None = None
    ) -> None:
        """Start every codebook from k-means of ``z`` [B, D, T] (residual by residual).

        Counts start from the k-means cluster sizes, so codes left empty restart at once.
        """
        residual = _flat(z)
        k = self.codebook_size
        for book in self.books:
            centroids = _kmeans(residual, k, iters, generator)
            idx = _nearest(residual, centroids)
            # counts per batch-average share; codes k-means left empty restart on the first step
            share = residual.shape[0] / k
            counts = torch.bincount(idx, minlength=k).float() / share
            book.embed.copy_(centroids)
            book.cluster_size.copy_(counts)
            book.embed_avg.copy_(centroids * counts[:, None])
            book.inited.fill_(1.0)
            residual = residual - centroids[idx]

    # ------------------------------------------------------------------ one pass
    def __call__(
        self, z: torch.Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> VQOutput:
        """Quantize encoder output ``z`` [B, D, T]; in training, update the codebooks first."""
        b, d, t = z.shape
        flat = _flat(z)  # [N, D], N = B * T
        used = self.num_codebooks
        if train and self.dropout > 0 and used > 1:
            if float(torch.rand((), generator=generator)) < self.dropout:
                used = int(torch.randint(1, used, (), generator=generator))
        residual = flat.detach()
        total = torch.zeros_like(flat)
        codes, perplexity = [], []
        commitment = flat.new_zeros(())
        restarted = 0
        for book in self.books[:used]:
            idx = _nearest(residual, book.embed)
            if train:
                restarted += self._update(book, residual, idx, generator)
                idx = _nearest(residual, book.embed)
            q = book.embed[idx]
            commitment = commitment + (flat - total.detach() - q).pow(2).mean()
            total = total + q
            residual = residual - q
            codes.append(idx.view(b, t))
            counts = torch.bincount(idx, minlength=self.codebook_size).float()
            p = counts / counts.sum()
            perplexity.append(torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()))
        quantized = flat + (total - flat).detach()  # straight-through to the encoder
        return VQOutput(
            quantized.view(b, t, d).transpose(1, 2),
            torch.stack(codes),
            commitment / used,
            torch.stack(perplexity),
            restarted,
        )

    @torch.no_grad()
    def _update(
        self,
        book: torch.nn.Module,
        x: torch.Tensor,
        idx: torch.Tensor,
        generator: torch.Generator | None,
    ) -> int:
        """One EMA k-means step on ``x`` [N, D] assigned to ``idx`` [N]; returns restarts."""
        k = self.codebook_size
        onehot = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device)
        onehot.scatter_(1, idx[:, None], 1.0)
        counts = onehot.sum(0)
        sums = onehot.t() @ x
        # counts are kept per batch-average (1.0 = used as often as an even share)
        share = x.shape[0] / k
        book.cluster_size.mul_(self.decay).add_(counts / share, alpha=1 - self.decay)
        book.embed_avg.mul_(self.decay).add_(sums / share, alpha=1 - self.decay)
        n = book.cluster_size.sum()
        smoothed = (book.cluster_size + self.eps) / (n + k * self.eps) * n
        book.embed.copy_(book.embed_avg / smoothed[:, None])
        dead = torch.nonzero(book.cluster_size < self.dead_fraction).flatten()
        if dead.numel():
            pick = torch.randint(0, x.shape[0], (dead.numel(),), generator=generator)
            fresh = x[pick.to(x.device)]
            book.embed[dead] = fresh
            book.embed_avg[dead] = fresh
            book.cluster_size[dead] = 1.0
        return int(dead.numel())


def _flat(z: torch.Tensor) -> torch.Tensor:
    """[B, D, T] -> [B * T, D] (float32)."""
    return z.transpose(1, 2).reshape(-1, z.shape[1]).float()


def _nearest(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Index [N] of the closest row of ``embed`` [K, D] to each row of ``x`` [N, D]."""
    dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)[None]
    return dist.argmin(1)


def _kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None) -> torch.Tensor:
    """Centroids [k, D] of ``x`` [N, D] by Lloyd's algorithm; empty clusters take random points."""
    n = x.shape[0]
    pick = (
        torch.randint(0, n, (k,), generator=generator)
        if n < k
        else torch.randperm(n, generator=generator)[:k]
    )
    centroids = x[pick].clone()
    for _ in range(iters):
        idx = _nearest(x, centroids)
        counts = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            refill = torch.randint(0, n, (int(empty.sum()),), generator=generator)
            centroids[empty] = x[refill] + 1e-3 * x.std() * torch.randn(
                int(empty.sum()), x.shape[1], generator=generator
            )
    return centroids
