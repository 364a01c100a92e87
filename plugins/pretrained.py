"""Shipped pretrained models `digits` (8x8 digits, VP, U-Net), `digits-cond` (the same,
class-conditional: `--cond 0..9`), `moons` (2-D toy, VP, MLP), `moons-flow` (the same toy, `flow`
process, velocity MLP trained by flow matching) and `photos` (8x8 RGB patches of scikit-learn's
sample photos, VP, U-Net; for `diffkit colorize`).

All were trained by `diffkit train` (the commands are in the README) and live inside the package
(`diffkit/pretrained/<name>/`), read through `importlib.resources`. A model only means something
on the process it was trained on, so any other process is refused with a message naming it.

The plugin also answers `diffkit_resolve_model` for a `diffkit train` checkpoint folder given
by path (`--model runs/digits`), under the same rule.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from diffkit import NoiseProcess, Registrar, Registry, ScoreModel, UsageError, hookimpl


def load_pretrained(name: str, process: NoiseProcess, registry: Registry) -> ScoreModel:
    """The shipped model `name` (EMA weights, eval mode) on `process`, its training process."""
    from diffkit.pretrained import folder
    from diffkit.train import model_from_checkpoint, same_schedule

    with resources.as_file(folder(name)) as path:
        record = json.loads((path / "config.json").read_text())
        trained_name = str(record["process"]["name"])
        trained_options = dict(record["process"].get("options", {}))
        trained = registry.build("process", trained_name, trained_options)
        if not same_schedule(trained, process):  # the registry prefixes "model '<name>':"
            flags = "".join(f" --sde-opt {k}={v}" for k, v in trained_options.items())
            raise UsageError(
                f"trained on process {trained_name!r} ({trained}), not {process}; "
                f"sample it with --sde {trained_name}{flags}"
            )
        return model_from_checkpoint(
            str(path),
            registry,
            trained_name,
            process,
            process_options=trained_options,
            model_options={},
        )


def digits(process: NoiseProcess, *, registry: Registry) -> ScoreModel:
    """8x8 digits U-Net (v-prediction) trained on the `vp` process with `diffkit train`."""
    return load_pretrained("digits", process, registry)


def digits_cond(process: NoiseProcess, *, registry: Registry) -> ScoreModel:
    """Class-conditional 8x8 digits U-Net (`--cond 0..9`, null class 10) on the `vp` process."""
    return load_pretrained("digits-cond", process, registry)


def photos(process: NoiseProcess, *, registry: Registry) -> ScoreModel:
    """8x8 RGB photo-patch U-Net (v-prediction) trained on the `vp` process; for `diffkit colorize`."""
    return load_pretrained("photos", process, registry)


def moons(process: NoiseProcess, *, registry: Registry) -> ScoreModel:
    """2-D two-moons MLP (v-prediction) trained on the `vp` process with `diffkit train`."""
    return load_pretrained("moons", process, registry)


def moons_flow(process: NoiseProcess, *, registry: Registry) -> ScoreModel:
    """2-D two-moons MLP (velocity) trained on the `flow` process by `diffkit train --loss flow-matching`."""
    return load_pretrained("moons-flow", process, registry)


@hookimpl
def diffkit_resolve_model(
    registry: Registry,
    name: str,
    process_name: str,
    process: NoiseProcess,
    process_options: dict[str, Any],
    model_options: dict[str, Any],
) -> ScoreModel | None:
    """A `diffkit train` checkpoint folder named by path (registered model names come first)."""
    from diffkit.train import is_checkpoint_name, model_from_checkpoint

    if not is_checkpoint_name(name):
        return None
    return model_from_checkpoint(
        name, registry, process_name, process, process_options=process_options, model_options=model_options
    )


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the shipped models `digits` and `moons`."""
    registrar.add_model("digits", digits, summary="shipped 8x8 digits U-Net (VP, v-prediction)")
    registrar.add_model(
        "digits-cond", digits_cond, summary="shipped class-conditional 8x8 digits U-Net (--cond 0..9, VP)"
    )
    registrar.add_model("moons", moons, summary="shipped two-moons MLP (VP, v-prediction)")
    registrar.add_model(
        "moons-flow", moons_flow, summary="shipped two-moons MLP (flow, velocity; flow matching)"
    )
    registrar.add_model("photos", photos, summary="shipped 8x8 RGB photo-patch U-Net (VP, v-prediction)")
