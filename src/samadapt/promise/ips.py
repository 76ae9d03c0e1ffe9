"""IPS, incremental pattern shifting (ProMISe): an image-conditioned shift of SAM's mask tokens.

Global average pool of the image embedding (``BxCxgxg -> BxC``), an MLP (Linear ``C -> hidden``, GELU,
Linear ``hidden -> T*C``), reshaped to ``BxTxC``: an additive shift of the decoder's ``T`` mask-token
embeddings (:class:`samadapt.models.decoder.SamDecoder` applies it). The paper uses
``hidden = 1024`` for SAM's ``C = 256``; samadapt takes ``hidden = 4 C`` by default (512 for tiny).

Decision: the output layer starts at zero, so an untrained IPS is the identity (frozen SAM exactly) and
training moves the tokens away from SAM only as far as the loss asks. The first layer receives gradient
from the second step on.
"""

from __future__ import annotations

import torch
from torch import nn


class IncrementalPatternShift(nn.Module):
    """``forward(embedding BxCxgxg) -> shift BxTxC`` (``T = num_mask_tokens``, ``C`` the decoder width)."""

    def __init__(self, transformer_dim: int, num_mask_tokens: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or 4 * transformer_dim
        self.transformer_dim, self.num_mask_tokens = transformer_dim, num_mask_tokens
        self.mlp = nn.Sequential(nn.Linear(transformer_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_mask_tokens * transformer_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.dim() != 4 or embedding.shape[1] != self.transformer_dim:
            raise ValueError(f"IPS takes BxCxgxg embeddings with C = {self.transformer_dim}, "
                             f"got {tuple(embedding.shape)}")
        pooled = embedding.mean(dim=(2, 3))
        return self.mlp(pooled).view(-1, self.num_mask_tokens, self.transformer_dim)
