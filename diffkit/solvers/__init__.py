"""The public solver toolkit: everything a sampler plugin may import, in one place.

A new fixed-grid sampler subclasses `FixedStepSampler` (or `MultistepSampler` for methods
that keep past predictions in `StepContext.history`) and implements one `step`; the shared
loop validates the grid, precomputes the schedule in float64, calls the callback, applies
`denoise_final` and counts NFE (`finish_run`). Samplers with their own loop (`ode`, `sde`)
use `check_grid`, `split_final_zero`, `schedule_dtype`, `local_generator` and `finish_run`
directly. A grid may end at sigma = 0 (a final point 0.0 below t_min): `make_context` and
`split_final_zero` drop that point before any schedule evaluation, and `finish_run(...,
to_zero=True)` takes the last step to it as the x0 prediction (see `diffkit.core.grid`).

This module only re-exports; the implementations live in `stepping`, `exponential`,
`dynamics`, `edm`, `ncsn`, `shapes`, `sampler`, `grid` and `precision`.
"""

from __future__ import annotations

from diffkit.core.grid import append_final_zero, check_grid, split_final_zero
from diffkit.core.model import schedule_rates
from diffkit.core.precision import schedule_dtype
from diffkit.core.sampler import VE_LOG_SNR, Callback, Capabilities, SampleResult, StepInfo
from diffkit.core.shapes import append_dims, batch_times
from diffkit.solvers.dynamics import (
    ancestral_step,
    euler_maruyama_step,
    gaussian_transition,
    probability_flow_drift,
    reverse_diffusion_step,
    reverse_drift,
)
from diffkit.solvers.edm import (
    churn_gamma,
    churn_noise_std,
    churn_sigma,
    euler_step,
    from_scaled,
    heun_correction,
    log_snr_of_sigma_scaled,
    ode_derivative,
    sigma_scaled,
    to_scaled,
)
from diffkit.solvers.exponential import (
    LOWER_ORDER_FINAL_BELOW,
    MultistepSampler,
    SolverType,
    StepCoefficients,
    combine,
    ddim_noise_h,
    dpmpp_multistep_weights,
    exponential_coefficients,
    exponential_step,
    half_log_snr,
    singlestep_weights,
    step_order,
    unipc_weights,
)
from diffkit.solvers.ncsn import geometric_levels, langevin_step, ncsnv2_step_size, snr_step_size
from diffkit.solvers.stepping import FixedStepSampler, StepContext, finish_run, local_generator, make_context

__all__ = [
    "LOWER_ORDER_FINAL_BELOW",
    "VE_LOG_SNR",
    "Callback",
    "Capabilities",
    "FixedStepSampler",
    "MultistepSampler",
    "SampleResult",
    "SolverType",
    "StepCoefficients",
    "StepContext",
    "StepInfo",
    "ancestral_step",
    "append_dims",
    "append_final_zero",
    "batch_times",
    "check_grid",
    "churn_gamma",
    "churn_noise_std",
    "churn_sigma",
    "combine",
    "ddim_noise_h",
    "dpmpp_multistep_weights",
    "euler_maruyama_step",
    "euler_step",
    "exponential_coefficients",
    "exponential_step",
    "finish_run",
    "from_scaled",
    "gaussian_transition",
    "geometric_levels",
    "half_log_snr",
    "heun_correction",
    "langevin_step",
    "local_generator",
    "log_snr_of_sigma_scaled",
    "make_context",
    "ncsnv2_step_size",
    "ode_derivative",
    "reverse_diffusion_step",
    "probability_flow_drift",
    "reverse_drift",
    "schedule_dtype",
    "schedule_rates",
    "sigma_scaled",
    "singlestep_weights",
    "snr_step_size",
    "split_final_zero",
    "step_order",
    "to_scaled",
    "unipc_weights",
]
