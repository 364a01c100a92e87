"""Hostile input to every command: each bad command line is one `error:` line, exit 2, no file touched.

The cases run in-process through `diffkit.cli.main.main` (the console-script entry point, so
typer's own parse errors go through the same path as diffkit's), with one registry shared by
all of them. Before and after each case the test folder's files (names, sizes, mtimes) are
compared, so a bad input may neither create nor change anything, not even a folder.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import shlex
from collections import Counter
from pathlib import Path

import pytest
from _fuzz_inputs import write_inputs

import diffkit
from diffkit.cli.main import main

COMMANDS = (
    "sample",
    "list",
    "bench",
    "train",
    "likelihood",
    "encode",
    "decode",
    "evaluate",
    "inpaint",
    "colorize",
)
#: Files every --x-init / --data / --samples / --mask case is tried with; each is bad for any model.
BAD_ARRAYS = (
    "missing.npy",
    "corrupt.npz",
    "corrupt.npy",
    "empty.npy",
    "strings.npy",
    "complex.npy",
    "zero_rows.npy",
    "scalar.npy",
    "objects.npz",
    "no_samples.npz",
    "a_folder.npy",
    "text.txt",
)
NONFINITE = ("nan2.npy", "inf2.npy")


def _ints(flag: str, values: str) -> list[str]:
    return [f"{flag} {value}" for value in values.split()]


def _arrays(prefix: str, flag: str, files: tuple[str, ...] = BAD_ARRAYS, suffix: str = "") -> list[str]:
    return [f"{prefix} {flag} {{inp}}/{name} {suffix}".strip() for name in files]


SAMPLE = [
    *_ints("--steps", "0 -1 abc 2.5 1e11 100000000000000 ''"),
    *_ints("--num-samples", "0 -5 abc 2.5 1e13 10000000000000"),
    *_ints("--batch-size", "0 -1 x 1.5"),
    *_ints("--seed", "-1 1e23 100000000000000000000000 9223372036854775808 abc"),
    *_ints("--cond", "abc 0 1.5"),
    "--model gmm:ring8-cond --cond 8",
    "--model gmm:ring8-cond --cond -1",
    "--model gmm:ring8-cond --cond 1 --guidance-scale nan",
    "--model gmm:ring8-cond --cond 1 --guidance-scale inf",
    "--model gmm:ring8-cond --cond 1 --guidance-scale -inf",
    "--model gmm:ring8-cond --cond 1 --guidance banana",
    "--guidance-scale 2",
    "--guidance-scale abc",
    "--guidance cfg",
    *_ints("--device", "cuda cuda:0 cuda:7 banana mps meta '' cpu:x"),
    *_ints("--dtype", "float16 int '' bfloat16"),
    *_ints("--sde", "banana '' vp:x"),
    *_ints("--solver", "banana ode:nope '' em:"),
    *_ints("--model", "banana gmm:nope {inp}/no_such_folder {inp}/ck_banana {inp}/ck_shape_neg"),
    *_ints("--model", "{inp}/ck_shape_str {inp}/ck_no_config {inp}/ck_bad_json {inp}/ck_kind_null"),
    "--model {inp}/ck_seed_str",
    "--model {inp}/ck_ok --sde ve",
    "--model {inp}/ck_ok --model-opt weights=banana",
    *_ints("--grid", "banana ''"),
    "--solver em --grid karras --grid-opt rho=nan",
    "--solver em --grid karras --grid-opt rho=inf",
    "--solver em --grid-opt foo=1",
    *_ints("--solver-opt", "rtol=nan rtol=inf rtol=-1 foo=1 noequals =3"),
    *_ints("--sde-opt", "beta_max=inf beta_max=nan beta_max=-inf beta_max=-1 beta_min=0 foo=1 beta_max=abc"),
    "--sde ve --sde-opt sigma_max=inf",
    "--sde ve --sde-opt sigma_min=nan",
    *_ints("--model-opt", "foo=1 bar"),
    "--solver ode --steps 3",
    "--solver ode --steps 100",
    "--grid karras",
    "--solver ode:dopri8 --grid uniform --grid-opt foo=1",
    "--solver ode --grid karras --grid-opt rho=3",
    "--x-init {inp}/ok2.npy --num-samples 7",
    "--x-init {inp}/wrong3.npy",
    *_arrays("", "--x-init", BAD_ARRAYS + NONFINITE),
    *_ints("--out", "/proc/x.npz x.txt {inp}/a_folder.npy {inp}/ok2.npy/x.npz /proc/sub/x.npz"),
    "--out {inp}/png_dir.npz",
    "--stpes 10",
    "--bogus",
    "extra",
    "--steps",
    "--num-samples",
    "--plot=3",
]

LIST = [
    "bogus",
    "--markdown",
    "model --markdown",
    "--bogus",
    "model extra",
    "--json x",
    "samplerz",
    "--json=3",
]

BENCH = [
    *_ints("--nfe", "0 -1 abc 1e12 1000000000000 5,5 '' , 2.5 99999999999999999999999"),
    *_ints("--num-samples", "1 0 -1 abc 100000000000000"),
    *_ints("--seeds", "-1 abc 99999999999999999999 '' 1,1"),
    *_ints("--threads", "0 -2 x"),
    *_ints("--metric", "banana ''"),
    *_ints("--solvers", "'' , banana ode,banana"),
    *_ints("--device", "cuda banana"),
    *_ints("--dtype", "float16 ''"),
    *_ints("--out", "/proc/x {inp}/ok2.npy /proc/a/b"),
    *_ints("--peers", "banana ''"),
    *_ints("--model", "banana ''"),
    *_ints("--sde", "banana"),
    *_ints("--solver-opt", "noeq ode.rtol=1e-3 rtol=1e-3"),
    *_ints("--sde-opt", "beta_max=inf beta_max=nan foo=1"),
    *_ints("--grid", "banana"),
    "--bogus",
]

TRAIN = [
    *_ints("--iters", "0 -1 abc 1e9 2.5"),
    *_ints("--batch-size", "0 -3 100000000000000"),
    *_ints("--lr", "inf nan 0 -1 abc -inf"),
    *_ints("--ema", "1 1.5 -0.1 nan inf"),
    *_ints("--clip", "-1 inf nan"),
    *_ints("--seed", "-1 9223372036854775808 1e23"),
    *_ints("--checkpoint-every", "0 -1"),
    *_ints("--data", "banana {inp}/strings.npy {inp}/corrupt.npz {inp}/nan2.npy"),
    *_ints("--sde", "banana"),
    *_ints("--loss", "banana"),
    *_ints("--net", "banana"),
    *_ints("--kind", "banana"),
    *_ints("--device", "cuda banana"),
    *_ints("--net-opt", "foo=1 noeq"),
    *_ints("--loss-opt", "foo=1"),
    *_ints("--sde-opt", "beta_max=inf beta_max=nan"),
    *_ints("--data-opt", "foo=1"),
    *_ints("--out", "{inp}/ok2.npy /proc/run"),
    "--bogus",
]

LIKELIHOOD = [
    "--rtol inf --atol inf",
    *_ints("--rtol", "-1 nan inf 0 abc"),
    *_ints("--atol", "0 -1 nan inf"),
    *_ints("--num-samples", "0 -1 10000000000000"),
    *_ints("--probes", "0 -2"),
    *_ints("--probe", "banana"),
    *_ints("--method", "banana ''"),
    *_ints("--divergence", "banana"),
    "--divergence exact --probes 2",
    "--divergence exact --probe gaussian",
    "--variance beta_tilde",
    "--method vlb --sde ddpm --rtol 1e-3",
    "--method vlb --sde ddpm --divergence exact",
    *_ints("--batch-size", "0 -1"),
    *_ints("--seed", "-1 99999999999999999999"),
    *_ints("--levels", "1 0"),
    "--vlb-steps 5",
    "--method vlb --sde ddpm --vlb-steps 1000000000000",
    "--method vlb --vlb-steps 1000000000000",
    "--data {inp}/ok2.npy --num-samples 5",
    "--data {inp}/ok2.npy --dequantize",
    "--data {inp}/wrong3.npy",
    *_arrays("", "--data", BAD_ARRAYS + NONFINITE),
    *_ints("--sde", "banana"),
    *_ints("--model", "banana {inp}/ck_banana"),
    *_ints("--sde-opt", "beta_max=inf"),
]

ENCODE = [
    *_ints("--rtol", "-1 nan inf 0"),
    *_ints("--atol", "-1 nan"),
    "--method ddim --sde vp",
    "--method ddim --sde ddpm --rtol 1e-3",
    "--method ddim --sde ddpm --atol 1e-3",
    *_ints("--method", "banana ''"),
    *_ints("--out", "/proc/x.npz x.txt {inp}/a_folder.npy"),
    *_ints("--sde-opt", "beta_max=inf beta_min=nan"),
    *_ints("--model", "banana {inp}/ck_shape_neg"),
    *_ints("--sde", "banana"),
]
ENCODE = [f"--data {{inp}}/ok2.npy {case}" for case in ENCODE] + [
    *_arrays("", "--data", BAD_ARRAYS + NONFINITE),
    "--data {inp}/wrong3.npy",
    "",
    "--data",
]

LATENTS = (
    "lat_list.npz",
    "lat_empty_config.npz",
    "lat_string_rtol.npz",
    "lat_unknown_method.npz",
    "lat_nan.npz",
    "lat_complex.npz",
    "lat_no_config.npz",
    "lat_bad_json.npz",
    "lat_model_int.npz",
    "lat_negative_rtol.npz",
    "lat_infinite_rtol.npz",
    "lat_ddim_vp.npz",
    "lat_wrong_shape.npz",
    "lat_unknown_model.npz",
    "lat_options_list.npz",
    "lat_zero_rows.npz",
    "lat_bool_atol.npz",
)
DECODE = [
    *_arrays("", "--latents", LATENTS),
    *_arrays("", "--latents", ("missing.npz", "ok2.npy", "corrupt.npz", "empty.npy", "a_folder.npy")),
    *_ints("--latents {inp}/lat_ok.npz --out", "/proc/x.npz x.txt {inp}/a_folder.npy"),
    "",
    "--latents",
]

EVALUATE = [
    *_ints("--data", "banana moons ''"),
    *_arrays(
        "", "--samples", BAD_ARRAYS + ("img_nan.npy", "img_int.npy", "img_one.npy", "ok2.npy", "img_inf.npy")
    ),
    *_ints("--samples {inp}/img_ok.npy --seed", "-1 abc 99999999999999999999"),
    "--bogus",
]

INPAINT_OK = "--data {inp}/ok64.npy --mask {inp}/mask64.npy"
INPAINT = [
    *_arrays("--mask {inp}/mask64.npy", "--data", BAD_ARRAYS + ("nan64.npy", "inf64.npy")),
    *_arrays("--data {inp}/ok64.npy", "--mask", BAD_ARRAYS + ("nan_mask64.npy", "ok2.npy")),
    *(
        f"{INPAINT_OK} {case}"
        for case in (
            "--steps 0",
            "--solver ode --steps 3",
            "--seed -1",
            "--device cuda",
            "--out /proc/x.npz",
            "--out x.txt",
            "--method banana",
            "--batch-size 0",
            "--model gmm:ring8",
            "--dtype float16",
            "--solver-opt foo=1",
            "--model-opt foo=1",
            "--sde banana",
        )
    ),
    "--data {inp}/ok64.npy",
    "--mask {inp}/mask64.npy",
]

COLORIZE = [
    *_arrays("", "--data", BAD_ARRAYS + ("nan_gray.npy", "ok2.npy")),
    *(
        f"--data {{inp}}/gray.npy {case}"
        for case in (
            "--steps 0",
            "--solver ode --steps 3",
            "--seed 99999999999999999999",
            "--device banana",
            "--out /proc/x.npz",
            "--out {inp}/ok2.npy/x.npz",
            "--method banana",
            "--batch-size -1",
            "--model gmm:ring8",
            "--guidance-scale 1",
        )
    ),
    "",
]

CASES = [
    (command, case)
    for command, cases in zip(
        COMMANDS,
        (SAMPLE, LIST, BENCH, TRAIN, LIKELIHOOD, ENCODE, DECODE, EVALUATE, INPAINT, COLORIZE),
        strict=True,
    )
    for case in cases
]


@pytest.fixture(scope="module")
def shared_registry() -> diffkit.Registry:
    """One registry for all cases (building it per case would dominate the run time)."""
    return diffkit.build_registry()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, shared_registry: diffkit.Registry) -> Path:
    """A folder with `inp/` (the input files) and `work/` (the working directory of every case)."""
    base = tmp_path_factory.mktemp("fuzz")
    (base / "inp").mkdir()
    (base / "work").mkdir()
    write_inputs(base / "inp", shared_registry)
    return base


@pytest.fixture
def in_process(root: Path, shared_registry: diffkit.Registry, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in `root/work` with the shared registry; return `root`."""
    for name in ("bench", "encode", "evaluate", "inverse", "likelihood", "list", "sample", "train"):
        module = importlib.import_module(f"diffkit.cli.{name}_command")  # registered by main's import
        monkeypatch.setattr(module, "load_registry", lambda: shared_registry)
    monkeypatch.chdir(root / "work")
    monkeypatch.delenv("DIFFKIT_DEBUG", raising=False)
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`diffkit ARGV` in-process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command, case", CASES, ids=[f"{c}: {a}" for c, a in CASES])
def test_bad_input_is_one_error_line_exit_2_and_touches_nothing(
    in_process: Path, command: str, case: str
) -> None:
    argv = [command, *shlex.split(case.format(inp=in_process / "inp"))]
    before = snapshot(in_process)
    code, stdout, stderr = run_cli(argv)
    after = snapshot(in_process)
    lines = stderr.strip().splitlines()
    assert code == 2, (argv, code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, stderr)
    assert "internal error" not in stderr and "Traceback" not in stderr + stdout, (argv, stderr)
    assert after == before, (argv, set(after) ^ set(before))


