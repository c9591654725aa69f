"""Cost declared once and honoured by every driver (architecture issue, item 1).

For every registered solver with each of its order, warm-up and corrector options
(``solver_variants.py``) and several NFE budgets: the grid picked for the budget is the
largest whose declared cost fits, and the evaluations actually made equal the declared cost
through the sampling loop, the compiled loop, the one-evaluation Stepper, the diffusers
scheduler adapter and the k-diffusion functions.
"""

from __future__ import annotations

import pytest
import torch

import diffsolve
from diffsolve import SolverOptionError
from diffsolve.drivers.compiled import compiled_sampler
from diffsolve.drivers.stepper import Stepper
from diffsolve.integrations import kdiffusion
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver
from diffsolve.zoo import GaussianMixture
from solver_variants import all_variants, variant_id

VARIANTS = all_variants()
IDS = [variant_id(n, o) for n, o in VARIANTS]
BUDGETS = (7, 12)


@pytest.fixture(scope="module")
def model():
    return GaussianMixture.default_2d().denoiser(EDM())


def _budgets(solver) -> list[int]:
    smallest = solver.nfe(1, denoise_final=True)
    return sorted({smallest, *[b for b in BUDGETS if b >= smallest]})


def _check_budget(solver, budget: int) -> int:
    """The largest grid that fits; returns its finite step count."""
    finite = solver.steps_for_nfe(budget) - 1
    declared = solver.nfe(finite, denoise_final=True)
    assert declared <= budget
    assert solver.nfe(finite + 1, denoise_final=True) > budget, "not the largest grid that fits"
    return finite


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_counted_equals_declared_in_every_driver(name, options, model):
    solver = get_solver(name, **options)
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    for budget in _budgets(solver):
        finite = _check_budget(solver, budget)
        declared = solver.nfe(finite, denoise_final=True)
        grid = diffsolve.make_grid("karras", finite + 1, model.schedule)

        n0 = model.nfe  # the sampling loop, budget -> grid
        res = diffsolve.sample(model, (2, 2), solver=name, nfe=budget, progress=False,
                               **options)
        assert res.nfe == model.nfe - n0 == declared, ("sample", budget)
        assert res.grid.steps == finite + 1

        run = compiled_sampler(model, (2, 2), grid, solver, mode="eager")
        n0 = model.nfe
        run(x * float(grid.sigmas[0]))
        assert run.nfe == model.nfe - n0 == declared, ("compiled", budget)

        stepper = Stepper(solver, model.schedule, grid, x * float(grid.sigmas[0]))
        fed = 0
        while not stepper.done:
            xq, point = stepper.query
            stepper.feed(model.data(xq, point))
            fed += 1
        assert fed == stepper.nfe == declared, ("stepper", budget)
        assert len(solver.plan(model.schedule, grid.finite_lams(),
                               denoise_final=True).evaluations) == finite


def test_the_cost_bug_of_the_single_step_warm_up_is_gone(model):
    """dpmpp_3m with the single-step warm-up used 14 evaluations for nfe=10 (11 for 2M)."""
    for name in ("dpmpp_3m", "dpmpp_2m"):
        res = diffsolve.sample(model, (2, 2), solver=name, warmup="singlestep", nfe=10,
                               progress=False)
        assert res.nfe == 10


def test_budget_too_small_or_absurd_is_refused():
    with pytest.raises(SolverOptionError, match="needs at least 3 NFE"):
        get_solver("heun").steps_for_nfe(2)
    with pytest.raises(SolverOptionError, match="over the limit"):
        get_solver("ddim").steps_for_nfe(10**9)


@pytest.mark.parametrize("name", sorted({n for n, _ in VARIANTS}))
def test_kdiffusion_functions_count_as_declared(name, model):
    fn = getattr(kdiffusion, f"sample_{name}")
    kd_model = GaussianMixture.default_2d().kdiffusion_denoiser()
    calls = [0]

    def counted(x, sigma, **kw):
        calls[0] += 1
        return kd_model(x, sigma, **kw)

    options = {"lower_order_final": False} if hasattr(get_solver(name), "lower_order_final") \
        else {}
    solver = get_solver(name, **options)
    for intervals in (4, 9):
        sigmas = diffsolve.grids.karras(intervals, EDM()).sigmas
        calls[0] = 0
        fn(counted, torch.randn(2, 2, dtype=torch.float64) * sigmas[0], sigmas, disable=True)
        assert calls[0] == solver.nfe(intervals - 1, denoise_final=True), intervals


diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_diffusers_adapter_counts_as_declared(name, options):
    from diffusers import DDPMScheduler

    from diffsolve.integrations.diffusers import DiffsolveScheduler

    sched = DiffsolveScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver=name,
                                           solver_options=options)
    sched.set_timesteps(6)
    finite = len(sched.grid.finite_lams()) - 1
    declared = sched.solver.nfe(finite, denoise_final=sched.grid.to_zero)
    assert len(sched.timesteps) == declared
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    steps = 0
    for t in sched.timesteps:
        x = sched.step(torch.zeros_like(x), t, x).prev_sample
        steps += 1
    assert steps == declared
    with pytest.raises(SolverOptionError):
        sched.step(torch.zeros_like(x), sched.timesteps[-1], x)
