"""DEIS sampler `deis` (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator").

The probability-flow ODE of any linear-Gaussian process is linear in x up to the model's
prediction, and in the right coordinates it is a pure quadrature (DEIS, their Prop. 2 and the
data-prediction form of DPM-Solver++):

    noise prediction:  d(x / alpha) = eps  d(sigma / alpha) = eps d(e^{-lam})
    data prediction:   d(x / sigma) = x0   d(alpha / sigma) = x0  d(e^{lam})

with lam = log(alpha / sigma) (`half_log_snr`). DEIS's multistep "AB" integrator replaces the
prediction on the step lam_i -> lam_{i+1} by the Lagrange polynomial through the last p
predictions (p = the order) in an interpolation variable v, and integrates exactly:

    x_{i+1} = (alpha_{i+1} / alpha_i) x_i + sum_j c_j eps_{i-j},
        c_j = -sigma_{i+1} int_0^h L_j(v(lam_i + s)) e^{h - s} ds              (noise)
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + sum_j c_j x0_{i-j},
        c_j =  alpha_{i+1} int_0^h L_j(v(lam_i + s)) e^{s - h} ds              (data)

with h = lam_{i+1} - lam_i and L_j the Lagrange basis on the nodes v(lam_{i-j}). The bases:

* `t` -- tAB-DEIS, the paper's recommended variant: polynomial in the process time t, so the
  coefficients need quadrature (t(lam) through `process.t_from_log_snr`);
* `rho` -- rhoAB-DEIS: polynomial in rho = sigma / alpha;
* `log-rho` -- polynomial in log rho = -lam: diffusers' DEISMultistepScheduler ("logrho").

All three are integrated by one Gauss-Legendre rule in lam (`QUADRATURE_NODES` points, exact for
polynomials in lam of degree 2 n - 1; t(lam) is analytic on the continuous processes, so the
t-basis coefficients are accurate to rounding there too: 16 and 64 points agree to 1e-13 on vp,
subvp, ve, flow, flow-cosine; on the discrete ddpm processes t(lam) is interpolated between table
knots, with kinks, and they agree to about 1e-6, far below a step's error). The first
coefficient is then fixed so that the c_j sum to the exact first-order coefficient, so order 1
is DDIM exactly and every order reproduces a constant prediction exactly. Orders warm up (step i
uses at most i + 1 predictions) and follow the final-step policy of `MultistepSampler`
(`lower_order_final` below 15 steps, as diffusers does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from diffkit import Capabilities, NoiseProcess, Registrar, hookimpl
from diffkit.solvers import VE_LOG_SNR, MultistepSampler, StepContext, half_log_snr

#: Gauss-Legendre points per step for the DEIS coefficients.
QUADRATURE_NODES = 16

Basis = Literal["t", "rho", "log-rho"]
PredictionKind = Literal["noise", "data"]


def gauss_legendre(n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes `(n,)` in [-1, 1] and weights `(n,)` of the n-point Gauss-Legendre rule (Golub-Welsch)."""
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4.0 * k * k - 1.0)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    weights = 2.0 * vectors[0] ** 2
    return nodes.to(device=device, dtype=dtype), weights.to(device=device, dtype=dtype)


