"""The README stays true: its sampler table is the registry's, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from diffkit.plugin.catalog import render_markdown, sampler_rows

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- samplers:begin -->", "<!-- samplers:end -->"


def test_sampler_table_matches_registry(registry) -> None:  # noqa: ANN001
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)].strip()
    expected = render_markdown(sampler_rows(registry), tuple(registry.names("process")))
    assert block == expected, "README sampler table is stale: run `make readme-table`"


def test_quickstart_commands_are_make_targets() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w[\w-]*)", readme, flags=re.MULTILINE):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
