"""Mean-reverting diffusion: the IR-SDE schedule, the shifted model, MRS, on an exact model."""

from __future__ import annotations

import math

import pytest
import torch

from analytic import fitted_slope, linear_output_moments
from diffsolve.core.errors import IncompatibleModelError, SolverOptionError
from diffsolve.core.mean_reverting import MeanReverting, MeanRevertingDenoiser
from diffsolve.core.noise import GivenNoise
from diffsolve.drivers.mean_reverting import mrs_options, sample_mean_reverting
from diffsolve.grids import make_grid
from diffsolve.zoo import MeanRevertingGaussian

SCHEDULES = [MeanReverting(4.6, 4.6, 0.5), MeanReverting(1.0, 8.0, 0.3, t_min=2e-3)]
VARIANTS = [(k, p, o) for k in ("ode", "sde") for p in ("data", "noise") for o in (1, 2)]


def _model(schedule, d=2):
    return MeanRevertingGaussian(schedule, [0.5, -1.0][:d], [0.04, 0.25][:d], [0.2, 0.3][:d])


@pytest.mark.parametrize("sch", SCHEDULES, ids=["constant", "linear"])
def test_schedule_inverse_and_ir_sde_rates(sch):
    """t(lambda) inverts lambda(t); alpha', sigma' are exact; and the forward SDE of (alpha,
    sigma), g^2 = d sigma^2/dt - 2 (d log alpha/dt) sigma^2, is IR-SDE's 2 lambda_inf^2 theta."""
    ts = torch.linspace(sch.t_min, sch.t_max, 9, dtype=torch.float64)
    assert torch.allclose(sch.t_of_lam(sch.lam(ts)), ts, rtol=1e-10, atol=0)
    for t in ts.tolist()[1:-1]:
        e = 1e-6
        fd_a = (float(sch.alpha(t + e)) - float(sch.alpha(t - e))) / (2 * e)
        fd_s2 = (float(sch.sigma(t + e)) ** 2 - float(sch.sigma(t - e)) ** 2) / (2 * e)
        assert sch.d_alpha_dt(t) == pytest.approx(fd_a, rel=1e-7)
        assert 2 * float(sch.sigma(t)) * sch.d_sigma_dt(t) == pytest.approx(fd_s2, rel=1e-7)
        g2 = fd_s2 + 2 * sch.theta(t) * float(sch.sigma(t)) ** 2
        assert g2 == pytest.approx(sch.g2(t), rel=1e-6)
        assert float(sch.alpha(t)) ** 2 + float(sch.sigma(t)) ** 2 != pytest.approx(1.0)


@pytest.mark.parametrize("sch", SCHEDULES, ids=["constant", "linear"])
def test_exact_flow_solves_the_mr_probability_flow_ode(sch):
    """The closed-form flow (notes Sec. D.5, re-derived in zoo/mean_reverting.py) equals RK4 on
    dx/dt = theta (mu - x) - g^2/2 score(x) in t, written here from the SDE alone."""
    mg = _model(sch)
    x = mg.sample(8, sch.t_max, torch.Generator().manual_seed(0))
    t_end, n = 0.05, 400
    dt = (t_end - sch.t_max) / n

    def f(x, t):
        a, v = mg.marginal(t)
        return sch.theta(t) * (mg.mu - x) + 0.5 * sch.g2(t) * (x - a) / v

    y, t = x.clone(), sch.t_max
    for _ in range(n):
        k1 = f(y, t)
        k2 = f(y + dt / 2 * k1, t + dt / 2)
        k3 = f(y + dt / 2 * k2, t + dt / 2)
        k4 = f(y + dt * k3, t + dt)
        y, t = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + dt
    assert float((y - mg.flow(x, sch.t_max, t_end)).abs().max()) < 1e-8


def _mrs_reference(mg, x, pts, kind, pred, order, zs):
    """MRS in data coordinates, term by term from research note Sec. D.2 (mu terms included)."""
    mu = mg.mu
    net = mg.net("x0" if pred == "data" else "eps")
    m_steps = len(pts) - 1
    q_prev = h_prev = None
    for i in range(m_steps):
        p, q = pts[i], pts[i + 1]
        h = q.lam - p.lam
        q0 = net(x, torch.tensor([p.t], dtype=torch.float64), mu=mu)
        o = min(order, i + 1, m_steps - i if m_steps < 10 else order)
        d1 = (q0 - q_prev) / (h_prev / h) if o == 2 else torch.zeros_like(x)
        if kind == "ode" and pred == "data":
            phi1 = math.exp(-h) - 1
            phi2 = phi1 / h + 1
            x = (q.sigma / p.sigma * x - q.alpha * (phi1 * q0 - phi2 * d1)
                 + mu * (1 - q.sigma / p.sigma + q.sigma / p.sigma * p.alpha - q.alpha))
        elif kind == "ode":
            phi1 = math.exp(h) - 1
            phi2 = phi1 / h - 1
            x = (q.alpha / p.alpha * x - q.sigma * (phi1 * q0 + phi2 * d1)
                 + mu * (1 - q.alpha / p.alpha))
        elif pred == "data":
            e2 = math.exp(-2 * h)
            x = (q.sigma / p.sigma * math.exp(-h) * x + q.alpha * (1 - e2) * q0
                 + q.alpha * (1 - (1 - e2) / (2 * h)) * d1 + q.sigma * math.sqrt(1 - e2) * zs[i]
                 + mu * (1 - q.alpha / p.alpha * e2 - q.alpha * (1 - e2)))
        else:
            eh = math.exp(h) - 1
            x = (q.alpha / p.alpha * x - 2 * q.sigma * eh * q0 - 2 * q.sigma * (eh / h - 1) * d1
                 + q.sigma * math.sqrt(math.exp(2 * h) - 1) * zs[i] + mu * (1 - q.alpha / p.alpha))
        q_prev, h_prev = q0, h
    return x


