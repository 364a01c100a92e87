"""Network targets: eps / x0 / v / score conversions (pure functions) and their conversion objects.

With `x = alpha x0 + sigma eps` (all tensors broadcastable to `(B, *dims)`):

    x0    = (x - sigma eps) / alpha          eps = (x - alpha x0) / sigma
    score = -eps / sigma                     v   = alpha eps - sigma x0   (Salimans & Ho 2022)
    u = dx_t/dt = alpha' x0 + sigma' eps     (flow matching, Lipman et al. 2023)

`alpha` and `sigma` arrive already broadcast (see `diffkit.core.shapes.append_dims`); the
velocity u also needs the time derivatives `d_alpha`, `d_sigma`. A model resolves its kind once
to a `Parameterization` object (registered by plugins through `registrar.add_parameterization`;
eps, x0, v, score and velocity are built in), whose methods call these functions.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol

import torch
from torch import Tensor

Kind = Literal["eps", "x0", "v", "score"]
#: The kinds that convert with alpha and sigma alone (`to_eps`, `to_x0`); velocity needs the rates too.
KINDS: tuple[str, ...] = ("eps", "x0", "v", "score")


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = (x - alpha x0) / sigma."""
    return (x - alpha * x0) / sigma


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = (x - sigma eps) / alpha."""
    return (x - sigma * eps) / alpha


def score_from_eps(eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """score = grad_x log p_t(x) = -eps / sigma."""
    return -eps / sigma


def eps_from_score(score: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = -sigma score."""
    return -sigma * score


