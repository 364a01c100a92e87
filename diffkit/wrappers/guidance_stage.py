"""The guidance stage: one `ScoreModel` that evaluates a conditional and an unconditional
prediction and hands both, with the step, to a pure guidance method.

A guidance method is a callable `guide(step, cond_pred, uncond_pred, scale, state) -> output`:

* `step`: a `GuidanceStep` (times t, alpha, sigma, log-SNR and the call index within the run);
* `cond_pred`, `uncond_pred`: `Prediction`s at the same `(x, t)`, `(B, *dims)` each;
* `scale`: the guidance weight w; `state`: a dict the method may keep across the calls of one
  sampling run (emptied when a new run starts, i.e. when t increases);
* the result: a tensor in the kind of `cond_pred.output` (the mixed network output), or a
  whole `Prediction` (e.g. of kind x0).

`GuidedModel` makes the predictions with ONE batched base call on `2B` rows (conditional
labels, then the model's null label), as classifier-free guidance does, or, given a `guide`
model (autoguidance), with one call of each model. A learned variance is taken from the
conditional half. One `predict` of the wrapper counts one NFE.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from diffkit.core.errors import UsageError
from diffkit.core.model import Prediction, ScoreModel
from diffkit.core.shapes import batch_times
from diffkit.plugin.options import validate_options


@dataclass(frozen=True)
class GuidanceStep:
    """Where a guidance method is called: times `t` `(B,)`, alpha and sigma `(B, 1, ..., 1)`,
    log-SNR `2 log(alpha / sigma)` `(B,)` and the call index within the sampling run."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    log_snr: torch.Tensor
    index: int

    @property
    def noise_level(self) -> torch.Tensor:
        """sigma / alpha `(B,)`: the noise level of the equivalent VE (EDM) process."""
        return (self.sigma / self.alpha).reshape(self.sigma.shape[0])


class GuidanceMethod(Protocol):
    """A guidance method: the guided output from the conditional and unconditional predictions."""

    def __call__(
        self,
        step: GuidanceStep,
        cond_pred: Prediction,
        uncond_pred: Prediction,
        scale: float,
        state: dict[str, Any],
    ) -> torch.Tensor | Prediction:
        """The guided output `(B, *dims)` in `cond_pred`'s kind, or a whole `Prediction`."""


@dataclass(frozen=True)
class RenoisedPrediction(Prediction):
    """A data prediction whose renoising direction is another prediction's eps (CFG++).

    `x0` is the guided data prediction; `unthresholded` carries the eps a sampler should
    renoise with (the unconditional one); DDIM reads it (with `clipped_direction=false`).
    """

    unthresholded: Prediction | None = None

    @property
    def renoise_eps(self) -> torch.Tensor:
        """The eps `(B, *dims)` the renoising step uses."""
        return self.unthresholded.eps  # type: ignore[union-attr]


def require_conditional(model: ScoreModel, wrapper: str) -> int:
    """Return the number of classes of `model`, or raise UsageError if it is unconditional."""
    if not getattr(model, "conditional", False):
        name = type(model).__name__
        raise UsageError(f"guidance {wrapper!r} needs a class-conditional model, but {name} is unconditional")
    return int(model.num_classes)


