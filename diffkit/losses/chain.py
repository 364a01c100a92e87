"""The DDPM chain of a VP-family process: alpha_bar_1..alpha_bar_N and where its model runs.

Discrete processes (`ddpm`, `ddpm-cosine`) are their own chain, knots at t_i = i / N. A
continuous linear-beta VP SDE (`vp`, beta(t) = beta_min + t (beta_max - beta_min)) has the N-step
chain of the standard VP <-> DDPM correspondence (Song et al. 2021, App. B), `beta_i =
beta_min / N + ((i - 1) / (N - 1)) (beta_max - beta_min) / N`; a sub-VP SDE (`subvp`, same
beta(t)) uses the same chain. The model is called at the time t_i where its own process has the
chain's SNR `alpha_bar_i / (1 - alpha_bar_i)`, with input `scale_i x_i`: then `scale_i x_i` has
exactly the model's marginal at t_i, so the model's x0 estimate there is its estimate of
E[x0 | x_i] (any x0 estimate gives a valid bound; this one makes an exact model the chain's
exact posterior mean). For VP, `alpha(t_i)^2 = alpha_bar_i` and scale 1; t_i differs from i / N
by O(1/N) (at N = 1000: t_1 = 0.00091, t_N = 1.003, just outside [t_min, t_max]). VE has no
DDPM chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffkit.core.process import discrete_process
from diffkit.core.schedules import LinearBetaProcess, ddpm_linear_alpha_bar, vp_t_from_log_alpha
from diffkit.core.traits import ProcessTraits, traits_of

DEFAULT_STEPS = 1000  # knots of the DDPM chain of a continuous VP-family process


def vp_chain_alpha_bar(num_steps: int, beta_min: float, beta_max: float) -> torch.Tensor:
    """alpha_bar_i `(N,)` of the DDPM chain of a linear-beta VP SDE (Song et al. 2021, App. B).

    `beta_i = beta_min / N + ((i - 1) / (N - 1)) (beta_max - beta_min) / N` for i = 1..N, so
    `N beta_i = beta(t)` on an even grid of [0, 1] and the chain `x_i = sqrt(1 - beta_i) x_{i-1} +
    sqrt(beta_i) z` tends to the VP SDE as N grows; at N = 1000 with (0.1, 20) these are DDPM's
    betas linspace(1e-4, 0.02, 1000) (Ho et al. 2020). Needs N > beta_max (every beta_i < 1).
    """
    if num_steps < 2 or beta_max / num_steps >= 1.0:
        raise ValueError(
            f"the DDPM chain of beta_max = {beta_max:g} needs N > {max(beta_max, 1.0):g} steps "
            f"(beta_N = beta_max / N < 1), got {num_steps}"
        )
    return ddpm_linear_alpha_bar(num_steps, beta_min / num_steps, beta_max / num_steps)


def matched_alpha_squared(alpha_bar: torch.Tensor, traits: ProcessTraits) -> torch.Tensor:
    """alpha(t)^2 `(N,)` of a VP or sub-VP process where its SNR is the chain's, alpha_bar / (1 - alpha_bar).

    VP: alpha^2 = alpha_bar. Sub-VP (sigma = 1 - alpha^2): `a / (1 - a)^2 = snr` for a =
    alpha^2, whose root in (0, 1) is `2 snr / (2 snr + 1 + sqrt(4 snr + 1))` (stable form).
    """
    if traits.variance_preserving:
        return alpha_bar
    snr = alpha_bar / (1.0 - alpha_bar)
    return 2.0 * snr / (2.0 * snr + 1.0 + torch.sqrt(4.0 * snr + 1.0))


def is_vp_family(process: Any) -> bool:
    """True for processes with a DDPM chain: discrete ones and linear-beta VP / sub-VP SDEs."""
    if discrete_process(process) is not None:
        return True
    traits = traits_of(process)
    vp_family = traits.variance_preserving or traits.sub_variance_preserving
    return vp_family and isinstance(process, LinearBetaProcess)


@dataclass(frozen=True)
class DiscreteSchedule:
    """Float64 tables `(N,)` of a DDPM chain, index i - 1 for knot i = 1..N, and where its model runs.

    Attributes:
        alpha_bar: alpha_bar_i of the chain, `q(x_i | x0) = N(sqrt(alpha_bar_i) x0, 1 - alpha_bar_i)`.
        times: the model's time t_i for knot i: i / N on a discrete process, else the time at
            which the model's process has the chain's SNR (module docstring).
        scale: the model's input is `scale_i x_i`, `scale_i = alpha(t_i) / sqrt(alpha_bar_i)`
            (sub-VP), or None where it is 1 (VP, discrete).
    """

    alpha_bar: torch.Tensor
    times: torch.Tensor
    scale: torch.Tensor | None = None

    @classmethod
    def of(cls, process: Any, num_steps: int | None = None) -> DiscreteSchedule:
        """The DDPM chain of a VP-family process: its own knots (discrete) or its N-step chain.

        Discrete processes use their table and times i / N (`num_steps` must be None or their
        N). Continuous `vp` / `subvp` use `vp_chain_alpha_bar(num_steps or 1000, beta_min,
        beta_max)` and `t_i = vp_t_from_log_alpha(log alpha)` with `alpha^2 =
        matched_alpha_squared(alpha_bar, traits)`. Anything else raises ValueError.
        """
        discrete = discrete_process(process)
        if discrete is not None:
            if num_steps not in (None, discrete.num_steps):
                raise ValueError(
                    f"a discrete process has its own {discrete.num_steps} steps, not {num_steps}"
                    " (set them with --sde-opt num_steps=N)"
                )
            return cls(discrete.alpha_bar_table.to(torch.float64), discrete.discrete_times)
        if not is_vp_family(process):
            raise ValueError(
                "the variational bound needs a VP-family process (ddpm, ddpm-cosine, vp, subvp), "
                f"got {type(process).__name__}"
            )
        alpha_bar = vp_chain_alpha_bar(num_steps or DEFAULT_STEPS, process.beta_min, process.beta_max)
        traits = traits_of(process)
        log_alpha = 0.5 * torch.log(matched_alpha_squared(alpha_bar, traits))
        times = vp_t_from_log_alpha(log_alpha, process.beta_min, process.beta_max)
        scale = None if traits.variance_preserving else process.alpha(times) / alpha_bar.sqrt()
        return cls(alpha_bar, times, scale)

    @property
    def alpha_bar_prev(self) -> torch.Tensor:
        """alpha_bar_{i-1} (alpha_bar_0 = 1)."""
        return torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar[:-1]])

    @property
    def beta(self) -> torch.Tensor:
        """beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}."""
        return 1.0 - self.alpha_bar / self.alpha_bar_prev

    @property
    def beta_tilde(self) -> torch.Tensor:
        """Posterior variance beta_tilde_i (Ho et al. 2020, eq. 7); 0 at i = 1."""
        return self.beta * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    @property
    def log_beta_tilde_clipped(self) -> torch.Tensor:
        """log beta_tilde_i with the i = 1 entry (log 0) replaced by log beta_tilde_2."""
        beta_tilde = self.beta_tilde
        return torch.log(torch.cat([beta_tilde[1:2], beta_tilde[1:]]))

    @property
    def coef_x0(self) -> torch.Tensor:
        """c0_i = sqrt(alpha_bar_{i-1}) beta_i / (1 - alpha_bar_i)."""
        return self.alpha_bar_prev.sqrt() * self.beta / (1.0 - self.alpha_bar)

    @property
    def coef_xt(self) -> torch.Tensor:
        """ct_i = sqrt(1 - beta_i) (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i)."""
        return (1.0 - self.beta).sqrt() * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
