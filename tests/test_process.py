"""Noise processes against closed forms, finite differences, simulation and the DDPM tables.

References: Song et al. 2021 ("Score-Based Generative Modeling through SDEs", eqs. 9-12 and
App. B), Ho et al. 2020 (linear DDPM betas), Nichol & Dhariwal 2021 (cosine schedule, eq. 17).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffkit import OptionError

F64 = torch.float64
#: Processes smooth enough for a plain forward Euler-Maruyama run (ddpm-cosine's last segment is stiff).
SMOOTH_PROCESSES = ("vp", "subvp", "ve", "ddpm")


def _times(process, n: int = 101, margin: float = 0.0) -> torch.Tensor:
    return torch.linspace(process.t_min + margin, process.t_max - margin, n, dtype=F64)


def _close(actual, expected, rtol=1e-12, atol=0.0):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


# ---- textbook SDEs (Song et al. 2021, eqs. 9-12) -------------------------------------------------


@pytest.mark.parametrize("beta_min, beta_max", [(0.1, 20.0), (0.5, 10.0)])
def test_vp_reproduces_textbook_sde(registry, beta_min, beta_max):
    """VP: f = -beta/2, g^2 = beta, alpha = exp(-B/2), sigma^2 = 1 - exp(-B) with B = int_0^t beta."""
    vp = registry.build("process", "vp", {"beta_min": str(beta_min), "beta_max": str(beta_max)})
    t = _times(vp)
    beta = beta_min + t * (beta_max - beta_min)
    integral = beta_min * t + 0.5 * (beta_max - beta_min) * t**2
    _close(vp.f(t), -beta / 2)
    _close(vp.diffusion_squared(t), beta)
    _close(vp.diffusion(t), beta.sqrt())
    _close(vp.alpha(t), torch.exp(-integral / 2))
    _close(vp.sigma(t), torch.sqrt(1 - torch.exp(-integral)))
    x = torch.randn(t.numel(), 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    _close(vp.drift(x, t), -beta[:, None] / 2 * x)


def test_subvp_reproduces_textbook_sde(registry):
    """sub-VP: f = -beta/2, g^2 = beta (1 - exp(-2 int_0^t beta)), sigma = 1 - exp(-B)."""
    subvp = registry.build("process", "subvp", {})
    t = _times(subvp)
    beta = 0.1 + t * 19.9
    integral = 0.1 * t + 0.5 * 19.9 * t**2
    _close(subvp.f(t), -beta / 2)
    _close(subvp.diffusion_squared(t), beta * (1 - torch.exp(-2 * integral)))
    _close(subvp.alpha(t), torch.exp(-integral / 2))
    _close(subvp.sigma(t), 1 - torch.exp(-integral))


@pytest.mark.parametrize("sigma_max", [50.0, 80.0])
def test_ve_reproduces_textbook_sde(registry, sigma_max):
    """VE: alpha = 1, sigma = s_min (s_max/s_min)^t, f = 0, g^2 = 2 sigma^2 log(s_max/s_min)."""
    options = {} if sigma_max == 50.0 else {"sigma_max": str(sigma_max)}
    ve = registry.build("process", "ve", options)
    t = _times(ve)
    sigma = 0.01 * (sigma_max / 0.01) ** t
    _close(ve.alpha(t), torch.ones_like(t))
    _close(ve.sigma(t), sigma)
    _close(ve.f(t), torch.zeros_like(t), atol=0.0)
    _close(ve.diffusion_squared(t), 2 * sigma**2 * math.log(sigma_max / 0.01))
    assert ve.sigma_max == sigma_max
    assert ve.prior_std() == pytest.approx(sigma_max, rel=1e-13)


def test_derivatives_match_finite_differences(process):
    """f = d log alpha/dt and g^2 + 2 f sigma^2 = d sigma^2/dt, against central differences (h = 1e-6)."""
    h = 1e-6
    if hasattr(process, "num_steps"):  # piecewise in t: stay 0.3 knot spacings from the knots
        knots = torch.randperm(process.num_steps - 1, generator=torch.Generator().manual_seed(0))[:40]
        t = (knots.to(F64) + 1.3) / process.num_steps
    else:
        t = _times(process, 41, margin=1e-4)
    alpha, sigma2 = process.alpha, lambda u: process.sigma(u) ** 2
    fd_log_alpha = (alpha(t + h).log() - alpha(t - h).log()) / (2 * h)
    fd_sigma2 = (sigma2(t + h) - sigma2(t - h)) / (2 * h)
    f = process.f(t)
    _close(f, fd_log_alpha, rtol=1e-6, atol=1e-8)
    _close(process.diffusion_squared(t) + 2 * f * sigma2(t), fd_sigma2, rtol=1e-6, atol=1e-10)
    _close(process.diffusion(t) ** 2, process.diffusion_squared(t), rtol=1e-12)


# ---- forward SDE simulation ------------------------------------------------------------------


def _em_moments(process, x0, batch, n_steps, checkpoints, seed):
    """Euler-Maruyama for dx = f x dt + g dw from x_{t_min} ~ p(x_{t_min} | x0); moments at checkpoints."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(process.t_min, process.t_max, n_steps + 1, dtype=F64)
    f, g, dt = process.f(t), process.diffusion(t), t.diff()
    mean, std = process.marginal(x0.expand(batch, -1), t[0])
    x = mean + std * torch.randn(batch, x0.shape[-1], generator=generator, dtype=F64)
    wanted = {int(round(c * n_steps)) for c in checkpoints}
    out = []
    for k in range(n_steps):
        noise = torch.randn(x.shape, generator=generator, dtype=F64)
        x = x + f[k] * x * dt[k] + g[k] * dt[k].sqrt() * noise
        if k + 1 in wanted:
            out.append((t[k + 1], x.mean(0), x.var(0).mean()))
    return out


