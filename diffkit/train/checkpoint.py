"""Checkpoint folders: safetensors weights, optimiser state and a JSON recipe; loading as a ScoreModel.

A checkpoint folder holds

- `config.json`: everything needed to rebuild the model and its process (network name and
  options, parameterization kind, process name and options, dataset, data_shape, num_classes,
  null_label, score_scaling, loss, seed, iteration, versions) plus the full training recipe
  under `train`;
- `model.safetensors`: the EMA weights (`ema/<name>`) and the raw weights (`raw/<name>`);
- `optimizer.safetensors`: the AdamW state, tensors only (`state/<param index>/<key>`);
- `history.json`: the per-step training loss.

Nothing is ever unpickled: weights are read with safetensors, JSON with `json`. A checkpoint is
written as one unit (`diffkit.train.generation`): every file records the checkpoint id
`<iteration>-<random>` that `config.json` names (key `checkpoint`), a top-level file from another
checkpoint (a kill while publishing) is read from the complete copy in `.checkpoints/<id>/`
instead, and a folder with no consistent copy is refused rather than silently mixed. Folders
without ids (shipped models, older runs) are checked by iteration as before.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffkit.core.errors import UsageError
from diffkit.core.model import SCORE_SCALINGS, ScoreModel
from diffkit.core.process import NoiseProcess
from diffkit.core.time_warp import base_process
from diffkit.plugin.contract import parameterization_names, registered_parameterization
from diffkit.plugin.registry import Registry
from diffkit.plugin.validate import checkpoint_record
from diffkit.train import generation

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


def score_scaling_for(kind: str) -> str:
    """The score scaling `diffkit train` gives a network of parameterization `kind`.

    A score-output network is divided by sigma(t) (NCSNv2, Song & Ermon 2020, Technique 3): the
    raw score is ~1/sigma large at small noise, `sigma score ~ -eps` is O(1) at every level.
    """
    return "1/sigma" if kind == "score" else "none"


def is_checkpoint_name(name: str) -> bool:
    """True if a `--model` value names a folder (an existing directory or a path with a separator).

    Callers ask the registry first (`diffkit.run.api.build_model`), so registered names and plugin
    families such as `diffusers:<path>` never reach this test.
    """
    return "/" in name or "\\" in name or Path(name).is_dir()


_IDENT = re.compile(r"[0-9]{1,12}-[0-9a-f]{1,32}")


def _tensor_bytes(tensors: dict[str, torch.Tensor], iteration: int, ident: str) -> bytes:
    from safetensors.torch import save

    return save(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
        metadata={"format": FORMAT, "iteration": str(iteration), "checkpoint": ident},
    )


def _kept_copy(folder: Path, record: dict[str, Any], name: str) -> Path | None:
    """`folder/.checkpoints/<id>/<name>` of the checkpoint `record` names, if that file exists.

    A record without id (older diffkit) has its copy in `.checkpoints/legacy/` while a new
    checkpoint replaces it.
    """
    ident = record.get("checkpoint", generation.LEGACY)
    if not isinstance(ident, str) or not (ident == generation.LEGACY or _IDENT.fullmatch(ident)):
        return None
    path = folder / generation.STORE / ident / name
    return path if path.is_file() else None


def _read_checked(folder: Path, record: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """Tensors of file `name` of the checkpoint `record` names: the top-level file or its kept copy."""
    try:
        return _read_tensors(folder / name, record)
    except UsageError as error:
        kept = _kept_copy(folder, record, name)
        if kept is None:
            raise
        try:
            return _read_tensors(kept, record)
        except UsageError:
            raise error from None  # name the public file, not the hidden copy


def read_weights(folder: Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `ema/*` and `raw/*` tensors of the checkpoint that `record` (folder's config.json) names."""
    return _read_checked(folder, record, MODEL)


def _read_tensors(path: Path, record: dict[str, Any] | None) -> dict[str, torch.Tensor]:
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
    ident = None if record is None else record.get("checkpoint")
    if ident is not None and metadata.get("checkpoint") != ident:
        raise UsageError(
            f"{str(path)!r} belongs to checkpoint {metadata.get('checkpoint')!r}, but config.json names "
            f"{ident!r}, and no complete copy of it is kept: the checkpoint is inconsistent"
        )
    iteration = None if record is None else record.get("iteration")
    if ident is None and iteration is not None and metadata.get("iteration") != str(iteration):
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
    stale: Iterable[str] = (),
) -> str:
    """Write the checkpoint of `record["iteration"]` as one unit (config.json commits); return its id.

    `stale`: names of files in `folder` to remove once it is committed (an overwritten run's grids).
    """
    iteration = int(record["iteration"])
    ident = f"{iteration}-{secrets.token_hex(4)}"
    generation.log_event(f"begin {ident}")
    weights = {f"ema/{k}": v for k, v in ema.items()} | {
        f"raw/{k}": v for k, v in network.state_dict().items()
    }
    state = optimizer.state_dict()["state"]
    flat = {
        f"state/{index}/{key}": value if torch.is_tensor(value) else torch.tensor(value)
        for index, entries in state.items()
        for key, value in entries.items()
    }
    history = {"iteration": iteration, "checkpoint": ident, "losses": losses}
    files = {  # publication order: config.json last, its replacement is the commit
        MODEL: _tensor_bytes(weights, iteration, ident),
        OPTIMIZER: _tensor_bytes(flat, iteration, ident),
        HISTORY: json.dumps(history).encode(),
        CONFIG: json.dumps(record | {"checkpoint": ident}, indent=2, sort_keys=True).encode(),
    }
    generation.save_generation(folder, ident, files, stale)
    return ident


