"""Atomic checkpoints: a crash or signal between any two file operations leaves a loadable run folder.

A SIGKILL is simulated by copying the folder before every file operation of a checkpoint write
(what a killed process leaves is exactly the state at that instant); SIGTERM by sending it to
this process at every operation. `tests/test_train_signals.py` kills real processes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffkit.cli.common import Terminated, terminate_raises
from diffkit.cli.main import app
from diffkit.core.errors import UsageError
from diffkit.run.io import atomic_file
from diffkit.train import TrainConfig, generation, load_checkpoint, loop, train
from diffkit.train import checkpoint as ckpt

#: The file operations of one checkpoint write, in order (`generation.between` events).
FILES = ("model.safetensors", "optimizer.safetensors", "history.json", "config.json")
EVENTS = [f"write {name}" for name in FILES] + ["rename"]
EVENTS += [f"{op} {name}" for name in FILES for op in ("link", "replace")] + ["prune"]


def _config(iters: int) -> TrainConfig:
    return TrainConfig(
        data="moons",
        iters=iters,
        batch_size=16,
        lr=2e-3,
        checkpoint_every=1,
        sample_every_checkpoint=False,
        network_options={"hidden": "16", "depth": "1"},
        data_options={"n": "200"},
    )


def _state(folder: Path) -> dict[str, torch.Tensor]:
    """Everything --resume restores, flattened: raw and EMA weights, optimizer state, losses."""
    state = ckpt.read_training_state(folder)
    flat = {f"raw/{k}": v for k, v in state.raw.items()} | {f"ema/{k}": v for k, v in state.ema.items()}
    flat |= {f"opt/{i}/{k}": v for i, entries in state.optimizer_state.items() for k, v in entries.items()}
    return flat | {"losses": torch.tensor(state.losses, dtype=torch.float64)}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _leftovers(folder: Path) -> list[str]:
    """Temporaries and generations other than the committed one."""
    record = ckpt.committed(folder)
    keep = None if record is None else record["checkpoint"]
    store = folder / generation.STORE
    kept = [p.name for p in store.iterdir() if p.name != keep] if store.is_dir() else []
    return sorted([p.name for p in folder.glob(".*.tmp")] + kept)


def _model_ident(folder: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return (handle.metadata() or {}).get("checkpoint")


def _top_level_consistent(folder: Path) -> bool:
    ident = json.loads((folder / "config.json").read_text())["checkpoint"]
    history = json.loads((folder / "history.json").read_text())["checkpoint"]
    from safetensors import safe_open

    with safe_open(str(folder / "optimizer.safetensors"), framework="pt") as handle:
        optimizer = (handle.metadata() or {})["checkpoint"]
    return {history, optimizer, _model_ident(folder)} == {ident}


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No loss curves: each costs ~0.2 s and is not part of the checkpoint."""
    monkeypatch.setattr(loop, "save_loss_curve", lambda *args, **kwargs: None)


def test_a_kill_before_any_file_operation_leaves_the_last_committed_checkpoint(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet
):
    run, snapshots = tmp_path / "run", []

    def snapshot(event: str) -> None:  # the folder as SIGKILL would leave it before `event`
        copy = tmp_path / f"snap{len(snapshots)}"
        shutil.copytree(run, copy, symlinks=True)
        snapshots.append((event, copy))

    monkeypatch.setattr(generation, "between", snapshot)
    final = train(_config(2), run, registry=registry)
    monkeypatch.setattr(generation, "between", lambda event: None)
    assert [event for event, _ in snapshots] == EVENTS * 2
    truth = {n + 1: _state(snapshots[len(EVENTS) * n + len(EVENTS) - 1][1]) for n in range(2)}
    assert _equal(truth[2], _state(run)) and truth[1].keys() == truth[2].keys()
    mixed = 0
    for index, (event, copy) in enumerate(snapshots):
        writing = index // len(EVENTS) + 1  # the checkpoint being written
        expected = writing if event == "prune" else writing - 1  # committed once config.json is replaced
        record = ckpt.committed(copy)
        if expected == 0:
            assert record is None, (index, event)
        else:
            assert record is not None and record["iteration"] == expected, (index, event)
            assert _equal(_state(copy), truth[expected]), (index, event)
            weights = load_checkpoint(copy, registry).network.state_dict()  # what `sample` loads
            assert all(torch.equal(v, truth[expected][f"ema/{k}"]) for k, v in weights.items())
            mixed += not _top_level_consistent(copy)
        resumed = train(_config(2), copy, registry=registry, resume=True)  # --resume after the kill
        weights = final.network.state_dict()
        assert all(torch.equal(weights[k], v) for k, v in resumed.network.state_dict().items()), index
        assert all(torch.equal(final.ema[k], resumed.ema[k]) for k in final.ema), index
        assert final.losses == resumed.losses, index
    # checkpoint 2 had 6 instants with its model.safetensors under checkpoint 1's config.json;
    # those were read from the kept generation
    assert mixed == 6