def _z_scores(process, x0, moments, batch, alpha_scale=1.0, sigma_scale=1.0):
    """Largest |z| of sample means and pooled variances against the (scaled) marginal."""
    z_mean, z_var = 0.0, 0.0
    for t, mean, var in moments:
        alpha, sigma = alpha_scale * process.alpha(t), sigma_scale * process.sigma(t)
        z_mean = max(z_mean, ((mean - alpha * x0) / (sigma / math.sqrt(batch))).abs().max().item())
        n = batch * x0.numel()  # the dims are independent given x0: pool them for the variance
        z_var = max(z_var, abs((var - sigma**2) / (sigma**2 * math.sqrt(2 / (n - 1)))).item())
    return z_mean, z_var


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOOTH_PROCESSES)
def test_marginal_matches_forward_euler_maruyama(registry, name):
    """10^4 paths x 2 dims, 2000 EM steps: mean and variance within 5 Monte-Carlo standard errors.

    The EM bias at 2000 steps is below 1 standard error (see the moment recursion test below);
    the same statistics reject a marginal whose alpha and sigma are 5% off.
    """
    process = registry.build("process", name, {})
    x0 = torch.tensor([1.5, -0.7], dtype=F64)
    batch = 10_000
    moments = _em_moments(process, x0, batch, n_steps=2000, checkpoints=(0.1, 0.5, 1.0), seed=0)
    z_mean, z_var = _z_scores(process, x0, moments, batch)
    assert z_mean < 5 and z_var < 5, (z_mean, z_var)
    z_mean, z_var = _z_scores(process, x0, moments, batch, alpha_scale=1.05, sigma_scale=1.05)
    assert z_mean > 5 and z_var > 5, (z_mean, z_var)


