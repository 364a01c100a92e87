"""Reverse-SDE samplers `sde` and `sde:<method>` on torchsde (Li et al. 2020; Kidger et al. 2021).

The reverse-time SDE (Song et al. 2021, eq. 6) `dx = [f x - g^2 score] dt + g dw_bar`, t from
t_max down to t_min, is handed to `torchsde.sdeint` in the increasing time s = -t:

    dx = -[f(t) x - g(t)^2 score(x, t)] ds + g(t) dW_s,        t = -s,

with the data flattened to `(B, D)` (torchsde wants 2-D states) and reshaped back.

* The noise is additive (g depends on t only), so the SDE declares `noise_type = "additive"`
  and provides only the drift `f(s, y)` and the product `g_prod(s, y, v) = g(t) v`: no dense
  `(B, D, D)` diffusion matrix is ever built. With additive noise the Itô and Stratonovich
  SDEs coincide (the correction g g' / 2 vanishes), so Stratonovich-only methods (midpoint,
  heun, euler_heun) integrate the same SDE; each method declares its `sde_type`.
* torchsde steps by `dt` and interpolates at intermediate `ts`, so to step exactly on a
  non-uniform grid, `sdeint` is called once per grid interval (one step each) on one shared
  `BrownianInterval` over [s_0, s_N] whose entropy comes from the caller's generator: the
  same seed gives bit-identical samples.
* `sdeint` evaluates the drift at (s_i, y_i) once per call to check shapes. Every method here
  evaluates that same drift in its first stage, so the last evaluation is memoised (same s,
  same tensor object, same version): NFE = steps * stages exactly. Its shape check also draws
  from the global RNG; that state is saved and restored around each call.
* reversible_heun is not offered: it carries a state z != y between steps, so the per-interval
  shape check would cost one wasted model call per step; log_ode reduces to midpoint for
  additive noise. Times passed to the model are clamped to [t_min, t_max].
* A grid ending at sigma = 0 (a final point 0.0 below t_min): the SDE is integrated to the point
  before it, t_last, and the last step is the model's x0 prediction there (one NFE, no noise:
  the reverse-SDE posterior at sigma = 0 is a point mass; `denoise_final` then adds nothing).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchsde

from diffkit import Capabilities, NoiseProcess, Registrar, SampleResult, ScoreModel, StepInfo, hookimpl
from diffkit.solvers import (
    VE_LOG_SNR,
    Callback,
    check_grid,
    finish_run,
    local_generator,
    reverse_drift,
    schedule_dtype,
    split_final_zero,
)


@dataclass(frozen=True)
class SDEMethod:
    """What diffkit knows about one torchsde method, for additive noise.

    Attributes:
        order: weak order (what `Capabilities.order` means for stochastic samplers).
        strong_order: strong order for additive noise.
        nfe_per_step: model (drift) evaluations per step.
        sde_type: "ito" or "stratonovich" (the same SDE here, see the module docstring).
        levy_area: Lévy-area approximation the Brownian motion must provide.
    """

    order: float
    strong_order: float
    nfe_per_step: int
    sde_type: str
    levy_area: str = "none"


SDE_METHODS: dict[str, SDEMethod] = {
    "euler": SDEMethod(1.0, 1.0, 1, "ito"),
    "milstein": SDEMethod(1.0, 1.0, 1, "ito"),  # = euler for additive noise (g' = 0)
    # Rößler (2010) SRA1 for additive noise: strong 1.5, weak 2 (torchsde's attribute says weak 1.5)
    "srk": SDEMethod(2.0, 1.5, 2, "ito", "space-time"),
    "midpoint": SDEMethod(1.0, 1.0, 2, "stratonovich"),
    "heun": SDEMethod(1.0, 1.0, 2, "stratonovich"),
    "euler_heun": SDEMethod(1.0, 1.0, 1, "stratonovich"),
}


class _ReverseSDE:
    """The reverse SDE in s = -t on flattened `(B, D)` states, in torchsde's protocol.

    Only `f` and `g_prod` exist (no `g`), so torchsde cannot build a dense diffusion matrix.
    """

    noise_type = "additive"

    def __init__(self, model: ScoreModel, process: NoiseProcess, shape: torch.Size, sde_type: str) -> None:
        self.model, self.process, self.shape, self.sde_type = model, process, shape, sde_type
        self._memo: tuple[float, torch.Tensor, int, torch.Tensor] | None = None

    def _time(self, s: torch.Tensor) -> torch.Tensor:
        """t = -s as a float64 CPU scalar, clamped to the process range (s comes from CPU `ts`)."""
        t = -torch.as_tensor(s, dtype=torch.float64, device="cpu")
        return t.clamp(self.process.t_min, self.process.t_max)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Drift in s: -(f x - g^2 score) for y `(B, D)`, memoised for the last (s, y)."""
        key = float(s)
        memo = self._memo
        if memo is not None and memo[0] == key and memo[1] is y and memo[2] == y._version:
            return memo[3]
        t = self._time(s)
        # the model's time goes to the device by a fill, not a host-to-device copy (no sync)
        t_model = torch.full((), float(t), dtype=schedule_dtype(y.device), device=y.device)
        x = y.reshape(self.shape)
        score = self.model.predict(x, t_model).score
        f = self.process.f(t).to(y.dtype)
        g2 = self.process.diffusion_squared(t).to(y.dtype)
        drift = -reverse_drift(x, score, f, g2).reshape(y.shape)
        self._memo = (key, y, y._version, drift)
        return drift

    def g_prod(self, s: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Diffusion times noise, g(t) v, elementwise for v `(B, D)`."""
        return self.process.diffusion(self._time(s)).to(v.dtype) * v


def _brownian(
    s: torch.Tensor, size: tuple[int, int], x: torch.Tensor, generator: torch.Generator, levy_area: str
) -> torchsde.BrownianInterval:
    """One Brownian motion over [s_0, s_N], its entropy drawn from `generator`."""
    entropy = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    mean_step = float(s[-1] - s[0]) / (s.shape[0] - 1)
    return torchsde.BrownianInterval(
        t0=float(s[0]),
        t1=float(s[-1]),
        size=size,
        dtype=x.dtype,
        device=x.device,
        entropy=entropy,
        dt=mean_step,
        levy_area_approximation=levy_area,
    )


def _rng_guard(device: torch.device) -> Any:
    """Save/restore the global RNG of `device` (torchsde's shape check draws from it)."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device], device_type=device.type)


@dataclass(frozen=True, kw_only=True)
class SDESampler:
    """Reverse SDE (Song et al. 2021, eq. 6) integrated by a torchsde method.

    Options:
        method: torchsde method (euler, milstein, srk, midpoint, heun, euler_heun).
        denoise_final: after reaching t_min, return the model's x0 prediction (one extra NFE).
    """

    method: str = "euler"
    denoise_final: bool = False

    def __post_init__(self) -> None:
        """Check the method; the bool option is checked by the registry's build."""
        if self.method not in SDE_METHODS:
            raise ValueError(f"unknown SDE method {self.method!r}; expected one of {', '.join(SDE_METHODS)}")

    @property
    def capabilities(self) -> Capabilities:
        """Stochastic; weak order and NFE per step of the chosen method."""
        info = SDE_METHODS[self.method]
        return Capabilities(
            stochastic=True,
            order=info.order,
            adaptive=False,
            nfe_per_step=info.nfe_per_step,
            default_grid="quadratic",  # as `em`: short late steps (spread 1.023 vs 1.052 uniform)
            default_steps=500,
            grid_by_feature=VE_LOG_SNR,
        )

    def __call__(
        self,
        model: ScoreModel,
        process: NoiseProcess,
        x_init: torch.Tensor,
        grid: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> SampleResult:
        """Integrate the reverse SDE on `grid`, one torchsde step per grid interval.

        Args:
            model: score model (counts its NFE).
            process: the noise process (f and g come from it).
            x_init: prior samples `(B, *dims)` at t = grid[0].
            grid: float64 `(N + 1,)` times, strictly descending, possibly ending at sigma = 0.
            generator: source of the Brownian motion's entropy (a fresh random one if None).
            callback: called with a `StepInfo` after every step.

        Returns:
            `SampleResult` with x `(B, *dims)` in `x_init`'s dtype; nfe = N * nfe_per_step.
        """
        grid, to_zero = split_final_zero(check_grid(grid, process), process)
        info = SDE_METHODS[self.method]
        generator = local_generator(generator, x_init.device)
        s = -grid.to(device="cpu", dtype=torch.float64)  # increasing; CPU times keep torchsde sync-free
        batch, dim = x_init.shape[0], math.prod(x_init.shape[1:])
        sde = _ReverseSDE(model, process, x_init.shape, info.sde_type)
        nfe_start = model.nfe
        n_steps = s.shape[0] - 1
        if n_steps > 0:  # else the grid is [t_max, 0]: only the step to sigma = 0
            bm = _brownian(s, (batch, dim), x_init, generator, info.levy_area)
        y = x_init.reshape(batch, dim)
        for i in range(n_steps):
            span = s[i : i + 2]
            # dt > span: torchsde's loop takes exactly one step, ending at min(s_i + dt, s_{i+1})
            with _rng_guard(y.device):
                y = torchsde.sdeint(
                    sde, y, span, bm=bm, method=self.method, dt=2.0 * float(span[1] - span[0])
                )[-1]
            if callback is not None:
                callback(StepInfo(i, grid[i + 1], y.reshape(x_init.shape), model.nfe - nfe_start))
        return finish_run(
            model,
            y.reshape(x_init.shape),
            grid[-1],
            n_steps,
            nfe_start,
            denoise_final=self.denoise_final,
            callback=callback,
            extras={"method": self.method},
            to_zero=to_zero,
        )


def _method_factory(method: str) -> Callable[..., SDESampler]:
    """`SDESampler` with `method` bound (the registry hides bound options from users)."""
    factory = functools.partial(SDESampler, method=method)
    factory.__doc__ = f"Reverse SDE with torchsde's {method} method."
    return factory


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register `sde` (Euler–Maruyama on torchsde) and the `sde:<method>` family."""
    registrar.add_sampler("sde", SDESampler)
    registrar.add_family("sampler", "sde", tuple(SDE_METHODS), summary="reverse SDE with a torchsde method")


@hookimpl
def diffkit_resolve(kind: str, name: str) -> Callable[..., Any] | None:
    """Resolve `sde:<method>` to an `SDESampler` with that method."""
    prefix, sep, method = name.partition(":")
    if kind != "sampler" or prefix != "sde" or not sep or method not in SDE_METHODS:
        return None
    return _method_factory(method)
