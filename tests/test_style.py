"""House rules that CI enforces: file size caps and a clean ruff run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("diffkit", "plugins", "cli", "tests", "bench")
SOURCES = [path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py")]


def test_every_module_is_under_the_hard_cap() -> None:
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in SOURCES}
    assert {name: n for name, n in lengths.items() if n > 500} == {}


def test_ruff_is_clean() -> None:
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
