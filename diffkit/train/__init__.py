"""Training score networks: the loop (`train`), its recipe (`TrainConfig`) and checkpoint folders."""

from diffkit.train.checkpoint import LoadedCheckpoint, load_checkpoint, model_from_checkpoint
from diffkit.train.config import TrainConfig
from diffkit.train.loop import TrainResult, train

__all__ = [
    "LoadedCheckpoint",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "model_from_checkpoint",
    "train",
]