def test_the_table_covers_every_command_with_at_least_300_cases() -> None:
    counts = Counter(command for command, _ in CASES)
    print("fuzz cases by command:", dict(counts), "total", sum(counts.values()))
    assert set(counts) == set(COMMANDS) and min(counts.values()) >= 8
    assert sum(counts.values()) >= 300
    assert len(set(CASES)) == len(CASES)  # no case counted twice


def test_a_typer_parse_error_is_one_line_naming_the_flag(in_process: Path) -> None:
    code, _, stderr = run_cli(["sample", "--stpes", "10"])
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("error: No such option: --stpes") and "--steps" in stderr
    code, _, stderr = run_cli(["sample", "--steps", "2.5"])
    assert code == 2 and stderr.startswith("error: Invalid value for '--steps'")


def test_messages_name_the_problem(in_process: Path) -> None:
    inp = in_process / "inp"
    expected = {
        ("sample", "--num-samples", "10000000000000"): "needs about",
        ("sample", "--solver", "ode", "--steps", "3"): "--steps does not apply to the adaptive solver 'ode'",
        ("sample", "--grid", "karras"): "--grid does not apply to the adaptive solver 'ode'",
        ("sample", "--x-init", f"{inp}/ok2.npy", "--num-samples", "7"): "contradicts --x-init with 5 rows",
        ("sample", "--x-init", f"{inp}/corrupt.npz"): "corrupt",
        ("sample", "--x-init", f"{inp}/nan2.npy"): "NaN or Inf",
        ("sample", "--seed", "-1"): "--seed must be an integer in [0, 2**63-1]",
        ("sample", "--device", "cuda:7"): "cuda",
        ("sample", "--sde-opt", "beta_max=inf"): "must be a finite number",
        ("sample", "--model", f"{inp}/ck_banana"): "kind must be one of",
        ("sample", "--model", f"{inp}/ck_shape_neg"): "data_shape must be a list of positive integers",
        ("encode", "--data", f"{inp}/ok2.npy", "--method", "ddim", "--sde", "vp"): "needs a discrete process",
        ("encode", "--data", f"{inp}/ok2.npy", "--out", "/proc/x.npz"): "is not writable",
        ("likelihood", "--rtol", "inf", "--atol", "inf"): "--rtol must be a positive finite number",
        ("decode", "--latents", f"{inp}/lat_string_rtol.npz"): "config 'rtol' must be a number",
        ("inpaint", "--data", f"{inp}/ok64.npy", "--mask", f"{inp}/nan_mask64.npy"): "--mask",
        ("bench", "--nfe", "1000000000000"): "--nfe 1000000000000 needs about",
        ("train", "--lr", "inf"): "--lr must be a positive finite number",
    }
    for argv, fragment in expected.items():
        code, _, stderr = run_cli(list(argv))
        assert code == 2 and fragment in stderr, (argv, stderr)


