"""Likelihood and encoding runs composed by name (what `diffkit likelihood/encode/decode` call).

`evaluate_likelihood` reports, for data points x, either the probability-flow ODE log-density
log p_{t_min}(x) (`diffkit.eval.log_likelihood`, Song et al. 2021 App. D.2) or, on VP-family processes,
the DDPM variational bound -L_vlb <= log p(x0) (Ho et al. 2020, eq. 5; `diffkit.losses.vlb`;
continuous `vp` / `subvp` models on their N-step DDPM chain), with standard errors and
nats/dim, bits/dim; for oracle models it puts the closed forms beside them: `closed_form_logp`
= the exact log p_{t_min} at the same points (ODE) or the exact data log-density (VLB), and
`data_logp` = the exact log p_0.

Discrete data with K levels (`levels`; `dequantize` means K = 256) are integers 0..K-1 (a file)
or a dataset on the grid `k / s - 1`, `s = (K - 1) / 2`, of [-1, 1]. The ODE integrates
uniformly dequantized points and subtracts `D log s` nats (`dequantization_offset_nats`); the
bound uses the discretized decoder with bin edges at +-1 / (K - 1). Both then bound log P(k),
and bits/dim are per dimension of the discrete data: `-log P(k) / (D ln 2)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffkit.core.errors import UnknownComponentError, UsageError
from diffkit.core.model import ExactData, ScoreModel
from diffkit.core.process import NoiseProcess, discrete_process
from diffkit.eval.log_likelihood import (
    dequantization_offset_nats,
    dequantize,
    level_scale,
    ode_log_likelihood,
    summarize,
)
from diffkit.losses.chain import DiscreteSchedule, is_vp_family
from diffkit.losses.vlb import vlb_terms
from diffkit.plugin.registry import Registry
from diffkit.run.io import read_real

EXACT_DIVERGENCE_MAX_DIM = 64  # "auto": exact divergence (D backward passes) up to this D


@dataclass(frozen=True)
class LikelihoodConfig:
    """Names, options and sizes of one likelihood evaluation (`diffkit likelihood`)."""

    process: str = "vp"
    model: str = "gmm:ring8"
    method: str = "ode"
    divergence: str = "auto"
    num_probes: int = 1
    probe: str = "rademacher"
    rtol: float = 1e-5
    atol: float = 1e-5
    solver: str = "dopri5"
    variance: str = "beta"
    num_samples: int = 2000
    batch_size: int | None = None
    seed: int = 0
    dequantize: bool = False
    levels: int | None = None
    vlb_steps: int | None = None
    process_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)


def build_model(
    registry: Registry,
    process_name: str,
    model_name: str,
    process_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
) -> tuple[NoiseProcess, ScoreModel]:
    """The process and model named (a registered model or a `diffkit train` checkpoint folder)."""
    from diffkit.run.api import build_model

    process = registry.build("process", process_name, dict(process_options or {}))
    model = build_model(
        registry, model_name, dict(model_options or {}), process_name, process, dict(process_options or {})
    )
    return process, model


def check_data(data: torch.Tensor, model: ScoreModel, name: str) -> None:
    """UsageError unless `data` is `(N, *model.data_shape)` with N >= 1 and finite values."""
    if data.ndim != len(model.data_shape) + 1 or tuple(data.shape[1:]) != model.data_shape or not len(data):
        needed = ", ".join(map(str, ("N", *model.data_shape)))
        raise UsageError(f"data has shape {tuple(data.shape)}, but model {name!r} needs ({needed})")
    if not bool(torch.isfinite(data).all()):
        raise UsageError("data contains NaN or Inf")


def _check(config: LikelihoodConfig, process: NoiseProcess, dim: int) -> str:
    """Validate options against the composition; returns the resolved divergence."""
    if config.method not in ("ode", "vlb"):
        raise UsageError(f"--method must be ode or vlb, got {config.method!r}")
    if config.levels is not None and config.levels < 2:
        raise UsageError(f"--levels must be an integer >= 2, got {config.levels}")
    if config.vlb_steps is not None:
        if config.method != "vlb":
            raise UsageError("--vlb-steps applies to --method vlb only")
        if config.vlb_steps < 2:
            raise UsageError(f"--vlb-steps must be an integer >= 2, got {config.vlb_steps}")
    if config.method == "vlb":
        _check_chain(config, process)
    if config.num_samples < 1 or (config.batch_size is not None and config.batch_size < 1):
        raise UsageError("--num-samples and --batch-size must be positive integers")
    if config.num_probes < 1:
        raise UsageError(f"--probes must be a positive integer, got {config.num_probes}")
    if config.probe not in ("gaussian", "rademacher"):
        raise UsageError(f"--probe must be gaussian or rademacher, got {config.probe!r}")
    if not (config.rtol > 0 and config.atol > 0):
        raise UsageError("--rtol and --atol must be positive")
    if config.variance not in ("beta", "beta_tilde", "learned"):
        raise UsageError(f"--variance must be beta, beta_tilde or learned, got {config.variance!r}")
    divergence = config.divergence
    if divergence == "auto":
        divergence = "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    if divergence not in ("exact", "hutchinson"):
        raise UsageError(f"--divergence must be exact, hutchinson or auto, got {config.divergence!r}")
    return divergence


def _check_chain(config: LikelihoodConfig, process: NoiseProcess) -> None:
    """UsageError unless the process has a DDPM chain (`DiscreteSchedule.of`) of the asked length."""
    if not is_vp_family(process):
        raise UsageError(
            f"--method vlb needs a VP-family process (ddpm, ddpm-cosine, vp, subvp), not {config.process!r}"
        )
    try:
        DiscreteSchedule.of(process, config.vlb_steps)
    except ValueError as error:
        discrete = discrete_process(process)
        if discrete is not None:
            raise UsageError(
                f"--vlb-steps {config.vlb_steps}: process {config.process!r} has its own "
                f"{discrete.num_steps} steps (set them with --sde-opt num_steps=N)"
            ) from None
        raise UsageError(f"--vlb-steps {config.vlb_steps}: {error}") from None


def _chain_length(process: NoiseProcess, config: LikelihoodConfig) -> int:
    """N, the number of knots of the DDPM chain the bound runs on."""
    return len(DiscreteSchedule.of(process, config.vlb_steps).alpha_bar)


def resolved_levels(config: LikelihoodConfig) -> int | None:
    """The number of levels K of discrete data: `--levels`, 256 for `--dequantize`, else None."""
    return config.levels if config.levels is not None else (256 if config.dequantize else None)


def _levels_to_unit(data: torch.Tensor, levels: int, generator: torch.Generator, method: str) -> torch.Tensor:
    """Integers in {0..K-1}: dequantized into [-1, 1] (ODE) or the bin centres k / s - 1 (VLB)."""
    if bool(((data < 0) | (data > levels - 1) | (data != data.round())).any()):
        flag = "--dequantize needs 8-bit data:" if levels == 256 else f"--levels {levels} needs"
        raise UsageError(f"{flag} integers in 0..{levels - 1}")
    if method == "vlb":  # the discretized decoder works on the bin centres
        return data.to(torch.float64) / level_scale(levels) - 1.0
    return dequantize(data.to(torch.float64), generator, levels)


def load_points(spec: str, registry: Registry, levels: int | None = None) -> torch.Tensor | None:
    """The points of `--data`: None for 'exact', a registered dataset, else a .npy / .npz file.

    A dataset's examples lie in [-1, 1]; with `levels` K they are returned as the integers
    `k = (y + 1) (K - 1) / 2` (UsageError unless every value is on that grid), the same form
    as a file of integers, so `--data digits --levels 17` reads scikit-learn's pixels 0..16.
    A registered name wins over a file of the same name.
    """
    if spec == "exact":
        return None
    try:
        registry.get("dataset", spec)
    except UnknownComponentError:
        return torch.from_numpy(read_real(Path(spec), "--data"))
    values = registry.build("dataset", spec, {}).data.to(torch.float64)
    if levels is None:
        return values
    k = (values + 1.0) * level_scale(levels)
    off_grid = float((k - k.round()).abs().max()) > 1e-4
    if off_grid or float(k.min()) < -1e-4 or float(k.max()) > levels - 1 + 1e-4:
        raise UsageError(f"dataset {spec!r} is not on the {levels}-level grid of [-1, 1] (--levels {levels})")
    return k.round()


def evaluate_likelihood(
    config: LikelihoodConfig, *, registry: Registry, data: torch.Tensor | None = None
) -> dict[str, Any]:
    """Evaluate log-likelihoods of `data` `(N, *data_shape)` (or `num_samples` exact samples).

    Returns a JSON-ready dict: mean_logp (nats per sample), stderr, nats_per_dim and
    bits_per_dim (negative log-likelihood per dimension), nfe (model calls of the largest
    batch), nfe_total, seconds, and for oracle models closed_form_logp / data_logp.
    """
    process, model = build_model(
        registry, config.process, config.model, config.process_options, config.model_options
    )
    dim = math.prod(model.data_shape)
    divergence = _check(config, process, dim)
    generator = torch.Generator().manual_seed(config.seed)
    if data is None:
        if resolved_levels(config) is not None:
            raise UsageError("--levels and --dequantize need discrete data (a dataset or a file of integers)")
        if not isinstance(model, ExactData):
            raise UsageError(f"--data exact needs an oracle model with exact samples, not {config.model!r}")
        data = model.sample_data(config.num_samples, generator=generator, dtype=torch.float64)
    check_data(data, model, config.model)
    data = data.to(torch.float64)
    offset, levels = 0.0, resolved_levels(config)
    if levels is not None:
        data = _levels_to_unit(data, levels, generator, config.method)
        offset = dequantization_offset_nats(dim, levels) if config.method == "ode" else 0.0
    batch = config.batch_size or len(data)
    values, nfes, start = [], [], time.perf_counter()
    for chunk in data.split(batch):
        if config.method == "ode":
            result = ode_log_likelihood(
                model,
                process,
                chunk,
                divergence=divergence,  # type: ignore[arg-type]
                num_probes=config.num_probes,
                probe=config.probe,  # type: ignore[arg-type]
                generator=generator,
                rtol=config.rtol,
                atol=config.atol,
                method=config.solver,
            )
            values.append(result.logp)
            nfes.append(result.nfe)
        else:
            before = model.nfe
            terms = vlb_terms(
                model,
                chunk,
                variance=config.variance,  # type: ignore[arg-type]
                decoder="gaussian" if levels is None else "discretized",
                generator=generator,
                num_steps=config.vlb_steps,
                half_width=1.0 / ((levels or 256) - 1),  # bin edges at +-1 / (K - 1)
            )
            values.append(-terms.sum(1))
            nfes.append(model.nfe - before)
    logp = torch.cat(values)
    summary = summarize(logp, dim, offset)
    report: dict[str, Any] = {
        "model": config.model,
        "sde": config.process,
        "method": config.method,
        "divergence": divergence if config.method == "ode" else None,
        "probes": config.num_probes if divergence == "hutchinson" and config.method == "ode" else None,
        "num_samples": summary.num_samples,
        "dim": dim,
        "mean_logp": summary.mean_logp,
        "stderr": summary.stderr,
        "nats_per_dim": summary.nats_per_dim,
        "bits_per_dim": summary.bits_per_dim,
        "nfe": max(nfes),
        "nfe_total": sum(nfes),
        "seconds": round(time.perf_counter() - start, 4),
        "t_min": process.t_min,
        "levels": levels,
        "vlb_steps": _chain_length(process, config) if config.method == "vlb" else None,
        "dequantization_offset_nats": offset or None,
    }
    if isinstance(model, ExactData) and levels is None:
        report |= _closed_forms(model, process, data, config.method)
    return report


def _closed_forms(model: Any, process: NoiseProcess, data: torch.Tensor, method: str) -> dict[str, float]:
    """Exact mean log-densities at the same points: p_{t_min} (ODE target) or p_0 (VLB target)."""
    data_logp = model.data_log_prob(data)
    exact = (
        model.log_prob(data, process.t_min) if method == "ode" and hasattr(model, "log_prob") else data_logp
    )
    n = len(data)
    return {
        "closed_form_logp": float(exact.mean()),
        "closed_form_stderr": float(exact.std()) / math.sqrt(n) if n > 1 else float("nan"),
        "data_logp": float(data_logp.mean()),
    }
