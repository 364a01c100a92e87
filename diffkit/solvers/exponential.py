"""Exponential integrators in data prediction: the math DDIM, DPM-Solver++ and UniPC share.

Notation (Lu et al. 2022, "DPM-Solver++"): `lam = log(alpha / sigma)`, which is *half*
of diffkit's `log_snr` (`half_log_snr`), and a step from `lam` to `lam_next` has `h = lam_next -
lam > 0`. With data prediction x0(lam) the probability-flow ODE has the exact solution
(the data-prediction form of the exact solution in DPM-Solver++)

    x_next = (sigma_next / sigma) x + sigma_next int_lam^lam_next e^l x0(l) dl.

Every solver of the family replaces x0(l) on the step by a fixed linear combination of data
predictions `D = sum_j w_j x0_j` (weights summing to 1) and then takes the *same* first-order
step with D in place of x0 (`exponential_step`):

    x_next = (sigma_next / sigma) e^{-h_noise} x + alpha_next (1 - e^{-(h + h_noise)}) D
             + sigma_next sqrt(1 - e^{-2 h_noise}) z,                    z ~ N(0, I).

`h_noise = 0` is DDIM (Song et al. 2021, eq. 12) = DPM-Solver++(1); `h_noise = h` is the exact
solution of the reverse SDE for constant x0 (SDE-DPM-Solver++(1), Lu et al. 2022), and
`ddim_noise_h` gives DDIM's eta in between. The solvers differ only in the weights:
`dpmpp_multistep_weights` (2M/3M), `singlestep_weights` (2S) and `unipc_weights` (UniPC bh2,
whose B(h) = e^h - 1 is exactly the first-order coefficient, so its update is also a D).
Only alpha, sigma and lam enter, so all of this works on every linear-Gaussian process.

A step to sigma = 0 (a grid ending at sigma = 0, `diffkit.core.grid`) has sigma_next = 0,
alpha_next = 1 and h = inf. The first-order step's limit is finite: x_scale -> 0, x0_scale -> 1,
noise_scale -> 0, so `x_next = D`; with D = x0 that is the x0 prediction (also for any
h_noise, i.e. DDIM's eta and the SDE variants add no noise there). The multistep combinations
have no limit: DPM-Solver++(2M)'s D1 weight c / r_1 = c h / h_prev and UniPC's rho_k / r_k with
r_k = (lam_k - lam_0) / h -> 0 grow without bound. So the step to sigma = 0 is first order for
every solver here (diffusers' DPMSolverMultistep and UniPC force it too with
`final_sigmas_type="zero"`), taken as the x0 prediction by `finish_run` without evaluating the
schedule at t = 0; `MultistepSampler.order_at` counts it as the final step.

Coefficients are 0-dim tensors in the schedule dtype (float64 where the device has it);
`exponential_step` and `combine` cast them to the data's dtype.
"""

# No `from __future__ import annotations` here: `MultistepSampler`'s field annotations must stay
# objects, since option parsing resolves them in the namespace of the subclass's module.
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from diffkit.solvers.stepping import FixedStepSampler, StepContext

#: `lower_order_final` lowers the last steps' orders only below this many steps (Lu et al.
#: 2022 recommend it for fewer than 15 steps; diffusers' DPMSolverMultistepScheduler agrees).
LOWER_ORDER_FINAL_BELOW = 15

SolverType = Literal["midpoint", "heun"]
FinalStep = Literal["solver", "euler"]


def half_log_snr(log_snr: torch.Tensor) -> torch.Tensor:
    """lam = log(alpha / sigma) = log_snr / 2 (the lambda of Lu et al. 2022), same shape."""
    return 0.5 * log_snr


@dataclass(frozen=True)
class StepCoefficients:
    """The first-order step `x_next = x_scale x + x0_scale D + noise_scale z` (0-dim tensors)."""

    x_scale: torch.Tensor
    x0_scale: torch.Tensor
    noise_scale: torch.Tensor


