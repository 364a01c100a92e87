"""Guidance wrappers: classifier-free and classifier guidance as `ScoreModel`s.

Every sampler only calls `model.predict`, so a wrapper that returns the guided prediction
makes every sampler a guided sampler. Both wrappers need a class-conditional base model
(`model.conditional` true, labels `(B,)` long as `cond`); the label is fixed with `bind(label)`
or passed to `predict(x, t, cond=label)`.

NFE accounting: one `predict` of a wrapper counts one NFE on the wrapper. For classifier-free
guidance that evaluation is ONE batched network call on `2B` rows (conditional and
unconditional halves concatenated along the batch); for classifier guidance it is one network
call plus one classifier forward and backward pass. The base model's own counter is not used.
"""

from __future__ import annotations

from typing import Any

import torch

from diffkit import parameterization as param
from diffkit.conditional import NULL_LABEL
from diffkit.errors import UsageError
from diffkit.model import ScoreModel
from diffkit.shapes import append_dims


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


def cfg_mix(cond_output: torch.Tensor, uncond_output: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance `out_u + w (out_c - out_u)` (Ho & Salimans 2022, eq. 6).

    Any of the eps/x0/v/score outputs is an affine function of eps at fixed `x` and t, so mixing
    the raw outputs with weights `(1 - w, w)` equals mixing eps. Shapes: `(B, *dims)` each.
    """
    return uncond_output + scale * (cond_output - uncond_output)


class CFGModel(ScoreModel):
    """Classifier-free guidance (Ho & Salimans 2022): `eps = eps_u + w (eps_c - eps_u)`.

    Args:
        model: a class-conditional base model; its network sees the null label `NULL_LABEL`
            (-1) for the unconditional half.
        scale: guidance weight w (0: unconditional, 1: conditional, >1: sharper).
    """

    def __init__(self, model: ScoreModel, *, scale: float = 1.0) -> None:
        self.num_classes = require_conditional(model, "cfg")
        super().__init__(self._guided, kind=model.kind, process=model.process, data_shape=model.data_shape)
        self.base = model
        self.scale = float(scale)
        self.cond = model.cond
        self.conditional = True

    def _guided(self, x: torch.Tensor, time_input: torch.Tensor, cond: Any) -> torch.Tensor:
        """One batched base call on `(2B, *dims)`: conditional rows first, then null-label rows."""
        labels = labels_for(cond, x, self.num_classes)
        both_x = torch.cat([x, x])
        both_t = self.base.time_input(torch.cat([time_input, time_input]))
        both_labels = torch.cat([labels, torch.full_like(labels, NULL_LABEL)])
        cond_out, uncond_out = self.base.network(both_x, both_t, both_labels).chunk(2)
        return cfg_mix(cond_out, uncond_out, self.scale)


class ClassifierGuidedModel(ScoreModel):
    """Classifier guidance (Dhariwal & Nichol 2021, eq. 14 / Alg. 2 in score form).

    `score = score_u(x) + s grad_x log p_t(y | x)`, i.e. `eps = eps_u - s sigma grad_x log p_t(y|x)`,
    with `eps_u` the base model's unconditional prediction (cond None) and `p_t(y|x)` the base
    model's time-dependent classifier `model.classifier.log_prob(x, t, labels) -> (B,)`.

    Args:
        model: a class-conditional base model carrying a differentiable `classifier`.
        scale: guidance scale s (0: unconditional, 1: exact conditional with an exact classifier).
    """

    def __init__(self, model: ScoreModel, *, scale: float = 1.0) -> None:
        self.num_classes = require_conditional(model, "classifier")
        classifier = getattr(model, "classifier", None)
        if classifier is None or not callable(getattr(classifier, "log_prob", None)):
            raise UsageError(
                f"guidance 'classifier' needs a time-dependent classifier; {type(model).__name__} has none"
            )
        super().__init__(self._guided, kind="eps", process=model.process, data_shape=model.data_shape)
        self.base = model
        self.classifier = classifier
        self.scale = float(scale)
        self.cond = model.cond
        self.conditional = True

    def _guided(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Guided eps `(B, *dims)` at time `t` `(B,)`."""
        labels = labels_for(cond, x, self.num_classes)
        alpha = append_dims(self.process.alpha(t).to(x.dtype), x.ndim)
        sigma = append_dims(self.process.sigma(t).to(x.dtype), x.ndim)
        output = self.base.network(x, self.base.time_input(t), None)
        eps = param.to_eps(self.base.kind, output, x, alpha, sigma)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = self.classifier.log_prob(x_in, t, labels)
            (grad,) = torch.autograd.grad(log_p.sum(), x_in)
        return eps - self.scale * sigma * grad


def cfg(model: ScoreModel, *, scale: float = 1.0) -> CFGModel:
    """Classifier-free guidance wrapper (one batched cond+uncond call per NFE)."""
    return CFGModel(model, scale=scale)


def classifier(model: ScoreModel, *, scale: float = 1.0) -> ClassifierGuidedModel:
    """Classifier guidance wrapper: score + scale * grad log p_t(y | x)."""
    return ClassifierGuidedModel(model, scale=scale)