def lagrange_basis(nodes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """L_j(points) `(p, m)` of the Lagrange basis on `nodes` `(p,)` at `points` `(m,)`."""
    p = nodes.shape[0]
    rows = []
    for j in range(p):
        row = torch.ones_like(points)
        for k in range(p):
            if k != j:
                row = row * (points - nodes[k]) / (nodes[j] - nodes[k])
        rows.append(row)
    return torch.stack(rows)


def deis_coefficients(
    process: NoiseProcess,
    lams: torch.Tensor,
    lam_next: torch.Tensor,
    basis: Basis,
    prediction: PredictionKind,
    n_nodes: int = QUADRATURE_NODES,
) -> torch.Tensor:
    """Integrals `(p,)` of the Lagrange basis against e^{h - s} (noise) or e^{s - h} (data).

    Args:
        process: the noise process (its `t_from_log_snr` for the `t` basis).
        lams: `(p,)` lam of the stored predictions, newest (the step's start lam_i) first.
        lam_next: lam_{i+1}, 0-dim; h = lam_next - lams[0] > 0.
        basis: interpolation variable ("t", "rho", "log-rho").
        prediction: "noise" (eps) or "data" (x0).

    Returns:
        `(p,)` in lams' dtype, without the sigma_{i+1} / alpha_{i+1} factor and the sign of the
        module docstring; they sum to the exact integral of e^{+-(h - s)} over [0, h].
    """
    h = lam_next - lams[0]
    x, w = gauss_legendre(n_nodes, lams.dtype, lams.device)
    s = 0.5 * h * (x + 1.0)  # nodes on [0, h]
    kernel = torch.exp(h - s) if prediction == "noise" else torch.exp(s - h)
    total = torch.expm1(h) if prediction == "noise" else -torch.expm1(-h)
    if lams.shape[0] == 1:
        return total.reshape(1)
    lam_points = lams[0] + s
    if basis == "t":
        nodes = process.t_from_log_snr(2.0 * lams)
        points = process.t_from_log_snr(2.0 * lam_points)
    elif basis == "rho":  # rho = e^{-lam}, relative to the newest node for conditioning
        nodes, points = torch.expm1(lams[0] - lams), torch.expm1(lams[0] - lam_points)
    else:  # log rho = -lam; the basis is invariant under the affine map to lam - lam_i
        nodes, points = lams - lams[0], s
    coefficients = (0.5 * h) * (lagrange_basis(nodes, points) * (w * kernel)).sum(dim=1)
    return torch.cat([(total - coefficients[1:].sum()).reshape(1), coefficients[1:]])


@dataclass(frozen=True, kw_only=True)
class DEIS(MultistepSampler):
    """DEIS (Zhang & Chen 2023): multistep exponential integrator, prediction extrapolated in t.

    Options:
        order: number of past predictions the polynomial goes through (1 is DDIM), 1 to 3.
        prediction: "noise" (eps, the paper's form) or "data" (x0, as DPM-Solver++ does).
        basis: interpolation variable, "t" (tAB-DEIS), "rho" (rhoAB-DEIS) or "log-rho"
            (diffusers' DEISMultistepScheduler).
        lower_order_final, final_step, denoise_final: the final-step policy (`MultistepSampler`).
    """

    order: int = 3
    prediction: PredictionKind = "noise"
    basis: Basis = "t"

    def __post_init__(self) -> None:
        """Validate options (order an integer from 1 to 3)."""
        super().__post_init__()
        if type(self.order) is not int or not 1 <= self.order <= 3:
            raise ValueError(f"option order must be an integer in [1, 3], got {self.order!r}")

    @property
    def capabilities(self) -> Capabilities:
        """Deterministic, 1 NFE per step, order = `order` (measured: tests/test_deis.py)."""
        return Capabilities(
            stochastic=False,
            order=float(self.order),
            nfe_per_step=1,
            default_grid="quadratic",
            grid_by_feature=VE_LOG_SNR,
            default_steps=20,
        )

    def step(self, ctx: StepContext, i: int, x: torch.Tensor) -> torch.Tensor:
        """One DEIS step of order <= `order` from times[i] to times[i + 1]."""
        prediction = ctx.predict(x, i)
        ctx.history.append(prediction.eps if self.prediction == "noise" else prediction.x0)
        del ctx.history[: -self.order]  # keep the newest `order` predictions
        p = self.order_at(ctx, i, self.order)
        lam = half_log_snr(ctx.log_snr)
        lams = lam[i + 1 - p : i + 1].flip(0)
        c = deis_coefficients(ctx.process, lams, lam[i + 1], self.basis, self.prediction)
        if self.prediction == "noise":
            x_scale, c = ctx.alpha[i + 1] / ctx.alpha[i], -ctx.sigma[i + 1] * c
        else:
            x_scale, c = ctx.sigma[i + 1] / ctx.sigma[i], ctx.alpha[i + 1] * c
        out = ctx.coef(x_scale) * x
        for j, value in enumerate(ctx.history[::-1][:p]):
            out = out + ctx.coef(c[j]) * value
        return out


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the `deis` sampler."""
    registrar.add_sampler("deis", DEIS)
