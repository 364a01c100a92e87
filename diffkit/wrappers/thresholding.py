"""x0 clipping and dynamic thresholding as `ScoreModel` wrappers any sampler can use.

Both replace the model's data prediction x0 by a bounded one at every evaluation and return a
`Prediction` of kind x0 whose eps is recomputed from it, `eps = (x - alpha x0) / sigma` (so
score, v and eps all agree with the clipped x0, as diffusers' DDIMScheduler recomputes
`pred_epsilon` after `clip_sample` / `thresholding`). Every sampler then steps with the bounded
x0: the exponential integrators (DDIM, DPM-Solver++, UniPC) use x0 directly, the others its eps
or score.

* `clip_x0`: clip every coordinate to [-limit, limit] (DDPM's and DDIM's `clip_denoised`, for
  data scaled to [-1, 1]).
* `dynamic_threshold`: Imagen's dynamic thresholding (Saharia et al. 2022, "Photorealistic
  Text-to-Image Diffusion Models with Deep Language Understanding", sec. 2.3): per sample, s is
  the `percentile` quantile of |x0| over all its coordinates, raised to at least 1 (and capped at
  `max_value` if given); x0 is clipped to [-s, s] and divided by s, so samples that would
  saturate are pushed inwards instead.

The prediction also carries the base model's own prediction as `unthresholded`, for samplers
that need the network's eps (DDIM's `clipped_direction=false`). Shapes: x0 `(B, *dims)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffkit.core.model import Prediction, ScoreModel
from diffkit.core.shapes import append_dims


def clip_x0(x0: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """Clip every coordinate of `x0` `(B, *dims)` to [-limit, limit] (same shape and dtype)."""
    return x0.clamp(-limit, limit)


def threshold_scale(
    x0: torch.Tensor, percentile: float = 0.995, max_value: float | None = None
) -> torch.Tensor:
    """Imagen's per-sample threshold s `(B,)`: the `percentile` quantile of |x0| per sample, at least 1.

    Args:
        x0: data prediction `(B, *dims)`.
        percentile: quantile level p in (0, 1] (Imagen: 0.995; 1 is the max of |x0|).
        max_value: optional upper cap of s (diffusers' `sample_max_value`); None: no cap.

    Returns:
        s `(B,)` in `x0`'s dtype (the quantile is taken in at least float32).
    """
    flat = x0.reshape(x0.shape[0], -1).abs()
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(work, percentile, dim=1).to(x0.dtype)
    return s.clamp(min=1.0, max=max_value)


def dynamic_threshold(
    x0: torch.Tensor, percentile: float = 0.995, max_value: float | None = None
) -> torch.Tensor:
    """Imagen's dynamic thresholding: `clip(x0, -s, s) / s` per sample, s from `threshold_scale`."""
    s = append_dims(threshold_scale(x0, percentile, max_value), x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


@dataclass(frozen=True)
class ThresholdedPrediction(Prediction):
    """A `Prediction` of kind x0 holding the bounded x0, plus the base model's own prediction.

    Attributes:
        unthresholded: the base model's prediction at the same `(x, t)` (its eps is the network's).
    """

    unthresholded: Prediction | None = None


class ThresholdedModel(ScoreModel):
    """Wraps a model so that its x0 prediction is bounded by `threshold`; eps follows from x0.

    Args:
        model: the base model (its conditioning, classes and learned variance pass through).
        threshold: the map x0 -> bounded x0, `(B, *dims)` to `(B, *dims)` (`clip_x0`,
            `dynamic_threshold` with their options bound).
        name: the wrapper's name, for `repr`.

    One `predict` is one NFE (one base evaluation).
    """

    def __init__(
        self, model: ScoreModel, *, threshold: Callable[[torch.Tensor], torch.Tensor], name: str
    ) -> None:
        super().__init__(
            self._bounded_x0,
            kind="x0",
            process=model.process,
            data_shape=model.data_shape,
            num_classes=model.num_classes,
            null_label=model.null_label,
        )
        self.base = model
        self.threshold = threshold
        self.name = name
        self.learned_variance = model.learned_variance  # carried by `prediction`, not split here
        self.cond = model.cond

    def __repr__(self) -> str:
        return f"ThresholdedModel({self.name}, {self.base!r})"

    def _bounded_x0(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The bounded x0 `(B, *dims)` at times `t` `(B,)` (the wrapper's network output)."""
        return self.threshold(self.base.prediction(x, t, cond).x0)

    def prediction(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any) -> Prediction:
        """One base evaluation; x0 bounded, eps/score recomputed from it, the base kept as `unthresholded`."""
        base = self.base.prediction(x, t, cond)
        return ThresholdedPrediction(
            "x0",
            self.threshold(base.x0),
            x,
            base.alpha,
            base.sigma,
            base.variance_interpolation,
            base.t,
            base.process,
            unthresholded=base,
        )


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"option {name} must be a positive number, got {value}")
    return value


def clip(model: ScoreModel, *, limit: float = 1.0) -> ThresholdedModel:
    """x0 clipping wrapper: x0 clipped to [-limit, limit], eps recomputed (limit > 0)."""
    limit = _check_positive("limit", limit)
    return ThresholdedModel(model, threshold=lambda x0: clip_x0(x0, limit), name=f"clip(limit={limit})")


def dynamic_thresholding(
    model: ScoreModel, *, percentile: float = 0.995, max_value: float | None = None
) -> ThresholdedModel:
    """Imagen's dynamic thresholding wrapper (Saharia et al. 2022): 0 < percentile <= 1, max_value >= 1."""
    percentile = float(percentile)
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"option percentile must be in (0, 1], got {percentile}")
    if max_value is not None:
        max_value = float(max_value)
        if not (math.isfinite(max_value) and max_value >= 1.0):
            raise ValueError(f"option max_value must be a number >= 1, got {max_value}")
    cap = max_value
    return ThresholdedModel(
        model,
        threshold=lambda x0: dynamic_threshold(x0, percentile, cap),
        name=f"dynamic-threshold(percentile={percentile}, max_value={cap})",
    )