def labels_for(cond: Any, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class labels `(B,)` long on `x`'s device from an int or a `(B,)`/0-dim tensor; validated."""
    if cond is None:
        raise UsageError("guidance needs a class label: pass --cond LABEL (or bind(label))")
    labels = torch.as_tensor(cond, device=x.device).long()
    if labels.ndim > 1 or (labels.ndim == 1 and labels.shape[0] not in (1, x.shape[0])):
        raise UsageError(f"labels must be a scalar or of shape ({x.shape[0]},), got {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise UsageError(f"class label out of range: the model has classes 0..{num_classes - 1}")
    return labels.expand(x.shape[0])


def halves(both: Prediction) -> tuple[Prediction, Prediction]:
    """Split a prediction on `(2B, *dims)` rows into its first and second `B` rows."""

    def split(value: torch.Tensor | None, half: int) -> torch.Tensor | None:
        return None if value is None else value.chunk(2)[half]

    def part(half: int) -> Prediction:
        return replace(
            both,
            output=split(both.output, half),
            x=split(both.x, half),
            alpha=split(both.alpha, half),
            sigma=split(both.sigma, half),
            variance_interpolation=split(both.variance_interpolation, half),
            t=split(both.t, half),
        )

    return part(0), part(1)


def as_prediction(result: torch.Tensor | Prediction, cond_pred: Prediction) -> Prediction:
    """A method's result as a `Prediction`: a tensor is an output in `cond_pred`'s kind."""
    if isinstance(result, Prediction):
        return result
    return replace(cond_pred, output=result)


def x0_prediction(cond_pred: Prediction, x0: torch.Tensor) -> Prediction:
    """A prediction of kind x0 holding `x0` `(B, *dims)` at `cond_pred`'s point and variance."""
    return Prediction(
        "x0",
        x0,
        cond_pred.x,
        cond_pred.alpha,
        cond_pred.sigma,
        cond_pred.variance_interpolation,
        cond_pred.t,
        cond_pred.process,
    )


class GuidedModel(ScoreModel):
    """A class-conditional model guided by `method` at weight `scale` (see the module).

    Args:
        model: the class-conditional base model (its null label gives the unconditional half).
        method: a `GuidanceMethod`; a dataclass method's option fields are validated (metadata).
        scale: the guidance weight w handed to the method.
        name: the method's registered name, for messages.
        guide: a second model whose conditional prediction replaces the unconditional one
            (autoguidance: a weaker model of the same task); an unconditional guide is called
            without labels.
    """

    def __init__(
        self,
        model: ScoreModel,
        *,
        method: GuidanceMethod,
        scale: float = 1.0,
        name: str = "guidance",
        guide: ScoreModel | None = None,
    ) -> None:
        num_classes = require_conditional(model, name)
        validate_options(method)
        super().__init__(
            self._network,
            kind=model.parameterization,
            process=model.process,
            data_shape=model.data_shape,
            learned_variance=model.learned_variance,
            num_classes=num_classes,
            null_label=model.null_label,
        )
        if guide is not None and tuple(guide.data_shape) != tuple(model.data_shape):
            raise UsageError(
                f"guide model data shape {tuple(guide.data_shape)} differs from the model's "
                f"{tuple(model.data_shape)}"
            )
        self.base = model
        self.guide = guide
        self.method = method
        self.scale = float(scale)
        self.name = name
        self.cond = model.cond
        self.state: dict[str, Any] = {}
        self._last_t: float | None = None
        self._calls = 0

    def _network(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The guided output `(B, *dims)` (the mean output, then v for a learned variance)."""
        pred = self.prediction(x, t, cond)
        if pred.variance_interpolation is None or not self.learned_variance:
            return pred.output
        return torch.cat([pred.output, pred.variance_interpolation], dim=1)

    def _predictions(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> tuple[Prediction, ...]:
        """The conditional and unconditional (or guide) predictions at `x` `(B, *dims)`."""
        if self.guide is None:
            both_labels = torch.cat([labels, torch.full_like(labels, self.base.null_label)])
            return halves(self.base.prediction(torch.cat([x, x]), torch.cat([t, t]), both_labels))
        guide_labels = labels if self.guide.conditional else None
        return self.base.prediction(x, t, labels), self.guide.prediction(x, t, guide_labels)

    def _step(self, pred: Prediction) -> GuidanceStep:
        """The step record of this call; a new run (t above the previous call's) empties the state."""
        t_now = float(pred.t.max()) if pred.t is not None else None  # type: ignore[union-attr]
        if t_now is None or self._last_t is None or t_now > self._last_t:
            self.state.clear()
            self._calls = 0
        self._last_t = t_now
        index = self._calls
        self._calls += 1
        flat = pred.alpha.shape[0]
        alpha, sigma = pred.alpha.reshape(flat), pred.sigma.reshape(flat)
        times = pred.t if pred.t is not None else torch.full((flat,), float("nan"))
        return GuidanceStep(times, pred.alpha, pred.sigma, 2.0 * (alpha.log() - sigma.log()), index)

    def prediction(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any) -> Prediction:
        """The guided prediction at `x` `(B, *dims)`, times `t` (scalar or `(B,)`); no NFE counted."""
        labels = labels_for(cond, x, self.num_classes)
        cond_pred, uncond_pred = self._predictions(x, batch_times(t, x), labels)
        step = self._step(cond_pred)
        return as_prediction(self.method(step, cond_pred, uncond_pred, self.scale, self.state), cond_pred)
