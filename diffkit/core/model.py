"""Score models: a network plus its parameterization, time map, conditioning and NFE count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from diffkit.core import parameterization as param
from diffkit.core.precision import schedule_dtype
from diffkit.core.process import NoiseProcess
from diffkit.core.shapes import append_dims, batch_times
from diffkit.core.time_warp import base_process, unwarp
from diffkit.oracles.conditional import NULL_LABEL

Network = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]

#: How a score-kind output becomes the score: as is, or divided by sigma(t) (NCSNv2, Technique 3).
SCORE_SCALINGS: tuple[str, ...] = ("none", "1/sigma")


@dataclass(frozen=True)
class Prediction:
    """One model evaluation at `(x, t)`; eps, x0, score, v and velocity are derived on demand.

    Attributes:
        kind: name of the parameterization of `output` (eps, x0, v, score or a plugin's).
        output: raw network output `(B, *dims)`.
        x: the input `(B, *dims)`.
        alpha, sigma: schedule values broadcast to `(B, 1, ..., 1)` in `x`'s dtype.
        variance_interpolation: improved DDPM's v `(B, *dims)` of a learned-variance model
            (`Sigma = exp(v log beta + (1 - v) log beta_tilde)`, Nichol & Dhariwal 2021, eq. 15),
            or None; `output` is then the mean half of the network output only.
        t: the times `(B,)` (None if unknown), with `process` what `d_alpha`, `d_sigma` need.
        process: the noise process of `alpha` and `sigma` (None if unknown).
        parameterization: the conversion object of `kind` (default: the standard one named `kind`).
    """

    kind: str
    output: torch.Tensor
    x: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    variance_interpolation: torch.Tensor | None = None
    t: torch.Tensor | None = None
    process: NoiseProcess | None = None
    parameterization: param.Parameterization | None = None

    def __post_init__(self) -> None:
        """Resolve a standard kind by name when no conversion object is given."""
        if self.parameterization is None:
            object.__setattr__(self, "parameterization", param.standard(self.kind))

    @property
    def eps(self) -> torch.Tensor:
        """Predicted noise."""
        return self.parameterization.eps(self)  # type: ignore[union-attr]

    @property
    def x0(self) -> torch.Tensor:
        """Predicted clean data E[x0 | x_t]."""
        return self.parameterization.x0(self)  # type: ignore[union-attr]

    @property
    def score(self) -> torch.Tensor:
        """Predicted score grad_x log p_t(x)."""
        return self.parameterization.score(self)  # type: ignore[union-attr]

    @property
    def v(self) -> torch.Tensor:
        """Predicted velocity v = alpha eps - sigma x0."""
        return self.parameterization.v(self)  # type: ignore[union-attr]

    @property
    def velocity(self) -> torch.Tensor:
        """Predicted flow-matching velocity dx_t/dt = d_alpha x0 + d_sigma eps `(B, *dims)`."""
        return self.parameterization.velocity(self)  # type: ignore[union-attr]

    @cached_property
    def _rates(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.t is None or self.process is None:
            raise ValueError("this prediction has no process and times: d_alpha and d_sigma are unknown")
        d_alpha, d_sigma = schedule_rates(self.process, self.t)
        return (
            append_dims(d_alpha.to(self.x.dtype), self.x.ndim),
            append_dims(d_sigma.to(self.x.dtype), self.x.ndim),
        )

    @property
    def d_alpha(self) -> torch.Tensor:
        """d alpha / dt at `t`, broadcast to `(B, 1, ..., 1)` in `x`'s dtype (computed once, on demand)."""
        return self._rates[0]

    @property
    def d_sigma(self) -> torch.Tensor:
        """d sigma / dt at `t`, broadcast to `(B, 1, ..., 1)` in `x`'s dtype (computed once, on demand)."""
        return self._rates[1]


def schedule_rates(process: NoiseProcess, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d alpha/dt and d sigma/dt `(B,)` at times `t` `(B,)`, computed in the schedule dtype (float64).

    From the process's drift coefficient f = d log alpha/dt and squared diffusion
    g^2 = d sigma^2/dt - 2 f sigma^2 (Song et al. 2021, App. B): d alpha/dt = f alpha and
    d sigma/dt = (g^2 + 2 f sigma^2) / (2 sigma).
    """
    t = t.detach().to(schedule_dtype(t.device))
    f, alpha, sigma = process.f(t), process.alpha(t), process.sigma(t)
    return f * alpha, (process.diffusion_squared(t) + 2.0 * f * sigma**2) / (2.0 * sigma)


def split_learned_variance(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `(B, 2C, ...)` network output into the mean output and v, each `(B, C, ...)`."""
    if output.ndim < 2 or output.shape[1] % 2:
        raise ValueError(f"a learned-variance output needs an even size on dim 1, got {tuple(output.shape)}")
    mean_output, v = output.chunk(2, dim=1)
    return mean_output, v


def network_dtype(network: Any) -> torch.dtype | None:
    """The floating dtype of a `torch.nn.Module`'s first floating parameter, else None (a plain function)."""
    if not isinstance(network, nn.Module):
        return None
    for tensor in network.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def network_device(network: Any) -> torch.device | None:
    """The device of a `torch.nn.Module`'s first parameter, else None."""
    if not isinstance(network, nn.Module):
        return None
    return next((tensor.device for tensor in network.parameters()), None)


class ScoreModel:
    """A network wrapped with its parameterization; counts network function evaluations.

    Args:
        network: `network(x, time_input, cond) -> output` with `x` `(B, *dims)` and
            `time_input` `(B,)`; output has `x`'s shape and means `kind`.
        kind: the parameterization of the output: eps, x0, v or score, or a conversion object
            (`diffkit.core.parameterization.Parameterization`, e.g. a plugin's from
            `registry.build("parameterization", name, {})`); `self.kind` is its name.
        process: the noise process the network was trained for.
        data_shape: shape of one sample (without the batch dim).
        time_input: maps continuous t `(B,)` to the network's time input (default: t).
        learned_variance: the network output has twice `x`'s size on dim 1: the mean output, then
            improved DDPM's v (`split_learned_variance`); `predict` exposes the mean half as
            `output` and v as `variance_interpolation` (used by `ancestral`, ignored elsewhere).
        num_classes: class labels the model is conditioned on (0: unconditional); `cond` is
            then a label tensor `(B,)` in `[0, num_classes)` or the null label.
        null_label: the label that means "no class" (classifier-free guidance's null token):
            `num_classes` for the networks of `diffkit.nn`, `NULL_LABEL` (-1, the default) for
            the oracles.
        score_scaling: kind "score" only: "none" (the output is the score) or "1/sigma" (the
            score is `output / sigma(t)`, so the network learns the well-scaled `sigma score ~
            -eps`; NCSNv2, Song & Ermon 2020, Technique 3).

    Precision: an `nn.Module` network runs in its own dtype and on x's device (x is cast to its
    dtype and the time input to that dtype, at least float32; the network moves to x's device on
    first use; the output is cast back to x's dtype), so float64 samplers, likelihoods and
    encoders work on float32 networks; schedule arithmetic stays in the schedule dtype (float64).
    """

    def __init__(
        self,
        network: Network,
        *,
        kind: str | param.Parameterization,
        process: NoiseProcess,
        data_shape: tuple[int, ...],
        time_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
        learned_variance: bool = False,
        num_classes: int = 0,
        null_label: int | None = None,
        score_scaling: str = "none",
    ) -> None:
        self.parameterization = param.standard(kind)  # resolved once: no lookups per call
        self.kind = self.parameterization.name
        if score_scaling not in SCORE_SCALINGS or (score_scaling != "none" and self.kind != "score"):
            raise ValueError(f"score_scaling must be one of {', '.join(SCORE_SCALINGS)} (kind score only)")
        self.network = network
        self.process = process
        self.data_shape = tuple(data_shape)
        self.time_input = time_input or (lambda t: t)
        self.learned_variance = bool(learned_variance)
        self.num_classes = int(num_classes)
        self.null_label = NULL_LABEL if null_label is None else int(null_label)
        self.score_scaling = score_scaling
        self.cond: Any = None
        self.nfe = 0

    @property
    def network_process(self) -> NoiseProcess:
        """The process whose time the network receives: `process`, or its base if `process` is shifted."""
        return base_process(self.process)

    @property
    def conditional(self) -> bool:
        """True if the model takes class labels (`num_classes > 0`)."""
        return self.num_classes > 0

    def bind(self, cond: Any) -> ScoreModel:
        """Fix the conditioning used when `predict` is called without `cond`; returns self."""
        self.cond = cond
        return self

    def network_output(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Raw network output at `x` `(B, *dims)`, continuous times `t` `(B,)`, in `x`'s dtype.

        The time map is applied; an int or 0-dim label of a conditional model becomes `(B,)` long;
        an `nn.Module` runs in its own dtype and device (see the class).
        """
        time_input = self.time_input(t)
        if self.conditional and cond is not None and not isinstance(cond, torch.Tensor):
            cond = torch.as_tensor(cond, dtype=torch.long, device=x.device)  # a bound int label
        if self.conditional and isinstance(cond, torch.Tensor) and cond.ndim == 0:
            cond = cond.to(device=x.device, dtype=torch.long).expand(x.shape[0])
        dtype, device = network_dtype(self.network), network_device(self.network)
        if dtype is None:
            return self.network(x, time_input, cond)
        if device is not None and device != x.device:
            self.network.to(x.device)  # type: ignore[union-attr]
        time_dtype = torch.promote_types(dtype, torch.float32)  # half-precision times would blur t
        output = self.network(x.to(dtype), time_input.to(device=x.device, dtype=time_dtype), cond)
        return output.to(x.dtype)

    def prediction(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any) -> Prediction:
        """One evaluation with exactly `cond` (no bound default, no NFE counted): how wrappers call a base.

        On a shifted process (`diffkit.core.time_warp`) the network receives its own time, the
        base process's w(t), and the `Prediction` carries that time and the base process, so a
        velocity means d x / d (base time); alpha and sigma are the same either way.
        """
        process, t = unwarp(self.process, batch_times(t, x))
        alpha = append_dims(process.alpha(t).to(x.dtype), x.ndim)
        sigma = append_dims(process.sigma(t).to(x.dtype), x.ndim)
        output = self.network_output(x, t, cond)
        v = None
        if self.learned_variance:
            output, v = split_learned_variance(output)
        if self.score_scaling == "1/sigma":
            output = output / sigma
        return Prediction(self.kind, output, x, alpha, sigma, v, t, process, self.parameterization)

    def predict(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> Prediction:
        """Evaluate the network once at `x` `(B, *dims)`, time `t` (scalar or `(B,)`); counts one NFE."""
        self.nfe += 1
        return self.prediction(x, t, self.cond if cond is None else cond)

    def score(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """Shorthand for `predict(x, t, cond).score`."""
        return self.predict(x, t, cond).score


@runtime_checkable
class ExactData(Protocol):
    """Models that know their data distribution exactly (the oracles)."""

    def sample_data(
        self, n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """`n` exact samples of the data distribution, `(n, *data_shape)`."""

    def data_log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact log-density `(B,)` of the data distribution, in nats."""