def _as_before_ids(folder: Path) -> None:
    """Rewrite run `folder` as diffkit wrote it before checkpoint ids and `.checkpoints/`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for name in ("model.safetensors", "optimizer.safetensors"):
        with safe_open(str(folder / name), framework="pt") as handle:
            metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
        (folder / name).unlink()
        save_file(
            tensors, str(folder / name), metadata={k: v for k, v in metadata.items() if k != "checkpoint"}
        )
    for name in ("config.json", "history.json"):
        record = json.loads((folder / name).read_text())
        (folder / name).unlink()
        (folder / name).write_text(json.dumps({k: v for k, v in record.items() if k != "checkpoint"}))
    shutil.rmtree(folder / generation.STORE)


def test_a_kill_while_replacing_a_checkpoint_of_an_older_diffkit_leaves_one_complete(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet
):
    run, snapshots = tmp_path / "run", []
    train(_config(1), run, registry=registry)
    _as_before_ids(run)
    old = _state(run)

    def snapshot(event: str) -> None:
        copy = tmp_path / f"snap{len(snapshots)}"
        shutil.copytree(run, copy, symlinks=True)
        snapshots.append((event, copy))

    monkeypatch.setattr(generation, "between", snapshot)
    train(_config(2), run, registry=registry, resume=True)
    monkeypatch.setattr(generation, "between", lambda event: None)
    new, mixed = _state(run), 0
    assert [event for event, _ in snapshots] == EVENTS and "checkpoint" not in ckpt.committed(snapshots[0][1])
    for event, copy in snapshots:
        assert _equal(_state(copy), new if event == "prune" else old), event
        load_checkpoint(copy, registry)
        mixed += "checkpoint" not in ckpt.committed(copy) and _model_ident(copy) is not None
    assert mixed == 6 and sorted(p.name for p in (run / generation.STORE).iterdir()) == [
        ckpt.committed(run)["checkpoint"]
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_at_any_file_operation_leaves_no_temporaries(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet, signum
):
    train(_config(3), tmp_path / "ref", registry=registry)
    reference = _state(tmp_path / "ref")
    for k, at in enumerate(EVENTS):
        run, seen = tmp_path / f"run{k}", []
        train(_config(1), run, registry=registry)

        def hook(event: str, k: int = k, seen: list[str] = seen) -> None:
            seen.append(event)
            if len(seen) == k + 1:
                os.kill(os.getpid(), signum)

        monkeypatch.setattr(generation, "between", hook)
        with terminate_raises(), pytest.raises(KeyboardInterrupt) as caught:
            train(_config(3), run, registry=registry, resume=True)
        monkeypatch.setattr(generation, "between", lambda event: None)
        assert isinstance(caught.value, Terminated) == (signum == signal.SIGTERM)
        # before the rename the write is abandoned; from the rename on the signal waits for the commit
        assert ckpt.committed(run)["iteration"] == (1 if k < 4 else 2), at
        assert _leftovers(run) == [] and _top_level_consistent(run), at
        train(_config(3), run, registry=registry, resume=True)
        assert _equal(_state(run), reference), at


def test_top_level_files_of_another_checkpoint_are_read_from_the_kept_copy_or_refused(
    registry, tmp_path: Path, quiet
):
    train(_config(2), tmp_path / "a", registry=registry)
    train(_config(3), tmp_path / "b", registry=registry)
    expected = _state(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()  # a hard link to the kept copy: never write into it
    shutil.copyfile(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    assert _equal(_state(tmp_path / "a"), expected)
    shutil.rmtree(tmp_path / "a" / generation.STORE)
    with pytest.raises(UsageError, match="belongs to checkpoint '3-.*', but config.json names '2-.*'"):
        load_checkpoint(tmp_path / "a", registry)


def test_sigterm_inside_atomic_file_removes_the_temporary(tmp_path: Path):
    path = tmp_path / "out.npz"
    path.write_bytes(b"old")
    previous = signal.getsignal(signal.SIGTERM)
    with terminate_raises(), pytest.raises(Terminated):
        with atomic_file(path) as handle:
            handle.write(b"new, unfinished")
            os.kill(os.getpid(), signal.SIGTERM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"] and path.read_bytes() == b"old"
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler lives only while a command runs


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli(*args: str) -> list[str]:
    base = ["train", "--batch-size", "16", "--net-opt", "hidden=16", "--net-opt", "depth=1"]
    return base + ["--data-opt", "n=200", "--no-samples", "--checkpoint-every", "2", *args]


def test_an_existing_run_is_replaced_only_with_overwrite(tmp_path: Path):
    runner, out = CliRunner(), tmp_path / "r"
    assert runner.invoke(app, _cli("--iters", "4", "--out", str(out))).exit_code == 0
    (out / "samples_4.png").write_bytes(b"grid of the old run")
    (out / "notes.txt").write_text("mine")
    before = _digest(out)
    again = runner.invoke(app, _cli("--iters", "2", "--out", str(out)))
    assert again.exit_code == 2 and again.stderr == (
        f"error: {str(out)!r} holds a run (checkpoint of iteration 4); pass --resume to continue it "
        "or --overwrite to replace it\n"
    )
    both = runner.invoke(app, _cli("--iters", "2", "--out", str(out), "--resume", "--overwrite"))
    assert both.exit_code == 2 and "pass one of them" in both.stderr
    other = runner.invoke(app, _cli("--iters", "2", "--lr", "0.01", "--out", str(out)))
    assert other.exit_code == 2 and "different config (lr: 0.001 there, 0.01 here)" in other.stderr
    assert _digest(out) == before
    replaced = runner.invoke(app, _cli("--iters", "2", "--out", str(out), "--overwrite"))
    assert replaced.exit_code == 0, replaced.stderr
    assert ckpt.committed(out)["iteration"] == 2 and _leftovers(out) == []
    names = sorted(p.name for p in out.iterdir())
    public = ["config.json", "history.json", "loss.png", "model.safetensors", "notes.txt"]
    assert names == [generation.STORE, *public, "optimizer.safetensors"]  # samples_4.png is gone
    assert len(json.loads((out / "history.json").read_text())["losses"]) == 2


def test_out_that_is_a_file_or_unwritable_is_refused_before_training(tmp_path: Path):
    runner = CliRunner()
    file = tmp_path / "f"
    file.write_text("keep")
    result = runner.invoke(app, _cli("--iters", "2", "--out", str(file)))
    assert result.exit_code == 2
    assert result.stderr == f"error: --out {str(file)!r} is a file, not a run folder\n"
    result = runner.invoke(app, _cli("--iters", "2", "--out", str(file / "sub")))
    assert result.exit_code == 2 and "is not a folder" in result.stderr
    assert file.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": 1}')
    result = runner.invoke(app, _cli("--iters", "2", "--out", str(foreign), "--overwrite"))
    assert result.exit_code == 2 and "--overwrite replaces diffkit runs only" in result.stderr
    assert (foreign / "config.json").read_text() == '{"mine": 1}'
    if Path("/proc/self").is_dir():  # not writable even by root
        result = runner.invoke(app, _cli("--iters", "2", "--out", "/proc/diffkit-run"))
        assert result.exit_code == 2
        assert result.stderr.startswith("error: output folder '/proc' is not writable")


def test_sigterm_while_sample_writes_its_npz_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from diffkit.run import io

    def write_then_terminated(member, samples) -> None:  # noqa: ANN001
        member.write(b"\x00" * 64)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(io, "_write_float32", write_then_terminated)
    out = tmp_path / "s.npz"
    args = ["sample", *"--num-samples 8 --solver ddim --steps 2 --no-plot --out".split(), str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 143, result.stderr
    assert result.stderr == "error: interrupted by SIGTERM; unfinished output files were removed\n"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def disk_full(event: str) -> None:
        if event == "write config.json" and (tmp_path / "r" / "config.json").exists():
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(generation, "between", disk_full)
    result = CliRunner().invoke(app, _cli("--iters", "4", "--out", str(tmp_path / "r")))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (  # after the dataset summary line
        f"error: cannot write to {str(tmp_path / 'r')!r} at iteration 4: No space left on device; "
        "its checkpoint of iteration 2 is complete"
    )
    assert ckpt.committed(tmp_path / "r")["iteration"] == 2 and _leftovers(tmp_path / "r") == []
