"""Peak memory of `diffkit sample` against the number of samples (pytest-benchmark; not part of
the default test run).

Run:  .venv/bin/python -m pytest bench/test_memory.py --benchmark-only

Each size runs `diffkit sample --model gmm:d64 --solver ddim --steps 3 --batch-size 10000
--no-plot` in a fresh process and reads that process's peak resident set size from
`os.wait4`. The samples themselves (N x 64 float32, 256 MB at 1M) are the only thing that
grows with N: the prior noise is drawn a chunk at a time, the npz is written a block at a time
and the summary metrics stream (sliced W2 on the first 50 000 samples). `extra_info` holds the
peak RSS in MB, the wall time and the sampling time; `test_memory_is_flat` asserts that the
peak at 1M samples is within twice the peak at 10k.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SIZES = (10_000, 100_000, 1_000_000)
BATCH = 10_000
PEAKS: dict[int, dict[str, float]] = {}


def _sample(n: int, folder: Path) -> dict[str, float]:
    """Run `diffkit sample` on `n` samples of gmm:d64; return peak RSS (MB) and times (s)."""
    out = folder / f"d64-{n}.npz"
    entry = "import sys; from diffkit.cli.main import main; sys.exit(main())"
    command = [sys.executable, "-c", entry, "sample", "--model", "gmm:d64", "--solver", "ddim"]
    command += ["--steps", "3", "--num-samples", str(n), "--batch-size", str(BATCH), "--no-plot"]
    command += ["--json", "--out", str(out)]
    stdout, stderr = folder / f"d64-{n}.out", folder / f"d64-{n}.err"
    start = time.perf_counter()
    with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
        process = subprocess.Popen(command, stdout=out_file, stderr=err_file)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, stderr.read_text()[-2000:]
    summary = json.loads(stdout.read_text().strip().splitlines()[-1])
    out.unlink()
    return {
        "num_samples": n,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KB on Linux
        "wall_seconds": round(wall, 2),
        "sampling_seconds": summary["seconds"],
        "sliced_w2_samples": summary["sliced_w2_samples"],
    }


@pytest.mark.parametrize("n", SIZES)
def test_peak_memory(benchmark, tmp_path: Path, n: int) -> None:  # noqa: ANN001 - pytest-benchmark fixture
    """Peak RSS of one `diffkit sample` run of `n` samples."""
    PEAKS[n] = benchmark.pedantic(_sample, args=(n, tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(PEAKS[n])


def test_memory_is_flat(benchmark, tmp_path: Path) -> None:  # noqa: ANN001
    """The peak at 1M samples is within twice the peak at 10k (issue 10's proof line)."""
    for n in (SIZES[0], SIZES[-1]):
        if n not in PEAKS:
            PEAKS[n] = _sample(n, tmp_path)
    ratio = PEAKS[SIZES[-1]]["peak_rss_mb"] / PEAKS[SIZES[0]]["peak_rss_mb"]
    benchmark.extra_info.update({"ratio_1m_to_10k": round(ratio, 3), "peaks": PEAKS})
    benchmark.pedantic(lambda: ratio, rounds=1, iterations=1)
    assert ratio <= 2.0, PEAKS
