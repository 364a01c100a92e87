"""A small U-Net for images `(B, C, H, W)` (Ho et al. 2020, App. B; Dhariwal & Nichol 2021, sec. 3).

Residual blocks with GroupNorm, SiLU and an additive time (and label) embedding; skip
connections from every down-path block to the matching up-path block; stride-2 convolutions
down and nearest-neighbour upsampling; optional multi-head self-attention at the lowest
resolution. Resolution is halved `len(channel_mults) - 1` times, so H and W must be divisible
by `2 ** (len(channel_mults) - 1)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from diffkit.nn.embedding import LabelEmbedding, TimeEmbedding, check_unconditional


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= `groups` that divides `channels`."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """`skip(h) + conv(SiLU(GN(conv(SiLU(GN(h))) + E emb)))` (DDPM's residual block)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the block to `h` `(B, in_ch, H, W)` with `emb` `(B, emb_dim)`."""
        z = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        z = self.conv2(self.drop(F.silu(self.norm2(z))))
        return self.skip(h) + z


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the H*W positions of a feature map."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention heads ({heads}) must divide the channels ({channels})")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Attend over positions of `h` `(B, C, H, W)`; same shape out."""
        b, c, height, width = h.shape
        qkv = self.qkv(self.norm(h)).reshape(b, 3, self.heads, c // self.heads, height * width)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, height, width)
        return h + self.proj(out)


class UNet(nn.Module):
    """Small U-Net score network for `(C, H, W)` images.

    Args:
        data_shape: `(C, H, W)` of one image.
        channels: base channel count (level i has `channels * channel_mults[i]`).
        channel_mults: per-resolution channel multipliers; one halving between consecutive levels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention: add self-attention at the lowest resolution.
        heads: attention heads.
        num_classes: labels for class conditioning (0: unconditional); label `num_classes` is null.
        groups: GroupNorm groups (reduced to a divisor of each width).
        dropout: dropout rate inside residual blocks.
        learn_variance: output `2C` channels: mean parameterization, then improved DDPM's v.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        *,
        channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        heads: int = 4,
        num_classes: int = 0,
        groups: int = 8,
        dropout: float = 0.0,
        learn_variance: bool = False,
    ) -> None:
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"the U-Net takes images (C, H, W), got data shape {tuple(data_shape)}")
        c_in, height, width = data_shape
        factor = 2 ** (len(channel_mults) - 1)
        if not channel_mults or height % factor or width % factor:
            raise ValueError(f"image size {height}x{width} is not divisible by 2^{len(channel_mults) - 1}")
        if channels < 1 or num_res_blocks < 1 or num_classes < 0:
            raise ValueError("need channels >= 1, num_res_blocks >= 1 and num_classes >= 0")
        self.data_shape = tuple(data_shape)
        self.learn_variance = learn_variance
        emb_dim = 4 * channels
        self.time = TimeEmbedding(channels, emb_dim)
        self.labels = LabelEmbedding(num_classes, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(c_in, channels, 3, padding=1)

        def block(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, groups, dropout)

        widths = [channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for level, width_out in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, width_out))
                ch = width_out
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = block(ch, ch)
        self.attn = SelfAttention(ch, heads, groups) if attention else nn.Identity()
        self.mid2 = block(ch, ch)
        self.up = nn.ModuleList()
        for level, width_out in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), width_out))
                ch = width_out
            if level > 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)
                    )
                )
        self.out = nn.Sequential(
            _norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, c_in * (1 + learn_variance), 3, padding=1)
        )

    def forward(
        self, x: torch.Tensor, time_input: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map images `(B, C, H, W)`, times `(B,)`, labels `(B,)` or None to `x`'s shape (2C if learned)."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"expected images of shape (B, {self.data_shape}), got {tuple(x.shape)}")
        emb = self.time(time_input)
        if self.labels is not None:
            emb = emb + self.labels(cond, x.shape[0], x.device)
        else:
            check_unconditional(cond)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(layer, ResBlock) else layer(h)
        return self.out(h)
