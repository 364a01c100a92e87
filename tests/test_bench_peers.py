"""`diffkit bench --peers`: peer rows beside diffkit's, same noise, counted NFE, exact wiring, bad input."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.bench import runner as bench_runner
from diffkit.bench.plan import SolverPlan, steps_for_budget
from diffkit.bench.records import FIELDS
from diffkit.bench.spec import BenchConfig, RunSpec
from diffkit.cli.main import app
from diffkit.peers import PeerNotInstalled
from diffkit.peers import diffusers as hf
from diffkit.peers import runners as peer_runners
from diffkit.peers.kdiffusion import load_k_diffusion_sampling
from diffkit.run.api import SampleConfig, sample

pytest.importorskip("diffusers")
try:  # `import k_diffusion` runs its package __init__ (torchvision, clean-fid, ...): use the bridge
    load_k_diffusion_sampling()
except PeerNotInstalled as missing:
    pytest.skip(str(missing), allow_module_level=True)

# diffusers' schedulers call np.array(tensor, copy=False), which numpy 2 deprecates for torch tensors
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BUDGET = 6
#: (implementation, solver) -> model calls at BUDGET: 1 per step; Heun 2n - 1 for n = (6 + 1) // 2 steps
PEER_NFE = {
    ("diffusers", "ddim"): 6,
    ("diffusers", "heun"): 5,
    ("diffusers", "ancestral"): 6,
    ("k-diffusion", "ddim"): 6,
    ("k-diffusion", "heun"): 5,
    ("k-diffusion", "ancestral"): 6,
    ("k-diffusion", "dpmpp-2m-sde"): 6,
}


def invoke(*args: str):  # noqa: ANN201
    """Run the CLI in-process and return the click Result."""
    return CliRunner().invoke(app, list(args))


def spec_for(config: BenchConfig, implementation: str, solver: str, steps: int, budget: int) -> RunSpec:
    """A run of `solver` at seed 0 (no resume key needed outside a sweep)."""
    return RunSpec(implementation, solver, budget, 0, steps, None, {}, key="test")


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every full-size run of every runner: implementation, solver, noise, row NFE and predict calls."""
    runs: list[dict] = []
    for cls in (bench_runner.DiffkitRunner, peer_runners.PeerRunner):
        original = cls.run

        def run(self, spec, noise, original=original):  # noqa: ANN001, ANN202
            out = original(self, spec, noise)
            model = out.composition if isinstance(out.composition, diffkit.ScoreModel) else None
            record = {
                "impl": spec.implementation,
                "solver": spec.solver,
                "seed": spec.seed,
                "n": noise.shape[0],
            }
            runs.append(record | {"noise": noise, "nfe": out.nfe, "predicts": model and model.nfe})
            return out

        monkeypatch.setattr(cls, "run", run)
    return runs


