"""Training objectives `ncsn`, `dsm`, `simple`, `vlb`, `hybrid`, `flow-matching` (wrapping `diffkit.losses`).

A loss factory takes the objective's options and returns a `Loss`: a frozen callable
`loss(model, x0, *, generator=None, cond=None) -> Tensor (B,)` of per-sample losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from diffkit import Registrar, ScoreModel, hookimpl, validate_options
from diffkit import losses as L
from diffkit.solvers import geometric_levels


class Loss(Protocol):
    """A configured objective: per-sample losses `(B,)` for data `x0` `(B, *dims)`."""

    def __call__(
        self,
        model: ScoreModel,
        x0: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        cond: Any = None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True, kw_only=True)
class _Objective:
    """Base of the registered objectives: one uniform call, the math in `_evaluate`."""

    def __call__(
        self,
        model: ScoreModel,
        x0: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        cond: Any = None,
    ) -> torch.Tensor:
        """Per-sample losses `(B,)` for data `x0` `(B, *dims)`."""
        return self._evaluate(model, x0, generator, cond)

    def _evaluate(
        self, model: ScoreModel, x0: torch.Tensor, generator: torch.Generator | None, cond: Any
    ) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class NCSNLoss(_Objective):
    """NCSN denoising score matching over geometric levels, lambda = sigma^2 (Song & Ermon 2019)."""

    sigma_max: float = 50.0
    sigma_min: float = 0.01
    levels: int = 10

    def __post_init__(self) -> None:
        """Validate the levels."""
        geometric_levels(self.sigma_max, self.sigma_min, self.levels)

    def _evaluate(
        self, model: ScoreModel, x0: torch.Tensor, generator: torch.Generator | None, cond: Any
    ) -> torch.Tensor:
        """Per-sample NCSN loss `(B,)`."""
        sigmas = geometric_levels(self.sigma_max, self.sigma_min, self.levels)
        return L.ncsn_dsm(model, x0, sigmas, generator=generator, cond=cond)


@dataclass(frozen=True, kw_only=True)
class DSMLoss(_Objective):
    """Continuous-time weighted DSM, standard or likelihood weighting (Song et al. 2021, eq. 7)."""

    weighting: Literal["standard", "likelihood"] = "standard"
    importance: bool = field(default=False, metadata={"needs": {"weighting": "likelihood"}})

    def __post_init__(self) -> None:
        """Check the declared options (also when built directly, outside the registry)."""
        validate_options(self)

    def _evaluate(
        self, model: ScoreModel, x0: torch.Tensor, generator: torch.Generator | None, cond: Any
    ) -> torch.Tensor:
        """Per-sample weighted DSM loss `(B,)`."""
        return L.weighted_dsm(
            model, x0, weighting=self.weighting, importance=self.importance, generator=generator, cond=cond
        )


@dataclass(frozen=True, kw_only=True)
class SimpleLoss(_Objective):
    """DDPM's L_simple: MSE to eps (or x0, v) at uniformly drawn t (Ho et al. 2020, eq. 14).

    `target="auto"` (the default) regresses the model's own parameterization (eps for a score
    model), so an eps network gets DDPM's eps-MSE and a v network the v-MSE of Salimans & Ho
    (2022, eq. 11), whose weight on x0 errors stays bounded as alpha -> 0.
    """

    target: Literal["auto", "eps", "x0", "v"] = "auto"

    def __post_init__(self) -> None:
        """Check the declared options (also when built directly, outside the registry)."""
        validate_options(self)

    def _evaluate(
        self, model: ScoreModel, x0: torch.Tensor, generator: torch.Generator | None, cond: Any
    ) -> torch.Tensor:
        """Per-sample L_simple `(B,)`."""
        target = self.target
        if target == "auto":
            target = model.kind if model.kind in ("eps", "x0", "v") else "eps"
        return L.l_simple(model, x0, target=target, generator=generator, cond=cond)


@dataclass(frozen=True, kw_only=True)
class VLBLoss(_Objective):
    """DDPM's variational bound on a discrete process, one random term per sample (Ho et al. 2020, eq. 5)."""

    variance: Literal["beta", "beta_tilde", "learned"] = "beta_tilde"
    decoder: Literal["discretized", "gaussian"] = "discretized"

    def _evaluate(
        self, model: ScoreModel, x0: torch.Tensor, generator: torch.Generator | None, cond: Any
    ) -> torch.Tensor:
        """Per-sample L_vlb estimate `(B,)` in nats."""
        return L.vlb(model, x0, variance=self.variance, decoder=self.decoder, generator=generator, cond=cond)


@dataclass(frozen=True, kw_only=True)
class HybridLoss(_Objective):
    """Improved DDPM's L_simple + lambda L_vlb with learned variance (Nichol & Dhariwal 2021, eq. 16)."""

    lam: float = 1e-3
    decoder: Literal["discretized", "gaussian"] = "discretized"

    def _evaluate(
        self, model: ScoreModel, x0: torch.Tensor, generator: torch.Generator | None, cond: Any
    ) -> torch.Tensor:
        """Per-sample hybrid loss `(B,)`."""
        return L.hybrid(model, x0, lam=self.lam, decoder=self.decoder, generator=generator, cond=cond)


@dataclass(frozen=True, kw_only=True)
class FlowMatchingLoss(_Objective):
    """Conditional flow matching: MSE to the velocity alpha' x0 + sigma' eps (Lipman et al. 2023).

    `diffkit train --loss flow-matching` trains a `velocity` network unless `--kind` says
    otherwise; times are uniform, or logit-normal(logit_mean, logit_std) as in SD3 (Esser et al. 2024).
    """

    time_sampling: Literal["uniform", "logit-normal"] = "uniform"
    logit_mean: float = 0.0  # read by logit-normal sampling only
    logit_std: float = field(default=1.0, metadata={"positive": True})

    def __post_init__(self) -> None:
        """Check the declared options (also when built directly, outside the registry)."""
        validate_options(self)

    def _evaluate(
        self, model: ScoreModel, x0: torch.Tensor, generator: torch.Generator | None, cond: Any
    ) -> torch.Tensor:
        """Per-sample flow-matching loss `(B,)`."""
        return L.flow_matching(
            model,
            x0,
            time_sampling=self.time_sampling,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            generator=generator,
            cond=cond,
        )


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the training objectives."""
    registrar.add_loss("ncsn", NCSNLoss)
    registrar.add_loss("dsm", DSMLoss)
    registrar.add_loss("simple", SimpleLoss)
    registrar.add_loss("vlb", VLBLoss)
    registrar.add_loss("hybrid", HybridLoss)
    registrar.add_loss("flow-matching", FlowMatchingLoss)
