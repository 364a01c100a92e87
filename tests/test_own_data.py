"""`diffkit train --data PATH.npy|.npz`: users' own arrays, checked up front, hashed for --resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import UnknownComponentError, UsageError
from diffkit.run.datafile import file_sha256, load_data_file, resolve_dataset
from diffkit.train import TrainConfig, train


def _save(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def _images(n: int = 32, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, *shape)).astype(np.float32)


def test_npy_points_gray_and_colour_images(tmp_path: Path) -> None:
    points = np.random.default_rng(1).normal(size=(50, 3))
    data = load_data_file(_save(tmp_path / "p.npy", points))
    assert data.data_shape == (3,) and data.value_range is None and data.labels is None
    torch.testing.assert_close(data.data, torch.from_numpy(points).float())
    gray = load_data_file(_save(tmp_path / "g.npy", _images(10, (8, 8))))
    assert gray.data_shape == (1, 8, 8) and gray.is_image and gray.value_range == (-1.0, 1.0)
    colour = load_data_file(_save(tmp_path / "c.npy", _images(10, (3, 4, 4)).astype(np.float64)))
    assert colour.data.dtype == torch.float32 and colour.data_shape == (3, 4, 4)
    path = tmp_path / "c.npy"
    assert colour.source == {"path": str(path.resolve()), "sha256": file_sha256(path)}


def test_npz_keys_and_labels(tmp_path: Path) -> None:
    x, y = _images(12), np.arange(12) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y)
    data = load_data_file(str(tmp_path / "a.npz"))
    assert data.num_classes == 3 and data.labels.tolist() == y.tolist()
    np.savez(tmp_path / "b.npz", samples=x, data=x * 0)  # `samples` comes first
    assert torch.equal(load_data_file(str(tmp_path / "b.npz")).data, torch.from_numpy(x))
    np.savez(tmp_path / "c.npz", other=x)
    with pytest.raises(UsageError, match=r"has none of the arrays samples, data, x \(it has: other\)"):
        load_data_file(str(tmp_path / "c.npz"))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 8, 8, 3), np.float32), r"looks channels-last \(N, H, W, C\)"),
        (np.zeros((4, 3), np.uint8), "data must be real floats, got dtype uint8"),
        (np.zeros((4, 3), np.complex64), "data must be real floats, got dtype complex64"),
        (np.zeros(5, np.float32), r"got shape \(5,\)"),
        (np.zeros((0, 2), np.float32), r"the data is empty \(shape \(0, 2\)\)"),
        (np.array([[0.0, np.nan]]), "contains NaN or Inf"),
        (np.full((2, 1, 2, 2), 255.0), r"got values in \[255, 255\]; for 0..255 pixels use x / 127.5 - 1"),
        (np.full((2, 2, 2), -1.5), r"images must lie in \[-1, 1\], got values in \[-1.5, -1.5\]"),
    ],
)
def test_bad_arrays_are_refused_with_one_line(tmp_path: Path, array: np.ndarray, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        load_data_file(_save(tmp_path / "bad.npy", array))
    assert "\n" not in str(caught.value)


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    for labels, message in (
        (np.full(4, 0.5), "labels must be integers 0..K-1, got dtype float64"),
        (np.arange(3), r"labels must have shape \(4,\)"),
        (np.array([0, 1, -1, 0]), "labels must be integers 0..K-1, got -1"),
    ):
        np.savez(tmp_path / "l.npz", data=_images(4), labels=labels)
        with pytest.raises(UsageError, match=message):
            load_data_file(str(tmp_path / "l.npz"))


def test_registered_name_wins_and_unknown_names_stay_unknown(
    registry: diffkit.Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "moons.npy", np.zeros((3, 2)))
    assert resolve_dataset(registry, "moons", {"n": "7"}).data.shape == (7, 2)
    assert resolve_dataset(registry, "moons.npy", {}).data.shape == (3, 2)
    with pytest.raises(UsageError, match="--data-opt does not apply to data file 'moons.npy'"):
        resolve_dataset(registry, "moons.npy", {"n": "7"})
    with pytest.raises(UnknownComponentError, match="unknown dataset 'mons'"):
        resolve_dataset(registry, "mons", {})
    (tmp_path / "pts.csv").write_text("1,2\n")
    with pytest.raises(UsageError, match="data file 'pts.csv' must end in .npy or .npz"):
        resolve_dataset(registry, "pts.csv", {})
    with pytest.raises(UsageError, match="data file not found: 'gone.npz'"):
        resolve_dataset(registry, "gone.npz", {})


def test_class_conditional_training_on_npz_records_path_and_hash(registry, tmp_path: Path) -> None:
    path = tmp_path / "own.npz"
    np.savez(path, data=_images(16, (1, 4, 4)), labels=np.arange(16) % 2)
    config = TrainConfig(
        data=str(path),
        network="unet",
        network_options={"num_classes": "2", "channels": "8"},
        iters=2,
        batch_size=4,
        checkpoint_every=2,
        sample_every_checkpoint=False,
    )
    train(config, tmp_path / "run", registry=registry)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["dataset"] == {
        "name": str(path),
        "options": {},
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
    }
    assert record["num_classes"] == 2 and record["data_shape"] == [1, 4, 4]
    assert record["value_range"] == [-1.0, 1.0]


def test_cli_trains_on_a_file_and_resume_refuses_a_changed_file(tmp_path: Path) -> None:
    runner = CliRunner()
    data, out = tmp_path / "pts.npy", tmp_path / "run"
    np.save(data, np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    args = ["train", "--data", str(data), "--iters", "2", "--checkpoint-every", "1", "--batch-size", "8"]
    args += ["--net-opt", "hidden=8", "--no-samples", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert f"data {data}: 64 points of shape (2,), values in [" in result.stderr
    resumed = runner.invoke(app, [*args[:4], "3", *args[5:], "--resume"])
    assert resumed.exit_code == 0, resumed.stderr
    np.save(data, np.zeros((64, 2), np.float32))
    weights = (out / "model.safetensors").read_bytes()
    refused = runner.invoke(app, [*args[:4], "4", *args[5:], "--resume"])
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: cannot resume from {str(out)!r}: data file {str(data)!r} changed since the checkpoint "
        f"(sha256 {json.loads((out / 'config.json').read_text())['dataset']['sha256'][:12]} there, "
        f"{file_sha256(data)[:12]} now); train into another --out"
    ]
    assert (out / "model.safetensors").read_bytes() == weights  # nothing written


def test_cli_refuses_out_of_range_images_before_any_work(tmp_path: Path) -> None:
    data = _save(tmp_path / "u.npy", np.linspace(-300.0, 300.0, 192).reshape(4, 3, 4, 4))
    result = CliRunner().invoke(app, ["train", "--data", data, "--net", "unet", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: data file {data!r}: images must lie in [-1, 1], got values in [-300, 300]; "
        "rescale, e.g. 2 * (x + 300) / 600 - 1"
    ]
    assert not (tmp_path / "r").exists()
