"""Exact ("oracle") score models: Gaussian mixtures with closed-form perturbed marginals.

Under any linear-Gaussian process a diagonal Gaussian mixture stays a mixture,
`p_t = sum_k w_k N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))`, so eps, x0, the score and the
log-density are exact (see `diffkit.oracles.mixture`). The three definitions are fixed by DESIGN.md
section 6; other tools and tests rely on them, so do not change them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffkit import NoiseProcess, Registrar, ScoreModel, hookimpl
from diffkit.oracles import (
    class_log_posterior,
    component_log_joint,
    conditional_eps,
    mixture_eps,
    mixture_log_prob,
    mixture_sample,
    perturbed_components,
)
from diffkit.solvers import batch_times


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Diagonal Gaussian mixture: means `(K, D)`, stds `(K, D)`, weights `(K,)` (float64).

    Weights are kept as given (the fixed definitions are already normalised); `log_weights`
    and sampling normalise them.
    """

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        k, d = self.means.shape
        if self.stds.shape != (k, d) or self.weights.shape != (k,):
            raise ValueError(
                f"mixture shapes disagree: means {tuple(self.means.shape)}, "
                f"stds {tuple(self.stds.shape)}, weights {tuple(self.weights.shape)}"
            )
        if not bool((self.stds > 0).all()) or not bool((self.weights > 0).all()):
            raise ValueError("mixture stds and weights must be positive")

    @property
    def num_components(self) -> int:
        """K, the number of components."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """D, the data dimension."""
        return self.means.shape[1]

    @property
    def log_weights(self) -> torch.Tensor:
        """Normalised log-weights log(w_k / sum_j w_j) `(K,)`."""
        return torch.log(self.weights) - torch.log(self.weights.sum())


def ring8_mixture() -> GaussianMixture:
    """gmm:ring8: 8 isotropic components (std 0.1) at radius 2, angle 2 pi k / 8, weight (k+1)/36."""
    k = torch.arange(8, dtype=torch.float64)
    angle = 2.0 * math.pi * k / 8.0
    means = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    return GaussianMixture(means, torch.full((8, 2), 0.1, dtype=torch.float64), (k + 1.0) / 36.0)


def two_modes_mixture() -> GaussianMixture:
    """gmm:two-modes: means (-2.5, 0) and (2.5, 0), std 0.25, weights 0.2 and 0.8."""
    means = torch.tensor([[-2.5, 0.0], [2.5, 0.0]], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.8], dtype=torch.float64)
    return GaussianMixture(means, torch.full((2, 2), 0.25, dtype=torch.float64), weights)


def d64_mixture() -> GaussianMixture:
    """gmm:d64: 10 diagonal components over 64 pixels, weights proportional to k + 1.

    For pixel p = 0..63 (row-major) and component k = 0..9:
    mean `0.6 sin(0.5 (k+1)(p+1) + k)`, std `0.05 + 0.15 frac(0.618034 (64 k + p))`.
    """
    k = torch.arange(10, dtype=torch.float64).unsqueeze(-1)  # (K, 1)
    p = torch.arange(64, dtype=torch.float64)  # (D,)
    means = 0.6 * torch.sin(0.5 * (k + 1.0) * (p + 1.0) + k)
    phase = 0.618034 * (64.0 * k + p)
    stds = 0.05 + 0.15 * (phase - torch.floor(phase))
    return GaussianMixture(means, stds, (k.squeeze(-1) + 1.0) / 55.0)


class OracleModel(ScoreModel):
    """Exact eps model of a Gaussian mixture perturbed by `process` (kind "eps").

    Args:
        mixture: the data distribution.
        process: the noise process; alpha(t) and sigma(t) come from it.
        data_shape: shape of one sample; its size must equal the mixture's D.
    """

    def __init__(self, mixture: GaussianMixture, process: NoiseProcess, data_shape: tuple[int, ...]) -> None:
        if math.prod(data_shape) != mixture.dim:
            raise ValueError(f"data shape {tuple(data_shape)} does not hold {mixture.dim} values")
        super().__init__(self._exact_eps, kind="eps", process=process, data_shape=data_shape)
        self.mixture = mixture

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten `(B, *data_shape)` to `(B, D)`, checking the shape."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"expected data of shape (B, {self.data_shape}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    def _schedule(
        self, x: torch.Tensor, t: torch.Tensor, *, network_time: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha(t), sigma(t) `(B,)` in `x`'s dtype; `network_time`: t is the network's (base) time."""
        process = self.network_process if network_time else self.process
        return process.alpha(t).to(x.dtype), process.sigma(t).to(x.dtype)

    def _exact_eps(self, x: torch.Tensor, time_input: torch.Tensor, cond: Any) -> torch.Tensor:
        """The network: exact eps `(B, *data_shape)` at `x` and time `time_input` = t `(B,)`."""
        alpha, sigma = self._schedule(x, time_input, network_time=True)
        m = self.mixture
        eps = mixture_eps(self._flat(x), m.means, m.stds, m.log_weights, alpha, sigma)
        return eps.reshape(x.shape)

    def sample_data(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw `n` exact data samples `(n, *data_shape)` on the generator's device (default CPU)."""
        device = generator.device if generator is not None else torch.device("cpu")
        m = self.mixture
        flat = mixture_sample(
            n, m.means.to(device), m.stds.to(device), m.weights.to(device), generator, dtype
        )
        return flat.reshape(n, *self.data_shape)

    def data_log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact log-density `(B,)` of the data mixture at `x0` `(B, *data_shape)`, in nats."""
        m = self.mixture
        return mixture_log_prob(self._flat(x0), m.means, m.stds.square(), m.log_weights)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Exact log-density `(B,)` of the perturbed marginal p_t at `x` `(B, *data_shape)`, in nats."""
        alpha, sigma = self._schedule(x, batch_times(t, x))
        m = self.mixture
        means = m.means.to(device=x.device, dtype=x.dtype)
        stds = m.stds.to(device=x.device, dtype=x.dtype)
        means_t, variances_t = perturbed_components(means, stds, alpha, sigma)
        return mixture_log_prob(self._flat(x), means_t, variances_t, m.log_weights)

    def component_of(self, x0: torch.Tensor) -> torch.Tensor:
        """Most responsible component `(B,)` (long) of each `x0` `(B, *data_shape)` under the data mixture."""
        m = self.mixture
        return component_log_joint(self._flat(x0), m.means, m.stds.square(), m.log_weights).argmax(-1)


class ExactClassifier:
    """Exact time-dependent classifier log p_t(y | x) of a class-conditional mixture oracle.

    The classes are the mixture's components, so p_t(y | x) is the responsibility of component
    y under the perturbed mixture (Dhariwal & Nichol 2021, sec. 4, with the classifier exact).
    """

    def __init__(self, model: OracleModel) -> None:
        self.model = model
        self.num_classes = model.mixture.num_components

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | float, labels: torch.Tensor) -> torch.Tensor:
        """log p_t(y | x) `(B,)` at `x` `(B, *data_shape)`, labels `(B,)` long; differentiable in x."""
        alpha, sigma = self.model._schedule(x, batch_times(t, x))
        m = self.model.mixture
        log_post = class_log_posterior(self.model._flat(x), m.means, m.stds, m.log_weights, alpha, sigma)
        return log_post.gather(-1, labels.to(x.device).long().unsqueeze(-1)).squeeze(-1)


