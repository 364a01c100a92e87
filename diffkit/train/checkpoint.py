"""Checkpoint folders: safetensors weights, optimiser state and a JSON recipe; loading as a ScoreModel.

A checkpoint folder holds

- `config.json`: everything needed to rebuild the model and its process (network name and
  options, parameterization kind, process name and options, dataset, data_shape, num_classes,
  loss, seed, iteration, versions) plus the full training recipe under `train`;
- `model.safetensors`: the EMA weights (`ema/<name>`) and the raw weights (`raw/<name>`);
- `optimizer.safetensors`: the AdamW state, tensors only (`state/<param index>/<key>`);
- `history.json`: the per-step training loss.

Nothing is ever unpickled: weights are read with safetensors, JSON with `json`. `config.json` is
written last, and both safetensors files record the iteration in their metadata, so a folder
whose files disagree (a crash between writes) is refused rather than silently mixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffkit.errors import UsageError
from diffkit.io import write_with
from diffkit.model import ScoreModel
from diffkit.options import parse_options
from diffkit.process import NoiseProcess
from diffkit.registry import Registry

FORMAT = "diffkit-checkpoint"
FORMAT_VERSION = 1
CONFIG, MODEL, OPTIMIZER, HISTORY = (
    "config.json",
    "model.safetensors",
    "optimizer.safetensors",
    "history.json",
)


def build_network(
    registry: Registry, name: str, options: dict[str, Any], data_shape: tuple[int, ...], seed: int
) -> nn.Module:
    """Build network `name` with initial weights drawn from `seed` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return registry.build("network", name, options, tuple(data_shape))


def is_checkpoint_name(name: str) -> bool:
    """True if a `--model` value names a folder (an existing directory or a path with a separator).

    Callers ask the registry first (`diffkit.api.build_model`), so registered names and plugin
    families such as `diffusers:<path>` never reach this test.
    """
    return "/" in name or "\\" in name or Path(name).is_dir()


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], iteration: int) -> None:
    from safetensors.torch import save

    data = save(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
        metadata={"format": FORMAT, "iteration": str(iteration)},
    )
    write_with(path, lambda handle: handle.write(data))


