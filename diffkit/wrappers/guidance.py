"""Guidance methods on the guidance stage (`diffkit.wrappers.guidance_stage`), and classifier guidance.

Every sampler only calls `model.predict`, so a wrapper that returns the guided prediction
makes every sampler a guided sampler. The wrappers need a class-conditional base model
(`model.conditional` true, labels `(B,)` long as `cond`); the label is fixed with `bind(label)`
or passed to `predict(x, t, cond=label)`.

Methods (pure functions of the step, the conditional and unconditional predictions, the weight w
and a per-run state): `cfg` (Ho & Salimans 2022), `cfg-rescale` (Lin et al. 2024, Alg. 2),
`interval` (Kynkaanniemi et al. 2024), `apg` (Sadat et al. 2024), `cfg-pp` (Chung et al. 2024)
and `autoguidance` (Karras et al. 2024: cfg with a weaker guide model in place of the
unconditional one). Options are dataclass fields whose metadata declares their range.

NFE accounting: one `predict` of a wrapper counts one NFE on the wrapper. For the stage that
evaluation is ONE batched network call on `2B` rows (conditional and unconditional halves) or,
with a guide model, one call of each model; for classifier guidance it is one network call plus
one classifier forward and backward pass. The base model's own counter is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from diffkit.core.errors import UsageError
from diffkit.core.model import Prediction, ScoreModel
from diffkit.wrappers.guidance_stage import (
    GuidanceStep,
    GuidedModel,
    RenoisedPrediction,
    labels_for,
    require_conditional,
    x0_prediction,
)


def cfg_mix(cond_output: torch.Tensor, uncond_output: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance `out_u + w (out_c - out_u)` (Ho & Salimans 2022, eq. 6).

    Any of the eps/x0/v/score outputs is an affine function of eps at fixed `x` and t, so mixing
    the raw outputs with weights `(1 - w, w)` equals mixing eps. Shapes: `(B, *dims)` each.
    """
    return uncond_output + scale * (cond_output - uncond_output)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A `(B,)` tensor broadcast to `(B, 1, ..., 1)` against `like`."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def cfg_guide(
    step: GuidanceStep, cond_pred: Prediction, uncond_pred: Prediction, scale: float, state: dict[str, Any]
) -> torch.Tensor | Prediction:
    """Plain CFG on the raw outputs `(B, *dims)`; on the x0 predictions if the two kinds differ."""
    if cond_pred.kind == uncond_pred.kind:
        return cfg_mix(cond_pred.output, uncond_pred.output, scale)
    return x0_prediction(cond_pred, cfg_mix(cond_pred.x0, uncond_pred.x0, scale))


def cfg_rescale_guide(
    step: GuidanceStep,
    cond_pred: Prediction,
    uncond_pred: Prediction,
    scale: float,
    state: dict[str, Any],
    *,
    phi: float = 0.7,
) -> torch.Tensor:
    """CFG rescaled to the conditional output's per-sample std, blended by phi (Lin et al. 2024, Alg. 2).

    `out_cfg = cfg(out_c, out_u)`, `out_rescaled = out_cfg std(out_c) / std(out_cfg)` (std over all
    but the batch dim), `out = phi out_rescaled + (1 - phi) out_cfg`; shapes `(B, *dims)`.
    """
    guided = cfg_mix(cond_pred.output, uncond_pred.output, scale)
    dims = tuple(range(1, guided.ndim))
    ratio = cond_pred.output.std(dim=dims, correction=0, keepdim=True) / guided.std(
        dim=dims, correction=0, keepdim=True
    )
    return phi * (guided * ratio) + (1.0 - phi) * guided


def apg_guide(
    step: GuidanceStep,
    cond_pred: Prediction,
    uncond_pred: Prediction,
    scale: float,
    state: dict[str, Any],
    *,
    eta: float = 0.0,
    momentum: float = -0.75,
    norm_threshold: float = 0.0,
) -> Prediction:
    """Adaptive projected guidance on the x0 predictions (Sadat et al. 2024, Alg. 1).

    `diff = x0_c - x0_u`, with momentum `diff <- diff + momentum diff_prev` (state, per run) and
    its per-sample norm clipped to `norm_threshold` (> 0); `diff = par + orth` relative to
    `x0_c`; `x0 = x0_c + (w - 1) (orth + eta par)`. Shapes `(B, *dims)`.
    """
    x0_c, x0_u = cond_pred.x0, uncond_pred.x0
    diff = x0_c - x0_u
    if momentum != 0.0:
        diff = diff + momentum * state.get("apg_running", torch.zeros_like(diff))
        state["apg_running"] = diff
    dims = tuple(range(1, diff.ndim))
    if norm_threshold > 0.0:
        norm = torch.linalg.vector_norm(diff, dim=dims, keepdim=True)
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    unit = torch.nn.functional.normalize(x0_c.flatten(1), dim=1).reshape(x0_c.shape)
    parallel = (diff * unit).sum(dim=dims, keepdim=True) * unit
    update = (diff - parallel) + eta * parallel
    return x0_prediction(cond_pred, x0_c + (scale - 1.0) * update)


