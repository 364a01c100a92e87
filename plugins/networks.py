"""Score-network architectures `mlp` (vector data) and `unet` (images), from `diffkit.nn`.

Each factory is `factory(data_shape, **options) -> torch.nn.Module` whose forward is
`(x, time_input, cond) -> output` with `x`'s shape, ready for `ScoreModel(network, kind=...)`.
"""

from __future__ import annotations

from torch import nn

from diffkit import Registrar, hookimpl
from diffkit.nn import MLPScoreNet, UNet


def _mults(text: str) -> tuple[int, ...]:
    """Parse channel multipliers written as `1,2,2`."""
    try:
        mults = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"channel_mults must be comma-separated integers, got {text!r}") from None
    if not mults or min(mults) < 1:
        raise ValueError(f"channel_mults must be positive integers, got {text!r}")
    return mults


def unet(
    data_shape: tuple[int, ...],
    *,
    channels: int = 32,
    channel_mults: str = "1,2",
    num_res_blocks: int = 1,
    attention: bool = True,
    heads: int = 4,
    num_classes: int = 0,
    groups: int = 8,
    dropout: float = 0.0,
    learn_variance: bool = False,
) -> nn.Module:
    """Small U-Net (GroupNorm residual blocks, skips, optional attention and class labels) for images."""
    return UNet(
        tuple(data_shape),
        channels=channels,
        channel_mults=_mults(channel_mults),
        num_res_blocks=num_res_blocks,
        attention=attention,
        heads=heads,
        num_classes=num_classes,
        groups=groups,
        dropout=dropout,
        learn_variance=learn_variance,
    )


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `mlp` and `unet` networks."""
    registrar.add_network(  # the class itself: its keyword-only parameters are the options
        "mlp", MLPScoreNet, summary="Residual MLP with a sinusoidal time embedding, for vector data."
    )
    registrar.add_network("unet", unet)