def exponential_coefficients(
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    alpha_next: torch.Tensor,
    h: torch.Tensor,
    h_noise: torch.Tensor | float = 0.0,
) -> StepCoefficients:
    """Coefficients of the first-order data-prediction step (module docstring).

    DDIM eq. 12 written with lam (DPM-Solver++(1) of Lu et al. 2022; with noise, their
    SDE-DPM-Solver-1). For `h_noise = 0`, `x_scale x + x0_scale x0 = alpha_next x0 + sigma_next
    eps` with `eps = (x - alpha x0) / sigma`; `expm1` keeps small steps accurate.

    Args:
        sigma, sigma_next: noise scales at the start and end of the step, 0-dim.
        alpha_next: signal scale at the end of the step, 0-dim.
        h: lam_next - lam > 0, 0-dim.
        h_noise: how much of the step is re-noised (0: deterministic, h: exact reverse SDE).

    Returns:
        `StepCoefficients` in the dtype of the inputs (0-dim tensors).
    """
    h_noise = torch.as_tensor(h_noise, dtype=h.dtype, device=h.device)
    return StepCoefficients(
        x_scale=sigma_next / sigma * torch.exp(-h_noise),
        x0_scale=-alpha_next * torch.expm1(-(h + h_noise)),
        noise_scale=sigma_next * torch.sqrt(-torch.expm1(-2.0 * h_noise)),
    )


def ddim_noise_h(h: torch.Tensor, eta: float) -> torch.Tensor:
    """The `h_noise` of DDIM's eta (Song et al. 2021, DDIM eq. 16, for any alpha and sigma).

    DDIM's added std is `sigma_eta = eta sigma_next sqrt(1 - e^{-2h})` (for VP that is eq. 16:
    eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)); solving `sigma_next^2 (1 -
    e^{-2 h_noise}) = sigma_eta^2` gives `h_noise = -log1p(eta^2 expm1(-2h)) / 2`, so eta = 1
    is `h_noise = h` (DDPM-like ancestral sampling). Needs 0 <= eta <= 1; 0-dim in and out.
    """
    return -0.5 * torch.log1p(eta**2 * torch.expm1(-2.0 * h))


