"""The process contract: a process written to the bare `NoiseProcess` Protocol, typed traits,
`DiscreteProcess`, a process's preferred grid and the schedule check at composition.

`BareFlow` (alpha = 1 - t, sigma = t) has no base class: it writes alpha and sigma and takes
every other Protocol member from `diffkit.core.process_defaults`. `ClosedFlow` is the same schedule on
`LinearGaussianProcess` with closed-form f and g^2, so the two must sample alike. This module is
also the plugin registering both (`DIFFKIT_PLUGINS=test_process_contract` for the CLI).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import CompositionError
from diffkit.core.precision import as_schedule_tensor, result_dtype
from diffkit.core.process_defaults import (
    derived_diffusion,
    derived_diffusion_squared,
    derived_f,
    derived_log_snr,
    derived_t_from_log_snr,
    gaussian_marginal,
    gaussian_prior_logp,
    gaussian_prior_sample,
    linear_drift,
)
from diffkit.plugin.catalog import sampler_rows
from diffkit.run.api import SampleConfig, compose, sample

F64 = torch.float64


@dataclass(frozen=True, kw_only=True)
class BareFlow:
    """Rectified-flow schedule x_t = (1 - t) x0 + t eps, written to the Protocol alone."""

    t_min: float = 1e-3
    t_max: float = 0.999
    traits: ClassVar[diffkit.ProcessTraits] = diffkit.ProcessTraits(default_grid="uniform")

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """alpha(t) = 1 - t."""
        return (1.0 - as_schedule_tensor(t)).to(result_dtype(t))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) = t."""
        return (1.0 * as_schedule_tensor(t)).to(result_dtype(t))

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """2 log((1 - t) / t)."""
        return derived_log_snr(self, t)

    def t_from_log_snr(self, log_snr: torch.Tensor | float) -> torch.Tensor:
        """Inverse log-SNR by bisection."""
        return derived_t_from_log_snr(self, log_snr)

    def f(self, t: torch.Tensor | float) -> torch.Tensor:
        """d log alpha / dt by autograd."""
        return derived_f(self, t)

    def diffusion_squared(self, t: torch.Tensor | float) -> torch.Tensor:
        """g^2 by autograd."""
        return derived_diffusion_squared(self, t)

    def drift(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """f(t) x."""
        return linear_drift(self, x, t)

    def diffusion(self, t: torch.Tensor | float) -> torch.Tensor:
        """g(t)."""
        return derived_diffusion(self, t)

    def marginal(self, x0: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha x0, sigma)."""
        return gaussian_marginal(self, x0, t)

    def prior_sample(self, shape, *, generator=None, device="cpu", dtype=torch.float32):  # noqa: ANN001, ANN201
        """N(0, t_max^2 I)."""
        return gaussian_prior_sample(self.t_max, shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, t_max^2 I)."""
        return gaussian_prior_logp(self.t_max, z)


@dataclass(frozen=True, kw_only=True)
class ClosedFlow(diffkit.LinearGaussianProcess):
    """The same schedule on the base class, with closed-form derivatives."""

    t_min: float = 1e-3
    t_max: float = 0.999
    traits: ClassVar[diffkit.ProcessTraits] = diffkit.ProcessTraits(default_grid="uniform")

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log1p(-t)

    def _sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return t**2

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -1.0 / (1.0 - t)

    def _d_sigma_squared(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * t


@dataclass(frozen=True, kw_only=True)
class LegacyVE(ClosedFlow):
    """A third-party process still declaring the old free `features` set."""

    features: ClassVar[frozenset[str]] = frozenset({"variance-exploding"})


@dataclass(frozen=True, kw_only=True)
class DiscreteOnly:
    """A sampler that needs a discrete process (never reached on the flows)."""

    capabilities = diffkit.Capabilities(stochastic=False, order=1.0, requires=frozenset({"discrete"}))

    def __call__(self, model, process, x_init, grid, *, generator=None, callback=None):  # noqa: ANN001, ANN204
        """Return the input unchanged."""
        return diffkit.SampleResult(x_init, 0, 0)


@diffkit.hookimpl
def diffkit_register(registrar: diffkit.Registrar) -> None:
    """Register `bare-flow`, `closed-flow` and the `contract-discrete-only` sampler."""
    registrar.add_process("bare-flow", BareFlow)
    registrar.add_process("closed-flow", ClosedFlow)
    registrar.add_sampler("contract-discrete-only", DiscreteOnly)


@pytest.fixture(scope="module")
def flow_registry() -> diffkit.Registry:
    """Built-ins plus this module's two processes."""
    import test_process_contract  # this module, as a plugin object

    return diffkit.build_registry(autoload=False, plugins=[test_process_contract])


def test_bare_process_has_no_base_class_and_meets_the_protocol(flow_registry: diffkit.Registry) -> None:
    process = flow_registry.build("process", "bare-flow", {})
    assert type(process).__mro__ == (BareFlow, object)
    assert isinstance(process, diffkit.NoiseProcess)
    assert diffkit.discrete_process(process) is None


def test_derived_defaults_match_closed_forms() -> None:
    bare, t = BareFlow(), torch.linspace(0.01, 0.99, 50, dtype=F64)
    torch.testing.assert_close(bare.f(t), -1.0 / (1.0 - t), rtol=1e-14, atol=0)
    torch.testing.assert_close(bare.diffusion_squared(t), 2.0 * t / (1.0 - t), rtol=1e-14, atol=0)
    torch.testing.assert_close(bare.diffusion(t), (2.0 * t / (1.0 - t)).sqrt(), rtol=1e-14, atol=0)
    torch.testing.assert_close(bare.log_snr(t), 2.0 * torch.log((1.0 - t) / t), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(bare.t_from_log_snr(bare.log_snr(t)), t, rtol=1e-13, atol=0)
    ends = bare.t_from_log_snr(torch.tensor([50.0, -50.0], dtype=F64))  # beyond the range: clamped
    torch.testing.assert_close(ends, torch.tensor([bare.t_min, bare.t_max], dtype=F64), rtol=1e-15, atol=0)
    assert bare.f(t.float()).dtype == torch.float32 and bare.f(0.5).dtype == F64
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    times = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    torch.testing.assert_close(bare.drift(x, times), (-1.0 / (1.0 - times))[:, None] * x, rtol=1e-14, atol=0)
    mean, std = bare.marginal(x, 0.25)
    assert torch.equal(mean, 0.75 * x) and torch.equal(std, torch.full((4, 1), 0.25, dtype=F64))
    z = bare.prior_sample((5, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    expected = -0.5 * (z**2).sum(1) / 0.999**2 - 2 * (math.log(0.999) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(bare.prior_logp(z), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "ddpm"])
def test_derived_defaults_match_the_built_in_closed_forms(registry: diffkit.Registry, name: str) -> None:
    process = registry.build("process", name, {})
    t = torch.linspace(process.t_min, process.t_max, 33, dtype=F64)[1:-1]  # inside the ddpm knots' segments
    torch.testing.assert_close(derived_f(process, t), process.f(t), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(
        derived_diffusion_squared(process, t), process.diffusion_squared(t), rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(derived_log_snr(process, t), process.log_snr(t), rtol=1e-12, atol=1e-12)


def test_bare_process_samples_with_every_sampler_whose_requirements_it_meets(
    flow_registry: diffkit.Registry,
) -> None:
    rows = {row.name: row for row in sampler_rows(flow_registry)}
    runnable = sorted(name for name, row in rows.items() if "bare-flow" in row.processes)
    assert set(rows) - set(runnable) == {"contract-discrete-only"}
    assert len(runnable) >= 30 and {"em", "ode", "sde", "pc", "ancestral", "ddim"} <= set(runnable)
    for name in runnable:
        runs = [
            sample(
                SampleConfig(
                    process=process,
                    solver=name,
                    num_samples=64,
                    dtype="float64",
                    steps=None if rows[name].adaptive else 16,
                ),
                registry=flow_registry,
            )
            for process in ("bare-flow", "closed-flow")
        ]
        bare, closed = runs
        assert bare.composition.grid_name == "uniform", name  # the process's preferred grid
        assert bare.nfe == closed.nfe and bare.steps == closed.steps, name
        assert bool(torch.isfinite(bare.samples).all()), name
        torch.testing.assert_close(bare.samples, closed.samples, rtol=1e-8, atol=1e-8, msg=name)
    ode = sample(
        SampleConfig(process="bare-flow", solver="ode", num_samples=400, dtype="float64"),
        registry=flow_registry,
    )
    radius = float(ode.samples.norm(dim=1).mean())
    assert 1.95 < radius < 2.05  # gmm:ring8: eight modes on the circle of radius 2


def test_requirements_it_does_not_meet_fail_at_composition(flow_registry: diffkit.Registry) -> None:
    config = SampleConfig(process="bare-flow", solver="contract-discrete-only", num_samples=4)
    with pytest.raises(CompositionError) as caught:
        compose(config, flow_registry)
    assert str(caught.value) == (
        "sampler 'contract-discrete-only' needs a discrete process, but process 'bare-flow' is not one"
    )


ALPHA_ZERO = (
    "process 'bare-flow' has alpha = 0 at t = 1 (t_max); alpha and sigma must be positive and finite, "
    "and the log-SNR finite, on [t_min, t_max] = [0.001, 1]"
)


def test_alpha_zero_at_t_max_fails_at_composition_with_one_line(
    flow_registry: diffkit.Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SampleConfig(process="bare-flow", solver="ddim", process_options={"t_max": 1.0})
    with pytest.raises(CompositionError) as caught:
        compose(config, flow_registry)
    assert str(caught.value) == ALPHA_ZERO
    monkeypatch.setenv("DIFFKIT_PLUGINS", "test_process_contract")
    out = tmp_path / "s.npz"
    args = ["sample", "--sde", "bare-flow", "--sde-opt", "t_max=1", "--solver", "em", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {ALPHA_ZERO}"]
    assert not out.exists() and "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("vp", {"t_max": 100.0}, "process 'vp' has alpha = 0 at t = 100 (t_max);"),
        ("ve", {"sigma_max": 1e200}, "process 've' has sigma = inf at t = 1 (t_max);"),
        ("bare-flow", {"t_min": 0.0}, "process 'bare-flow' has sigma = 0 at t = 0 (t_min);"),
    ],
)
def test_degenerate_schedules_fail_at_composition(
    flow_registry: diffkit.Registry, name: str, options: dict[str, float], expected: str
) -> None:
    config = SampleConfig(process=name, solver="ode", process_options=options)
    with pytest.raises(CompositionError, match="^" + re.escape(expected)):
        compose(config, flow_registry)


def test_schedule_problem_finds_interior_points_and_missing_discrete_members() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Hole(BareFlow):
        def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
            value = derived_log_snr(self, t)
            return torch.where((as_schedule_tensor(t) - 0.5).abs() < 0.01, math.nan, value)

    assert diffkit.core.process.schedule_problem(BareFlow()) is None
    assert diffkit.core.process.schedule_problem(Hole(t_min=0.0 + 0.1, t_max=0.9)) == (
        "has log-SNR = nan at t = 0.5; alpha and sigma must be positive and finite, and the log-SNR "
        "finite, on [t_min, t_max] = [0.1, 0.9]"
    )

    @dataclass(frozen=True, kw_only=True)
    class FakeDiscrete(ClosedFlow):
        traits: ClassVar[diffkit.ProcessTraits] = diffkit.ProcessTraits(discrete=True)

    assert diffkit.discrete_process(FakeDiscrete()) is None
    assert diffkit.core.process.schedule_problem(FakeDiscrete()) == (
        "has the discrete trait but no num_steps, discrete_times, alpha_bar_table (see DiscreteProcess)"
    )


def test_built_in_traits_and_discrete_protocol(registry: diffkit.Registry) -> None:
    build = lambda name: registry.build("process", name, {})  # noqa: E731
    expected = {
        "vp": diffkit.ProcessTraits(variance_preserving=True),
        "subvp": diffkit.ProcessTraits(sub_variance_preserving=True),
        "ve": diffkit.ProcessTraits(variance_exploding=True),
        "ddpm": diffkit.ProcessTraits(discrete=True, variance_preserving=True),
        "ddpm-cosine": diffkit.ProcessTraits(discrete=True, variance_preserving=True),
    }
    for name, traits in expected.items():
        process = build(name)
        assert diffkit.traits_of(process) == process.traits == traits, name
        assert process.features == traits.names, name  # the old read-only view
        is_discrete = diffkit.discrete_process(process) is process
        assert is_discrete == traits.discrete == isinstance(process, diffkit.DiscreteProcess), name
    assert build("ddpm").features == frozenset({"discrete", "variance-preserving"})


def test_traits_of_the_wrong_type_fail_at_composition(flow_registry: diffkit.Registry) -> None:
    @dataclass(frozen=True, kw_only=True)
    class Untyped(BareFlow):
        traits: ClassVar[object] = frozenset({"discrete"})

    sampler = flow_registry.build("sampler", "ddim", {})
    with pytest.raises(CompositionError) as caught:
        diffkit.core.sampler.check_composition("ddim", sampler, "untyped", Untyped())
    assert str(caught.value) == "process 'untyped': Untyped.traits is a frozenset, not ProcessTraits"


def test_legacy_features_set_still_counts() -> None:
    legacy = LegacyVE()
    assert diffkit.traits_of(legacy) == diffkit.ProcessTraits(variance_exploding=True, default_grid="uniform")
    ddim = diffkit.Capabilities(
        stochastic=False,
        order=1.0,
        default_grid="quadratic",
        grid_by_feature=(("variance-exploding", "log-snr"),),
    )
    assert ddim.grid_for(legacy) == "log-snr"  # the sampler's per-trait override beats the process's grid
    assert ddim.grid_for(ClosedFlow()) == "uniform"  # the process's grid beats the sampler's default


def test_unknown_trait_names_in_capabilities_raise() -> None:
    with pytest.raises(
        ValueError,
        match="^requires 'discreet' is not a process trait; expected one of "
        "variance-preserving, sub-variance-preserving, variance-exploding, discrete$",
    ):
        diffkit.Capabilities(stochastic=False, order=1.0, requires=frozenset({"discreet"}))
    with pytest.raises(ValueError, match="^grid_by_feature 've' is not a process trait"):
        diffkit.Capabilities(stochastic=False, order=1.0, grid_by_feature=(("ve", "karras"),))


@pytest.mark.parametrize(
    ("solver", "grids"),
    [
        ("ddim", {"vp": "quadratic", "subvp": "quadratic", "ve": "log-snr", "ddpm": "quadratic"}),
        ("ancestral", {"vp": "log-snr", "ve": "log-snr", "ddpm": "log-snr"}),
        ("ode", {"vp": "uniform", "ve": "uniform", "ddpm-cosine": "uniform"}),
        ("langevin", {"vp": "uniform", "ve": "uniform"}),
    ],
)
def test_built_in_default_grids_are_unchanged(
    registry: diffkit.Registry, solver: str, grids: dict[str, str]
) -> None:
    capabilities = registry.build("sampler", solver, {}).capabilities
    for process, grid in grids.items():
        assert capabilities.grid_for(registry.build("process", process, {})) == grid, process
