"""DDIM inversion and EDICT exact inversion (Wallace et al. 2023)."""

from __future__ import annotations

import math

import pytest
import torch

from diffsolve.errors import GridError, SolverOptionError
from diffsolve.grids import Grid
from diffsolve.inversion import invert, reconstruct
from diffsolve.schedules import EDM, VPLinear
from diffsolve.zoo import GaussianMixture
from diffsolve.zoo.pretrained import load_model


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("schedule", [EDM(0.01, 100.0), VPLinear()], ids=["edm", "vp"])
@pytest.mark.parametrize("form", ["noise", "data"])
def test_edict_round_trip_on_gmm(schedule, form):
    """EDICT: x0 -> noise -> x0 exact to rounding (measured ~1e-15); DDIM inversion ~0.15."""
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    model = gmm.denoiser(schedule)
    x0 = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sig = torch.exp(torch.linspace(math.log(10.0), math.log(0.05), 21, dtype=torch.float64))
    grid = Grid.from_sigmas(sig, schedule)
    edict = invert(model, x0, grid, method="edict", form=form)
    ddim = invert(model, x0, grid, method="ddim", form=form)
    assert edict.nfe == 40 and ddim.nfe == 20
    e_edict = _rel(reconstruct(model, edict), x0)
    e_ddim = _rel(reconstruct(model, ddim), x0)
    assert e_edict < 1e-5
    assert e_ddim > 1e-2 and e_ddim > 1e6 * e_edict
    # the latent is a real noise level: far from the data
    assert _rel(edict.noise, x0) > 1.0


def test_edict_round_trip_on_network():
    """A trained network (zoo 'moons', float64): EDICT ~1e-14, DDIM inversion ~0.5."""
    model = load_model("moons")
    model.net.double()
    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    e = {}
    for method in ("edict", "ddim"):
        inv = invert(model, x0, "uniform_lambda", steps=20, method=method)
        e[method] = _rel(reconstruct(model, inv), x0)
    assert e["edict"] < 1e-5
    assert e["ddim"] > 1e4 * e["edict"]


def test_ddim_inversion_improves_with_steps():
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    sch = EDM(0.01, 100.0)
    model = gmm.denoiser(sch)
    x0 = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errs = [_rel(reconstruct(model, invert(model, x0, "uniform_lambda", steps=n)), x0)
            for n in (10, 40, 160)]
    assert errs[0] > errs[1] > errs[2]


def test_edict_p_one_and_options():
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    model = gmm.denoiser(EDM(0.01, 100.0))
    x0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    inv = invert(model, x0, "karras", steps=8, method="edict", p=1.0)
    assert _rel(reconstruct(model, inv), x0) < 1e-10
    with pytest.raises(SolverOptionError):
        invert(model, x0, steps=5, method="edct")
    with pytest.raises(SolverOptionError):
        invert(model, x0, steps=5, method="edict", p=0.0)
    with pytest.raises(GridError):
        invert(model, x0, "karras")
