"""Pretrained models shipped inside the package, and the export that makes them from a training run.

Each model is a folder `diffkit/pretrained/<name>/` holding the `config.json` that
`diffkit train` wrote and a `model.safetensors` with the EMA weights only (`ema/<param>`), so it
is an ordinary checkpoint folder (`diffkit.train.load_checkpoint` reads it) at half the size.
The plugin `diffkit.plugins.pretrained` registers them as models; the README lists the exact
training commands.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from diffkit.core.errors import UsageError

#: The shipped models, each a subfolder of this package.
NAMES: tuple[str, ...] = ("digits", "digits-cond", "moons", "moons-flow", "photos")


def export(run: str | Path, dest: str | Path) -> Path:
    """Copy the EMA weights and `config.json` of checkpoint folder `run` into folder `dest`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    run, dest = Path(run), Path(dest)
    with safe_open(str(run / "model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata() or {}
        ema = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith("ema/")}
    if not ema:
        raise UsageError(f"{str(run)!r} holds no EMA weights (ema/*) to export")
    dest.mkdir(parents=True, exist_ok=True)
    save_file(ema, str(dest / "model.safetensors"), metadata=metadata)
    (dest / "model.safetensors").chmod(0o644)  # a package file: readable by everyone
    shutil.copyfile(run / "config.json", dest / "config.json")
    return dest


def folder(name: str) -> resources.abc.Traversable:
    """The package resource folder of shipped model `name`."""
    if name not in NAMES:
        raise UsageError(f"no shipped model {name!r}; shipped: {', '.join(NAMES)}")
    return resources.files(__name__) / name


__all__ = ["NAMES", "export", "folder"]
