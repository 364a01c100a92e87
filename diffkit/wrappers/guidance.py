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

from diffkit.core.errors import UsageError
from diffkit.core.model import ScoreModel


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
        model: a class-conditional base model; its network sees the model's own null label
            (`model.null_label`: `num_classes` for trained networks, -1 for the oracles) for the
            unconditional half.
        scale: guidance weight w (0: unconditional, 1: conditional, >1: sharper).

    The mix is taken on the base model's (scaled) output in its own kind; a learned variance
    is taken from the conditional half.
    """

    def __init__(self, model: ScoreModel, *, scale: float = 1.0) -> None:
        num_classes = require_conditional(model, "cfg")
        super().__init__(
            self._guided,
            kind=model.parameterization,
            process=model.process,
            data_shape=model.data_shape,
            learned_variance=model.learned_variance,
            num_classes=num_classes,
            null_label=model.null_label,
        )
        self.base = model
        self.scale = float(scale)
        self.cond = model.cond

    def _guided(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """One batched base call on `(2B, *dims)` at times `t` `(B,)`: conditional rows, then null rows."""
        labels = labels_for(cond, x, self.num_classes)
        both_labels = torch.cat([labels, torch.full_like(labels, self.base.null_label)])
        both = self.base.prediction(torch.cat([x, x]), torch.cat([t, t]), both_labels)
        cond_out, uncond_out = both.output.chunk(2)
        mixed = cfg_mix(cond_out, uncond_out, self.scale)
        if both.variance_interpolation is None:
            return mixed
        return torch.cat([mixed, both.variance_interpolation.chunk(2)[0]], dim=1)


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
        num_classes = require_conditional(model, "classifier")
        classifier = getattr(model, "classifier", None)
        if classifier is None or not callable(getattr(classifier, "log_prob", None)):
            raise UsageError(
                "guidance 'classifier' needs a time-dependent classifier p_t(y | x), and the model has "
                "none (the oracles have one); use --guidance cfg"
            )
        super().__init__(
            self._guided,
            kind="eps",
            process=model.process,
            data_shape=model.data_shape,
            num_classes=num_classes,
            null_label=model.null_label,
        )
        self.base = model
        self.classifier = classifier
        self.scale = float(scale)
        self.cond = model.cond

    def _guided(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Guided eps `(B, *dims)` at time `t` `(B,)`."""
        labels = labels_for(cond, x, self.num_classes)
        base = self.base.prediction(x, t, None)  # the unconditional eps_u
        eps, sigma = base.eps, base.sigma
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
