"""The recipe of a training run: component names and options, optimiser settings, seed and length."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from diffkit.core.errors import UsageError

#: Fields that define what is trained; a resumed run must match them exactly (`iters` may grow).
RECIPE_FIELDS: tuple[str, ...] = (
    "data",
    "process",
    "loss",
    "network",
    "kind",
    "batch_size",
    "lr",
    "weight_decay",
    "ema",
    "clip",
    "cond_drop",
    "seed",
    "data_options",
    "process_options",
    "loss_options",
    "network_options",
)

#: The parameterization a loss trains when no kind is given (every other loss: v).
LOSS_KINDS: dict[str, str] = {"flow-matching": "velocity"}


def default_kind(loss: str) -> str:
    """The network kind trained by `loss` when `--kind` is not given: velocity for flow matching, else v."""
    return LOSS_KINDS.get(loss, "v")


@dataclass(frozen=True)
class TrainConfig:
    """Everything `diffkit train` resolves; options are KEY=VALUE mappings parsed by the registry.

    Attributes:
        data, process, loss, network: registry names (kinds dataset, process, loss, network).
        kind: parameterization of the network output (eps, x0, v or score). The default is v:
            under VP, `x0 = (x - sigma eps) / alpha` multiplies an eps network's error by
            1/alpha(1) ~ 150, and a network whose output is bounded cannot follow `eps ~ x` into
            the prior's tails, so ~0.3% of deterministic samples land far off the data; v keeps
            `x0 = alpha x - sigma v` well conditioned at every t (Salimans & Ho 2022, sec. 4).
            None (the default) picks `default_kind(loss)`: velocity for `flow-matching`, else v.
        iters: total number of optimiser steps (a resumed run continues up to it).
        batch_size: examples per step, drawn with replacement.
        lr, weight_decay: AdamW settings.
        ema: decay of the weight EMA (warmed up as min(ema, (1 + i) / (10 + i))).
        clip: max global gradient norm (0 disables clipping).
        cond_drop: probability of replacing a label with the null class (classifier-free guidance).
        seed: seed of the initial weights; batches and noise of step i derive from (seed, i).
        checkpoint_every: steps between checkpoints (the last step always writes one).
        sample_every_checkpoint: write a `samples_<iter>.png` grid with each checkpoint.
        device: torch device name.
    """

    data: str = "moons"
    process: str = "vp"
    loss: str = "simple"
    network: str = "mlp"
    kind: str | None = None
    iters: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema: float = 0.999
    clip: float = 1.0
    cond_drop: float = 0.1
    seed: int = 0
    checkpoint_every: int = 500
    sample_every_checkpoint: bool = True
    device: str = "cpu"
    data_options: Mapping[str, Any] = field(default_factory=dict)
    process_options: Mapping[str, Any] = field(default_factory=dict)
    loss_options: Mapping[str, Any] = field(default_factory=dict)
    network_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Resolve the default kind; validate sizes and rates (UsageError with the CLI flag's name)."""
        if self.kind is None:
            object.__setattr__(self, "kind", default_kind(self.loss))
        for flag, value in (
            ("--iters", self.iters),
            ("--batch-size", self.batch_size),
            ("--checkpoint-every", self.checkpoint_every),
        ):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.ema < 1.0:
            raise UsageError(f"--ema must lie in [0, 1), got {self.ema}")
        if not self.clip >= 0:
            raise UsageError(f"--clip must be >= 0 (0 disables clipping), got {self.clip}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise UsageError(f"--cond-drop must lie in [0, 1), got {self.cond_drop}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (option mappings become plain dicts of strings/numbers)."""
        return jsonable(asdict(self))

    def recipe(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint."""
        full = self.to_dict()
        return {key: full[key] for key in RECIPE_FIELDS}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict()` output (unknown keys are ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in record.items() if key in names})


def jsonable(value: Any) -> Any:
    """Turn mappings, sequences and scalars into JSON types (anything else becomes its str)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
