"""Inverse problems as `ScoreModel` wrappers: inpainting and colorization for every sampler.

Song et al. 2021 ("Score-Based Generative Modeling through SDEs"), App. I.2 (imputation) and
App. I.3 (colorization). In coordinates `z = T x` (T orthogonal: the identity for inpainting,
a per-pixel rotation of the colour channels for colorization) some coordinates are known,
`z_known = y`. At every model evaluation the wrapper

1. replaces the known coordinates of the network input by a sample of the forward marginal
   `alpha(t) y + sigma(t) n` (method "replace", n fresh from the wrapper's generator, App. I.2),
   or by the state's own known coordinates (method "project": no extra noise, deterministic
   samplers stay deterministic), evaluates the base model there, and
2. returns eps whose known coordinates are `(z - alpha y) / sigma`, i.e. x0 = y exactly there,
   so any sampler's update keeps the known coordinates on the forward path of y.

`finalize` sets the known coordinates of the final samples to y exactly. Shapes: data
`(B, *data_shape)`; colorization needs `data_shape = (3, *spatial)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from diffkit.core.errors import UsageError
from diffkit.core.model import ScoreModel
from diffkit.core.shapes import append_dims

Method = Literal["replace", "project"]


def gray_transform(dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthogonal `(3, 3)` colour transform whose first row is `(1, 1, 1) / sqrt(3)` (App. I.3).

    Row 0 maps RGB to `sqrt(3) * gray` (gray = channel mean); rows 1 and 2 span the chroma plane.
    """
    rows = [[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]
    matrix = torch.tensor(rows, dtype=torch.float64)
    matrix = matrix / matrix.norm(dim=1, keepdim=True)
    return matrix.to(device=device, dtype=dtype)


def channel_mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply `(C, C)` `matrix` to the channel dim of `x` `(B, C, *spatial)` (pointwise per pixel)."""
    return torch.einsum("ij,bj...->bi...", matrix.to(device=x.device, dtype=x.dtype), x)


@dataclass(frozen=True)
class Measurement:
    """Known coordinates in transformed space: `known` `(B, *data_shape)`, `mask` bool, same shape."""

    known: torch.Tensor
    mask: torch.Tensor

    def rows(self, start: int, stop: int) -> Measurement:
        """The measurement of samples `start:stop`."""
        return Measurement(self.known[start:stop], self.mask[start:stop])


class InverseModel(ScoreModel):
    """Conditions an unconditional model on known (transformed) coordinates; `cond` is a `Measurement`.

    Args:
        model: the base model (its own `cond` is passed through unchanged).
        transform: orthogonal channel matrix `(C, C)` or None (identity: inpainting).
        method: "replace" (fresh forward-marginal sample, Song et al. App. I.2) or "project".
        seed: seed of the wrapper's generator for the "replace" noise.
    """

    def __init__(
        self, model: ScoreModel, *, transform: torch.Tensor | None, method: Method, seed: int
    ) -> None:
        if method not in ("replace", "project"):
            raise ValueError(f"method must be replace or project, got {method!r}")
        super().__init__(self._conditioned, kind="eps", process=model.process, data_shape=model.data_shape)
        self.base = model
        self.transform = transform
        self.method = method
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def to_coords(self, x: torch.Tensor) -> torch.Tensor:
        """`z = T x`."""
        return x if self.transform is None else channel_mix(self.transform, x)

    def from_coords(self, z: torch.Tensor) -> torch.Tensor:
        """`x = T^T z` (T is orthogonal)."""
        return z if self.transform is None else channel_mix(self.transform.T, z)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        key = str(like.device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=like.device).manual_seed(self.seed)
        return torch.randn(like.shape, generator=self._generators[key], device=like.device, dtype=like.dtype)

    def _conditioned(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Eps `(B, *dims)` at time `t` `(B,)` given the `Measurement` `cond`."""
        if not isinstance(cond, Measurement):
            raise UsageError("an inverse-problem model needs a Measurement (known values and mask) bound")
        alpha = append_dims(self.process.alpha(t).to(x.dtype), x.ndim)
        sigma = append_dims(self.process.sigma(t).to(x.dtype), x.ndim)
        known, mask = cond.known.to(x), cond.mask.to(x.device)
        z = self.to_coords(x)
        if self.method == "replace":
            z_known = alpha * known + sigma * self._noise(z)
        else:
            z_known = z
        x_in = self.from_coords(torch.where(mask, z_known, z))
        eps = self.to_coords(self.base.prediction(x_in, t, self.base.cond).eps)
        return self.from_coords(torch.where(mask, (z - alpha * known) / sigma, eps))

    def finalize(self, x: torch.Tensor, cond: Measurement) -> torch.Tensor:
        """Set the known coordinates of final samples `x` `(B, *dims)` to their values exactly."""
        z = self.to_coords(x)
        return self.from_coords(torch.where(cond.mask.to(x.device), cond.known.to(x), z))

    def measurement(self, data: torch.Tensor, mask: torch.Tensor | None = None) -> Measurement:
        """Build the `Measurement` from user data (see `inpaint_measurement`, `colorize_measurement`)."""
        if self.transform is None:
            return inpaint_measurement(data, mask, self.data_shape)
        return colorize_measurement(data, self.data_shape)


def inpaint_measurement(
    data: torch.Tensor, mask: torch.Tensor | None, data_shape: tuple[int, ...]
) -> Measurement:
    """Inpainting measurement: data `(N, *shape)`, mask `shape` or `(N, *shape)` (nonzero = known)."""
    shape = tuple(data_shape)
    if mask is None:
        raise UsageError("inpainting needs a mask")
    if tuple(data.shape[1:]) != shape or data.ndim != len(shape) + 1:
        raise UsageError(
            f"data has shape {tuple(data.shape)}, but the model needs (N, {', '.join(map(str, shape))})"
        )
    if tuple(mask.shape) not in (shape, tuple(data.shape)):
        raise UsageError(
            f"mask has shape {tuple(mask.shape)}, but the model needs {shape} or {tuple(data.shape)}"
        )
    mask = (mask != 0).expand(data.shape)
    return Measurement(torch.where(mask, data, torch.zeros_like(data)), mask)


def colorize_measurement(gray: torch.Tensor, data_shape: tuple[int, ...]) -> Measurement:
    """Colorization measurement from gray images `(N, *spatial)` or `(N, 1, *spatial)` (channel means)."""
    spatial = tuple(data_shape[1:])
    if gray.ndim == len(spatial) + 2 and gray.shape[1] == 1:
        gray = gray[:, 0]
    if tuple(gray.shape[1:]) != spatial or gray.ndim != len(spatial) + 1:
        raise UsageError(
            f"gray images have shape {tuple(gray.shape)}, "
            f"but the model needs (N, {', '.join(map(str, spatial))})"
        )
    known = torch.zeros((gray.shape[0], *data_shape), dtype=gray.dtype, device=gray.device)
    known[:, 0] = math.sqrt(3.0) * gray
    mask = torch.zeros(known.shape, dtype=torch.bool, device=gray.device)
    mask[:, 0] = True
    return Measurement(known, mask)


def inpaint(model: ScoreModel, *, method: Method = "replace", seed: int = 0) -> InverseModel:
    """Inpainting wrapper: known coordinates from a bound Measurement (Song et al. 2021, App. I.2)."""
    return InverseModel(model, transform=None, method=method, seed=seed)


def colorize(model: ScoreModel, *, method: Method = "replace", seed: int = 0) -> InverseModel:
    """Colorization wrapper: the gray channel of a decoupling orthogonal transform is known (App. I.3)."""
    if len(model.data_shape) < 2 or model.data_shape[0] != 3:
        raise UsageError(
            f"colorization needs 3-channel images (3, H, W), but the model's data shape is {model.data_shape}"
        )
    return InverseModel(model, transform=gray_transform(), method=method, seed=seed)
