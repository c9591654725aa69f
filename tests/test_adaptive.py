"""Adaptive DPM-Solver-12/23 (Lu et al. 2022, App. C)."""

from __future__ import annotations

import math

import pytest
import torch

from diffsolve.adaptive import sample_adaptive, sample_dpm_adaptive
from diffsolve.errors import SolverOptionError
from diffsolve.schedules import EDM, VPLinear
from diffsolve.zoo import default_2d


def _setup(gaussian_data, schedule):
    model = gaussian_data.denoiser(schedule)
    x_edm = gaussian_data.mu + torch.randn(8, 4, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(1)) * 10
    exact = gaussian_data.flow_edm(x_edm, 10.0, 0.1)
    return model, x_edm, exact


def _run(model, x_edm, **kw):
    sch = model.schedule
    a0, a1 = sch.point(-math.log(10.0)).alpha, sch.point(-math.log(0.1)).alpha
    res = sample_adaptive(model, x_edm * a0, 10.0, 0.1, **kw)
    return res.x / a1, res


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("schedule", [EDM(0.01, 100.0), VPLinear()], ids=["edm", "vp"])
def test_error_tracks_tolerance(gaussian_data, schedule, order):
    """Error vs the exact flow decreases with rtol and stays within 10x the tolerance
    (measured ratios 0.25-7.9, docs/momentum_inversion_adaptive.md)."""
    model, x_edm, exact = _setup(gaussian_data, schedule)
    errs, nfes = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        out, res = _run(model, x_edm, order=order, rtol=rtol, atol=rtol / 10)
        err = float((out - exact).abs().max())
        assert err < 10 * rtol, (rtol, err)
        errs.append(err)
        nfes.append(res.info.nfe)
    assert errs[0] > errs[1] > errs[2]
    assert nfes[0] < nfes[1] < nfes[2]


@pytest.mark.parametrize("order", [2, 3])
def test_counts_and_grid(gaussian_data, order):
    model, x_edm, _ = _setup(gaussian_data, EDM(0.01, 100.0))
    model.reset_nfe()
    _, res = _run(model, x_edm, order=order, rtol=1e-3, atol=1e-4)
    info = res.info
    assert info.nfe == model.nfe
    assert info.nfe == (info.accepted + info.rejected) * order  # 2 or 3 NFE per try
    assert info.rejected > 0 and info.accepted > 0
    assert len(info.lams) == info.accepted + 1 == len(info.errors) + 1
    assert info.lams[0] == pytest.approx(-math.log(10.0))
    assert info.lams[-1] == pytest.approx(-math.log(0.1))
    assert all(b > a for a, b in zip(info.lams, info.lams[1:], strict=False))
    assert all(e <= 1.0 for e in info.errors)
    assert info.sigmas[0] == pytest.approx(10.0)


def test_tighter_tolerance_rejects_first_big_step(gaussian_data):
    """A huge first trial step must be rejected and retried smaller."""
    model, x_edm, exact = _setup(gaussian_data, EDM(0.01, 100.0))
    out, res = _run(model, x_edm, order=3, rtol=1e-4, atol=1e-5, h_init=5.0)
    assert res.info.rejected >= 1
    assert res.info.lams[1] - res.info.lams[0] < 5.0
    assert float((out - exact).abs().max()) < 1e-3


def test_kdiffusion_function_matches(gaussian_data):
    gmm = default_2d()

    def kmodel(x, sigma):
        return gmm.denoise(x, 1.0, float(sigma[0]))

    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 20
    seen = []
    out, info = sample_dpm_adaptive(kmodel, x, 0.05, 20.0, rtol=1e-3, atol=1e-4,
                                    return_info=True, callback=seen.append)
    model = gmm.denoiser(EDM(0.05, 20.0))
    res = sample_adaptive(model, x, 20.0, 0.05, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out, res.x, rtol=1e-12, atol=1e-12)
    assert info["nfe"] == res.info.nfe and info["n_accept"] == len(seen)
    assert info["steps"] == info["n_accept"] + info["n_reject"]
    ref = gmm.ode_reference(x, 20.0, 0.05)
    assert float((out - ref).abs().max()) < 0.05


def test_bad_options(gaussian_data):
    model, x_edm, _ = _setup(gaussian_data, EDM(0.01, 100.0))
    for kw in ({"order": 1}, {"rtol": 0.0, "atol": 0.0}, {"h_init": 0.0}, {"form": "x"}):
        with pytest.raises(SolverOptionError):
            sample_adaptive(model, x_edm, 10.0, 0.1, **kw)
    with pytest.raises(SolverOptionError):
        sample_adaptive(model, x_edm, 0.1, 10.0)


def test_nonfinite_model_is_reported(gaussian_data):
    from diffsolve.errors import NonFiniteError
    from diffsolve.models import Denoiser

    model = Denoiser(lambda x, s: x * float("nan"), EDM(0.01, 100.0), prediction="x0",
                     time_input="sigma")
    with pytest.raises(NonFiniteError):
        sample_adaptive(model, torch.ones(2, 3, dtype=torch.float64), 10.0, 0.1)
