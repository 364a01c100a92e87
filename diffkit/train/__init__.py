"""Training score networks: the loop (`train`), its recipe (`TrainConfig`) and checkpoint folders."""

from diffkit.train.checkpoint import (
    LoadedCheckpoint,
    is_checkpoint_name,
    load_checkpoint,
    model_from_checkpoint,
    same_schedule,
)
from diffkit.train.config import TrainConfig
from diffkit.train.loop import TrainResult, train

__all__ = [
    "LoadedCheckpoint",
    "TrainConfig",
    "TrainResult",
    "is_checkpoint_name",
    "load_checkpoint",
    "model_from_checkpoint",
    "same_schedule",
    "train",
]