@pytest.mark.parametrize("name", SMOOTH_PROCESSES)
def test_em_moment_recursion_converges_at_first_order(registry, name):
    """E and Var of EM obey m' = (1 + f dt) m, v' = (1 + f dt)^2 v + g^2 dt: error -> 0 like dt."""
    process = registry.build("process", name, {})

    def max_error(n_steps):
        t = torch.linspace(process.t_min, process.t_max, n_steps + 1, dtype=F64)
        f, g2, dt = process.f(t).tolist(), process.diffusion_squared(t).tolist(), t.diff().tolist()
        mean, var = [float(process.alpha(t[0]))], [float(process.sigma(t[0])) ** 2]
        for k in range(n_steps):
            mean.append((1 + f[k] * dt[k]) * mean[-1])
            var.append((1 + f[k] * dt[k]) ** 2 * var[-1] + g2[k] * dt[k])
        alpha, sigma = process.alpha(t), process.sigma(t)
        mean_error = ((torch.tensor(mean, dtype=F64) - alpha) / sigma).abs().max()
        var_error = (torch.tensor(var, dtype=F64) / sigma**2 - 1).abs().max()
        return max(mean_error.item(), var_error.item())

    coarse, fine = max_error(1000), max_error(4000)
    assert fine < 0.1
    assert 3.0 < coarse / fine < 5.0, (coarse, fine)


# ---- discrete DDPM -----------------------------------------------------------------------------


def _knots(n):
    return torch.arange(1, n + 1, dtype=F64) / n


@pytest.mark.parametrize("n, beta_start, beta_end", [(1000, 1e-4, 0.02), (10, 0.05, 0.3)])
def test_ddpm_alpha_bar_exact_at_knots(registry, n, beta_start, beta_end):
    """alpha(i/N)^2 = prod_{j<=i} (1 - beta_j), beta_j linear from beta_start to beta_end (Ho et al.)."""
    options = {"num_steps": str(n), "beta_start": str(beta_start), "beta_end": str(beta_end)}
    ddpm = registry.build("process", "ddpm", {} if n == 1000 else options)
    betas = [beta_start + j * (beta_end - beta_start) / (n - 1) for j in range(n)]
    alpha_bar = torch.tensor([math.prod(1 - b for b in betas[: i + 1]) for i in range(n)], dtype=F64)
    _close(ddpm.alpha(_knots(n)) ** 2, alpha_bar, rtol=1e-12)
    _close(ddpm.alpha_bar_table, alpha_bar, rtol=1e-12)
    _close(ddpm.alpha(_knots(n)) ** 2 + ddpm.sigma(_knots(n)) ** 2, torch.ones(n, dtype=F64))
    assert (ddpm.t_min, ddpm.t_max) == (1 / n, 1.0)


def test_ddpm_cosine_alpha_bar_exact_at_knots(registry):
    """alpha_bar(i/N) = f(i/N)/f(0), f(t) = cos^2(pi/2 (t + s)/(1 + s)); the last beta is clipped at 0.999."""
    n, s = 1000, 0.008
    cosine = registry.build("process", "ddpm-cosine", {})

    def f(t):
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    expected = [f(i / n) / f(0) for i in range(1, n)]
    expected.append(expected[-1] * (1 - 0.999))  # f(1) = 0 would give beta_N = 1
    _close(cosine.alpha(_knots(n)) ** 2, torch.tensor(expected, dtype=F64), rtol=1e-12)


def test_ddpm_converges_to_vp_like_one_over_n(registry):
    """betas beta_min/N .. beta_max/N: max_i |alpha_bar_i - alpha_vp(i/N)^2| ~ 0.81 / N (measured)."""
    vp = registry.build("process", "vp", {})
    errors, g2_errors = [], []
    for n in (250, 1000, 4000):
        ddpm = registry.build(
            "process", "ddpm", {"num_steps": str(n), "beta_start": str(0.1 / n), "beta_end": str(20 / n)}
        )
        t = _knots(n)
        errors.append((ddpm.alpha(t) ** 2 - vp.alpha(t) ** 2).abs().max().item())
        # the interpolated SDE converges too, away from t = 0 (where log-SNR is log-singular)
        t = torch.linspace(0.1, 1.0, 1001, dtype=F64)
        g2_errors.append((ddpm.diffusion_squared(t) / vp.diffusion_squared(t) - 1).abs().max().item())
    for error, n in zip(errors, (250, 1000, 4000), strict=True):
        assert 0.7 < error * n < 0.9, errors  # measured 0.819, 0.811, 0.809
    assert errors[0] / errors[1] > 3.8 and errors[1] / errors[2] > 3.9, errors
    assert g2_errors[0] / g2_errors[1] > 3.5 and g2_errors[1] / g2_errors[2] > 3.5, g2_errors
    assert g2_errors[-1] < 5e-3, g2_errors


