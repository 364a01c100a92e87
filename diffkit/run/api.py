"""Programmatic entry points: compose components by name and sample (the CLI is a thin shell).

Example::

    from diffkit.run.api import SampleConfig, sample
    run = sample(SampleConfig(process="vp", solver="ode", num_samples=1000))
    run.samples.shape   # (1000, 2)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from diffkit.core.errors import DiffkitError, UnknownComponentError, UsageError
from diffkit.core.grid import append_final_zero, check_grid, ends_at_zero, split_final_zero
from diffkit.core.model import ScoreModel
from diffkit.core.process import NoiseProcess
from diffkit.core.sampler import Sampler, SampleResult, StepInfo, check_composition
from diffkit.plugin import validate
from diffkit.plugin.contract import check_result, third_party_failure
from diffkit.plugin.loading import build_registry
from diffkit.plugin.registry import Registry
from diffkit.run.nan_watch import FiniteWatch
from diffkit.run.prior_noise import PriorNoise
from diffkit.run.provenance import jsonable

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


#: `SampleConfig.final_sigma`: the grid ends at the process's t_min, or one more step goes to sigma = 0
FINAL_SIGMAS: tuple[str, ...] = ("min", "zero")


@dataclass(frozen=True)
class SampleConfig:
    """Everything `diffkit sample` resolves: component names, their options and the run size.

    `final_sigma="zero"`: of the `steps` steps, the last goes from the grid's end to sigma = 0
    (the x0 prediction there; `diffkit.core.grid`), i.e. the grid is built with `steps - 1` steps
    and the point 0.0 appended, as diffusers' `final_sigmas_type="zero"` and k-diffusion's sigma
    lists do. `threshold`: a model wrapper bounding x0 (`clip`, `dynamic-threshold`), applied
    after guidance and before an inverse-problem wrapper.
    """

    process: str = "vp"
    solver: str = "ode"
    model: str = "gmm:ring8"
    grid: str | None = None
    steps: int | None = None
    num_samples: int = 10_000
    batch_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    process_options: Mapping[str, Any] = field(default_factory=dict)
    solver_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)
    grid_options: Mapping[str, Any] = field(default_factory=dict)
    cond: int | None = None
    guidance: str | None = None
    guidance_scale: float | None = None
    guidance_options: Mapping[str, Any] = field(default_factory=dict)
    guide_model: str | None = None
    inverse: str | None = None
    inverse_options: Mapping[str, Any] = field(default_factory=dict)
    final_sigma: str = "min"
    threshold: str | None = None
    threshold_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Composition:
    """Resolved components of one run, built and checked before any sampling."""

    process: NoiseProcess
    model: ScoreModel
    sampler: Sampler
    grid: torch.Tensor
    grid_name: str
    steps: int
    device: torch.device
    dtype: torch.dtype


@dataclass
class SampleRun:
    """Result of `sample`: samples `(N, *data_shape)`, NFE and steps per batch (max), wall time, config."""

    samples: torch.Tensor
    nfe: int
    steps: int
    seconds: float
    config: dict[str, Any]
    composition: Composition


def compose(config: SampleConfig, registry: Registry) -> Composition:
    """Build and cross-check process, model, sampler and grid; raise UsageError on any problem."""
    validate.positive_int("--steps", config.steps)
    validate.positive_int("--num-samples", config.num_samples)
    validate.positive_int("--batch-size", config.batch_size)
    validate.seed("--seed", config.seed)
    validate.finite("--guidance-scale", config.guidance_scale)
    if config.final_sigma not in FINAL_SIGMAS:
        raise UsageError(
            f"unknown --final-sigma {config.final_sigma!r}; expected one of {', '.join(FINAL_SIGMAS)}"
        )
    if config.threshold_options and config.threshold is None:
        raise UsageError("--threshold-opt needs --threshold NAME (clip or dynamic-threshold)")
    if config.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {config.dtype!r}; expected one of {', '.join(DTYPES)}")
    device = validate.device(config.device)
    if config.steps is not None:  # the grid, float64, and the solver's per-step records
        validate.memory(f"--steps {config.steps}", 64.0 * (config.steps + 1))
    process = registry.build("process", config.process, config.process_options)
    sampler = registry.build("sampler", config.solver, _guided_solver_options(config))
    check_composition(config.solver, sampler, config.process, process)
    model = build_model(
        registry, config.model, config.model_options, config.process, process, config.process_options
    )
    guide = None
    if config.guide_model is not None:
        guide = build_model(registry, config.guide_model, {}, config.process, process, config.process_options)
    model = _wrap_model(config, registry, model, guide)
    capabilities = sampler.capabilities
    if capabilities.adaptive and config.steps is not None:
        raise UsageError(
            f"--steps does not apply to the adaptive solver {config.solver!r}: it chooses its own "
            "steps (set its tolerances with --solver-opt rtol=... atol=...)"
        )
    _check_size(config, model, DTYPES[config.dtype])
    grid_name = capabilities.grid_for(process) if config.grid is None else config.grid
    steps = config.steps or capabilities.default_steps
    grid_factory = registry.build("grid", grid_name, config.grid_options)
    try:
        grid = check_grid(_grid(grid_factory, process, steps, config.final_sigma, grid_name), process)
    except ValueError as error:
        raise UsageError(f"grid {grid_name!r} on process {config.process!r}: {error}") from None
    return Composition(process, model, sampler, grid, grid_name, steps, device, DTYPES[config.dtype])


def _grid(
    factory: Callable[[NoiseProcess, int], torch.Tensor],
    process: NoiseProcess,
    steps: int,
    final_sigma: str,
    name: str,
) -> torch.Tensor:
    """The grid of `steps` steps; with final_sigma "zero" its last step goes to sigma = 0."""
    if final_sigma == "min":
        return factory(process, steps)
    head = factory(process, max(steps - 1, 1))
    if ends_at_zero(head, process):
        raise UsageError(f"grid {name!r} already ends at sigma = 0: drop --final-sigma zero")
    return append_final_zero(head if steps > 1 else head[:1])


def _check_size(config: SampleConfig, model: ScoreModel, dtype: torch.dtype) -> None:
    """UsageError if the prior noise and the samples of the run would not fit in memory."""
    numel = float(config.num_samples) * math.prod(model.data_shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shape = "x".join(map(str, model.data_shape))
    # prior noise, the batch being integrated (with a solver stage) and the float32 samples written
    validate.memory(f"--num-samples {config.num_samples} of shape {shape}", numel * (3 * itemsize + 4))


def build_model(
    registry: Registry,
    name: str,
    options: Mapping[str, Any],
    process_name: str,
    process: NoiseProcess,
    process_options: Mapping[str, Any],
) -> ScoreModel:
    """The model `name` on `process`: a registered (or hook-resolved) model first, else one
    from the `diffkit_resolve_model` hook (e.g. a `diffkit train` checkpoint folder at that
    path), so registered names are never shadowed."""
    try:
        registry.get("model", name)
    except UnknownComponentError:
        model = registry.resolve_model(name, process_name, process, process_options, options)
        if model is None:
            raise
        return model
    return registry.build("model", name, options, process)


#: samplers whose step renoises with the prediction's own eps, so CFG++ is defined on them
CFG_PP_SAMPLERS: tuple[str, ...] = ("ddim",)


def _check_guidance(config: SampleConfig) -> None:
    """UsageError for guidance flags that do not fit together (before any model is built)."""
    name = config.guidance or "cfg"
    if config.guidance_options and config.guidance is None:
        raise UsageError("--guidance-opt needs --guidance NAME")
    if config.guide_model is not None and name != "autoguidance":
        raise UsageError("--guide-model needs --guidance autoguidance")
    if name == "autoguidance" and config.guide_model is None:
        raise UsageError("guidance 'autoguidance' needs a weaker guide model: pass --guide-model NAME")
    if name == "cfg-pp" and config.threshold is not None:
        raise UsageError("guidance 'cfg-pp' cannot be combined with --threshold (it renoises with eps_u)")
    if name == "cfg-pp" and config.solver not in CFG_PP_SAMPLERS:
        raise UsageError(
            f"guidance 'cfg-pp' is defined for {', '.join(CFG_PP_SAMPLERS)}; "
            f"not for sampler {config.solver!r}"
        )


def _guided_solver_options(config: SampleConfig) -> Mapping[str, Any]:
    """The solver options; under CFG++ DDIM renoises with the model's (unconditional) eps."""
    _check_guidance(config)
    if config.guidance != "cfg-pp":
        return config.solver_options
    options = {k: v for k, v in config.solver_options.items() if k.replace("-", "_") != "clipped_direction"}
    if len(options) < len(config.solver_options):
        raise UsageError("guidance 'cfg-pp' sets DDIM's clipped-direction itself: drop that --solver-opt")
    return {**options, "clipped_direction": False}


