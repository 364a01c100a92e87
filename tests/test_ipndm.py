"""`ipndm` (improved PNDM, Zhang & Chen 2023): conformance, orders, Adams-Bashforth weights, reference loop.

k-diffusion 0.1.1.post1 has no `sample_ipndm` / `sample_ipndm_v`, so the peer here is a small
reference loop written from the paper's formulas in k-diffusion's conventions (scaled state
x_s = x / alpha, sigma_s = sigma / alpha, the EDM denoiser of `peers.k_diffusion_denoiser`,
d = (x_s - D) / sigma_s): an independent route to the same numbers. Exactness against the oracle
is the convergence-order test (error against dopri5 from the same noise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.polynomial import Polynomial
from peers import k_diffusion_denoiser, k_diffusion_sigmas

import diffkit
from diffkit.core.errors import OptionError
from diffkit.plugins.ipndm import FIXED_WEIGHTS, adams_bashforth_weights
from diffkit.solvers import append_final_zero
from diffkit.testing import check_convergence_order, check_sampler_conformance

OPTIONS = [
    {},
    {"order": 2},
    {"variable_step": True},
    {"order": 3, "variable_step": True, "lower_order_final": True},
]
# (options, declared, steps) on gmm:d64 / vp, quadratic grid, float64. Equal-step weights on a grid
# that is not uniform in rho are second order whatever `order` is (measured 2.06-2.12 for orders
# 3 and 4); the variable-step weights keep the order (measured 2.84 and 3.72 here).
ORDER_CASES = [
    ({"order": 1}, 1.0, (32, 64, 128)),
    ({"order": 2}, 2.0, (64, 128, 256)),
    ({"order": 4}, 2.0, (64, 128, 256)),
    ({"order": 3, "variable_step": True}, 3.0, (64, 128, 256)),
    ({"order": 4, "variable_step": True}, 4.0, (64, 128, 256)),
]
# the paper's equal-step Adams-Bashforth weights, newest derivative first
PAPER_WEIGHTS = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


def _ids(cases: list) -> list[str]:
    return [
        "-".join(f"{k}={v}" for k, v in (c if isinstance(c, dict) else c[0]).items()) or "default"
        for c in cases
    ]


@pytest.mark.parametrize("options", OPTIONS, ids=_ids(OPTIONS))
def test_conformance(registry: diffkit.Registry, options: dict) -> None:
    """Reproducible, stateless, NFE = counted calls, float32/float64, (B, 2) and (B, 1, 8, 8) data."""
    check_sampler_conformance(registry, "ipndm", options=options)


@pytest.mark.slow
@pytest.mark.parametrize("options, declared, steps", ORDER_CASES, ids=_ids(ORDER_CASES))
def test_convergence_order(registry: diffkit.Registry, options: dict, declared: float, steps: tuple) -> None:
    """Error vs dopri5 from the same noise shrinks at the declared order (+-0.3)."""
    result = check_convergence_order(
        registry,
        "ipndm",
        steps,
        options=options,
        model="gmm:d64",
        grid="quadratic",
        batch=16,
        reference_tol=1e-10,
    )
    assert result.declared == declared
    assert result.errors == tuple(sorted(result.errors, reverse=True))


def test_equal_steps_give_the_paper_weights() -> None:
    """The variable-step weights on equally spaced nodes 0, -1, -2, ... are the fixed AB weights."""
    for p in range(1, 5):
        nodes = -torch.arange(p, dtype=torch.float64)
        expected = torch.tensor(PAPER_WEIGHTS[p], dtype=torch.float64)
        assert torch.allclose(adams_bashforth_weights(nodes), expected, rtol=0, atol=1e-14)
        assert FIXED_WEIGHTS[p - 1] == pytest.approx(PAPER_WEIGHTS[p], abs=1e-15)


def test_variable_weights_integrate_polynomials_exactly() -> None:
    """For any nodes, sum_j w_j q(u_j) = int_0^1 q for every polynomial q of degree < p."""
    generator = torch.Generator().manual_seed(1)
    for p in range(1, 5):
        nodes = torch.cat([torch.zeros(1), -torch.cumsum(0.5 + torch.rand(p - 1, generator=generator), 0)])
        weights = adams_bashforth_weights(nodes.to(torch.float64))
        coefficients = torch.randn(p, generator=generator, dtype=torch.float64)
        q = sum(c * nodes.to(torch.float64) ** k for k, c in enumerate(coefficients))
        exact = sum(c / (k + 1) for k, c in enumerate(coefficients))
        assert float((weights * q).sum()) == pytest.approx(float(exact), abs=1e-12)


def _lagrange_integrals(nodes: list[float]) -> list[float]:
    """int_0^1 of each Lagrange basis polynomial on `nodes` (numpy polynomials, independent of diffkit)."""
    out = []
    for j, node in enumerate(nodes):
        others = [n for k, n in enumerate(nodes) if k != j]
        basis = (
            Polynomial.fromroots(others) / float(np.prod([node - n for n in others]))
            if others
            else Polynomial([1])
        )
        antiderivative = basis.integ()
        out.append(float(antiderivative(1.0) - antiderivative(0.0)))
    return out


def _reference_ipndm(
    denoiser, x_s: torch.Tensor, sigmas: torch.Tensor, order: int, variable: bool
) -> torch.Tensor:
    """iPNDM in sigma space (Zhang & Chen 2023, appendix): AB on d = (x_s - D) / sigma, warm-up orders."""
    derivatives: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        derivatives.insert(0, (x_s - denoiser(x_s, sigma)) / sigma)
        del derivatives[order:]
        p = len(derivatives)
        if variable:
            nodes = [float((sigmas[i - j] - sigma) / (sigma_next - sigma)) for j in range(p)]
            weights = _lagrange_integrals(nodes)
        else:
            weights = PAPER_WEIGHTS[p]
        x_s = x_s + (sigma_next - sigma) * sum(w * d for w, d in zip(weights, derivatives, strict=True))
    return x_s


@pytest.mark.parametrize(
    "process_name, grid_name", [("vp", "quadratic"), ("ve", "karras"), ("ddpm", "log-snr")]
)
@pytest.mark.parametrize("order", [2, 4])
@pytest.mark.parametrize("variable", [False, True])
def test_matches_reference_loop(
    registry: diffkit.Registry, process_name: str, grid_name: str, order: int, variable: bool
) -> None:
    """`ipndm` = the paper's loop in sigma space (k-diffusion's conventions), float64, to rounding."""
    process = registry.build("process", process_name, {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = process.prior_sample((32, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grid = registry.build("grid", grid_name, {})(process, 12)
    sigmas = k_diffusion_sigmas(process, grid, append_zero=False)
    alpha_first, alpha_last = process.alpha(grid[0]), process.alpha(grid[-1])
    expected = alpha_last * _reference_ipndm(
        k_diffusion_denoiser(model, process), x_init / alpha_first, sigmas, order, variable
    )
    sampler = registry.build("sampler", "ipndm", {"order": order, "variable_step": variable})
    result = sampler(model, process, x_init, grid)
    assert result.nfe == 12
    assert float((result.x - expected).abs().max() / expected.abs().max()) < 1e-10


def test_variable_step_equals_fixed_on_a_grid_uniform_in_rho(registry: diffkit.Registry) -> None:
    """Where the rho steps are equal the two forms coincide (and differ elsewhere)."""
    process = registry.build("process", "ve", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = process.prior_sample((16, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ends = k_diffusion_sigmas(
        process, torch.tensor([process.t_max, process.t_min], dtype=torch.float64), append_zero=False
    )
    rho = torch.linspace(float(ends[0]), float(ends[1]), 11, dtype=torch.float64)
    uniform_in_rho = process.t_from_log_snr(-2.0 * torch.log(rho))
    fixed, variable = (
        registry.build("sampler", "ipndm", {"variable_step": v})(model, process, x_init, uniform_in_rho).x
        for v in (False, True)
    )
    assert torch.allclose(fixed, variable, rtol=0, atol=1e-10)
    quadratic = registry.build("grid", "quadratic", {})(process, 10)
    fixed, variable = (
        registry.build("sampler", "ipndm", {"variable_step": v})(model, process, x_init, quadratic).x
        for v in (False, True)
    )
    assert (fixed - variable).abs().max() > 1e-3


@pytest.mark.parametrize("value", [0, 5, 2.5])
def test_bad_order_gives_one_line(registry: diffkit.Registry, value: float) -> None:
    """Orders outside 1..4: one line (OptionError), before any sampling."""
    with pytest.raises(OptionError) as error:
        registry.build("sampler", "ipndm", {"order": value})
    text = str(error.value)
    if isinstance(value, int):
        assert text == f"sampler 'ipndm': option order must be an integer in [1, 4], got {value}"
    else:
        assert text.startswith("sampler 'ipndm': bad value 2.5 for option 'order' (expected an integer)")


def test_grid_ending_at_sigma_zero_ends_with_the_x0_prediction(registry: diffkit.Registry) -> None:
    """A final point 0.0: the last step is the x0 prediction at t_min (one NFE, no model call at t = 0)."""
    process = registry.build("process", "vp", {})
    model = registry.build("model", "gmm:ring8", {}, process)
    x_init = process.prior_sample((16, 2), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grid = registry.build("grid", "quadratic", {})(process, 6)
    sampler = registry.build("sampler", "ipndm", {})
    before = sampler(model, process, x_init, grid)
    result = sampler(model, process, x_init, append_final_zero(grid))
    assert result.nfe == 7 and result.steps == 7
    assert torch.equal(result.x, model.predict(before.x, grid[-1]).x0)
