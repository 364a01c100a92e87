"""Every command on every kind of model: each cell works (sane output) or is refused up front.

Model kinds: oracles (`gmm:d64` as an 8x8 image, `gmm:rgb`, the class-conditional
`gmm:ring8-cond`), the shipped `digits`, `digits-cond` and `photos` (RGB), `diffkit train`
checkpoints made here in seconds (a tiny U-Net, plain and class-conditional, 40 steps) and a
tiny local diffusers UNet2DModel with a constant output layer (a random UNet's flow is too
chaotic to invert).
Commands: sample, likelihood, encode + decode, inpaint, colorize, evaluate, and guidance
(`sample --cond 1 --guidance cfg|classifier`). A refusal is one `error:` line, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit.cli.main import app
from diffkit.train import TrainConfig, train

runner = CliRunner()
COMMANDS = ("sample", "likelihood", "encode-decode", "inpaint", "colorize", "evaluate", "cfg", "classifier")
IMAGE_ROWS = ("oracle", "shipped", "shipped-cond", "checkpoint", "checkpoint-cond", "diffusers")
CONDITIONAL = ("oracle-cond", "shipped-cond", "checkpoint-cond")
#: relative round-trip error of encode + decode at rtol = atol = 1e-4 unless TOLERANCES says
#: otherwise (barely trained networks have badly conditioned flows; an accurate round trip is in
#: tests/test_encoding.py). The constant-output UNet keeps only 0.0066 x of the data in its
#: latents (alpha(1) of ddpm), which an absolute tolerance of 1e-4 would swamp.
ROUND_TRIP = 0.01
TOLERANCES = {"diffusers": ("1e-4", "1e-8"), "shipped-rgb": ("1e-5", "1e-5")}  # rtol, atol
COLORIZE = (
    "error: model_wrapper 'colorize': colorization needs 3-channel images (3, H, W), "
    "but the model's data shape is {shape}"
)
EVALUATE = "error: samples have shape {shape}; dataset 'digits' needs (N, 1, 8, 8) with N >= 2"
UNCONDITIONAL = "error: --cond needs a class-conditional model, but model '{name}' is unconditional"
NO_CLASSIFIER = (
    "error: model_wrapper 'classifier': guidance 'classifier' needs a time-dependent classifier "
    "p_t(y | x), and the model has none (the oracles have one); use --guidance cfg"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Row name -> its --model/--sde arguments (checkpoints and the diffusers folder made here)."""
    root = tmp_path_factory.mktemp("matrix")
    made = {}
    for row, extra in (("checkpoint", {}), ("checkpoint-cond", {"num_classes": "10"})):
        config = TrainConfig(
            data="digits",
            network="unet",
            iters=40,
            batch_size=8,
            lr=2e-3,
            checkpoint_every=40,
            sample_every_checkpoint=False,
            network_options={"channels": "8", "attention": "false"} | extra,
        )
        train(config, root / row)
        made[row] = root / row
    pytest.importorskip("diffusers")
    from _helpers import tiny_diffusers_unet

    unet = tiny_diffusers_unet()
    with torch.no_grad():  # a constant output: a random network's probability flow is too chaotic to invert
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(0.5)
    unet.save_pretrained(root / "unet")
    return {
        "oracle": ["--model", "gmm:d64", "--model-opt", "image=true", "--sde", "vp"],
        "oracle-rgb": ["--model", "gmm:rgb", "--sde", "vp"],
        "oracle-cond": ["--model", "gmm:ring8-cond", "--sde", "vp"],
        "shipped": ["--model", "digits", "--sde", "vp"],
        "shipped-cond": ["--model", "digits-cond", "--sde", "vp"],
        "shipped-rgb": ["--model", "photos", "--sde", "vp"],
        "checkpoint": ["--model", str(made["checkpoint"]), "--sde", "vp"],
        "checkpoint-cond": ["--model", str(made["checkpoint-cond"]), "--sde", "vp"],
        "diffusers": ["--model", f"diffusers:{root / 'unet'}", "--sde", "ddpm"],
    }


def _data(row: str, registry) -> np.ndarray:
    """Two points of the row's data: exact oracle samples, else real digits (photo patches for RGB)."""
    generator = torch.Generator().manual_seed(0)
    oracles = {
        "oracle": ("gmm:d64", {"image": True}),
        "oracle-rgb": ("gmm:rgb", {}),
        "oracle-cond": ("gmm:ring8-cond", {}),
    }
    if row in oracles:
        name, options = oracles[row]
        model = registry.build("model", name, options, registry.build("process", "vp", {}))
        return model.sample_data(2, generator=generator, dtype=torch.float64).numpy()
    dataset = "photos" if row == "shipped-rgb" else "digits"
    return registry.build("dataset", dataset, {}).data[:2].to(torch.float64).numpy()