def _wrap_model(
    config: SampleConfig, registry: Registry, model: ScoreModel, guide: ScoreModel | None = None
) -> ScoreModel:
    """Apply guidance (`cond`, `guidance`, `guidance_scale`, `guidance_options`, a guide model),
    x0 thresholding, an inverse-problem wrapper."""
    _check_guidance(config)
    guided = config.guidance is not None or config.guidance_scale is not None
    if config.cond is None and guided:
        raise UsageError("--guidance and --guidance-scale need a class label: pass --cond LABEL")
    if config.cond is not None:
        name = config.guidance or "cfg"
        if not getattr(model, "conditional", False):
            raise UsageError(
                f"--cond needs a class-conditional model, but model {config.model!r} is unconditional"
            )
        if not 0 <= config.cond < model.num_classes:
            raise UsageError(
                f"--cond {config.cond} out of range: "
                f"model {config.model!r} has classes 0..{model.num_classes - 1}"
            )
        if guided:
            scale = 1.0 if config.guidance_scale is None else config.guidance_scale
            options = {**config.guidance_options, "scale": scale}
            extra = () if guide is None else (guide,)
            model = registry.build("model_wrapper", name, options, model, *extra)
        model.bind(config.cond)
    if config.threshold is not None:
        model = registry.build("model_wrapper", config.threshold, config.threshold_options, model)
    if config.inverse is not None:
        model = registry.build("model_wrapper", config.inverse, config.inverse_options, model)
    return model


