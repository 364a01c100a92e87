"""Input files for tests/test_fuzz_cli.py: a few good arrays, many broken ones, latents, checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import diffkit
from diffkit.train import TrainConfig, train


def write_inputs(folder: Path, registry: diffkit.Registry) -> None:
    """Every input file the cases read: a few good ones, many broken ones, checkpoints and latents."""
    rng = np.random.default_rng(0)
    save = lambda name, array: np.save(folder / name, array)  # noqa: E731
    save("ok2.npy", rng.standard_normal((5, 2)))
    save("wrong3.npy", rng.standard_normal((5, 3)))
    save("ok64.npy", rng.standard_normal((3, 64)))
    save("mask64.npy", (np.arange(64) % 2).astype(np.float64))
    save("gray.npy", rng.uniform(-1, 1, (2, 4, 4)))
    for name, bad in (("nan", np.nan), ("inf", np.inf)):
        for file, shape in (
            (f"{name}2.npy", (5, 2)),
            (f"{name}64.npy", (3, 64)),
            (f"{name}_gray.npy", (2, 4, 4)),
        ):
            array = rng.standard_normal(shape)
            array.flat[3] = bad
            save(file, array)
    mask = (np.arange(64) % 2).astype(np.float64)
    mask[5] = np.nan
    save("nan_mask64.npy", mask)
    save("strings.npy", np.array([["a", "b"], ["c", "d"]]))
    save("complex.npy", rng.standard_normal((5, 2)) * 1j)
    save("zero_rows.npy", np.zeros((0, 2)))
    save("scalar.npy", np.array(3.0))
    np.savez(folder / "objects.npz", samples=np.array([{"a": 1}, None], dtype=object))
    np.savez(folder / "no_samples.npz", x=np.zeros((3, 2)))
    (folder / "corrupt.npz").write_bytes(b"PK\x03\x04" + bytes(range(200)))
    (folder / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (folder / "empty.npy").write_bytes(b"")
    (folder / "text.txt").write_text("not an array\n")
    (folder / "a_folder.npy").mkdir()
    (folder / "png_dir.png").mkdir()  # --out png_dir.npz would put its plot on a folder
    images = rng.uniform(-1, 1, (4, 1, 8, 8))
    save("img_ok.npy", images)
    save("img_int.npy", np.zeros((4, 1, 8, 8), dtype=np.int64))
    save("img_one.npy", images[:1])
    for name, bad in (("img_nan.npy", np.nan), ("img_inf.npy", -np.inf)):
        broken = images.copy()
        broken[2, 0, 3, 3] = bad
        save(name, broken)
    _write_latents(folder, rng)
    _write_checkpoints(folder, registry)


def _write_latents(folder: Path, rng: np.random.Generator) -> None:
    """`diffkit encode` files: one good, the others broken in the array or in one config field."""
    good = {"model": "gmm:ring8", "sde": "vp", "sde_options": {}, "model_options": {}, "method": "ode"}
    good |= {"rtol": 1e-5, "atol": 1e-5}
    z = rng.standard_normal((4, 2))
    configs = {
        "lat_ok": good,
        "lat_list": [1, 2],
        "lat_empty_config": {},
        "lat_string_rtol": good | {"rtol": "1e-5"},
        "lat_unknown_method": good | {"method": "banana"},
        "lat_model_int": good | {"model": 3},
        "lat_negative_rtol": good | {"rtol": -1e-3},
        "lat_infinite_rtol": good | {"rtol": float("inf")},
        "lat_ddim_vp": good | {"method": "ddim"},
        "lat_unknown_model": good | {"model": "gmm:nope"},
        "lat_options_list": good | {"sde_options": ["beta_max", 3]},
        "lat_bool_atol": good | {"atol": True},
    }
    for name, config in configs.items():
        np.savez(folder / f"{name}.npz", latents=z, config=np.asarray(json.dumps(config)))
    text = np.asarray(json.dumps(good))
    np.savez(folder / "lat_nan.npz", latents=np.where(np.eye(4, 2) > 0, np.nan, z), config=text)
    np.savez(folder / "lat_complex.npz", latents=z * 1j, config=text)
    np.savez(folder / "lat_wrong_shape.npz", latents=rng.standard_normal((4, 3)), config=text)
    np.savez(folder / "lat_zero_rows.npz", latents=np.zeros((0, 2)), config=text)
    np.savez(folder / "lat_no_config.npz", latents=z)
    np.savez(folder / "lat_bad_json.npz", latents=z, config=np.asarray("{not json"))


def _write_checkpoints(folder: Path, registry: diffkit.Registry) -> None:
    """A tiny trained checkpoint and copies whose config.json is broken in one field each."""
    config = TrainConfig(iters=2, batch_size=8, checkpoint_every=2, sample_every_checkpoint=False)
    train(config, folder / "ck_ok", registry=registry)
    edits = {
        "ck_banana": lambda record: record | {"kind": "banana"},
        "ck_shape_neg": lambda record: record | {"data_shape": [-2]},
        "ck_shape_str": lambda record: record | {"data_shape": "x"},
        "ck_kind_null": lambda record: record | {"kind": None},
        "ck_seed_str": lambda record: record | {"seed": "abc"},
    }
    for name, edit in edits.items():
        shutil.copytree(folder / "ck_ok", folder / name)
        for path in (folder / name).rglob("config.json"):
            path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    shutil.copytree(folder / "ck_ok", folder / "ck_no_config")
    for path in (folder / "ck_no_config").rglob("config.json"):
        path.unlink()
    shutil.copytree(folder / "ck_ok", folder / "ck_bad_json")
    for path in (folder / "ck_bad_json").rglob("config.json"):
        path.write_text("{")