def cfg_pp_guide(
    step: GuidanceStep, cond_pred: Prediction, uncond_pred: Prediction, scale: float, state: dict[str, Any]
) -> RenoisedPrediction:
    """CFG++ (Chung et al. 2024): x0 = x0_u + lambda (x0_c - x0_u), renoised with the unconditional eps."""
    x0 = cfg_mix(cond_pred.x0, uncond_pred.x0, scale)
    uncond_eps = Prediction(
        "eps",
        uncond_pred.eps,
        cond_pred.x,
        cond_pred.alpha,
        cond_pred.sigma,
        None,
        cond_pred.t,
        cond_pred.process,
    )
    p = cond_pred
    return RenoisedPrediction(
        "x0", x0, p.x, p.alpha, p.sigma, p.variance_interpolation, p.t, p.process, None, uncond_eps
    )


@dataclass(frozen=True, kw_only=True)
class CFGRescale:
    """`cfg-rescale` options: phi, the weight of the rescaled output."""

    phi: float = field(default=0.7, metadata={"range": (0, 1)})

    def __call__(self, step: GuidanceStep, c: Prediction, u: Prediction, scale: float, state: dict) -> Any:
        """`cfg_rescale_guide` with these options."""
        return cfg_rescale_guide(step, c, u, scale, state, phi=self.phi)


@dataclass(frozen=True, kw_only=True)
class APG:
    """`apg` options: eta (weight of the parallel part), momentum, norm_threshold (0: off)."""

    eta: float = field(default=0.0, metadata={"range": (0, None)})
    momentum: float = field(default=-0.75, metadata={"range": (-1, 1)})
    norm_threshold: float = field(default=0.0, metadata={"range": (0, None)})

    def __call__(self, step: GuidanceStep, c: Prediction, u: Prediction, scale: float, state: dict) -> Any:
        """`apg_guide` with these options."""
        return apg_guide(
            step, c, u, scale, state, eta=self.eta, momentum=self.momentum, norm_threshold=self.norm_threshold
        )


#: the methods `interval` can apply inside its noise-level interval (with their default options)
INTERVAL_METHODS: dict[str, Any] = {"cfg": cfg_guide, "cfg-rescale": CFGRescale(), "apg": APG()}


@dataclass(frozen=True, kw_only=True)
class Interval:
    """`interval` options: guidance only for sigma / alpha in [lo, hi] (Kynkaanniemi et al. 2024).

    The defaults are the paper's interval for EDM2 on ImageNet-512, (0.28, 5.42].
    """

    lo: float = field(default=0.28, metadata={"range": (0, None)})
    hi: float = field(default=5.42, metadata={"at_least": "lo", "finite": False})
    method: str = field(default="cfg", metadata={"choices": tuple(INTERVAL_METHODS)})

    def __call__(self, step: GuidanceStep, c: Prediction, u: Prediction, scale: float, state: dict) -> Any:
        """The inner method's output where sigma / alpha is in [lo, hi], the conditional one elsewhere."""
        level = step.noise_level
        inside = (level >= self.lo) & (level <= self.hi)
        if not bool(inside.any()):
            return c.output
        guided = INTERVAL_METHODS[self.method](step, c, u, scale, state)
        if bool(inside.all()):
            return guided
        if isinstance(guided, Prediction):
            mask = _per_sample(inside, c.x0)
            return x0_prediction(c, torch.where(mask, guided.x0, c.x0))
        return torch.where(_per_sample(inside, guided), guided, c.output)


class CFGModel(GuidedModel):
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
        super().__init__(model, method=cfg_guide, scale=scale, name="cfg")


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


def cfg_rescale(model: ScoreModel, *, scale: float = 1.0, phi: float = 0.7) -> GuidedModel:
    """CFG with std rescaling (Lin et al. 2024, Alg. 2), blended by phi."""
    return GuidedModel(model, method=CFGRescale(phi=phi), scale=scale, name="cfg-rescale")


def interval(
    model: ScoreModel, *, scale: float = 1.0, lo: float = 0.28, hi: float = 5.42, method: str = "cfg"
) -> GuidedModel:
    """Guidance `method` only where lo <= sigma / alpha <= hi, the conditional model elsewhere."""
    return GuidedModel(model, method=Interval(lo=lo, hi=hi, method=method), scale=scale, name="interval")


def apg(
    model: ScoreModel,
    *,
    scale: float = 1.0,
    eta: float = 0.0,
    momentum: float = -0.75,
    norm_threshold: float = 0.0,
) -> GuidedModel:
    """Adaptive projected guidance (Sadat et al. 2024) on the x0 prediction."""
    method = APG(eta=eta, momentum=momentum, norm_threshold=norm_threshold)
    return GuidedModel(model, method=method, scale=scale, name="apg")


def cfg_pp(model: ScoreModel, *, scale: float = 1.0) -> GuidedModel:
    """CFG++ (Chung et al. 2024): guided x0 with lambda = scale in [0, 1], unconditional eps to renoise."""
    if not (isinstance(scale, int | float) and 0.0 <= scale <= 1.0):
        raise ValueError(f"the CFG++ scale lambda must be in [0, 1], got {scale!r}")
    return GuidedModel(model, method=cfg_pp_guide, scale=scale, name="cfg-pp")


def autoguidance(model: ScoreModel, guide: ScoreModel | None = None, *, scale: float = 1.0) -> GuidedModel:
    """Autoguidance (Karras et al. 2024): `guide + w (model - guide)` with a weaker `guide` model."""
    if guide is None:
        raise UsageError("guidance 'autoguidance' needs a weaker guide model: pass --guide-model NAME")
    return GuidedModel(model, method=cfg_guide, scale=scale, name="autoguidance", guide=guide)
