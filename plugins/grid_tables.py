"""Discrete DDPM spacings (`leading`, `trailing`, `linspace`) and user tables (`table`).

The spacings are those of diffusers' `DDPMScheduler` / `DDIMScheduler.set_timesteps`
(`timestep_spacing`; Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", Table 2) on a discrete process with N knots t_k = (k + 1) / N (diffusers timestep
k = 0..N-1). The n timesteps are the n model evaluations; the grid is their knots followed by
0.0, "sigma = 0" (diffusers' last step to timestep -1, where alpha_bar = 1), so a run with n
steps takes n steps and n model calls like diffusers':

    leading:   k_j = j floor(N / n) + offset,          j = n-1, ..., 0
    trailing:  k_j = round(N - j N / n) - 1,           j = 0, ..., n-1
    linspace:  k_j = round(j (N - 1) / (n - 1)),       j = n-1, ..., 0   (k = 0 when n = 1)

rounding half to even in float64 exactly as numpy does in diffusers (so `trailing` follows
numpy's `arange`, whose accumulated step decides exact halves such as 687.5 for n = 48).

`table` is a grid from a list: times t, scaled noise levels s = sigma / alpha (k-diffusion's and
"Align Your Steps"' sigmas; sigma itself on VE processes) or diffusers timesteps. A trailing 0
(t = 0 or s = 0) is the final step to sigma = 0; timesteps always end with it, like diffusers'
custom timesteps. For another step count the positive part is interpolated linearly in log s
over a uniform index, as "Align Your Steps" does (Sabour et al. 2024, `loglinear_interp`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from diffkit import DiscreteProcess, NoiseProcess, Registrar, discrete_process, hookimpl

Kind = Literal["times", "sigmas", "timesteps"]
#: JSON keys a table file may hold its list under, in order of preference
KINDS: tuple[str, ...] = ("times", "sigmas", "timesteps")
#: relative tolerance on a table's sigmas at the process's ends (values within it are clamped)
SIGMA_RTOL = 1e-6


def _check_steps(n_steps: int) -> None:
    if n_steps < 1:
        raise ValueError(f"need at least 1 step, got {n_steps}")


def _discrete(process: NoiseProcess) -> DiscreteProcess:
    """The process as a `DiscreteProcess`; ValueError if it is continuous."""
    discrete = discrete_process(process)
    if discrete is None:
        raise ValueError(
            "needs a discrete process (one with DDPM knots: ddpm, ddpm-cosine); this one is continuous"
        )
    return discrete


def _knots_then_zero(process: DiscreteProcess, timesteps: torch.Tensor) -> torch.Tensor:
    """Knot times (k + 1) / N of descending timesteps `(n,)`, then 0.0 (sigma = 0): `(n + 1,)` float64."""
    times = process.discrete_times[timesteps]
    return torch.cat([times, torch.zeros(1, dtype=torch.float64)])


def _spacing(process: NoiseProcess, n_steps: int) -> tuple[DiscreteProcess, int]:
    """Check a spacing's call: the process as discrete and its N, with n <= N (else ValueError)."""
    _check_steps(n_steps)
    discrete = _discrete(process)
    count = discrete.num_steps
    if n_steps > count:
        raise ValueError(f"takes at most {count} steps on a process with {count} knots, got {n_steps}")
    return discrete, count


