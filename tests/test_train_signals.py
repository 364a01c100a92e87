"""Real `diffkit train` processes killed during checkpoint writes lose nothing and leave no temporaries.

21 kills (7 each of SIGINT, SIGTERM, SIGKILL) land at random instants inside checkpoint writes of
one run (`--checkpoint-every 1`); each killed process is followed by one that resumes it, and
the last resume (the installed `diffkit` script) must end bit-identical to an uninterrupted run.
The hook `DIFFKIT_TEST_CHECKPOINT_PAUSE` sleeps before every file operation, so that a write takes
~0.3 s and random kills land inside it; `DIFFKIT_TEST_CHECKPOINT_LOG` records `begin`, `commit`
and `done` of every checkpoint, which says where each kill landed.

The uninterrupted and the killed runs are forked from this one after a warm-up (the CLI's `main()`
in a fresh process, as the console script runs it), which spares 22 start-ups of ~5 s (torch,
torch._dynamo, scikit-learn); the signals come from outside. The final resume runs the installed
script.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from diffkit.run.api import SampleConfig, sample
from diffkit.train import TrainConfig, generation, load_checkpoint, train
from diffkit.train import checkpoint as ckpt

ITERS = 60
KILLS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) * 7
#: Windows after a write began for the kill instant, in turn: among the file writes (abandoned),
#: in the rename and publication (SIGINT/SIGTERM wait for the commit), in the loss curve or later.
WINDOWS = ((0.0, 0.08), (0.08, 0.3), (0.3, 0.8))
TINY = ["--data-opt", "n=200", "--batch-size", "16", "--net-opt", "hidden=16", "--net-opt", "depth=1"]
MESSAGE = re.compile(
    r"error: interrupted at iteration \d+; (?:the checkpoint of iteration (?P<new>\d+) in .+ is complete "
    r"\(continue with --resume\)|.+ is unchanged \(its checkpoint of iteration (?P<old>\d+)\)"
    r"|no checkpoint was written to .+)"
)


def _args(out: Path, *extra: str) -> list[str]:
    return ["train", *TINY, "--no-samples", "--iters", str(ITERS), "--out", str(out), *extra]


def _script() -> list[str]:
    installed = Path(sys.executable).parent / "diffkit"
    code = "import sys; from diffkit.cli.main import main; sys.exit(main())"
    return [str(installed)] if installed.is_file() else [sys.executable, "-c", code]


def _fork(argv: list[str], env: dict[str, str], err: Path) -> int:
    """Run `diffkit ARGV` in a forked child with `env` added and stderr to `err`; return its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never return into pytest
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        sys.stderr = open(err, "w")  # noqa: SIM115
        os.dup2(sys.stderr.fileno(), 2)
        os.environ.update(env)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_num_threads(1)
        from diffkit.cli.main import main

        sys.argv = ["diffkit", *argv]
        result = main()
        code = result if isinstance(result, int) else 0
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 99
    finally:
        sys.stderr.flush()
        os._exit(code)


def _events(log: Path) -> list[tuple[str, int]]:
    """(`begin` | `commit` | `done`, iteration) for each line of the checkpoint log."""
    lines = log.read_text().split("\n")[:-1] if log.exists() else []
    return [(kind, int(value.split("-")[0])) for kind, value in (line.split() for line in lines)]


def _temporaries(folder: Path) -> list[str]:
    """Temporary files and folders, and generations other than the committed one, in run `folder`."""
    record = ckpt.committed(folder)
    keep = None if record is None else record["checkpoint"]
    store = folder / generation.STORE
    kept = [p.name for p in store.iterdir() if p.name != keep] if store.is_dir() else []
    return sorted([p.name for p in folder.glob(".*.tmp")] + kept)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    state = ckpt.read_training_state(folder)
    flat = {f"raw/{k}": v for k, v in state.raw.items()} | {f"ema/{k}": v for k, v in state.ema.items()}
    flat |= {f"opt/{i}/{k}": v for i, entries in state.optimizer_state.items() for k, v in entries.items()}
    return flat | {"losses": torch.tensor(state.losses, dtype=torch.float64)}