def exponential_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    coefficients: StepCoefficients,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply `x_next = x_scale x + x0_scale x0 (+ noise_scale noise)`, all `(B, *dims)`.

    Args:
        x: state at the start of the step, `(B, *dims)`.
        x0: the data prediction (or combination D) used on the step, same shape.
        coefficients: from `exponential_coefficients` (cast here to `x`'s dtype and device).
        noise: standard normal noise like `x` for stochastic steps, else None.

    Returns:
        the state at the end of the step, `(B, *dims)` in `x`'s dtype.
    """

    def cast(c: torch.Tensor) -> torch.Tensor:
        return c.to(device=x.device, dtype=x.dtype)

    out = cast(coefficients.x_scale) * x + cast(coefficients.x0_scale) * x0
    if noise is not None:
        out = out + cast(coefficients.noise_scale) * noise
    return out


def combine(x0s: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """`D = sum_j weights[j] x0s[j]`: x0s are `(B, *dims)` (newest first), weights `(len(x0s),)`."""
    if len(x0s) != weights.shape[0]:
        raise ValueError(f"{len(x0s)} data predictions but {weights.shape[0]} weights")
    w = weights.to(device=x0s[0].device, dtype=x0s[0].dtype)
    out = w[0] * x0s[0]
    for j in range(1, len(x0s)):
        out = out + w[j] * x0s[j]
    return out


def dpmpp_multistep_weights(
    lams: torch.Tensor,
    solver_type: SolverType = "midpoint",
    h_noise: torch.Tensor | float = 0.0,
    *,
    d2_scale: float = 1.0,
) -> torch.Tensor:
    """Weights of DPM-Solver++(kM) over x0 at the last k grid points (Lu et al. 2022).

    With `h = lam_next - lam_0`, `r_j = (lam_{j-1} - lam_j) / h` and divided differences
    `D1_0 = (x0_0 - x0_1) / r_1`, the k = 2 update is `D = x0_0 + c D1_0` (Alg. 2, "midpoint"
    c = 1/2, as k-diffusion's sample_dpmpp_2m; "heun" c = (H - 1 + e^{-H}) / (H (1 - e^{-H})),
    the exact linear-Taylor term, with H = h + h_noise for the SDE variant). For k = 3 (the
    third-order multistep), x0 is Taylor-expanded to second order in lam: `D1 ~ h x0'` and
    `D2 ~ h^2 x0'' / 2` from three points, and the exact integrals of the Taylor terms give

        D = x0_0 + c1 D1 + c2 D2,  c1 = (h - 1 + e^{-h}) / (h (1 - e^{-h})),
                                    c2 = (h^2 - 2h + 2 - 2 e^{-h}) / (h^2 (1 - e^{-h})).

    (The reference implementations use c2 / 2 here, which is only second order; see the tests.)
    With re-noising (the SDE variant) the kernel is e^{-(H - v)} over v in [0, H], H = h +
    h_noise, and c1, c2 are the same expressions in H (k-diffusion's sample_dpmpp_3m_sde).

    Args:
        lams: `(k + 1,)` = `[lam_next, lam_0, lam_1, ...]`, the end of the step first, then
            the grid points of the stored predictions, newest first; k = 1, 2 or 3.
        solver_type: second-order variant ("midpoint" or "heun"; k = 2 only).
        h_noise: the step's `h_noise` (SDE variant), 0-dim or 0.
        d2_scale: factor on c2 (k = 3 only): 1 is exact, 1/2 the reference implementations'.

    Returns:
        `(k,)` weights for `combine`, newest prediction first (summing to 1).
    """
    order = lams.shape[0] - 1
    h = lams[0] - lams[1]
    if order == 1:
        return torch.ones(1, dtype=lams.dtype, device=lams.device)
    r1 = (lams[1] - lams[2]) / h
    if order == 2:
        c = _linear_term(h + h_noise) if solver_type == "heun" else torch.full_like(h, 0.5)
        w1 = c / r1
        return torch.stack([1.0 + w1, -w1])
    if order != 3:
        raise ValueError(f"DPM-Solver++ multistep has orders 1 to 3, got {order}")
    r2 = (lams[2] - lams[3]) / h
    big_h = h + h_noise  # H: the kernel's length (h for the ODE)
    one_minus = -torch.expm1(-big_h)  # 1 - e^{-H}
    c1 = _linear_term(big_h)
    c2 = d2_scale * (big_h * big_h - 2.0 * big_h + 2.0 * one_minus) / (big_h * big_h * one_minus)
    # D1_0 = (x0_0 - x0_1)/r1, D1_1 = (x0_1 - x0_2)/r2; D1 = D1_0 + r1/(r1+r2)(D1_0 - D1_1),
    # D2 = (D1_0 - D1_1)/(r1 + r2): expand into weights on x0_0, x0_1, x0_2
    a = c1 * (1.0 + r1 / (r1 + r2)) + c2 / (r1 + r2)  # weight of D1_0
    b = -(c1 * r1 / (r1 + r2) + c2 / (r1 + r2))  # weight of D1_1
    return torch.stack([1.0 + a / r1, -a / r1 + b / r2, -b / r2])


def _linear_term(h: torch.Tensor) -> torch.Tensor:
    """(h - 1 + e^{-h}) / (h (1 - e^{-h})): the exact weight of h x0' relative to x0 (0-dim)."""
    one_minus = -torch.expm1(-h)
    return (h - one_minus) / (h * one_minus)


def singlestep_weights(r: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2S) weights over `[x0 at lam, x0 at lam + r h]` (Lu et al. 2022, Alg. 1).

    `D = (1 - 1/(2r)) x0_0 + 1/(2r) x0_r`; r = 1/2 (the midpoint) gives D = x0_r. 0-dim in.
    """
    w = 0.5 / r
    return torch.stack([1.0 - w, w])


def unipc_weights(rks: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """UniPC-bh2 weights (Zhao et al. 2023, "UniPC", with B(h) = e^h - 1).

    In data prediction UniP/UniC read `x_next = (sigma_next/sigma) x + alpha_next (1 - e^{-h})
    (x0_0 + sum_k rho_k D_k)` with `D_k = (x0_k - x0_0) / r_k`, because bh2's B(h) equals the
    first-order coefficient. rho solves `R rho = b` with `R[i, k] = r_k^i` and `b_i = hh
    phi_{i+2}(hh) (i+1)! / B(hh)`, hh = -h (their b_i). As in the reference code, the
    order-2 predictor and order-1 corrector use rho = 1/2.

    Args:
        rks: `(p,)` ratios `(lam_k - lam_0) / h` of the other points: for a predictor of
            order p + 1 the p earlier grid points (negative ratios); for a corrector of order p
            the p - 1 earlier points followed by 1, the new point at lam_next.
        h: lam_next - lam_0 > 0, 0-dim.

    Returns:
        `(p + 1,)` weights for `combine` over `[x0_0, x0_1, ..., x0_p]` (the new prediction last
        for the corrector), summing to 1.
    """
    p = rks.shape[0]
    if p == 0:
        return torch.ones(1, dtype=h.dtype, device=h.device)
    hh = -h
    b_h = torch.expm1(hh)
    b, g, factorial = [], torch.expm1(hh) / hh - 1.0, 1.0
    for i in range(1, p + 1):
        b.append(g * factorial / b_h)
        factorial *= i + 1
        g = g / hh - 1.0 / factorial
    if p == 1:
        rhos = torch.full((1,), 0.5, dtype=h.dtype, device=h.device)
    else:
        powers = torch.arange(p, dtype=h.dtype, device=h.device)
        matrix = rks.unsqueeze(0) ** powers.unsqueeze(1)  # R[i, k] = r_k^i
        rhos = torch.linalg.solve_ex(matrix, torch.stack(b))[0]
    w = rhos / rks
    return torch.cat([(1.0 - w.sum()).reshape(1), w])


def step_order(
    order: int, i: int, n_total: int, *, lower_order_final: bool, euler_final: bool = False
) -> int:
    """Order of step `i` (0-based) of `n_total` for a multistep method of order `order`.

    Warm-up: step i has only i + 1 predictions, so its order is at most i + 1.
    `lower_order_final` (only when n_total < LOWER_ORDER_FINAL_BELOW): at most n_total - i, so
    the last step is first order and the one before at most second order (Lu et al. 2022).
    `euler_final`: the last step is first order at any step count.
    """
    p = min(order, i + 1)
    if lower_order_final and n_total < LOWER_ORDER_FINAL_BELOW:
        p = min(p, n_total - i)
    if euler_final and i == n_total - 1:
        p = 1
    return max(p, 1)


@dataclass(frozen=True, kw_only=True)
class MultistepSampler(FixedStepSampler):
    """Base of the multistep samplers (DPM-Solver++ kM, UniPC): the final-step policy options.

    The *final step* is the step to sigma = 0 when the grid ends there (`StepContext.to_zero`) or
    the denoising step when `denoise_final` is on (a step to sigma = 0 is always first order: it
    returns the x0 prediction; see the module docstring), else the last grid step.

    Options:
        lower_order_final: with fewer than 15 steps in all (grid steps plus the denoising
            step), lower the orders towards the final step (`step_order`).
        final_step: "solver" (the solver's order) or "euler" (a first-order final step at any
            step count; a no-op with `denoise_final` or a grid ending at sigma = 0).
        denoise_final: after reaching t_min, return the x0 prediction (one extra NFE; nothing on
            a grid ending at sigma = 0, whose last step is that prediction).
    """

    lower_order_final: bool = True
    final_step: FinalStep = "solver"

    def __post_init__(self) -> None:
        """Validate options; subclasses extend and call super()."""
        super().__post_init__()  # checks the bool options
        if self.final_step not in ("solver", "euler"):
            raise ValueError(f"option final_step must be 'solver' or 'euler', got {self.final_step!r}")

    def order_at(self, ctx: StepContext, i: int, order: int) -> int:
        """Order of grid step i for a method of order `order` under this final-step policy.

        The step to sigma = 0 (a grid ending there, or `denoise_final`) counts as the final step.
        """
        return step_order(
            order,
            i,
            ctx.n_steps + int(self.denoise_final or ctx.to_zero),
            lower_order_final=self.lower_order_final,
            euler_final=self.final_step == "euler",
        )
