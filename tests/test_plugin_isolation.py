"""Broken third-party plugins are isolated: one line naming the plugin, everything else keeps working.

Each broken plugin is a small module written into tmp_path and loaded through DIFFKIT_PLUGINS,
exactly as a user's local plugin would be; the CLI runs in-process (PluginLoadWarning is an
error under pytest, so a registry built twice, warning twice, would fail these tests).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli.main import app
from diffkit.core.errors import DuplicateComponentError, PluginError
from diffkit.core.sampler import SampleResult
from diffkit.plugin.contract import check_result

runner = CliRunner()

SAMPLER_PLUGIN = """
    from dataclasses import dataclass
    import torch
    import diffkit
    from diffkit.core.sampler import SampleResult

    @dataclass(frozen=True, kw_only=True)
    class Bad:
        '''A third-party sampler whose result breaks the contract.'''

        capabilities = diffkit.Capabilities(stochastic=False, order=1.0, default_steps=2)

        def __call__(self, model, process, x_init, grid, *, generator=None, callback=None):
            return {result}

    @diffkit.hookimpl
    def diffkit_register(registrar):
        registrar.add_sampler("bad", Bad)
"""
DUPLICATE_PLUGIN = """
    import diffkit
    from diffkit.core.sampler import SampleResult

    class Em:
        '''Claims the built-in name em.'''

    @diffkit.hookimpl
    def diffkit_register(registrar):
        registrar.add_sampler("mine", Em)
        registrar.add_sampler("em", Em)
"""
RAISING_HOOK_PLUGIN = """
    import diffkit

    @diffkit.hookimpl
    def diffkit_register(registrar):
        raise RuntimeError("registrar exploded")
"""
IMPORT_ERROR_PLUGIN = "import no_such_dependency_of_this_plugin\n"
FACTORY_RAISES_PLUGIN = """
    import diffkit

    def needs_a_gpu():
        "A sampler factory that fails on this machine."
        raise RuntimeError("no GPU here")

    @diffkit.hookimpl
    def diffkit_register(registrar):
        registrar.add_sampler("bad", needs_a_gpu)
"""
TWIN_OF_VP = """
    import diffkit

    @diffkit.hookimpl
    def diffkit_register(registrar):
        registrar.add_process("vp", lambda: None)
"""


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`install(name=source, ...)`: write plugin modules and load them through DIFFKIT_PLUGINS."""
    before = set(sys.modules)

    def write(**modules: str) -> None:
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("DIFFKIT_PLUGINS", ",".join(modules))
        importlib.invalidate_caches()

    yield write
    for name in set(sys.modules) - before:
        del sys.modules[name]


def invoke(*args: str):  # noqa: ANN201
    """Run the CLI in-process."""
    return runner.invoke(app, list(args))


def sample_args(solver: str, out: Path, *extra: str) -> list[str]:
    """A small `diffkit sample` run writing `out`."""
    return ["sample", "--solver", solver, "--num-samples", "100", "--no-plot", "--out", str(out), *extra]


# ---- a plugin that cannot load or register: one warning, the rest works -------------------------

BROKEN_REGISTRATIONS = {
    "import error": (
        IMPORT_ERROR_PLUGIN,
        "diffkit plugin 'broken' failed to load: No module named 'no_such_dependency_of_this_plugin'",
    ),
    "exception in the hook": (
        RAISING_HOOK_PLUGIN,
        "diffkit plugin 'broken' failed to register: registrar exploded",
    ),
    "duplicate name": (
        DUPLICATE_PLUGIN,
        "diffkit plugin 'broken' skipped: sampler 'em' is already registered by plugin 'em' (diffkit 0.1.0)",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_REGISTRATIONS))