def test_peer_rows_share_schema_noise_and_counted_nfe(tmp_path: Path, seen: list[dict]) -> None:
    out = tmp_path / "b"
    args = ["bench", "--solvers", "ddim,heun,ancestral,dpmpp-2m-sde", "--nfe", str(BUDGET), "--seeds", "0,1"]
    args += ["--num-samples", "24", "--no-plot", "--peers", "diffusers,k-diffusion", "--out", str(out)]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no warnings from the peers (torchsde's Brownian tree is quiet)
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 * (4 + len(PEER_NFE))
    for row in rows:
        assert set(row) == set(FIELDS) and row["status"] == "ok", row["error"]
        assert row["model"] == "gmm:ring8" and row["sde"] == "vp" and row["num_samples"] == 24
        assert row["nfe"] <= BUDGET and row["seconds"] > 0 and row["model_seconds"] > 0
        assert row["sliced_w2"] > 0 and row["sliced_w2_floor"] > 0 and row["spread_ratio"] > 0
        assert math.isfinite(row["overhead_per_step"])
        assert (row["ref_distance"] is None) == row["stochastic"]
    peers = {
        (r["implementation"], r["solver"], r["seed"]): r for r in rows if r["implementation"] != "diffkit"
    }
    assert {key[:2] for key in peers} == set(PEER_NFE)
    for (impl, solver, _), row in peers.items():
        assert row["nfe"] == PEER_NFE[impl, solver] and row["config"]["nfe"] == row["nfe"]
        assert row["options"]["method"] == row["config"]["method"]
    assert peers["diffusers", "ddim", 0]["options"] == {
        "method": "DDIMScheduler",
        "clip_sample": False,
        "eta": 0.0,
    }
    assert peers["diffusers", "ddim", 0]["config"]["timesteps"] == [830, 664, 498, 332, 166, 0]  # "leading"
    assert peers["diffusers", "ddim", 0]["config"]["peer_process_options"]["beta_end"] == pytest.approx(0.02)
    assert (
        peers["k-diffusion", "heun", 1]["steps"] == 3
        and len(peers["k-diffusion", "heun", 1]["config"]["sigmas"]) == 4
    )
    # every full run of a seed, diffkit's and the peers', started from the very same noise tensor;
    # the model's own predict counter agrees with the row's NFE (counted by the network timer)
    full = [run for run in seen if run["n"] == 24]
    assert len(full) == len(rows) and {run["impl"] for run in full} == {"diffkit", "diffusers", "k-diffusion"}
    first = {}
    for seed in (0, 1):
        noises = [run["noise"] for run in full if run["seed"] == seed]
        assert len(noises) == len(rows) // 2 and all(noise is noises[0] for noise in noises)
        first[seed] = noises[0]
    assert (
        first[0].shape == (24, 2) and first[0].dtype == torch.float64 and not torch.equal(first[0], first[1])
    )
    for run in full:
        if run["impl"] != "diffkit":
            assert run["predicts"] == run["nfe"] == PEER_NFE[run["impl"], run["solver"]]
    summary = json.loads(result.stdout)
    assert {c["implementation"] for c in summary["cells"]} == {"diffkit", "diffusers", "k-diffusion"}
    report = (out / "report.md").read_text()
    assert "## diffkit against diffusers, k-diffusion" in report and "| k-diffusion/dpmpp-2m-sde |" in report
    assert "| dpmpp-2m-sde | " in report.split("### Overhead per step")[1]
    again = invoke(*args)  # resume: peer rows are reused like diffkit's
    assert again.exit_code == 0 and f"0 runs computed, {len(rows)} reused" in again.stdout


def test_peer_ddim_runs_the_same_algorithm_as_diffkit(registry: diffkit.Registry) -> None:
    """Runner wiring: each peer's ddim equals diffkit's ddim (+ denoise_final) on the peer's own grid."""
    config = BenchConfig(model="gmm:d64", process="ddpm", num_samples=16, dtype="float64")
    ddpm = registry.build("process", "ddpm", {})
    model = registry.build("model", "gmm:d64", {}, ddpm)
    generator = torch.Generator().manual_seed(3)
    noise = ddpm.prior_sample((16, *model.data_shape), generator=generator, dtype=torch.float64)
    ddim = registry.build("sampler", "ddim", {"denoise_final": True})
    diffkit_plan = SolverPlan(
        "ddim", stochastic=False, adaptive=False, nfe_per_step=1, order=1.0, denoise_final=False
    )
    # measured: 1.7e-6 against diffusers (float32 tables), 1.3e-7 against k-diffusion (float32 sigmas)
    for cls, tolerance in ((peer_runners.DiffusersRunner, 1e-4), (peer_runners.KDiffusionRunner, 1e-6)):
        runner = cls(config, registry)
        plan = runner.plan(diffkit_plan)
        steps = steps_for_budget(plan, 10)
        out = runner.run(spec_for(config, runner.implementation, "ddim", steps, 10), noise)
        assert out.nfe == steps == 10
        if cls is peer_runners.DiffusersRunner:  # timesteps 900, 800, ..., 0 and a last step to alpha = 1
            grid = hf.diffusers_time(ddpm, torch.tensor(out.config["timesteps"]))
        else:  # Euler on Karras sigmas; the last step, to sigma = 0, is the x0 prediction
            sigmas = torch.tensor(out.config["sigmas"][:-1], dtype=torch.float64)
            grid = ddpm.t_from_log_snr(-2.0 * sigmas.log())
        ours = ddim(model, ddpm, noise, grid)
        assert ours.nfe == out.nfe
        error = float((out.samples - ours.x).abs().max() / ours.x.abs().max())
        assert error < tolerance, (runner.implementation, error)


def test_diffkit_runner_reproduces_diffkit_sample(registry: diffkit.Registry) -> None:
    """Without the NaN-check callback, a bench run is still exactly `diffkit sample` (em: its noise too)."""
    config = BenchConfig(solvers=("em",), num_samples=32)
    runner = bench_runner.DiffkitRunner(config, registry)
    noise = torch.randn((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spec = RunSpec("diffkit", "em", 8, 5, 8, None, {}, "k")
    out = runner.run(spec, noise)
    expected = sample(SampleConfig(solver="em", steps=8, seed=5), registry=registry, x_init=noise)
    assert torch.equal(out.samples, expected.samples) and out.nfe == expected.nfe == 8
    assert out.config["solver"] == "em" and out.config["nfe"] == 8 and out.model_seconds > 0


def test_diffusers_runs_vp_on_the_equivalent_ddpm_table(registry: diffkit.Registry) -> None:
    vp = registry.build("process", "vp", {"beta_min": 0.2, "beta_max": 10.0})
    assert hf.peer_process_options(vp) == {"num_steps": 1000, "beta_start": 2e-4, "beta_end": 1e-2}
    assert hf.peer_process_options(registry.build("process", "ddpm", {})) is None
    for name in ("ve", "subvp"):
        with pytest.raises(ValueError, match="vp, ddpm or ddpm-cosine"):
            hf.peer_process_options(registry.build("process", name, {}))


@pytest.mark.parametrize(
    ("args", "blocked", "expected"),
    [
        (["--peers", "difusers"], None, "unknown peer 'difusers'; expected diffusers or k-diffusion"),
        (["--peers", "k-diffusion,k-diffusion"], None, "--peers lists a peer twice"),
        (["--peers", ","], None, "--peers is empty"),
        (["--peers", "diffusers", "--sde", "ve"], None, "peer 'diffusers' cannot run on --sde 've'"),
        (
            ["--peers", "k-diffusion,diffusers"],
            "diffusers",
            "needs the diffusers package, which is not installed",
        ),
        (["--peers", "k-diffusion"], "k_diffusion", "needs the k_diffusion package, which is not installed"),
    ],
)
def test_bad_peers_are_one_line_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], blocked: str | None, expected: str
) -> None:
    if blocked is not None:
        monkeypatch.setitem(sys.modules, blocked, None)  # find_spec then reports the package absent
    out = tmp_path / "b"
    result = invoke("bench", "--solvers", "ddim", "--nfe", "4", *args, "--out", str(out))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout and not out.exists()


def test_a_peer_without_the_swept_solvers_is_a_warning(tmp_path: Path) -> None:
    args = ["bench", "--solvers", "em", "--nfe", "4", "--num-samples", "16", "--no-plot"]
    result = invoke(*args, "--peers", "diffusers", "--out", str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == "warning: peer 'diffusers' implements none of the swept solvers"
    assert {cell["implementation"] for cell in json.loads(result.stdout)["cells"]} == {"diffkit"}