# ---- schedule properties -----------------------------------------------------------------------


def test_log_snr_inverts_and_decreases(process):
    t = _times(process, 2001)
    log_snr = process.log_snr(t)
    assert bool((log_snr[1:] < log_snr[:-1]).all())
    alpha, sigma = process.alpha(t), process.sigma(t)
    assert bool((alpha > 0).all()) and bool((sigma > 0).all())
    _close(log_snr, 2 * torch.log(alpha / sigma), rtol=1e-12, atol=1e-12)
    _close(process.t_from_log_snr(log_snr), t, rtol=1e-12, atol=1e-13)
    lam = torch.linspace(log_snr[-1].item(), log_snr[0].item(), 777, dtype=F64)
    _close(process.log_snr(process.t_from_log_snr(lam)), lam, rtol=1e-10, atol=1e-10)
    # out-of-range log-SNR clamps to the time range
    _close(
        process.t_from_log_snr(torch.tensor([1e3, -1e3], dtype=F64)),
        torch.tensor([process.t_min, process.t_max], dtype=F64),
    )


def test_constant_beta_vp_inverts_log_snr(registry):
    """beta_min == beta_max makes log alpha linear in t: the closed-form inverse takes its linear branch."""
    vp = registry.build("process", "vp", {"beta_min": "5", "beta_max": "5"})
    t = _times(vp, 11)
    _close(vp.alpha(t), torch.exp(-2.5 * t))
    _close(vp.t_from_log_snr(vp.log_snr(t)), t, rtol=1e-12, atol=1e-15)


def test_check_time(process):
    process.check_time(process.t_max * (1 + 1e-12))  # rounding at the ends is tolerated
    with pytest.raises(ValueError) as error:
        process.check_time(1.5)
    assert str(error.value) == f"time 1.5 outside the process range [{process.t_min}, {process.t_max}]"


def test_schedule_functions_return_dtype_of_t_and_compute_in_float64(process):
    t64 = _times(process, 33)
    t32 = t64.float()
    for fn in (
        process.alpha,
        process.sigma,
        process.log_snr,
        process.f,
        process.diffusion,
        process.t_from_log_snr,
    ):
        out32, out64 = fn(t32), fn(t32.double())
        assert out32.dtype == torch.float32 and out64.dtype == F64 and fn(0.5).dtype == F64
        assert torch.equal(out32, out64.float())  # float32 out is the float64 result, rounded once


