"""Score models: a network plus its parameterization, time map, conditioning and NFE count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from diffkit import parameterization as param
from diffkit.process import NoiseProcess
from diffkit.shapes import append_dims, batch_times

Network = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class Prediction:
    """One model evaluation at `(x, t)`; eps, x0, score and v are derived on demand.

    Attributes:
        kind: parameterization of `output` (eps, x0, v or score).
        output: raw network output `(B, *dims)`.
        x: the input `(B, *dims)`.
        alpha, sigma: schedule values broadcast to `(B, 1, ..., 1)` in `x`'s dtype.
        variance_interpolation: improved DDPM's v `(B, *dims)` of a learned-variance model
            (`Sigma = exp(v log beta + (1 - v) log beta_tilde)`, Nichol & Dhariwal 2021, eq. 15),
            or None; `output` is then the mean half of the network output only.
    """

    kind: str
    output: torch.Tensor
    x: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    variance_interpolation: torch.Tensor | None = None

    @property
    def eps(self) -> torch.Tensor:
        """Predicted noise."""
        return param.to_eps(self.kind, self.output, self.x, self.alpha, self.sigma)

    @property
    def x0(self) -> torch.Tensor:
        """Predicted clean data E[x0 | x_t]."""
        return param.to_x0(self.kind, self.output, self.x, self.alpha, self.sigma)

    @property
    def score(self) -> torch.Tensor:
        """Predicted score grad_x log p_t(x)."""
        if self.kind == "score":
            return self.output
        return param.score_from_eps(self.eps, self.sigma)

    @property
    def v(self) -> torch.Tensor:
        """Predicted velocity v = alpha eps - sigma x0."""
        return param.v_from_eps_x0(self.eps, self.x0, self.alpha, self.sigma)


def split_learned_variance(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `(B, 2C, ...)` network output into the mean output and v, each `(B, C, ...)`."""
    if output.ndim < 2 or output.shape[1] % 2:
        raise ValueError(f"a learned-variance output needs an even size on dim 1, got {tuple(output.shape)}")
    mean_output, v = output.chunk(2, dim=1)
    return mean_output, v


class ScoreModel:
    """A network wrapped with its parameterization; counts network function evaluations.

    Args:
        network: `network(x, time_input, cond) -> output` with `x` `(B, *dims)` and
            `time_input` `(B,)`; output has `x`'s shape and means `kind`.
        kind: the parameterization of the output: eps, x0, v or score.
        process: the noise process the network was trained for.
        data_shape: shape of one sample (without the batch dim).
        time_input: maps continuous t `(B,)` to the network's time input (default: t).
        learned_variance: the network output has twice `x`'s size on dim 1: the mean output, then
            improved DDPM's v (`split_learned_variance`); `predict` exposes the mean half as
            `output` and v as `variance_interpolation` (used by `ancestral`, ignored elsewhere).
    """

    def __init__(
        self,
        network: Network,
        *,
        kind: str,
        process: NoiseProcess,
        data_shape: tuple[int, ...],
        time_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
        learned_variance: bool = False,
    ) -> None:
        if kind not in param.KINDS:
            raise ValueError(f"unknown parameterization {kind!r}; expected one of {', '.join(param.KINDS)}")
        self.network = network
        self.kind = kind
        self.process = process
        self.data_shape = tuple(data_shape)
        self.time_input = time_input or (lambda t: t)
        self.learned_variance = bool(learned_variance)
        self.cond: Any = None
        self.nfe = 0

    def bind(self, cond: Any) -> ScoreModel:
        """Fix the conditioning used when `predict` is called without `cond`; returns self."""
        self.cond = cond
        return self

    def predict(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> Prediction:
        """Evaluate the network once at `x` `(B, *dims)`, time `t` (scalar or `(B,)`)."""
        t = batch_times(t, x)
        alpha = append_dims(self.process.alpha(t).to(x.dtype), x.ndim)
        sigma = append_dims(self.process.sigma(t).to(x.dtype), x.ndim)
        self.nfe += 1
        output = self.network(x, self.time_input(t), self.cond if cond is None else cond)
        if not self.learned_variance:
            return Prediction(self.kind, output, x, alpha, sigma)
        mean_output, v = split_learned_variance(output)
        return Prediction(self.kind, mean_output, x, alpha, sigma, v)

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
