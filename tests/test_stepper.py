"""The inverted-control Stepper reproduces solve() exactly for every registered solver."""

from __future__ import annotations

import pytest
import torch

from diffsolve import Grid, solve
from diffsolve.grids import karras
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver, list_solvers
from diffsolve.stepper import Stepper, evaluation_points
from diffsolve.zoo import GaussianMixture


@pytest.fixture(scope="module")
def gmm_model():
    return GaussianMixture.random(d=3, k=3, seed=0).denoiser(EDM())


@pytest.mark.parametrize("name", list_solvers())
def test_stepper_equals_solve(name, gmm_model):
    grid = karras(7, EDM())
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 80.0
    gmm_model.reset_nfe()
    ref = solve(gmm_model, x, grid, name, seed=5, progress=False)
    stepper = Stepper(name, gmm_model.schedule, grid, x, seed=5)
    points = []
    while not stepper.done:
        xq, point = stepper.query
        points.append(point.lam)
        stepper.feed(gmm_model.data(xq, point))
    assert torch.equal(stepper.x, ref.x)
    assert stepper.nfe == ref.nfe == get_solver(name).nfe(6, denoise_final=True)
    assert points == [p.lam for p in evaluation_points(name, EDM(), grid)]


def test_finished_stepper_refuses_more_input(gmm_model):
    stepper = Stepper("ddim", gmm_model.schedule, Grid.from_sigmas([10.0, 0.0]),
                      torch.zeros(2, 3))
    stepper.feed(torch.zeros(2, 3))
    assert stepper.done
    with pytest.raises(Exception, match="finished"):
        stepper.feed(torch.zeros(2, 3))


def test_wrong_prediction_shape_is_an_error(gmm_model):
    stepper = Stepper("ddim", gmm_model.schedule, Grid.from_sigmas([10.0, 1.0, 0.0]),
                      torch.zeros(2, 3))
    with pytest.raises(Exception, match="shape"):
        stepper.feed(torch.zeros(2, 4))
