"""`diffkit bench --peers`: diffusers and k-diffusion as runners of the sweep, beside diffkit's.

A peer runner runs its library's implementation of a sweep solver (`METHODS`) on the same
oracle mixture, from the same initial noise, at the same NFE budget, with its own default time
spacing (that is what the comparison is about): diffusers' scheduler `timestep_spacing`
("leading" for DDIM and DDPM, "linspace" for the others), k-diffusion's recommended Karras
sigmas (rho = 7 between the process's sigma/alpha at t_min and t_max). Both end at sigma = 0, so
their samples are compared with exact data (like diffkit's `denoise_final`). Steps per budget
come from each method's NFE per step; the row's `nfe` is the number of network calls counted
through the model wrapper, and a run that counts more calls than its budget fails.

Mapping (diffkit solver: diffusers | k-diffusion):

- `ddim`: DDIMScheduler(eta=0) | sample_euler (Euler in sigma/alpha is DDIM with eta = 0,
  `diffkit.solvers.edm`);
- `dpmpp-2m`: DPMSolverMultistepScheduler(dpmsolver++, order 2) | sample_dpmpp_2m;
- `unipc`: UniPCMultistepScheduler(bh2, order 2 + corrector) | -;
- `heun`: HeunDiscreteScheduler | sample_heun (n steps, 2n - 1 NFE: the last, to sigma = 0, is Euler);
- `ancestral`: DDPMScheduler (beta_tilde variance) | sample_euler_ancestral (eta = 1);
- `dpmpp-2m-sde`: - | sample_dpmpp_2m_sde (eta = 1, its default Brownian-tree noise).

Schedulers are built from config (no weights): `clip_sample=False` because the oracles' data
is not in [-1, 1]. diffusers runs on `ddpm`/`ddpm-cosine`, and on `vp` through the equivalent
linear-beta DDPM (`diffkit.peers.diffusers`); k-diffusion runs on any process through the
scaled-coordinate denoiser. Peer noise comes from a generator (diffusers) or the forked global
RNG (k-diffusion) seeded like diffkit's own sampler generator (`sampler_seed`). `--solver-opt`
applies to diffkit only: peers always run the method above.
"""

from __future__ import annotations

import abc
import importlib.metadata
import time
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from diffkit.bench.plan import SolverPlan
from diffkit.bench.runner import NetworkTimer, RunOutput, TimingRegistry, synchronize
from diffkit.bench.spec import BenchConfig, RunSpec
from diffkit.core.errors import SamplingError, UsageError
from diffkit.core.model import ScoreModel
from diffkit.core.process import NoiseProcess
from diffkit.peers import diffusers as hf
from diffkit.peers import kdiffusion as kd
from diffkit.peers.availability import require
from diffkit.plugin.registry import Registry
from diffkit.run.api import DTYPES, sampler_seed


@dataclass(frozen=True)
class PeerMethod:
    """A peer's implementation of one diffkit solver.

    Attributes:
        solver: the diffkit solver name it stands beside.
        name: the peer's scheduler class or sampling function.
        stochastic, order: as the method is run.
        nfe_per_step: model calls per step.
        extra_nfe: calls beyond `nfe_per_step * steps` (Heun: -1, its last step is Euler).
        options: scheduler config (diffusers) or sampler keyword arguments (k-diffusion).
        step_options: keyword arguments of diffusers' `scheduler.step`.
    """

    solver: str
    name: str
    stochastic: bool
    order: float
    nfe_per_step: int = 1
    extra_nfe: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    step_options: Mapping[str, Any] = field(default_factory=dict)


Sample = Callable[[], torch.Tensor]


