"""The training loop: AdamW, weight EMA, gradient clipping and exactly reproducible resumption.

Step i draws its batch (and label dropout) from a CPU generator and its times and noise from a
device generator, both seeded from `(seed, i)` alone, and runs the forward pass under a forked
global RNG seeded the same way (for dropout). Together with the saved AdamW state and EMA this
makes `N` steps in one go and `N/2` steps + `--resume` + `N/2` steps give bit-identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffkit.core.errors import OutputError, UsageError
from diffkit.core.model import ScoreModel
from diffkit.plugin.contract import registered_parameterization
from diffkit.plugin.loading import build_registry
from diffkit.plugin.registry import Registry
from diffkit.run.data import Dataset
from diffkit.run.datafile import check_unchanged, resolve_dataset
from diffkit.run.provenance import versions
from diffkit.train import checkpoint as ckpt
from diffkit.train.config import TrainConfig
from diffkit.train.ema import ema_decay, init_ema, update_ema
from diffkit.train.generation import check_run_folder, log_event
from diffkit.train.report import save_loss_curve, save_sample_grid

Progress = Callable[[int, float], None]
#: A checkpoint redraws loss.png only if this many seconds passed since the last plot (a plot
#: costs ~0.2 s; `--checkpoint-every 1` would spend most of its time drawing).
LOSS_PLOT_SECONDS = 30.0


@dataclass
class TrainResult:
    """A finished (or resumed-and-finished) run: network with raw weights, EMA weights, losses."""

    network: nn.Module
    ema: dict[str, torch.Tensor]
    losses: list[float]
    iteration: int
    seconds: float
    record: dict[str, Any]


@dataclass
class _Setup:
    """The composed components of a run."""

    dataset: Dataset
    model: ScoreModel
    loss: Any
    null_label: int | None
    learn_variance: bool


def step_seed(seed: int, iteration: int, stream: int) -> int:
    """Seed of random stream `stream` (0 data, 1 noise, 2 global RNG) at step `iteration`."""
    return (seed * 1_000_003 + iteration * 7 + stream + 1) % (2**63)


def _setup(
    config: TrainConfig, registry: Registry, device: torch.device, dataset: Dataset | None = None
) -> _Setup:
    """Build dataset (unless given), process, network and loss; check them on a two-example batch."""
    parameterization = registered_parameterization(registry, config.kind, flag="--kind ")
    if dataset is None:
        dataset = resolve_dataset(registry, config.data, config.data_options)
    process = registry.build("process", config.process, config.process_options)
    loss = registry.build("loss", config.loss, config.loss_options)
    network = ckpt.build_network(
        registry, config.network, dict(config.network_options), dataset.data_shape, config.seed
    ).to(device)
    labels = getattr(network, "labels", None)
    null_label = None if labels is None else int(labels.null_label)
    if null_label is not None and dataset.labels is None:
        raise UsageError(
            f"network {config.network!r} is class-conditional, but dataset {config.data!r} has no labels"
        )
    if null_label is not None and null_label != dataset.num_classes:
        raise UsageError(
            f"network {config.network!r} has num_classes={null_label}, dataset {config.data!r} has "
            f"{dataset.num_classes}; pass --net-opt num_classes={dataset.num_classes}"
        )
    learn_variance = bool(getattr(network, "learn_variance", False))
    needs_variance = config.loss == "hybrid" or getattr(loss, "variance", None) == "learned"
    if needs_variance != learn_variance:
        raise UsageError(
            f"loss {config.loss!r} {'needs' if needs_variance else 'does not use'} a learned variance: "
            f"pass --net-opt learn_variance={str(needs_variance).lower()}"
        )
    model = ScoreModel(
        network,
        kind=parameterization,
        process=process,
        data_shape=dataset.data_shape,
        learned_variance=learn_variance,
        num_classes=0 if null_label is None else dataset.num_classes,
        null_label=null_label,
        score_scaling=ckpt.score_scaling_for(config.kind),
    )
    x0 = dataset.data[:2].to(device)
    cond = None if null_label is None else dataset.labels[:2].to(device)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            loss(model, x0, generator=torch.Generator(device).manual_seed(0), cond=cond)
    except (ValueError, TypeError, AttributeError, RuntimeError) as error:
        raise UsageError(
            f"loss {config.loss!r} cannot train network {config.network!r} on process {config.process!r} "
            f"with dataset {config.data!r}: {error}"
        ) from None
    return _Setup(dataset, model, loss, null_label, learn_variance)


def _record(config: TrainConfig, setup: _Setup, iteration: int) -> dict[str, Any]:
    """The `config.json` content at `iteration`."""
    return {
        "format": ckpt.FORMAT,
        "format_version": ckpt.FORMAT_VERSION,
        "network": {"name": config.network, "options": dict(config.to_dict()["network_options"])},
        "kind": config.kind,
        "learn_variance": setup.learn_variance,
        "process": {"name": config.process, "options": dict(config.to_dict()["process_options"])},
        "dataset": {"name": config.data, "options": dict(config.to_dict()["data_options"])}
        | dict(setup.dataset.source or {}),
        "data_shape": list(setup.dataset.data_shape),
        "value_range": setup.dataset.value_range,
        "num_classes": setup.model.num_classes,
        "null_label": setup.null_label,
        "score_scaling": setup.model.score_scaling,
        "loss": {"name": config.loss, "options": dict(config.to_dict()["loss_options"])},
        "seed": config.seed,
        "iteration": iteration,
        "train": config.to_dict(),
        "versions": versions(),
    }


def _existing(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> ckpt.TrainingState | None:
    """The state to resume from, if any; refuse to overwrite a run, or to resume a different recipe."""
    if resume and overwrite:
        raise UsageError("--resume continues the run in --out, --overwrite replaces it: pass one of them")
    check_run_folder(out)
    if not (out / ckpt.CONFIG).exists():
        return None
    try:
        record = ckpt.read_config(out)
    except UsageError as error:
        if overwrite:  # replace a diffkit run only, never somebody else's config.json
            raise UsageError(f"{error}; --overwrite replaces diffkit runs only: use another --out") from None
        raise
    if overwrite:
        return None
    theirs = TrainConfig.from_dict(record.get("train", {})).recipe() if "train" in record else {}
    ours = config.recipe()
    differing = [key for key in ours if theirs.get(key) != ours[key]]
    if differing:
        key = differing[0]
        raise UsageError(
            f"{str(out)!r} holds a run with a different config ({key}: {theirs.get(key)!r} there, "
            f"{ours[key]!r} here); choose another --out, or pass --overwrite to replace it"
        )
    if not resume:
        raise UsageError(
            f"{str(out)!r} holds a run (checkpoint of iteration {record.get('iteration')}); pass "
            "--resume to continue it or --overwrite to replace it"
        )
    scaling = record.get("score_scaling", "none")  # runs before the NCSN scaling have none
    if scaling != ckpt.score_scaling_for(config.kind):
        raise UsageError(
            f"{str(out)!r} holds a run with score_scaling {scaling!r}, but this diffkit trains --kind "
            f"{config.kind} with {ckpt.score_scaling_for(config.kind)!r}; pass --overwrite to replace it"
        )
    return ckpt.read_training_state(out)


def train(
    config: TrainConfig,
    out: Path | None = None,
    *,
    registry: Registry | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    dataset: Dataset | None = None,
) -> TrainResult:
    """Train `config` for `config.iters` steps, checkpointing into `out` (None: keep in memory).

    Args:
        config: the recipe and run length.
        out: checkpoint folder; one that holds a run needs `resume` (same recipe) or `overwrite`.
        registry: a registry (default: `build_registry()`).
        resume: continue from the checkpoint in `out` (a fresh start if it has none).
        overwrite: replace the run in `out`; it stays intact until the first new checkpoint.
        progress: called as `progress(iteration, loss)` after every step.
        dataset: the dataset `config.data` names, if already built (default: resolve it, a
            registered name first, else a `.npy` / `.npz` file).

    Raises:
        UsageError: bad names, options, combinations or checkpoint folders (before any step).
    """
    registry = registry or build_registry()
    device = torch.device(config.device)
    setup = _setup(config, registry, device, dataset)
    network = setup.model.network
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = _existing(out, config, resume, overwrite) if out is not None else None
    writer = None if out is None else _Writer(out, config, setup, registry, _grids(out) if overwrite else [])
    ema, losses, start = init_ema(network), [], 0
    if state is not None:
        check_unchanged(state.record.get("dataset", {}), setup.dataset, str(out))
        try:
            network.load_state_dict(state.raw, strict=True)
            ema = {k: v.to(device) for k, v in state.ema.items()}
            optimizer.load_state_dict(
                {"state": state.optimizer_state, "param_groups": optimizer.state_dict()["param_groups"]}
            )
        except (RuntimeError, ValueError, KeyError) as error:
            raise UsageError(f"cannot resume from {str(out)!r}: {str(error).splitlines()[0]}") from None
        losses, start = state.losses, int(state.record["iteration"])
    began = time.perf_counter()
    network.train()
    for i in range(start, config.iters):
        data_gen = torch.Generator().manual_seed(step_seed(config.seed, i, 0))
        noise_gen = torch.Generator(device).manual_seed(step_seed(config.seed, i, 1))
        x0, labels = setup.dataset.sample_batch(config.batch_size, generator=data_gen)
        cond = None
        if setup.null_label is not None:
            drop = torch.rand(config.batch_size, generator=data_gen) < config.cond_drop
            cond = torch.where(drop, setup.null_label, labels).to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(config.seed, i, 2))  # dropout draws from the global RNG
            loss = setup.loss(setup.model, x0.to(device), generator=noise_gen, cond=cond).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if config.clip > 0:
            nn.utils.clip_grad_norm_(network.parameters(), config.clip)
        optimizer.step()
        update_ema(ema, network, ema_decay(config.ema, i))
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(i + 1, losses[-1])
        if writer is not None and ((i + 1) % config.checkpoint_every == 0 or i + 1 == config.iters):
            writer.write(i + 1, ema, optimizer, losses)
    network.eval()
    return TrainResult(
        network,
        ema,
        losses,
        max(start, config.iters),
        time.perf_counter() - began,
        _record(config, setup, config.iters),
    )


def _grids(out: Path) -> list[str]:
    """Names of the sample grids in `out` (removed with the first checkpoint of an --overwrite run)."""
    return sorted(p.name for p in out.glob("samples_*.png")) if out.is_dir() else []


@dataclass
class _Writer:
    """Writes checkpoints of one `train` call, with the loss curve and (optionally) sample grids."""

    out: Path
    config: TrainConfig
    setup: _Setup
    registry: Registry
    stale: list[str]
    plotted: float | None = None  # time of the last loss curve

    def write(
        self,
        iteration: int,
        ema: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        losses: list[float],
    ) -> None:
        """Commit the checkpoint of `iteration`, then redraw loss.png (first, last, every 30 s) and grids.

        Raises:
            OutputError: a file could not be written (full disk, ...); names what `out` holds.
        """
        try:
            self._write(iteration, ema, optimizer, losses)
        except OSError as error:
            held = ckpt.committed(self.out)
            kept = "it holds no checkpoint yet"
            kept = kept if held is None else f"its checkpoint of iteration {held['iteration']} is complete"
            reason = error.strerror or error
            raise OutputError(
                f"cannot write to {str(self.out)!r} at iteration {iteration}: {reason}; {kept}"
            ) from None
        log_event(f"done {iteration}")

    def _write(
        self,
        iteration: int,
        ema: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        losses: list[float],
    ) -> None:
        config, setup = self.config, self.setup
        record = _record(config, setup, iteration)
        ckpt.save_checkpoint(self.out, record, setup.model.network, ema, optimizer, losses, self.stale)
        self.stale = []
        now = time.monotonic()
        if self.plotted is None or iteration == config.iters or now - self.plotted >= LOSS_PLOT_SECONDS:
            title = f"{config.loss} | {config.data} | {config.network}"
            save_loss_curve(self.out / "loss.png", losses, title=title)
            self.plotted = now
        if config.sample_every_checkpoint:
            with torch.random.fork_rng(devices=[]):
                shape, value_range = setup.dataset.data_shape, setup.dataset.value_range
                save_sample_grid(self.out, config, iteration, self.registry, shape, value_range)
