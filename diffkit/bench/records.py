"""Benchmark rows and the results store in `--out`: results.jsonl, results.json, results.csv.

One row per (implementation, solver, budget, seed). Each finished row is appended to
`results.jsonl` as one line in a single write, flushed and fsynced, so an interrupted sweep
keeps every finished row (a torn last line, if the machine dies mid-write, is dropped on
load) and a re-run skips the rows whose `key` (`diffkit.bench.spec.run_key`) finished with
status "ok". Failed rows are retried; a later line for a key replaces an earlier one.
`results.json` (a JSON array) and `results.csv` are rewritten atomically from all rows by
`ResultStore.save` when the sweep ends or stops.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffkit.core.errors import UsageError
from diffkit.run.io import write_with

#: columns of results.csv, in order (nested values are JSON text there)
FIELDS: tuple[str, ...] = (
    "key",
    "implementation",
    "solver",
    "budget",
    "seed",
    "status",
    "error",
    "model",
    "sde",
    "num_samples",
    "grid",
    "steps",
    "nfe",
    "tolerance",
    "stochastic",
    "adaptive",
    "order",
    "nfe_per_step",
    "seconds",
    "samples_per_second",
    "model_seconds",
    "overhead_per_step",
    "sliced_w2",
    "sliced_w2_floor",
    "sliced_w2_floor_std",
    "mmd2",
    "mmd2_floor",
    "mmd2_floor_std",
    "mode_tv",
    "mode_tv_floor",
    "mode_tv_floor_std",
    "spread_ratio",
    "spread_ratio_floor",
    "spread_ratio_floor_std",
    "ref_distance",
    "options",
    "config",
    "versions",
    "machine",
    "finished_at",
)
RESULTS_JSONL = "results.jsonl"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"


def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def render_csv(rows: Iterable[dict[str, Any]]) -> str:
    """The rows as CSV text with the `FIELDS` header (nested values as JSON)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: _csv_value(row.get(name)) for name in FIELDS})
    return buffer.getvalue()


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


class ResultStore:
    """The rows of one `--out` folder: loaded on open, appended per row, saved as JSON and CSV.

    Args:
        folder: the output folder (created if missing).

    Raises:
        UsageError: the folder cannot be created or written, or results.jsonl is unreadable.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(
                f"cannot create output folder {str(folder)!r}: {error.strerror or error}"
            ) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write to output folder {str(folder)!r}: permission denied")
        self._rows: dict[str, dict[str, Any]] = {row["key"]: row for row in self._load()}

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The latest row of every key, in first-seen order."""
        return list(self._rows.values())

    def _load(self) -> list[dict[str, Any]]:
        """Rows of results.jsonl; a torn last line (a run cut off mid-write) is dropped from the file."""
        path = self.folder / RESULTS_JSONL
        if not path.exists():
            return []
        try:
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if complete != data:
                os.truncate(path, len(complete))
            lines = complete.decode().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot resume from {str(path)!r}: {error}") from None
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "key" not in row:
                    raise ValueError("not a row with a key")
            except ValueError as error:
                raise UsageError(
                    f"cannot resume from {str(path)!r}: line {number} is not a result row ({error}); "
                    "remove the file or choose another --out"
                ) from None
            rows.append(row)
        return rows

    @property
    def done(self) -> set[str]:
        """Keys of the rows that finished with status "ok" (failed ones are run again)."""
        return {key for key, row in self._rows.items() if row.get("status") == "ok"}

    def add(self, row: dict[str, Any]) -> None:
        """Append `row` (NaN stored as null) to results.jsonl in one write, flushed to disk."""
        clean = {name: _nan_to_none(row.get(name)) for name in FIELDS}
        line = json.dumps(clean, sort_keys=False) + "\n"
        with open(self.folder / RESULTS_JSONL, "ab") as handle:
            handle.write(line.encode())
            handle.flush()
            os.fsync(handle.fileno())
        self._rows[clean["key"]] = clean

    def save(self) -> None:
        """Rewrite results.json and results.csv atomically from all rows."""
        text = json.dumps(self.rows, indent=1)
        write_with(self.folder / RESULTS_JSON, lambda handle: handle.write(text.encode()))
        table = render_csv(self.rows)
        write_with(self.folder / RESULTS_CSV, lambda handle: handle.write(table.encode()))