def committed(folder: Path) -> dict[str, Any] | None:
    """The config record of the checkpoint `folder` holds (what --resume continues), or None."""
    try:
        return read_config(folder) if (folder / CONFIG).is_file() else None
    except UsageError:
        return None


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
    weights = _read_checked(folder, record, MODEL)
    raw = {k.removeprefix("raw/"): v for k, v in weights.items() if k.startswith("raw/")}
    ema = {k.removeprefix("ema/"): v for k, v in weights.items() if k.startswith("ema/")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in _read_checked(folder, record, OPTIMIZER).items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    return TrainingState(record, raw, ema, state, _read_losses(folder, record))


def _read_losses(folder: Path, record: dict[str, Any]) -> list[float]:
    """The loss history of the checkpoint `record` names ([] if unreadable: a report, not state)."""
    for path in (folder / HISTORY, _kept_copy(folder, record, HISTORY)):
        try:
            history = json.loads(path.read_text()) if path is not None else None
            if isinstance(history, dict) and history.get("checkpoint") == record.get("checkpoint"):
                return [float(v) for v in history["losses"]][: int(record["iteration"])]
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue
    return []  # training still resumes exactly


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
    num_classes: int = 0  # class labels the network is conditioned on (0: unconditional)
    null_label: int | None = None  # the label meaning "no class" (None when unconditional)
    score_scaling: str = "none"  # kind score: "1/sigma" divides the output by sigma(t)


def _conditioning(record: dict[str, Any], options: dict[str, Any]) -> tuple[int, int | None, str]:
    """num_classes, null label and score scaling of a record; older records lack the last two.

    Without a recorded null label the networks' own convention applies (`diffkit.nn`: the null
    class is `num_classes`); without a recorded scaling the output was used as is.
    """
    num_classes = int(record.get("num_classes", options.get("num_classes", 0)) or 0)
    null_label = record.get("null_label", num_classes if num_classes else None)
    scaling = str(record.get("score_scaling", "none"))
    if num_classes < 0 or (num_classes and null_label is None) or scaling not in SCORE_SCALINGS:
        raise ValueError(f"bad conditioning fields: num_classes={num_classes}, score_scaling={scaling!r}")
    return num_classes, None if null_label is None else int(null_label), scaling


def load_checkpoint(path: str | Path, registry: Registry, *, weights: str = "ema") -> LoadedCheckpoint:
    """Rebuild the network of checkpoint folder `path` with its `ema` or `raw` weights (eval mode)."""
    if weights not in ("ema", "raw"):
        raise UsageError(f"checkpoint weights must be ema or raw, got {weights!r}")
    folder = Path(path)
    record = read_config(folder)
    checkpoint_record(record, repr(str(folder / CONFIG)), parameterization_names(registry))
    try:
        network_spec, process_spec = dict(record["network"]), dict(record["process"])
        data_shape = tuple(int(n) for n in record["data_shape"])
        name, options = str(network_spec["name"]), dict(network_spec.get("options", {}))
        num_classes, null_label, scaling = _conditioning(record, options)
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"{str(folder / CONFIG)!r} is malformed: {error}") from None
    network = build_network(registry, name, options, data_shape, int(record["seed"]))
    tensors = read_weights(folder, record)
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
        num_classes,
        null_label,
        scaling,
    )


def same_schedule(trained: NoiseProcess, given: NoiseProcess) -> bool:
    """True if `given` has `trained`'s alpha(t) and sigma(t): equal processes up to the end time and shift.

    t_min only bounds the range a sampler covers, so a model may be sampled to another end time
    than the one it was trained down to; a timestep shift (`shift`/`mu`) only re-times sampling,
    the network still receives its own time; every other option changes the schedule.
    """
    trained, given = base_process(trained), base_process(given)
    settable = dataclasses.is_dataclass(trained) and any(
        f.name == "t_min" and f.init for f in dataclasses.fields(trained)
    )
    if settable and type(trained) is type(given):
        trained = dataclasses.replace(trained, t_min=given.t_min)
    return trained == given


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
    trained = registry.parse_options("process", loaded.process_name, loaded.process_options)
    same = loaded.process_name == process_name and same_schedule(
        registry.build("process", loaded.process_name, loaded.process_options), process
    )
    if not same:
        flags = " ".join(f"--sde-opt {k}={v}" for k, v in loaded.process_options.items())
        raise UsageError(
            f"model {path!r} was trained on process {loaded.process_name!r} {trained or ''}; "
            f"sample it with --sde {loaded.process_name} {flags}".rstrip()
        )
    return ScoreModel(  # a learned variance is split off by the model; `ancestral` uses it
        loaded.network,
        kind=registered_parameterization(registry, loaded.kind),
        process=process,
        data_shape=loaded.data_shape,
        learned_variance=loaded.learned_variance,
        num_classes=loaded.num_classes,
        null_label=loaded.null_label,
        score_scaling=loaded.score_scaling,
    )
