"""MLP score network for vector data: time embedding, SiLU residual blocks."""

from __future__ import annotations

import math

import torch
from torch import nn

from diffkit.nn.embedding import LabelEmbedding, TimeEmbedding, check_unconditional


class ResidualBlock(nn.Module):
    """`h + W2 SiLU(W1 SiLU(LayerNorm(h)) + E t_emb)`: a pre-norm residual MLP block."""

    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the block to `h` `(B, width)` with embedding `emb` `(B, emb_dim)`."""
        z = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.act(z))


class MLPScoreNet(nn.Module):
    """Residual MLP for data of any shape (flattened to `(B, D)` inside).

    Args:
        data_shape: shape of one sample, e.g. `(2,)`.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_dim: width of the sinusoidal time features.
        num_classes: labels for class conditioning (0: unconditional); label `num_classes` is null.
        learn_variance: double the output along dim 1 for improved DDPM's variance values v.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        *,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        num_classes: int = 0,
        learn_variance: bool = False,
    ) -> None:
        super().__init__()
        if hidden < 1 or depth < 1 or num_classes < 0:
            raise ValueError(
                f"need hidden >= 1, depth >= 1, num_classes >= 0; got {hidden}, {depth}, {num_classes}"
            )
        self.data_shape = tuple(data_shape)
        self.learn_variance = learn_variance
        dim = math.prod(self.data_shape)
        self.time = TimeEmbedding(time_dim, hidden)
        self.labels = LabelEmbedding(num_classes, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(
            nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim * (1 + learn_variance))
        )

    def forward(
        self, x: torch.Tensor, time_input: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map `x` `(B, *data_shape)`, times `(B,)`, labels `(B,)` or None to `x`'s shape (x2 on dim 1)."""
        batch = x.shape[0]
        emb = self.time(time_input)
        if self.labels is not None:
            emb = emb + self.labels(cond, batch, x.device)
        else:
            check_unconditional(cond)
        h = self.inp(x.reshape(batch, -1))
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(h)
        if not self.learn_variance:
            return out.reshape(x.shape)
        lead = self.data_shape[0] if self.data_shape else 1
        return out.reshape(batch, 2 * lead, *self.data_shape[1:])
