"""Checkpoint reports: the loss-curve PNG and a `samples_<iter>.png` grid drawn from the saved model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffkit.plugin.registry import Registry
from diffkit.run.api import SampleConfig, sample
from diffkit.run.io import write_with
from diffkit.run.plot import save_plot
from diffkit.train.config import TrainConfig

SAMPLE_STEPS = 20


def save_loss_curve(path: Path, losses: list[float], *, title: str = "") -> None:
    """Write a PNG of the per-step loss and its 50-step moving average (log scale when all > 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, values.size + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(steps, values, lw=0.5, alpha=0.4, color="tab:blue", label="loss")
    window = min(50, values.size)
    if window > 1:
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, color="tab:red", label=f"mean of {window}")
    if values.size and np.all(values > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title, fontsize=9)
    try:
        write_with(path, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def sample_solver(registry: Registry) -> str:
    """`dpmpp-2m` when registered, else the fixed-step `ode:rk4`."""
    return "dpmpp-2m" if "dpmpp-2m" in registry.names("sampler") else "ode:rk4"


def save_sample_grid(
    folder: Path,
    config: TrainConfig,
    iteration: int,
    registry: Registry,
    data_shape: tuple[int, ...],
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Sample the checkpoint in `folder` (EMA weights, 20 steps) and write `samples_<iteration>.png`.

    Image grids show the data's `value_range` (default [-1, 1]) black..white, clipped.
    """
    solver = sample_solver(registry)
    run = sample(
        SampleConfig(
            process=config.process,
            process_options=dict(config.process_options),
            solver=solver,
            steps=SAMPLE_STEPS,
            model=str(folder),
            num_samples=64 if len(data_shape) > 1 else 2000,  # an 8x8 grid, or a readable scatter
            seed=config.seed,
            device=config.device,
        ),
        registry=registry,
    )
    path = folder / f"samples_{iteration}.png"
    title = (
        f"{config.data} | {config.network} | {config.process} | {solver} {SAMPLE_STEPS} | iter {iteration}"
    )
    save_plot(path, run.samples.detach().cpu().numpy(), title=title, value_range=value_range)
    return path