def sampler_seed(seed: int, batch: int = 0) -> int:
    """Seed of the sampler's noise generator for batch `batch` of a run seeded with `seed`."""
    return (seed * 1_000_003 + batch + 1) % (2**63)


def _batch_generator(device: torch.device, seed: int, batch: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(sampler_seed(seed, batch))
    return generator


def sample(
    config: SampleConfig,
    *,
    registry: Registry | None = None,
    x_init: torch.Tensor | None = None,
    progress: Callable[[float], None] | None = None,
    data: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> SampleRun:
    """Compose the run described by `config` and draw `num_samples` samples.

    Prior noise for all samples comes from one generator seeded with `seed` (so the initial
    noise of sample i does not depend on the batch size); on the CPU it is drawn a chunk at a
    time with the bits of one draw for all N (`diffkit.run.prior_noise`). Stochastic samplers draw
    their noise from a per-batch generator derived from (seed, batch index). Samples fill one
    preallocated `(N, *data_shape)` tensor batch by batch; `x_init` is read a batch at a time
    (so it may be a memory-mapped array of any float dtype).

    Args:
        config: names, options and sizes.
        registry: a registry (default: `build_registry()`).
        x_init: optional prior noise `(N, *data_shape)`; overrides `num_samples`.
        progress: called with the finished fraction of the whole run (0..1) after each step;
            it reads the step's time on the host, so leave it None where speed matters.
        data: with `config.inverse`: the measured data, `(N, *data_shape)` for inpainting or
            gray images `(N, *spatial)` for colorization; N sets the number of samples.
        mask: with `config.inverse == "inpaint"`: nonzero where known, `data_shape` or `(N, *data_shape)`.

    Raises:
        UsageError: bad names, options, sizes or compositions (before any sampling).
        SamplingError: NaN or Inf appeared during sampling.
    """
    registry = registry or build_registry()
    comp = compose(config, registry)
    config, measurement = _bind_measurement(config, comp, x_init, data, mask)
    num_samples = _check_x_init(config, comp, x_init)
    batch_size = config.batch_size or num_samples
    source = x_init if x_init is not None else _prior(config, comp, num_samples)
    start = time.perf_counter()
    samples, nfes, steps = _run_batches(
        config, registry, comp, source, num_samples, batch_size, measurement, progress
    )
    seconds = time.perf_counter() - start
    resolved = _provenance(config, comp, num_samples, batch_size, x_init is not None, nfes, steps)
    return SampleRun(samples, max(nfes), max(steps), seconds, resolved, comp)


def _bind_measurement(
    config: SampleConfig,
    comp: Composition,
    x_init: torch.Tensor | None,
    data: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> tuple[SampleConfig, Any]:
    """With `config.inverse`: the measurement of `data` (and `config` sized to its rows); else None."""
    if config.inverse is None:
        return config, None
    if data is None:
        raise UsageError(f"{config.inverse} needs measured data (--data)")
    measurement = comp.model.measurement(data.to(device=comp.device, dtype=comp.dtype), mask)
    if x_init is None:
        config = replace(config, num_samples=measurement.known.shape[0])
    elif x_init.shape[0] != measurement.known.shape[0]:
        raise UsageError(f"--x-init has {x_init.shape[0]} rows but --data has {measurement.known.shape[0]}")
    return config, measurement


def _check_x_init(config: SampleConfig, comp: Composition, x_init: torch.Tensor | None) -> int:
    """The number of samples: the rows of `x_init` `(N, *data_shape)` (checked), else `num_samples`."""
    if x_init is None:
        return config.num_samples
    shape = comp.model.data_shape
    if tuple(x_init.shape[1:]) != shape or x_init.ndim != len(shape) + 1:
        needed = ", ".join(map(str, ("N", *shape)))
        raise UsageError(
            f"--x-init has shape {tuple(x_init.shape)}, but model {config.model!r} needs ({needed})"
        )
    return x_init.shape[0]


def _prior(config: SampleConfig, comp: Composition, num_samples: int) -> PriorNoise:
    """Prior noise for all `num_samples` samples from one generator seeded with `config.seed`."""
    generator = torch.Generator(device=comp.device).manual_seed(config.seed)
    shape = comp.model.data_shape
    return PriorNoise(comp.process, num_samples, shape, generator, comp.device, comp.dtype)


def _run_batches(
    config: SampleConfig,
    registry: Registry,
    comp: Composition,
    source: torch.Tensor | PriorNoise,
    num_samples: int,
    batch_size: int,
    measurement: Any,
    progress: Callable[[float], None] | None,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Fill `(num_samples, *data_shape)` batch by batch from `source` (x_init rows or prior noise);
    return it with the NFE and steps per batch."""
    shape = comp.model.data_shape
    grid = comp.grid.to(comp.device)
    samples = torch.empty((num_samples, *shape), device=comp.device, dtype=comp.dtype)
    nfes, steps = [], []
    batches = math.ceil(num_samples / batch_size)
    span = comp.process.t_max - comp.process.t_min
    for index in range(batches):
        first, stop = index * batch_size, min((index + 1) * batch_size, num_samples)
        if isinstance(source, PriorNoise):
            x = source.take(stop - first)
        else:
            x = source[first:stop].to(device=comp.device, dtype=comp.dtype)
        forward = None
        if progress is not None:

            def forward(info: StepInfo, done: int = index) -> None:
                progress((done + (comp.process.t_max - float(info.t)) / span) / batches)

        rows = None
        if measurement is not None:
            rows = measurement.rows(index * batch_size, (index + 1) * batch_size)
            comp.model.bind(rows)
        result = _sample_batch(config, registry, comp, x, grid, index, forward)
        samples[first:stop] = result.x if rows is None else comp.model.finalize(result.x, rows)
        nfes.append(result.nfe)
        steps.append(result.steps)
    return samples, nfes, steps


def _sample_batch(
    config: SampleConfig,
    registry: Registry,
    comp: Composition,
    x: torch.Tensor,
    grid: torch.Tensor,
    index: int,
    forward: Callable[[StepInfo], None] | None,
) -> SampleResult:
    """Run the sampler on batch `index` under a NaN watch; a plugin's crash or broken result is one line."""
    watch = FiniteWatch(forward)
    times, to_zero = split_final_zero(grid, comp.process)
    to_zero_here = to_zero and not _builtin_sampler(registry, config.solver)
    try:
        result = comp.sampler(
            comp.model,
            comp.process,
            x,
            times if to_zero_here else grid,
            generator=_batch_generator(comp.device, config.seed, index),
            callback=watch,
        )
    except DiffkitError:
        raise
    except Exception as error:  # a third-party sampler's crash is one line naming its plugin
        failure = third_party_failure(config.solver, registry, error)
        if failure is None:
            raise
        raise failure from error
    check_result(result, x, config.solver, registry, watch.flags)  # plugin contract (exit 1)
    watch.raise_if_nonfinite(result.x, config.solver)
    if to_zero_here:  # the step to sigma = 0 for a third-party sampler: the x0 prediction at its end
        x0 = comp.model.predict(result.x, times[-1].to(result.x.device)).x0
        result = replace(result, x=x0, nfe=result.nfe + 1, steps=result.steps + 1)
    return result


def _builtin_sampler(registry: Registry, name: str) -> bool:
    """True if sampler `name` is diffkit's own (they all take a grid ending at sigma = 0 themselves).

    A third-party sampler is given the grid without its final 0.0 point, so it never evaluates the
    model at t = 0, and the step to sigma = 0 (the x0 prediction) is taken for it.
    """
    return registry.get("sampler", name).plugin in registry.builtins  # family members resolve too


def _provenance(
    config: SampleConfig,
    comp: Composition,
    num_samples: int,
    batch_size: int,
    from_x_init: bool,
    nfes: list[int],
    steps: list[int],
) -> dict[str, Any]:
    """The resolved configuration of a finished run, as JSON-ready values (`SampleRun.config`)."""
    resolved = asdict(config) | {
        "num_samples": num_samples,
        "batch_size": batch_size,
        "grid": comp.grid_name,
        "steps": comp.steps,
        "x_init": from_x_init,
        "nfe_per_batch": nfes,
        "steps_taken_per_batch": steps,
        "capabilities": asdict(comp.sampler.capabilities)
        | {"requires": sorted(comp.sampler.capabilities.requires)},
        "process_repr": repr(comp.process),
        "sampler_repr": repr(comp.sampler),
    }
    return jsonable(resolved)