def test_a_plugin_that_cannot_register_is_one_warning_and_the_rest_works(
    case: str, install: Callable[..., None], tmp_path: Path
) -> None:
    source, warning = BROKEN_REGISTRATIONS[case]
    install(broken=source)
    listed = invoke("list", "sampler", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert listed.stderr.splitlines() == [f"warning: {warning}"]
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["em"]["distribution"] == "diffkit 0.1.0"  # the built-in wins
    assert "mine" not in rows  # a colliding plugin is skipped as a whole
    out = tmp_path / "em.npz"
    done = invoke(*sample_args("em", out, "--steps", "5"))
    assert done.exit_code == 0, done.stderr
    assert done.stderr.splitlines() == [f"warning: {warning}"]
    assert out.exists()


def test_a_duplicate_between_two_builtins_is_a_bug_that_raises(
    install: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    install(twin_vp=TWIN_OF_VP)
    monkeypatch.delenv("DIFFKIT_PLUGINS")  # loaded below as if the diffkit distribution declared it
    real = importlib.metadata.entry_points
    builtin = importlib.metadata.distribution("diffkit")
    twin = types.SimpleNamespace(
        name="twin-vp", dist=builtin, load=lambda: importlib.import_module("twin_vp")
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [*real(group=group), twin])
    with pytest.raises(DuplicateComponentError) as caught:
        diffkit.build_registry(autoload=False)
    assert str(caught.value) == (
        "process 'vp' is registered twice: "
        "by plugin 'vp' (diffkit 0.1.0) and by plugin 'twin-vp' (diffkit 0.1.0)"
    )


def test_third_party_resolve_hooks_come_after_builtins_and_a_raising_one_is_named(
    install: Callable[..., None],
) -> None:
    install(
        greedy="""
            import diffkit

            @diffkit.hookimpl
            def diffkit_resolve(kind, name):
                if name == "boom:x":
                    raise RuntimeError("resolver exploded")
                return lambda: "greedy"
        """
    )
    registry = diffkit.build_registry()
    assert registry.get("sampler", "ode:rk4").plugin == "ode"  # not shadowed by the greedy hook
    assert registry.get("sampler", "anything:else").plugin == "greedy"
    expected = r"^plugin 'greedy' \(local module\) failed to resolve sampler 'boom:x': resolver exploded$"
    with pytest.raises(PluginError, match=expected):
        registry.get("sampler", "boom:x")


def test_a_factory_that_raises_is_a_plugin_error_and_list_skips_it(install: Callable[..., None]) -> None:
    install(bad=FACTORY_RAISES_PLUGIN)
    with pytest.raises(PluginError) as caught:
        diffkit.build_registry().build("sampler", "bad", {})
    assert str(caught.value) == "sampler 'bad' (plugin 'bad', local module) failed to build: no GPU here"
    listed = invoke("list", "sampler")
    assert listed.exit_code == 0 and listed.stderr == "", listed.stderr
    assert "│ em " in listed.stdout and "│ bad " not in listed.stdout


# ---- a sampler whose result breaks the contract: one error line naming the plugin, exit 1 ----------

BAD_RESULTS = {
    "wrong count": ("SampleResult(x_init[1:], 2, 2)", "returned 99 rows for a batch of 100"),
    "wrong shape": (
        "SampleResult(x_init[:, :1], 2, 2)",
        "returned samples of shape (100, 1) for a batch of shape (100, 2)",
    ),
    "extra column": (
        "SampleResult(torch.cat([x_init, x_init[:, :1]], 1), 2, 2)",
        "returned samples of shape (100, 3) for a batch of shape (100, 2)",
    ),
    "NaN output": ("SampleResult(x_init * float('nan'), 2, 2)", "returned NaN or Inf samples"),
    "int dtype": ("SampleResult(x_init.round().long(), 2, 2)", "returned int64 samples for a float32 batch"),
    "float64": ("SampleResult(x_init.double(), 2, 2)", "returned float64 samples for a float32 batch"),
    "not a SampleResult": ("x_init", "returned a Tensor, not a SampleResult with a tensor x"),
    "negative nfe": ("SampleResult(x_init, -1, 2)", "returned nfe=-1, not a non-negative int"),
}


@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_a_wrong_sampler_result_is_one_line_naming_the_plugin_and_writes_nothing(
    case: str, install: Callable[..., None], tmp_path: Path
) -> None:
    result, problem = BAD_RESULTS[case]
    install(badpkg=SAMPLER_PLUGIN.format(result=result))
    out = tmp_path / "s.npz"
    done = invoke(*sample_args("bad", out))
    assert done.exit_code == 1, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [f"error: sampler 'bad' (plugin 'badpkg', local module) {problem}"]
    assert list(tmp_path.glob("s*")) == []  # no output, no temp file
    fine = invoke(*sample_args("em", tmp_path / "em.npz", "--steps", "5"))  # other samplers unaffected
    assert fine.exit_code == 0 and fine.stderr == "", fine.stderr


def test_a_crashing_third_party_sampler_is_one_line_naming_the_plugin(
    install: Callable[..., None], tmp_path: Path
) -> None:
    """An exception inside a plugin's sampler call: exit 1, one line naming it, not "internal error"."""
    install(badpkg=SAMPLER_PLUGIN.format(result="SampleResult(x_init.reshape(7, -1), 2, 2)"))
    out = tmp_path / "s.npz"
    done = invoke(*sample_args("bad", out))
    assert done.exit_code == 1, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        "error: sampler 'bad' (plugin 'badpkg', local module) failed: "
        "RuntimeError: shape '[7, -1]' is invalid for input of size 200"
    ]
    assert list(tmp_path.glob("s*")) == []


def test_check_result_accepts_a_correct_result_and_leaves_flagged_steps_to_the_caller() -> None:
    x = torch.zeros(4, 3, 2, dtype=torch.float64)
    good = SampleResult(x + 1, 5, 5)
    assert check_result(good, x, "s") is good
    nan = SampleResult(torch.full_like(x, float("nan")), 5, 5)
    flags = [torch.tensor(True), torch.tensor(False)]  # a step went non-finite: the caller names it
    assert check_result(nan, x, "s", step_flags=flags) is nan
    with pytest.raises(PluginError, match=r"^sampler 's' returned NaN or Inf samples$"):
        check_result(nan, x, "s", step_flags=flags[:1])
    with pytest.raises(PluginError, match=r"^sampler 's' returned nfe=True, not a non-negative int$"):
        check_result(SampleResult(x, True, 5), x, "s")  # type: ignore[arg-type]
    with pytest.raises(PluginError, match=r"^sampler 's' returned steps=2.0, not a non-negative int$"):
        check_result(SampleResult(x, 5, 2.0), x, "s")  # type: ignore[arg-type]


# ---- bench: a broken sampler is a failed row; the sweep goes on ----------------------------------


def test_default_bench_with_a_broken_sampler_records_failed_rows_and_completes(
    install: Callable[..., None], tmp_path: Path
) -> None:
    install(badpkg=SAMPLER_PLUGIN.format(result="SampleResult(x_init[1:], 2, 2)"))
    out = tmp_path / "bench"
    done = invoke("bench", "--nfe", "5", "--num-samples", "40", "--no-plot", "--out", str(out), "--json")
    assert done.exit_code == 0, done.stderr
    summary = json.loads(done.stdout)
    error = "sampler 'bad' (plugin 'badpkg', local module) returned 15 rows for a batch of 16"
    assert summary["failed"] == [
        {"implementation": "diffkit", "solver": "bad", "budget": 5, "seed": 0, "error": error}
    ]
    cells = {cell["solver"]: cell for cell in summary["cells"]}
    assert cells["bad"]["failed"] == 1
    assert cells["em"]["failed"] == 0 and cells["em"]["sliced_w2"] > 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["solver"] for row in rows if row["status"] == "failed"} == {"bad"}
    assert len(rows) == len(cells) and all(row["error"] is None for row in rows if row["status"] == "ok")
    report = (out / "report.md").read_text()
    assert f"- bad at 5 NFE, seed 0: {error}\n" in report