def _invoke(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _refused(args: list[object], expected: str, out: Path | None = None) -> None:
    code, _, stderr = _invoke(*args)
    assert code == 2 and stderr.strip().splitlines() == [expected], stderr
    assert out is None or not out.exists()


def _name(args: list[str]) -> str:
    return args[args.index("--model") + 1]


def _shape(data: np.ndarray) -> str:
    return str(tuple(data.shape[1:]))


def _sample(model: list[str], out: Path, *extra: str) -> np.ndarray:
    args = ["sample", *model, "--solver", "em", "--steps", "3", "--num-samples", "4", "--no-plot"]
    code, _, stderr = _invoke(*args, *extra, "--json", "--out", out)
    assert code == 0, stderr
    with np.load(out) as archive:
        samples = archive["samples"]
    assert samples.shape[0] == 4 and np.isfinite(samples).all()
    return samples


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("row", ("oracle", "oracle-rgb", "oracle-cond", "shipped-rgb", *IMAGE_ROWS[1:]))
def test_cell(row: str, command: str, models, registry, tmp_path: Path) -> None:
    model = models[row]
    data = _data(row, registry)
    np.save(tmp_path / "x.npy", data)
    out = tmp_path / "out.npz"
    if command == "sample":
        assert _sample(model, out).shape[1:] == data.shape[1:]
    elif command in ("cfg", "classifier"):
        flags = ("--cond", "1", "--guidance", command, "--guidance-scale", "2")
        works = row in CONDITIONAL and (command == "cfg" or row == "oracle-cond")
        if works:
            assert _sample(model, out, *flags).shape[1:] == data.shape[1:]
        else:
            args = ["sample", *model, "--num-samples", "4", *flags, "--out", out]
            expected = UNCONDITIONAL.format(name=_name(model)) if row not in CONDITIONAL else NO_CLASSIFIER
            _refused(args, expected, out)
    elif command == "likelihood":
        args = ["likelihood", *model, "--data", tmp_path / "x.npy", "--divergence", "hutchinson"]
        code, stdout, stderr = _invoke(*args, "--rtol", "1e-2", "--atol", "1e-2", "--json")
        assert code == 0, stderr
        report = json.loads(stdout)
        assert report["num_samples"] == 2 and report["nfe"] > 0 and np.isfinite(report["bits_per_dim"])
    elif command == "encode-decode":
        rtol, atol = TOLERANCES.get(row, ("1e-4", "1e-4"))
        tolerances = ("--rtol", rtol, "--atol", atol)
        code, _, stderr = _invoke("encode", *model, "--data", tmp_path / "x.npy", *tolerances, "--out", out)
        assert code == 0, stderr
        code, _, stderr = _invoke("decode", "--latents", out, "--out", tmp_path / "back.npz")
        assert code == 0, stderr
        with np.load(out) as archive:
            latents = archive["latents"]
        with np.load(tmp_path / "back.npz") as archive:
            back = archive["samples"]
        assert latents.shape == data.shape and np.isfinite(latents).all()
        assert np.linalg.norm(latents - data) > 0.5 * np.linalg.norm(data)  # latents are not the data
        error = np.linalg.norm(back - data) / np.linalg.norm(data)
        assert error < ROUND_TRIP, error
    elif command == "inpaint":
        mask = (np.arange(data[0].size).reshape(data.shape[1:]) % 2).astype(np.float64)
        np.save(tmp_path / "mask.npy", mask)
        args = [
            "inpaint",
            *model,
            "--data",
            tmp_path / "x.npy",
            "--mask",
            tmp_path / "mask.npy",
            "--steps",
            "3",
        ]
        code, _, stderr = _invoke(*args, "--out", out)
        assert code == 0, stderr
        with np.load(out) as archive:
            filled = archive["samples"]
        known = np.broadcast_to(mask != 0, data.shape)
        assert filled.shape == data.shape and np.isfinite(filled).all()
        assert np.array_equal(filled[known], data[known].astype(filled.dtype))
        assert not np.array_equal(filled[~known], data[~known].astype(filled.dtype))
    elif command == "colorize":
        gray = data.mean(axis=1) if data.ndim == 4 else data
        np.save(tmp_path / "gray.npy", gray)
        args = ["colorize", *model, "--data", tmp_path / "gray.npy", "--steps", "3", "--out", out]
        if row not in ("oracle-rgb", "shipped-rgb"):
            _refused(args, COLORIZE.format(shape=_shape(data)), out)
            return
        code, _, stderr = _invoke(*args)
        assert code == 0, stderr
        with np.load(out) as archive:
            coloured = archive["samples"]
        assert coloured.shape == data.shape and np.isfinite(coloured).all()
        np.testing.assert_allclose(coloured.mean(axis=1), gray, atol=1e-5)
    elif command == "evaluate":
        _sample(model, out)
        args = ["evaluate", "--samples", out, "--json"]
        if row not in IMAGE_ROWS:
            _refused(args, EVALUATE.format(shape=(4, *data.shape[1:])))
            return
        code, stdout, stderr = _invoke(*args)
        assert code == 0, stderr
        scores = json.loads(stdout)["samples"]
        assert scores["n"] == 4 and np.isfinite(scores["fid"]) and abs(sum(scores["histogram"]) - 1) < 1e-9