class PeerRunner(abc.ABC):
    """Runs the peer methods of a sweep's solvers (see the module docstring); a bench `Runner`."""

    implementation: ClassVar[str]
    methods: ClassVar[tuple[PeerMethod, ...]]

    def __init__(self, config: BenchConfig, registry: Registry) -> None:
        require(self.implementation)
        self.config, self.registry = config, registry
        self.process = registry.build("process", config.process, config.process_options)
        self.by_solver = {method.solver: method for method in self.methods}

    @property
    def model_process(self) -> NoiseProcess:
        """The process the oracle model is built on (the sweep's, unless a peer needs its own)."""
        return self.process

    def supports(self, solver: SolverPlan) -> bool:
        """Whether this peer has an implementation of `solver`."""
        return solver.name in self.by_solver

    def plan(self, solver: SolverPlan) -> SolverPlan:
        """The sweep's view of this peer's method: its NFE per step, order, and data at the end."""
        m = self.by_solver[solver.name]
        return SolverPlan(solver.name, m.stochastic, False, m.nfe_per_step, m.order, True, m.extra_nfe)

    def options(self, solver: str) -> dict[str, Any]:
        """The method and its settings (the row's `options`, part of the resume key)."""
        m = self.by_solver[solver]
        return {"method": m.name, **m.options, **m.step_options}

    @abc.abstractmethod
    def load(self) -> types.ModuleType:
        """The peer's module that holds the methods (PeerNotInstalled if it cannot be imported)."""

    @abc.abstractmethod
    def prepare(
        self, method: PeerMethod, spec: RunSpec, model: ScoreModel, x: torch.Tensor
    ) -> tuple[Sample, dict[str, Any]]:
        """Everything before the timed part: the sampling call and its resolved settings."""

    def run(self, spec: RunSpec, noise: torch.Tensor) -> RunOutput:
        """Sample from `noise` `(N, *data_shape)` with the peer method, timing the network apart."""
        method = self.by_solver[spec.solver]
        timing = TimingRegistry(self.registry)
        model = timing.build("model", self.config.model, self.config.model_options, self.model_process)
        timer: NetworkTimer = timing.timers[0]
        x = noise.to(torch.device(self.config.device), DTYPES[self.config.dtype])
        sample, settings = self.prepare(method, spec, model, x)
        synchronize(x.device)
        start = time.perf_counter()
        out = sample()
        synchronize(x.device)
        seconds = time.perf_counter() - start
        if timer.calls > spec.budget:
            raise RuntimeError(f"{method.name} used {timer.calls} NFE, over its budget of {spec.budget}")
        if not bool(torch.isfinite(out).all()):
            raise SamplingError(f"{self.implementation} {method.name} returned NaN or Inf samples")
        config = {
            "implementation": self.implementation,
            "version": _version(self.implementation),
            "solver": spec.solver,
            "method": method.name,
            "options": self.options(spec.solver),
            "process": self.config.process,
            "model": self.config.model,
            "num_samples": x.shape[0],
            "seed": spec.seed,
            "steps": spec.steps,
            "nfe": timer.calls,
            "device": self.config.device,
            "dtype": self.config.dtype,
            **settings,
        }
        return RunOutput(out, timer.calls, spec.steps or 0, seconds, timer.seconds, config, model)