@dataclass(frozen=True, kw_only=True)
class LeadingGrid:
    """diffusers' "leading" spacing: timesteps j floor(N/n) + offset, j = n-1..0, then sigma = 0.

    `offset` is diffusers' `steps_offset` (1 in Stable Diffusion's scheduler configs).
    """

    offset: int = field(default=0, metadata={"range": (0, None)})

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid (its first point is below t_max unless n = 1)."""
        discrete, count = _spacing(process, n_steps)
        timesteps = torch.arange(n_steps - 1, -1, -1, dtype=torch.int64) * (count // n_steps) + self.offset
        if int(timesteps[0]) > count - 1:
            raise ValueError(
                f"offset {self.offset} puts the first timestep at {int(timesteps[0])}, beyond the last knot "
                f"{count - 1}"
            )
        return _knots_then_zero(discrete, timesteps)


@dataclass(frozen=True, kw_only=True)
class TrailingGrid:
    """diffusers' "trailing" spacing: timesteps round(N - j N/n) - 1, j = 0..n-1, then sigma = 0."""

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid, starting at t_max."""
        discrete, count = _spacing(process, n_steps)
        # numpy's arange(N, 0, -N/n) fills N + j * delta with delta = (N - N/n) - N, which rounds;
        # so do we, since an exact half (e.g. 687.5 for n = 48) then rounds the way diffusers' does
        delta = (count - count / n_steps) - count
        j = torch.arange(n_steps, dtype=torch.float64)
        timesteps = torch.round(count + j * delta).to(torch.int64) - 1
        return _knots_then_zero(discrete, timesteps)


@dataclass(frozen=True, kw_only=True)
class LinspaceGrid:
    """diffusers' "linspace" spacing: timesteps round(j (N-1)/(n-1)), j = n-1..0, then sigma = 0."""

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid, from t_max through t_min to sigma = 0."""
        discrete, count = _spacing(process, n_steps)
        if n_steps == 1:  # diffusers: np.linspace(0, N - 1, 1) = [0]
            timesteps = torch.zeros(1, dtype=torch.int64)
        else:  # j * ((N - 1) / (n - 1)) in float64, rounded half to even, as numpy computes it
            j = torch.arange(n_steps - 1, -1, -1, dtype=torch.float64)
            timesteps = torch.round(j * ((count - 1) / (n_steps - 1))).to(torch.int64)
        return _knots_then_zero(discrete, timesteps)


# -- user tables -------------------------------------------------------------------------------


def _numbers(text: str, where: str) -> list[float]:
    """The numbers of a text table (separated by commas, spaces or newlines; `#` starts a comment)."""
    words = [word for line in text.splitlines() for word in re.split(r"[,\s]+", line.split("#")[0]) if word]
    try:
        return [float(word) for word in words]
    except ValueError as error:
        raise ValueError(f"{where}: not a list of numbers ({error})") from None


def _read_json(path: Path, kind: str | None) -> tuple[list[float], str | None]:
    """(values, kind) of a JSON table: a list, or an object with a "times", "sigmas" or "timesteps" list."""
    where = f"table file {str(path)!r}"
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        present = [key for key in KINDS if key in data]
        if not present:
            raise ValueError(f"{where} has none of the keys {', '.join(KINDS)}")
        key = kind if kind is not None else present[0]
        if key not in data:
            raise ValueError(f"{where} has no {key!r} list (it has {', '.join(present)})")
        data, kind = data[key], key
    if not isinstance(data, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in data
    ):
        raise ValueError(f"{where}: expected a list of numbers")
    return [float(v) for v in data], kind


def read_table(path: Path, kind: str | None) -> tuple[list[float], str | None]:
    """(values, kind or None) of a table file: `.txt`/`.csv` numbers, a 1-D `.npy`, or `.json`."""
    where = f"table file {str(path)!r}"
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return _read_json(path, kind)
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.ndim != 1 or array.dtype.kind not in "iuf":
                raise ValueError(f"{where}: expected a 1-D numeric array, got {array.dtype} {array.shape}")
            return [float(v) for v in array], kind
        if suffix in (".txt", ".csv", ""):
            return _numbers(path.read_text(), where), kind
    except OSError as error:
        raise ValueError(f"cannot read {where}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {where}: {error}") from None
    raise ValueError(f"{where}: expected a .txt, .csv, .npy or .json file")


def _check_values(values: list[float], kind: str) -> None:
    """ValueError unless `values` is a usable table of `kind` (before any process is known)."""
    if not values:
        raise ValueError(f"the table of {kind} is empty")
    bad = next((v for v in values if not math.isfinite(v) or v < 0), None)
    if bad is not None:
        raise ValueError(f"table {kind} must be finite and >= 0, got {bad}")
    for index in range(1, len(values)):
        if not values[index] < values[index - 1]:
            raise ValueError(
                f"table {kind} must be strictly decreasing (from noise to data): entry {index} "
                f"({values[index]:g}) follows {values[index - 1]:g}"
            )
    if kind == "timesteps":
        fractional = next((v for v in values if v != int(v)), None)
        if fractional is not None:
            raise ValueError(f"timesteps must be integers (knot indices), got {fractional:g}")
    elif len(values) < 2:
        raise ValueError(f"a table of {kind} needs at least 2 values (a grid's two ends), got 1")


@dataclass(frozen=True, kw_only=True)
class TableGrid:
    """A user-given grid: times, sigmas (= sigma/alpha) or diffusers timesteps, from a file or a list.

    Options:
        file: a `.txt`/`.csv` (numbers), `.npy` (1-D) or `.json` file (a list, or an object with a
            "times", "sigmas" or "timesteps" list, as `diffkit tune-grid` writes).
        timesteps: comma-separated diffusers timesteps of a discrete process, e.g. `999,850,500`
            (what `diffkit sample --timesteps` sets).
        kind: what the file's numbers are: times (default), sigmas or timesteps (for a JSON
            object: which of its lists to read; default the first of times, sigmas, timesteps).

    The table holds `steps` steps; for another count its positive part is interpolated linearly
    in log s (s = sigma / alpha) over a uniform index; its ends and a final sigma = 0 are kept.
    """

    file: str | None = None
    timesteps: str | None = None
    kind: Kind | None = None
    values: tuple[float, ...] = field(init=False, repr=False)
    unit: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.file is None) == (self.timesteps is None):
            raise ValueError("give a table with exactly one of the options file=PATH or timesteps=K1,K2,...")
        kind: str | None = self.kind
        if self.timesteps is not None:
            if kind not in (None, "timesteps"):
                raise ValueError(f"option timesteps lists timesteps, not {kind}")
            values, kind = _numbers(self.timesteps, "option timesteps"), "timesteps"
        else:
            values, kind = read_table(Path(self.file).expanduser(), kind)  # type: ignore[arg-type]
        kind = kind or "times"
        _check_values(values, kind)
        object.__setattr__(self, "values", tuple(values))
        object.__setattr__(self, "unit", kind)

    @property
    def steps(self) -> int:
        """The table's own number of steps (timesteps: one per entry, the last to sigma = 0)."""
        return len(self.values) if self.unit == "timesteps" else len(self.values) - 1

    def __call__(self, process: NoiseProcess, n_steps: int) -> torch.Tensor:
        """Return the `(n_steps + 1,)` float64 grid (ending at 0.0 if the table ends at zero)."""
        _check_steps(n_steps)
        values = torch.tensor(self.values, dtype=torch.float64)
        if self.unit == "timesteps":  # diffusers' custom timesteps: each a step, the last to sigma = 0
            to_zero, positive = True, values
        else:  # a final 0 is sigma = 0; on a process with t_min = 0 a final time 0 is t_min itself
            to_zero = float(values[-1]) == 0.0 and (self.unit == "sigmas" or process.t_min > 0.0)
            positive = values[:-1] if to_zero else values
        times = self._times(process, positive)
        if to_zero and not process.t_min > 0.0:
            raise ValueError(
                "the table ends at sigma = 0 (a final point t = 0.0 below t_min), which needs t_min > 0; "
                f"the process has t_min = {process.t_min:g}"
            )
        count = n_steps if to_zero else n_steps + 1
        if count != times.shape[0]:
            times = _interpolate(process, times, count)
        if to_zero:
            times = torch.cat([times, torch.zeros(1, dtype=torch.float64)])
        return times

    def _times(self, process: NoiseProcess, values: torch.Tensor) -> torch.Tensor:
        """Times `(K,)` in [t_min, t_max] of the table's positive values `(K,)` (ValueError if outside)."""
        if self.unit == "timesteps":
            discrete = _discrete(process)
            if float(values[0]) > discrete.num_steps - 1:
                raise ValueError(
                    f"timestep {float(values[0]):g} is outside the process's 0..{discrete.num_steps - 1}"
                )
            return discrete.discrete_times[values.to(torch.int64)]
        if self.unit == "times":
            tol = 1e-9 * max(1.0, abs(process.t_max))
            low, high = float(values[-1]), float(values[0])
            if high > process.t_max + tol or low < process.t_min - tol:
                raise ValueError(
                    f"table times [{high:g}, {low:g}] leave the process range "
                    f"[{process.t_min:g}, {process.t_max:g}] (only a final 0, sigma = 0, may lie below t_min)"
                )
            return values.clamp(process.t_min, process.t_max)
        ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
        s_max, s_min = torch.exp(-0.5 * process.log_snr(ends).to(torch.float64)).tolist()
        high, low = float(values[0]), float(values[-1])
        if high > s_max * (1 + SIGMA_RTOL) or low < s_min * (1 - SIGMA_RTOL):
            raise ValueError(
                f"table sigmas [{high:g}, {low:g}] leave the process's range of sigma/alpha "
                f"[{s_max:g}, {s_min:g}] (only a final 0 may lie below it)"
            )
        log_s = torch.log(values).clamp(math.log(s_min), math.log(s_max))
        return process.t_from_log_snr(-2.0 * log_s).to(torch.float64)