def test_vp_sigma_at_tiny_t_is_accurate_in_float32(registry):
    """sigma(1e-6) = sqrt(-expm1(-B)) ~ 3.16e-4 is exact here; naive float32 sqrt(1 - exp(-B)) is 9% off."""
    vp = registry.build("process", "vp", {})
    t = torch.tensor([1e-6], dtype=torch.float32)
    integral = 0.1 * float(t) + 9.95 * float(t) ** 2
    exact = math.sqrt(-math.expm1(-integral))
    assert vp.sigma(t).item() == pytest.approx(exact, rel=1e-6)
    assert vp.log_snr(t).item() == pytest.approx(
        math.log(math.exp(-integral) / -math.expm1(-integral)), rel=1e-6
    )
    naive = torch.sqrt(1 - torch.exp(-torch.tensor(integral, dtype=torch.float32))).item()
    assert abs(naive / exact - 1) > 0.05


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("vp", {"beta_min": "30"}, "process 'vp': need 0 < beta_min <= beta_max, got 30.0, 20.0"),
        ("vp", {"t_min": "0"}, "process 'vp': need 0 < t_min < t_max, got 0.0, 1.0"),
        ("subvp", {"beta_min": "-1"}, "process 'subvp': need 0 < beta_min <= beta_max, got -1.0, 20.0"),
        ("ve", {"sigma_min": "100"}, "process 've': need 0 < sigma_min < sigma_max, got 100.0, 50.0"),
        ("ddpm", {"num_steps": "1"}, "process 'ddpm': need num_steps >= 2, got 1"),
        ("ddpm", {"beta_end": "1.5"}, "process 'ddpm': need 0 < beta_start <= beta_end < 1, got 0.0001, 1.5"),
        ("ddpm-cosine", {"s": "0"}, "process 'ddpm-cosine': need s > 0, got 0.0"),
    ],
)
def test_invalid_process_options_raise(registry, name, options, message):
    with pytest.raises(OptionError) as error:
        registry.build("process", name, options)
    assert str(error.value) == message


def test_options_override_defaults(registry):
    vp = registry.build("process", "vp", {"beta-max": "10", "t_min": "1e-4"})
    assert (vp.beta_min, vp.beta_max, vp.t_min, vp.t_max) == (0.1, 10.0, 1e-4, 1.0)
    ddpm = registry.build("process", "ddpm", {"num_steps": "50"})
    assert ddpm.t_min == 0.02 and ddpm.alpha_bar_table.shape == (50,)


# ---- marginal and prior ------------------------------------------------------------------------


def test_marginal_shapes_and_values(process):
    x0 = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64)
    mean, std = process.marginal(x0, t)
    assert mean.shape == x0.shape and std.shape == (4, 1, 1, 1)
    _close(mean, process.alpha(t).view(4, 1, 1, 1) * x0)
    _close(std, process.sigma(t).view(4, 1, 1, 1))
    mean, std = process.marginal(x0, 0.5)
    _close(std, process.sigma(torch.tensor(0.5, dtype=F64)).expand(4, 1, 1, 1))


def test_prior_sample_has_prior_std_and_is_reproducible(process):
    std = process.prior_std()
    assert std == pytest.approx(process.sigma(process.t_max).item(), rel=1e-15)
    draw = process.prior_sample((5000, 2, 2), generator=torch.Generator().manual_seed(7), dtype=F64)
    assert draw.shape == (5000, 2, 2) and draw.dtype == F64
    n = draw.numel()
    assert abs(draw.mean().item()) < 5 * std / math.sqrt(n)
    assert abs(draw.std().item() / std - 1) < 5 / math.sqrt(2 * n)
    again = process.prior_sample((5000, 2, 2), generator=torch.Generator().manual_seed(7), dtype=F64)
    other = process.prior_sample((5000, 2, 2), generator=torch.Generator().manual_seed(8), dtype=F64)
    assert torch.equal(draw, again) and not torch.equal(draw, other)
    assert process.prior_sample((3, 2), generator=torch.Generator().manual_seed(7)).dtype == torch.float32


@pytest.mark.parametrize("shape", [(6, 3), (6, 2, 4, 4)])
def test_prior_logp_matches_torch_normal(process, shape):
    z = 1.3 * process.prior_std() * torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    scale = torch.tensor(process.prior_std(), dtype=F64)
    expected = (
        torch.distributions.Normal(torch.zeros((), dtype=F64), scale)
        .log_prob(z)
        .sum(dim=tuple(range(1, z.ndim)))
    )
    logp = process.prior_logp(z)
    assert logp.shape == (shape[0],)
    _close(logp, expected, rtol=1e-12, atol=1e-10)


def test_processes_fixture_lists_every_builtin(registry, processes):
    assert processes == ("vp", "subvp", "ve", "ddpm", "ddpm-cosine")
    assert set(processes) <= set(registry.names("process"))