class ConditionalOracleModel(OracleModel):
    """Class-conditional mixture oracle: `cond` is a label tensor `(B,)` (a component) or None.

    `predict(x, t, cond=labels)` gives the exact eps of p_t(x | y); label `NULL_LABEL` (-1) or
    `cond=None` gives the unconditional mixture eps, as the null token of classifier-free
    guidance (Ho & Salimans 2022). `classifier` is the exact time-dependent classifier.
    """

    conditional = True

    def __init__(self, mixture: GaussianMixture, process: NoiseProcess, data_shape: tuple[int, ...]) -> None:
        super().__init__(mixture, process, data_shape)
        self.network = self._exact_conditional_eps
        self.num_classes = mixture.num_components
        self.classifier = ExactClassifier(self)

    def _exact_conditional_eps(self, x: torch.Tensor, time_input: torch.Tensor, cond: Any) -> torch.Tensor:
        """The network: exact conditional eps `(B, *data_shape)`; `cond` labels `(B,)` or None."""
        if cond is None:
            return self._exact_eps(x, time_input, None)
        labels = torch.as_tensor(cond, device=x.device).long().expand(x.shape[0])
        alpha, sigma = self._schedule(x, time_input, network_time=True)
        m = self.mixture
        eps = conditional_eps(self._flat(x), labels, m.means, m.stds, m.log_weights, alpha, sigma)
        return eps.reshape(x.shape)

    def sample_class(
        self,
        label: int,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw `n` exact samples `(n, *data_shape)` of class (component) `label`."""
        device = generator.device if generator is not None else torch.device("cpu")
        m = self.mixture
        noise = torch.randn((n, m.dim), generator=generator, device=device, dtype=m.means.dtype)
        flat = m.means[label].to(device) + m.stds[label].to(device) * noise
        return flat.to(dtype).reshape(n, *self.data_shape)


def _two_d(mixture: GaussianMixture, name: str, process: NoiseProcess, image: bool) -> OracleModel:
    if image:
        raise ValueError(f"{name} is 2-D data; image=True is only valid for gmm:d64")
    return OracleModel(mixture, process, (2,))


def ring8(process: NoiseProcess, *, image: bool = False) -> OracleModel:
    """Exact 8-mode ring in 2-D (radius 2, std 0.1, weights (1..8)/36)."""
    return _two_d(ring8_mixture(), "gmm:ring8", process, image)


def two_modes(process: NoiseProcess, *, image: bool = False) -> OracleModel:
    """Exact two-mode 2-D mixture at x = -2.5 and 2.5 (weights 0.2, 0.8)."""
    return _two_d(two_modes_mixture(), "gmm:two-modes", process, image)


def ring8_cond(process: NoiseProcess) -> ConditionalOracleModel:
    """gmm:ring8 as a class-conditional oracle: cond = component label (B,) or None."""
    return ConditionalOracleModel(ring8_mixture(), process, (2,))


def two_modes_cond(process: NoiseProcess) -> ConditionalOracleModel:
    """gmm:two-modes as a class-conditional oracle: cond = component label (B,) or None."""
    return ConditionalOracleModel(two_modes_mixture(), process, (2,))


def rgb_mixture() -> GaussianMixture:
    """gmm:rgb: 4 diagonal components over (3, 4, 4) colour images, equal weights.

    For component k = 0..3, channel c and pixel p = 0..15: mean `0.5 sin(1.3 (k + 1)(c + 1) + 0.4 p)`,
    std `0.05 + 0.1 frac(0.618034 (48 k + 16 c + p))`.
    """
    k = torch.arange(4, dtype=torch.float64).view(4, 1, 1)
    c = torch.arange(3, dtype=torch.float64).view(1, 3, 1)
    p = torch.arange(16, dtype=torch.float64).view(1, 1, 16)
    means = 0.5 * torch.sin(1.3 * (k + 1.0) * (c + 1.0) + 0.4 * p)
    phase = 0.618034 * (48.0 * k + 16.0 * c + p)
    stds = 0.05 + 0.1 * (phase - torch.floor(phase))
    return GaussianMixture(
        means.reshape(4, 48), stds.reshape(4, 48), torch.full((4,), 0.25, dtype=torch.float64)
    )


def rgb(process: NoiseProcess) -> OracleModel:
    """Exact 4-component diagonal mixture of (3, 4, 4) colour images (for colorization)."""
    return OracleModel(rgb_mixture(), process, (3, 4, 4))


def d64(process: NoiseProcess, *, image: bool = False) -> OracleModel:
    """Exact 10-component diagonal mixture in 64-D (an 8x8 image with image=true)."""
    return OracleModel(d64_mixture(), process, (1, 8, 8) if image else (64,))


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the oracle models (fixed ones, class-conditional ones and `gmm:rgb`)."""
    registrar.add_model("gmm:ring8", ring8)
    registrar.add_model("gmm:two-modes", two_modes)
    registrar.add_model("gmm:d64", d64)
    registrar.add_model("gmm:ring8-cond", ring8_cond)
    registrar.add_model("gmm:two-modes-cond", two_modes_cond)
    registrar.add_model("gmm:rgb", rgb)