def _interpolate(process: NoiseProcess, times: torch.Tensor, count: int) -> torch.Tensor:
    """`count` times whose log s, s = sigma/alpha, is linear in a uniform index over the table's `(K,)`.

    "Align Your Steps" (Sabour et al. 2024): log s at index positions linspace(0, 1, count) of the
    table's log s at linspace(0, 1, K); the first and last times are kept exactly.
    """
    if times.shape[0] < 2:
        raise ValueError(f"a table with one point before sigma = 0 cannot be interpolated to {count} points")
    log_s = -0.5 * process.log_snr(times).to(torch.float64)
    position = torch.linspace(0.0, 1.0, count, dtype=torch.float64) * (times.shape[0] - 1)
    left = position.floor().to(torch.int64).clamp(max=times.shape[0] - 2)
    weight = position - left
    interpolated = log_s[left] + weight * (log_s[left + 1] - log_s[left])
    out = process.t_from_log_snr(-2.0 * interpolated).to(torch.float64)
    out[0] = times[0]
    if count > 1:
        out[-1] = times[-1]
    return out


def _add(registrar: Registrar, name: str, factory: type, what: str) -> None:
    """Register grid `name` with the one-line summary `what` (`diffkit list grid` adds its options)."""
    registrar.add_grid(name, factory, summary=what)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the DDPM spacings `leading`, `trailing`, `linspace` and the user `table` grid."""
    _add(
        registrar,
        "leading",
        LeadingGrid,
        "diffusers 'leading' timesteps of a discrete process, then sigma = 0.",
    )
    _add(
        registrar,
        "trailing",
        TrailingGrid,
        "diffusers 'trailing' timesteps of a discrete process, then sigma = 0.",
    )
    _add(
        registrar,
        "linspace",
        LinspaceGrid,
        "diffusers 'linspace' timesteps of a discrete process, then sigma = 0.",
    )
    _add(
        registrar,
        "table",
        TableGrid,
        "User times, sigmas (sigma/alpha) or timesteps, log-linearly interpolated to other step counts.",
    )
