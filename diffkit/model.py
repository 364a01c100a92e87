"""Score models: a network plus its parameterization, time map, conditioning and NFE count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from diffkit import parameterization as param
from diffkit.conditional import NULL_LABEL
from diffkit.process import NoiseProcess
from diffkit.shapes import append_dims, batch_times

Network = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]

#: How a score-kind output becomes the score: as is, or divided by sigma(t) (NCSNv2, Technique 3).
SCORE_SCALINGS: tuple[str, ...] = ("none", "1/sigma")


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
        kind: the parameterization of the output: eps, x0, v or score.
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
        kind: str,
        process: NoiseProcess,
        data_shape: tuple[int, ...],
        time_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
        learned_variance: bool = False,
        num_classes: int = 0,
        null_label: int | None = None,
        score_scaling: str = "none",
    ) -> None:
        if kind not in param.KINDS:
            raise ValueError(f"unknown parameterization {kind!r}; expected one of {', '.join(param.KINDS)}")
        if score_scaling not in SCORE_SCALINGS or (score_scaling != "none" and kind != "score"):
            raise ValueError(f"score_scaling must be one of {', '.join(SCORE_SCALINGS)} (kind score only)")
        self.network = network
        self.kind = kind
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
        """One evaluation with exactly `cond` (no bound default, no NFE counted): how wrappers call a base."""
        t = batch_times(t, x)
        alpha = append_dims(self.process.alpha(t).to(x.dtype), x.ndim)
        sigma = append_dims(self.process.sigma(t).to(x.dtype), x.ndim)
        output = self.network_output(x, t, cond)
        v = None
        if self.learned_variance:
            output, v = split_learned_variance(output)
        if self.score_scaling == "1/sigma":
            output = output / sigma
        return Prediction(self.kind, output, x, alpha, sigma, v)

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