OWN_PROCESS = "DIFFKIT_TEST_SIGNALS_OWN_PROCESS"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kills_during_checkpoint_writes_lose_nothing_and_resume_bit_identically(registry, tmp_path: Path):
    """Runs the kill scenario in a fresh pytest process, as a user's `diffkit train` starts fresh.

    The killed runs are forked from the test process; inside the whole suite that process carries
    what hundreds of earlier tests left (threads, handlers, imported state), which a real CLI
    process never has, so the scenario gets a process of its own.
    """
    if os.environ.get(OWN_PROCESS) == "1":
        _kill_scenario(registry, tmp_path)
        return
    name = test_kills_during_checkpoint_writes_lose_nothing_and_resume_bit_identically.__name__
    test = f"{Path(__file__).resolve()}::{name}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            test,
            "--basetemp",
            str(tmp_path / "own"),
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=os.environ | {OWN_PROCESS: "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout[-2000:])
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]


def _kill_scenario(registry, tmp_path: Path) -> None:
    """The scenario of the module docstring (in its own process)."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    train(TrainConfig(iters=1, batch_size=2, network_options={"hidden": "4"}), tmp_path / "warm-up")
    reference = tmp_path / "reference"
    pid = _fork(_args(reference, "--checkpoint-every", str(ITERS)), {}, tmp_path / "reference.err")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, (tmp_path / "reference.err").read_text()
    run, log = tmp_path / "run", tmp_path / "checkpoints.log"
    hooks = {generation.PAUSE_ENV: "0.02", generation.LOG_ENV: str(log), "OMP_NUM_THREADS": "1"}
    rng, landed, held, began = random.Random(0), collections.Counter(), 0, time.monotonic()
    for n, signum in enumerate(KILLS):
        mark = len(_events(log))
        err = tmp_path / f"stderr{n}"
        pid = _fork(_args(run, "--checkpoint-every", "1", *(["--resume"] if n else [])), hooks, err)
        deadline = time.monotonic() + 300
        while not any(kind == "begin" for kind, _ in _events(log)[mark:]):  # its first write began
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.002)
        time.sleep(rng.uniform(*WINDOWS[n // 3 % 3]))
        os.kill(pid, signum)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        mine = _events(log)[mark:]
        assert mine[0] == ("begin", held + 1), (n, mine)  # it continued from the last checkpoint
        commits = [i for kind, i in mine if kind == "commit"]
        record = ckpt.committed(run)
        held_now = 0 if record is None else int(record["iteration"])
        landed[f"{signum.name} after {mine[-1][0]}"] += 1
        if signum == signal.SIGKILL:
            assert status == -signal.SIGKILL, (n, status)
            # committed is the last logged commit, or the write killed between its commit and the log line
            assert held_now == (commits[-1] if commits else held) or mine[-1] == ("begin", held_now), n
        else:
            assert status == (130 if signum == signal.SIGINT else 143), (n, status, err.read_text())
            assert held_now == (commits[-1] if commits else held), n  # the commit is never torn
            lines = err.read_text().splitlines()
            match = MESSAGE.fullmatch(lines[-1])
            assert match is not None, lines
            assert int(match["new"] or match["old"] or 0) == held_now, lines[-1]
            assert (match["new"] is None) == (held_now == held), lines[-1]
            assert _temporaries(run) == [], (n, signum)
        if held_now:
            state = ckpt.read_training_state(run)  # what --resume reads
            assert int(state.record["iteration"]) == held_now and len(state.losses) == held_now
            load_checkpoint(run, registry)  # what `diffkit sample --model run` loads
        held = held_now
    killing = time.monotonic() - began
    assert sample(SampleConfig(model=str(run), solver="ddim", steps=2, num_samples=4), registry=registry)
    final = subprocess.run(
        [*_script(), *_args(run, "--checkpoint-every", str(ITERS), "--resume")],  # not in the recipe
        env=env | {generation.LOG_ENV: str(log)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr
    assert _events(log)[-3:] == [("begin", ITERS), ("commit", ITERS), ("done", ITERS)]
    expected, actual = _state(reference), _state(run)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)  # bit-identical
    assert _temporaries(run) == []
    inside = sum(count for key, count in landed.items() if not key.endswith("done"))
    print(f"\nkills: {dict(sorted(landed.items()))} in {killing:.1f} s; resumed from iteration {held}")
    assert sum(landed.values()) == len(KILLS) and inside >= 15, landed