def _read_tensors(path: Path, iteration: int | None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not path.is_file():
        raise UsageError(f"checkpoint file missing: {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error type for corrupted files
        raise UsageError(f"cannot read {str(path)!r}: not a valid safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise UsageError(f"{str(path)!r} is not a diffkit checkpoint file (no '{FORMAT}' metadata)")
    if iteration is not None and metadata.get("iteration") != str(iteration):
        raise UsageError(
            f"{str(path)!r} is from iteration {metadata.get('iteration')}, but config.json says "
            f"{iteration}: the checkpoint is inconsistent (interrupted write?)"
        )
    return tensors


def save_checkpoint(
    folder: Path,
    record: dict[str, Any],
    network: nn.Module,
    ema: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    losses: list[float],
) -> None:
    """Write the four checkpoint files for `record["iteration"]`, config.json last."""
    folder.mkdir(parents=True, exist_ok=True)
    iteration = int(record["iteration"])
    weights = {f"ema/{k}": v for k, v in ema.items()} | {
        f"raw/{k}": v for k, v in network.state_dict().items()
    }
    _write_tensors(folder / MODEL, weights, iteration)
    state = optimizer.state_dict()["state"]
    flat = {
        f"state/{index}/{key}": value if torch.is_tensor(value) else torch.tensor(value)
        for index, entries in state.items()
        for key, value in entries.items()
    }
    _write_tensors(folder / OPTIMIZER, flat, iteration)
    history = json.dumps({"iteration": iteration, "losses": losses}).encode()
    write_with(folder / HISTORY, lambda handle: handle.write(history))
    text = json.dumps(record, indent=2, sort_keys=True).encode()
    write_with(folder / CONFIG, lambda handle: handle.write(text))


def read_config(folder: Path) -> dict[str, Any]:
    """Read and check `config.json` of a checkpoint folder; UsageError if missing or malformed."""
    if not folder.is_dir():
        raise UsageError(f"checkpoint folder not found: {str(folder)!r}")
    path = folder / CONFIG
    if not path.is_file():
        raise UsageError(f"{str(folder)!r} is not a diffkit checkpoint: it has no {CONFIG}")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read {str(path)!r}: {error}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UsageError(f"{str(path)!r} is not a diffkit checkpoint config (format != {FORMAT!r})")
    if record.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{str(path)!r} has format version {record.get('format_version')!r}; expected 1")
    needed = ("network", "kind", "process", "data_shape", "iteration", "seed", "learn_variance")
    missing = [key for key in needed if key not in record]
    if missing:
        raise UsageError(f"{str(path)!r} lacks {', '.join(missing)}")
    return record


@dataclass
class TrainingState:
    """What `--resume` restores: the recipe record, weights, EMA, optimiser state and loss history."""

    record: dict[str, Any]
    raw: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer_state: dict[int, dict[str, torch.Tensor]]
    losses: list[float]


def read_training_state(folder: Path) -> TrainingState:
    """Read everything needed to continue training from `folder`; UsageError if anything is off."""
    record = read_config(folder)
    iteration = int(record["iteration"])
    weights = _read_tensors(folder / MODEL, iteration)
    raw = {k.removeprefix("raw/"): v for k, v in weights.items() if k.startswith("raw/")}
    ema = {k.removeprefix("ema/"): v for k, v in weights.items() if k.startswith("ema/")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in _read_tensors(folder / OPTIMIZER, iteration).items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    try:
        history = json.loads((folder / HISTORY).read_text())
        losses = [float(v) for v in history["losses"]][:iteration]
    except (OSError, ValueError, KeyError, TypeError):
        losses = []  # the loss curve is a report, not state: training still resumes exactly
    return TrainingState(record, raw, ema, state, losses)


@dataclass
class LoadedCheckpoint:
    """A network with weights loaded, and how to wrap it: kind, process recipe, data shape."""

    record: dict[str, Any]
    network: nn.Module
    kind: str
    process_name: str
    process_options: dict[str, Any]
    data_shape: tuple[int, ...]
    learned_variance: bool = False  # the network also outputs improved DDPM's variance channels


def load_checkpoint(path: str | Path, registry: Registry, *, weights: str = "ema") -> LoadedCheckpoint:
    """Rebuild the network of checkpoint folder `path` with its `ema` or `raw` weights (eval mode)."""
    if weights not in ("ema", "raw"):
        raise UsageError(f"checkpoint weights must be ema or raw, got {weights!r}")
    folder = Path(path)
    record = read_config(folder)
    try:
        network_spec, process_spec = dict(record["network"]), dict(record["process"])
        data_shape = tuple(int(n) for n in record["data_shape"])
        name, options = str(network_spec["name"]), dict(network_spec.get("options", {}))
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"{str(folder / CONFIG)!r} is malformed: {error}") from None
    network = build_network(registry, name, options, data_shape, int(record["seed"]))
    tensors = _read_tensors(folder / MODEL, int(record["iteration"]))
    prefix = f"{weights}/"
    state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UsageError(f"weights in {str(folder / MODEL)!r} do not fit network {name!r}: {first}") from None
    network.eval().requires_grad_(False)  # inference only: samplers need no parameter gradients
    return LoadedCheckpoint(
        record,
        network,
        str(record["kind"]),
        str(process_spec.get("name")),
        dict(process_spec.get("options", {})),
        data_shape,
        bool(record["learn_variance"]),
    )


def model_from_checkpoint(
    path: str,
    registry: Registry,
    process_name: str,
    process: NoiseProcess,
    *,
    process_options: dict[str, Any],
    model_options: dict[str, Any],
) -> ScoreModel:
    """The `ScoreModel` of checkpoint folder `path` on `process`, which must be the one it was trained on.

    A model is only meaningful on its training process, so a different `--sde` (name or parsed
    options) is refused with a UsageError naming the process to pass, never silently swapped.
    Model options: `weights=ema|raw` (default ema).
    """
    unknown = sorted(set(model_options) - {"weights"})
    if unknown:
        raise UsageError(f"checkpoint model options: unknown {', '.join(unknown)}; valid: weights (ema|raw)")
    loaded = load_checkpoint(path, registry, weights=str(model_options.get("weights", "ema")))
    factory = registry.get("process", loaded.process_name).factory
    trained = parse_options("process", loaded.process_name, factory, loaded.process_options)
    if loaded.process_name != process_name or trained != parse_options(
        "process", process_name, registry.get("process", process_name).factory, process_options
    ):
        given = " ".join(f"--sde-opt {k}={v}" for k, v in loaded.process_options.items())
        raise UsageError(
            f"model {path!r} was trained on process {loaded.process_name!r} {trained or ''}; "
            f"sample it with --sde {loaded.process_name} {given}".rstrip()
        )
    return ScoreModel(  # a learned variance is split off by the model; `ancestral` uses it
        loaded.network,
        kind=loaded.kind,
        process=process,
        data_shape=loaded.data_shape,
        learned_variance=loaded.learned_variance,
    )