def v_from_eps_x0(
    eps: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """v = alpha eps - sigma x0."""
    return alpha * eps - sigma * x0


def eps_from_v(x: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = (sigma x + alpha v) / (alpha^2 + sigma^2)."""
    return (sigma * x + alpha * v) / (alpha**2 + sigma**2)


def x0_from_v(x: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)."""
    return (alpha * x - sigma * v) / (alpha**2 + sigma**2)


def to_eps(
    kind: str, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Convert a network output of the given kind to eps."""
    if kind == "eps":
        return output
    if kind == "x0":
        return eps_from_x0(x, output, alpha, sigma)
    if kind == "v":
        return eps_from_v(x, output, alpha, sigma)
    if kind == "score":
        return eps_from_score(output, sigma)
    raise ValueError(f"unknown parameterization {kind!r}; expected one of {', '.join(KINDS)}")


def to_x0(
    kind: str, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Convert a network output of the given kind to x0 (exact for x0 and v outputs)."""
    if kind == "x0":
        return output
    if kind == "v":
        return x0_from_v(x, output, alpha, sigma)
    return x0_from_eps(x, to_eps(kind, output, x, alpha, sigma), alpha, sigma)


def velocity_from_eps_x0(
    eps: torch.Tensor, x0: torch.Tensor, d_alpha: torch.Tensor, d_sigma: torch.Tensor
) -> torch.Tensor:
    """Conditional flow-matching velocity u = dx_t/dt = d_alpha x0 + d_sigma eps (Lipman et al. 2023)."""
    return d_alpha * x0 + d_sigma * eps


def velocity_determinant(
    alpha: torch.Tensor, sigma: torch.Tensor, d_alpha: torch.Tensor, d_sigma: torch.Tensor
) -> torch.Tensor:
    """D = alpha sigma' - sigma alpha' = -(alpha sigma / 2) d log-SNR/dt, > 0 where log-SNR decreases.

    The determinant of the 2x2 system `x = alpha x0 + sigma eps`, `u = alpha' x0 + sigma' eps`.
    """
    return alpha * d_sigma - sigma * d_alpha


def eps_from_velocity(
    x: torch.Tensor,
    u: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    d_alpha: torch.Tensor,
    d_sigma: torch.Tensor,
) -> torch.Tensor:
    """eps = (alpha u - alpha' x) / (alpha sigma' - sigma alpha')."""
    return (alpha * u - d_alpha * x) / velocity_determinant(alpha, sigma, d_alpha, d_sigma)


def x0_from_velocity(
    x: torch.Tensor,
    u: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    d_alpha: torch.Tensor,
    d_sigma: torch.Tensor,
) -> torch.Tensor:
    """x0 = (sigma' x - sigma u) / (alpha sigma' - sigma alpha')."""
    return (d_sigma * x - sigma * u) / velocity_determinant(alpha, sigma, d_alpha, d_sigma)


class Evaluation(Protocol):
    """What a conversion object reads: one network evaluation (e.g. `diffkit.core.model.Prediction`).

    `output`, `x` are `(B, *dims)`; `alpha`, `sigma`, `d_alpha`, `d_sigma` broadcast to
    `(B, 1, ..., 1)` in `x`'s dtype (`d_alpha`, `d_sigma`: time derivatives, computed on demand).
    """

    output: torch.Tensor
    x: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor

    @property
    def d_alpha(self) -> torch.Tensor:
        """d alpha / dt."""

    @property
    def d_sigma(self) -> torch.Tensor:
        """d sigma / dt."""


class Parameterization:
    """A network target as a conversion object (in the spirit of EDM's preconditioning classes).

    A subclass sets `name` and implements `eps` (network output -> eps) and `target` (the output
    an exact network gives for data x0 and noise eps, i.e. the regression target); `x0`, `score`,
    `v` and `velocity` derive from eps unless overridden with an exact form. Methods take an
    `Evaluation` and return `(B, *dims)`; they are pure (no state, no in-place ops on inputs).
    Register one with `registrar.add_parameterization(name, cls)`.
    """

    name: ClassVar[str] = ""

    def eps(self, p: Evaluation) -> torch.Tensor:
        """Predicted noise from `p.output`."""
        raise NotImplementedError

    def x0(self, p: Evaluation) -> torch.Tensor:
        """Predicted clean data E[x0 | x_t]."""
        return x0_from_eps(p.x, self.eps(p), p.alpha, p.sigma)

    def score(self, p: Evaluation) -> torch.Tensor:
        """Predicted score grad_x log p_t(x)."""
        return score_from_eps(self.eps(p), p.sigma)

    def v(self, p: Evaluation) -> torch.Tensor:
        """Predicted v = alpha eps - sigma x0."""
        return v_from_eps_x0(self.eps(p), self.x0(p), p.alpha, p.sigma)

    def velocity(self, p: Evaluation) -> torch.Tensor:
        """Predicted flow-matching velocity d_alpha x0 + d_sigma eps."""
        return velocity_from_eps_x0(self.eps(p), self.x0(p), p.d_alpha, p.d_sigma)

    def target(
        self,
        x0: torch.Tensor,
        eps: torch.Tensor,
        alpha: torch.Tensor,
        sigma: torch.Tensor,
        d_alpha: torch.Tensor,
        d_sigma: torch.Tensor,
    ) -> torch.Tensor:
        """The output `(B, *dims)` of an exact network at `x = alpha x0 + sigma eps`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Parameterization):
    """The network predicts the noise eps (Ho et al. 2020)."""

    name = "eps"

    def eps(self, p: Evaluation) -> torch.Tensor:
        """eps is the output."""
        return p.output

    def target(
        self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor
    ) -> Tensor:
        """eps."""
        return eps


class X0Prediction(Parameterization):
    """The network predicts the clean data x0."""

    name = "x0"

    def eps(self, p: Evaluation) -> torch.Tensor:
        """eps = (x - alpha x0) / sigma."""
        return eps_from_x0(p.x, p.output, p.alpha, p.sigma)

    def x0(self, p: Evaluation) -> torch.Tensor:
        """x0 is the output."""
        return p.output

    def target(
        self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor
    ) -> Tensor:
        """x0."""
        return x0


class VPrediction(Parameterization):
    """The network predicts v = alpha eps - sigma x0 (Salimans & Ho 2022)."""

    name = "v"

    def eps(self, p: Evaluation) -> torch.Tensor:
        """eps = (sigma x + alpha v) / (alpha^2 + sigma^2)."""
        return eps_from_v(p.x, p.output, p.alpha, p.sigma)

    def x0(self, p: Evaluation) -> torch.Tensor:
        """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)."""
        return x0_from_v(p.x, p.output, p.alpha, p.sigma)

    def target(
        self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor
    ) -> Tensor:
        """v = alpha eps - sigma x0."""
        return v_from_eps_x0(eps, x0, alpha, sigma)


class ScorePrediction(Parameterization):
    """The network predicts the score grad_x log p_t(x) = -eps / sigma (Song & Ermon 2019)."""

    name = "score"

    def eps(self, p: Evaluation) -> torch.Tensor:
        """eps = -sigma score."""
        return eps_from_score(p.output, p.sigma)

    def score(self, p: Evaluation) -> torch.Tensor:
        """The score is the output."""
        return p.output

    def target(
        self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor
    ) -> Tensor:
        """score = -eps / sigma."""
        return score_from_eps(eps, sigma)


class VelocityPrediction(Parameterization):
    """The network predicts the flow-matching velocity u = alpha' x0 + sigma' eps = dx_t/dt.

    Conditional flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023): on `flow`
    (alpha = 1 - t, sigma = t) u = eps - x0, what SD3 and Flux predict. eps and x0 solve the 2x2
    system `x = alpha x0 + sigma eps`, `u = alpha' x0 + sigma' eps` at the prediction's times, so
    the conversions need the process's rates (`Prediction.d_alpha`, `d_sigma`).
    """

    name = "velocity"

    def eps(self, p: Evaluation) -> torch.Tensor:
        """eps = (alpha u - alpha' x) / (alpha sigma' - sigma alpha')."""
        return eps_from_velocity(p.x, p.output, p.alpha, p.sigma, p.d_alpha, p.d_sigma)

    def x0(self, p: Evaluation) -> torch.Tensor:
        """x0 = (sigma' x - sigma u) / (alpha sigma' - sigma alpha')."""
        return x0_from_velocity(p.x, p.output, p.alpha, p.sigma, p.d_alpha, p.d_sigma)

    def velocity(self, p: Evaluation) -> torch.Tensor:
        """The velocity is the output."""
        return p.output

    def target(
        self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor
    ) -> Tensor:
        """u = alpha' x0 + sigma' eps."""
        return velocity_from_eps_x0(eps, x0, d_alpha, d_sigma)


#: The built-in conversion objects by name (what `ScoreModel(kind="eps")` resolves to).
STANDARD: dict[str, Parameterization] = {
    cls.name: cls() for cls in (EpsPrediction, X0Prediction, VPrediction, ScorePrediction, VelocityPrediction)
}


def standard(kind: str | Parameterization) -> Parameterization:
    """The conversion object of `kind`: itself if already one, else the standard one of that name."""
    if isinstance(kind, Parameterization):
        return kind
    found = STANDARD.get(kind)
    if found is None:
        raise ValueError(f"unknown parameterization {kind!r}; expected one of {', '.join(STANDARD)}")
    return found