@pytest.mark.parametrize("steps", [6, 12], ids=["few", "many"])
@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
def test_mrs_is_the_notes_update_with_its_mu_terms(variant, steps):
    """sample_mean_reverting(solver="mrs") = the MRS formulas written out in data coordinates,
    including the note's order schedule (warm-up; first-order last step under 10 steps)."""
    kind, pred, order = variant
    sch = SCHEDULES[1]
    mg = _model(sch)
    gen = torch.Generator().manual_seed(1)
    x = mg.sample(5, sch.t_max, gen)
    grid = make_grid("uniform_t", steps, sch, to_zero=False)
    zs = [torch.randn(5, 2, dtype=torch.float64, generator=gen) for _ in range(steps)]
    out = sample_mean_reverting(mg.denoiser("eps"), x, grid, kind=kind, prediction=pred,
                                order=order, noise=GivenNoise(zs))
    pts = [sch.point(float(v)) for v in grid.finite_lams()]
    ref = _mrs_reference(mg, x, pts, kind, pred, order, zs)
    assert out.nfe == steps
    assert torch.allclose(out.x, ref, rtol=1e-10, atol=1e-12)


ODE_NS = [10, 20, 40, 80]


def _ode_errors(mg, solver, **options):
    sch = mg.schedule
    x = mg.sample(32, sch.t_max, torch.Generator().manual_seed(0))
    exact = mg.flow(x, sch.t_max, sch.t_min)
    return [float((sample_mean_reverting(mg.denoiser("eps"), x, "uniform_lambda", steps=n,
                                         solver=solver, **options).x - exact).abs().max())
            for n in ODE_NS]


@pytest.mark.parametrize("pred", ["data", "noise"])
@pytest.mark.parametrize("order", [1, 2])
def test_mrs_ode_measured_order(pred, order):
    """Error at t_min vs the exact flow, uniform lambda, 10-80 steps: measured slopes 0.97
    (order 1) and 1.93 (order 2, both predictions)."""
    errs = _ode_errors(_model(SCHEDULES[0]), "mrs", prediction=pred, order=order)
    assert abs(fitted_slope([1 / n for n in ODE_NS], errs) - order) < 0.35


def test_mrs_beats_euler_on_the_ode_at_equal_nfe():
    """At 40 NFE: MRS-2 (data) 4.4e-3 vs Euler in t on the PF-ODE 7.2e-2 (measured)."""
    mg = _model(SCHEDULES[0])
    mrs = _ode_errors(mg, "mrs", prediction="data", order=2)
    euler = _ode_errors(mg, "euler_maruyama", eta=0.0)
    assert mrs[2] * 5 < euler[2]


@pytest.mark.parametrize("pred,order", [("data", 1), ("data", 2), ("noise", 1), ("noise", 2)])
def test_mrs_sde_weak_order(pred, order):
    """Exact output moments (no Monte Carlo; tests/analytic.py) on 1-D data, uniform lambda:
    |mean error| + |variance error| at t_min falls at least at order `order`."""
    sch = SCHEDULES[0]
    mg = _model(sch, d=1)
    (a_t,), (v_t,) = (float(w) for w in mg.marginal(sch.t_max)[0]), mg.marginal(sch.t_max)[1]
    a0, v0 = (float(w[0]) for w in mg.marginal(sch.t_min))
    mu = float(mg.mu[0])
    ns = [40, 80, 160]
    errs = []
    for n in ns:
        grid = make_grid("uniform_lambda", n, sch, to_zero=False)
        m, v = linear_output_moments(mg.denoiser("eps"), grid, "dpm_multistep", a_t - mu,
                                     float(v_t), **mrs_options("sde", pred, order, steps=n))
        errs.append(abs(m - (a0 - mu)) + abs(v - v0))
    assert fitted_slope([1 / n for n in ns], errs) > order - 0.35


def test_wrapper_and_options():
    sch = SCHEDULES[0]
    mg = _model(sch)
    x = mg.sample(3, 0.5, torch.Generator().manual_seed(0))
    pt = sch.point(float(sch.lam(0.5)))
    ds = [mg.denoiser(p).data(x - mg.mu, pt) for p in ("eps", "x0", "score")]
    assert torch.allclose(ds[0], ds[1], atol=1e-12) and torch.allclose(ds[0], ds[2], atol=1e-12)
    with pytest.raises(IncompatibleModelError):
        MeanRevertingDenoiser(mg.net(), sch, mg.mu, prediction="v")
    with pytest.raises(SolverOptionError):
        mrs_options("sde", "data", 3, steps=10)
    with pytest.raises(SolverOptionError):
        mrs_options("pde", "data", 1, steps=10)
