"""Training the shipped metric classifiers: plain AdamW cross-entropy on the training split.

The held-out split is `Dataset.split(HELD_OUT, seed=SPLIT_SEED)`, the same split the image metrics
use for their real-data floor, so the classifier never sees the held-out images. Re-create the
shipped weights with

    python -m diffkit.classifier.train digits
    python -m diffkit.classifier.train mnist
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffkit.classifier.net import ClassifierConfig, DigitClassifier, batched
from diffkit.run.data import Dataset

HELD_OUT = 0.2
SPLIT_SEED = 0
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"config": ClassifierConfig(side=8), "epochs": 40, "lr": 3e-3, "batch_size": 64, "seed": 0},
    "mnist": {
        "config": ClassifierConfig(side=28, channels=(16, 32, 64), pools=3),
        "epochs": 15,
        "lr": 2e-3,
        "batch_size": 64,
        "seed": 0,
    },
}


def shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random translations of `x` `(B, C, H, W)` by -1, 0 or +1 pixel per axis (background -1 fills in)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def train_classifier(
    data: Tensor,
    labels: Tensor,
    config: ClassifierConfig,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> DigitClassifier:
    """Train a `DigitClassifier` on images `(N, 1, side, side)` and int64 labels `(N,)` with AdamW.

    Cross-entropy, cosine learning-rate decay, random 1-pixel shifts as augmentation; all
    randomness (initial weights, batches, shifts) comes from `seed`.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = DigitClassifier(config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-data.shape[0] // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    network.train()
    for _ in range(epochs):
        order = torch.randperm(data.shape[0], generator=generator)
        for start in range(0, data.shape[0], batch_size):
            index = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(network(shift(data[index], generator)), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return network.eval()


def accuracy(network: DigitClassifier, data: Tensor, labels: Tensor) -> float:
    """Share of `data` `(N, 1, side, side)` whose arg-max logit equals `labels` `(N,)`."""
    predicted = batched(network, data).argmax(dim=1)
    return float((predicted == labels).to(torch.float64).mean())


def train_shipped(name: str, dataset: Dataset, folder: Path) -> dict[str, Any]:
    """Train the recipe `RECIPES[name]` on `dataset`'s training split; write `<name>.safetensors/.json`."""
    from safetensors.torch import save_file

    recipe = RECIPES[name]
    train, held = dataset.split(HELD_OUT, seed=SPLIT_SEED)
    assert train.labels is not None and held.labels is not None
    start = time.perf_counter()
    network = train_classifier(
        train.data,
        train.labels,
        recipe["config"],
        epochs=recipe["epochs"],
        lr=recipe["lr"],
        batch_size=recipe["batch_size"],
        seed=recipe["seed"],
    )
    record = {
        "format": "diffkit-classifier",
        "dataset": name,
        "config": recipe["config"].to_dict(),
        "train": {k: v for k, v in recipe.items() if k != "config"}
        | {"held_out": HELD_OUT, "split_seed": SPLIT_SEED, "seconds": round(time.perf_counter() - start, 1)},
        "command": f"python -m diffkit.classifier.train {name}",
        "train_accuracy": accuracy(network, train.data, train.labels),
        "held_out_accuracy": accuracy(network, held.data, held.labels),
        "torch": torch.__version__,
    }
    tensors = {key: value.detach().contiguous() for key, value in network.state_dict().items()}
    save_file(tensors, str(folder / f"{name}.safetensors"), metadata={"format": "diffkit-classifier"})
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def main(argv: list[str]) -> None:
    """`python -m diffkit.classifier.train NAME...`: retrain the shipped classifiers into `weights/`."""
    from diffkit.plugin.loading import build_registry

    registry = build_registry()
    folder = Path(__file__).resolve().parent / "weights"
    for name in argv or list(RECIPES):
        record = train_shipped(name, registry.build("dataset", name, {}), folder)
        print(json.dumps({k: record[k] for k in ("dataset", "train_accuracy", "held_out_accuracy", "train")}))


if __name__ == "__main__":
    main(sys.argv[1:])
