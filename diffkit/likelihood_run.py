"""Likelihood and encoding runs composed by name (what `diffkit likelihood/encode/decode` call).

`evaluate_likelihood` reports, for data points x, either the probability-flow ODE log-density
log p_{t_min}(x) (`diffkit.likelihood`, Song et al. 2021 App. D.2) or, on discrete processes,
the DDPM variational bound -L_vlb <= log p(x0) (Ho et al. 2020, eq. 5; `diffkit.losses.vlb`),
with standard errors and nats/dim, bits/dim; for oracle models it puts the closed forms beside
them: `closed_form_logp` = the exact log p_{t_min} at the same points (ODE) or the exact data
log-density (VLB), and `data_logp` = the exact log p_0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from diffkit.errors import UsageError
from diffkit.likelihood import dequantization_offset_nats, dequantize, ode_log_likelihood, summarize
from diffkit.losses.vlb import vlb_terms
from diffkit.model import ExactData, ScoreModel
from diffkit.process import NoiseProcess
from diffkit.registry import Registry

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
    from diffkit.api import build_model

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
    if config.method == "vlb" and "discrete" not in process.features:
        raise UsageError(f"--method vlb needs a discrete process (ddpm, ddpm-cosine), not {config.process!r}")
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


def _pixels_to_unit(data: torch.Tensor, generator: torch.Generator, method: str) -> torch.Tensor:
    """8-bit data in {0..255}: dequantized into [-1, 1] (ODE) or scaled bin centres (VLB)."""
    if bool(((data < 0) | (data > 255) | (data != data.round())).any()):
        raise UsageError("--dequantize needs 8-bit data: integers in 0..255")
    if method == "vlb":  # the discretized decoder works on the bin centres x / 127.5 - 1
        return data.to(torch.float64) / 127.5 - 1.0
    return dequantize(data.to(torch.float64), generator)


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
        if not isinstance(model, ExactData):
            raise UsageError(f"--data exact needs an oracle model with exact samples, not {config.model!r}")
        data = model.sample_data(config.num_samples, generator=generator, dtype=torch.float64)
    check_data(data, model, config.model)
    data = data.to(torch.float64)
    offset = 0.0
    if config.dequantize:
        data = _pixels_to_unit(data, generator, config.method)
        offset = dequantization_offset_nats(dim) if config.method == "ode" else 0.0
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
            decoder = "discretized" if config.dequantize else "gaussian"
            terms = vlb_terms(model, chunk, variance=config.variance, decoder=decoder, generator=generator)  # type: ignore[arg-type]
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
        "dequantization_offset_nats": offset or None,
    }
    if isinstance(model, ExactData) and not config.dequantize:
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