def test_an_explicit_infinite_default_option_is_still_accepted(in_process: Path) -> None:
    """s_tmax defaults to inf: refusing non-finite options must not refuse that value."""
    code, _, stderr = run_cli(
        [
            "sample",
            "--solver",
            "heun",
            "--solver-opt",
            "s_tmax=inf",
            "--num-samples",
            "8",
            "--no-plot",
            "--steps",
            "2",
            "--out",
            str(in_process / "work" / "heun.npz"),
            "--json",
        ]
    )
    assert code == 0, stderr
    (in_process / "work" / "heun.npz").unlink()


def test_diffusers_folder_with_only_pickled_weights_is_refused_unread(
    in_process: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `.bin` (pickle) weights file is never unpickled: one line, exit 2, torch.load never called."""
    pytest.importorskip("diffusers")
    import torch
    from _helpers import tiny_diffusers_unet

    unet = tiny_diffusers_unet()
    unet.save_pretrained(tmp_path / "unet", safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "unet").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.bin",
    ]
    loads: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args))
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(
        ["sample", "--model", f"diffusers:{tmp_path / 'unet'}", "--sde", "ddpm", "--solver", "ddim"]
    )
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "only pickled weights (diffusion_pytorch_model.bin)" in stderr and "safetensors only" in stderr
    assert loads == [] and snapshot(tmp_path) == before