class DiffusersRunner(PeerRunner):
    """diffusers schedulers on `ddpm`/`ddpm-cosine`, and on `vp` through the equivalent DDPM table."""

    implementation = "diffusers"
    methods = (
        PeerMethod(
            "ddim", "DDIMScheduler", False, 1.0, options={"clip_sample": False}, step_options={"eta": 0.0}
        ),
        PeerMethod(
            "dpmpp-2m",
            "DPMSolverMultistepScheduler",
            False,
            2.0,
            options={"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        PeerMethod(
            "unipc",
            "UniPCMultistepScheduler",
            False,
            3.0,
            options={"solver_type": "bh2", "solver_order": 2, "predict_x0": True},
        ),
        PeerMethod("heun", "HeunDiscreteScheduler", False, 2.0, nfe_per_step=2, extra_nfe=-1),
        PeerMethod("ancestral", "DDPMScheduler", True, 1.0, options={"clip_sample": False}),
    )

    def __init__(self, config: BenchConfig, registry: Registry) -> None:
        super().__init__(config, registry)
        try:
            options = hf.peer_process_options(self.process)
        except ValueError as error:
            raise UsageError(f"peer 'diffusers' cannot run on --sde {config.process!r}: {error}") from None
        self.peer_process = self.process if options is None else registry.build("process", "ddpm", options)
        self.peer_process_options = options

    @property
    def model_process(self) -> NoiseProcess:
        """The DDPM process whose table the schedulers use."""
        return self.peer_process

    def load(self) -> types.ModuleType:
        """The `diffusers` module."""
        return hf.load_diffusers()

    def prepare(
        self, method: PeerMethod, spec: RunSpec, model: ScoreModel, x: torch.Tensor
    ) -> tuple[Sample, dict[str, Any]]:
        """Build the scheduler from config and set its timesteps; the loop is `run_scheduler`."""
        cls = getattr(self.load(), method.name)
        scheduler = cls(**hf.diffusers_config(self.peer_process), **method.options)
        scheduler.set_timesteps(spec.steps, device=x.device)
        times = hf.scheduler_times(scheduler, self.peer_process).to(x.device)
        kwargs = dict(method.step_options)
        if method.stochastic:
            kwargs["generator"] = torch.Generator(device=x.device).manual_seed(sampler_seed(spec.seed))
        settings = {
            "grid": scheduler.config.timestep_spacing,
            "peer_process": "ddpm" if self.peer_process_options is not None else self.config.process,
            "peer_process_options": self.peer_process_options,
            "timesteps": scheduler.timesteps.tolist(),
        }
        return (lambda: hf.run_scheduler(scheduler, model, times, x, **kwargs)), settings


class KDiffusionRunner(PeerRunner):
    """k-diffusion samplers on any process, through the scaled-coordinate denoiser."""

    implementation = "k-diffusion"
    methods = (
        PeerMethod("ddim", "sample_euler", False, 1.0),
        PeerMethod("heun", "sample_heun", False, 2.0, nfe_per_step=2, extra_nfe=-1),
        PeerMethod("dpmpp-2m", "sample_dpmpp_2m", False, 2.0),
        PeerMethod("dpmpp-2m-sde", "sample_dpmpp_2m_sde", True, 1.0),
        PeerMethod("ancestral", "sample_euler_ancestral", True, 1.0),
    )

    def load(self) -> types.ModuleType:
        """`k_diffusion.sampling`, imported through the bridge (`diffkit.peers.kdiffusion`)."""
        return kd.load_k_diffusion_sampling()

    def prepare(
        self, method: PeerMethod, spec: RunSpec, model: ScoreModel, x: torch.Tensor
    ) -> tuple[Sample, dict[str, Any]]:
        """Karras sigmas over the process's range; x / alpha(t_max) starts the sampler."""
        sampling = self.load()
        function = getattr(sampling, method.name)
        sigmas = kd.karras_sigmas(sampling, self.process, spec.steps, device=x.device)
        denoise = kd.k_diffusion_denoiser(model, self.process)
        alpha_max = self.process.alpha(self.process.t_max)
        seed = sampler_seed(spec.seed)

        def sample() -> torch.Tensor:
            with kd.shared_noise(seed, x.device), warnings.catch_warnings():
                # torchsde notes that k-diffusion's float32 sigma_max passes its Brownian tree's end
                warnings.filterwarnings("ignore", "Should have t", UserWarning)
                return function(denoise, x / alpha_max, sigmas, disable=True, **method.options)

        return sample, {"grid": f"karras (rho {kd.KARRAS_RHO:g})", "sigmas": sigmas.tolist()}


def _version(distribution: str) -> str:
    """Installed version of a distribution ("?" without metadata)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


#: the runner of each peer name
RUNNERS: dict[str, type[PeerRunner]] = {"diffusers": DiffusersRunner, "k-diffusion": KDiffusionRunner}


def peer_runners(names: tuple[str, ...], config: BenchConfig, registry: Registry) -> list[PeerRunner]:
    """Runners of `names` for the sweep; UsageError for unknown, missing or impossible peers."""
    return [RUNNERS[require(name).name](config, registry) for name in names]
