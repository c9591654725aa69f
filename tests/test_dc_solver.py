"""DC-Solver (solvers.unipc.DCSolver, drivers.dc_solver): compensation, search, CPR, artefact."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsolve
from diffsolve.core.errors import SolverOptionError
from diffsolve.core.grids import make_grid
from diffsolve.drivers.dc_solver import (
    calibrate,
    cpr_features,
    cpr_ratios,
    fit_cpr,
    predict_ratios,
    search_ratios,
)
from diffsolve.drivers.loop import initial_noise
from diffsolve.schedules import EDM
from diffsolve.solvers.unipc import dc_weights
from diffsolve.zoo import GaussianMixture

SHAPE = (64, 2)


@pytest.fixture(scope="module")
def model():
    return GaussianMixture.default_2d().denoiser(EDM(0.002, 80.0))


def test_without_ratios_it_is_unipc(model):
    a = diffsolve.sample(model, SHAPE, solver="unipc", nfe=10, progress=False).x
    for opts in ({}, {"dc_ratios": [1.0] * 9}):
        b = diffsolve.sample(model, SHAPE, solver="dc_solver", nfe=10, progress=False, **opts)
        assert b.nfe == 10 and torch.equal(a, b.x)
    c = diffsolve.sample(model, SHAPE, solver="dc_solver", nfe=10, progress=False,
                         dc_ratios=[1.0, 1.0] + [1.2] * 7).x
    assert not torch.equal(a, c)
    with pytest.raises(SolverOptionError):  # one ratio per finite step
        diffsolve.sample(model, SHAPE, solver="dc_solver", nfe=10, dc_ratios=[1.0] * 5,
                         progress=False)
    with pytest.raises(SolverOptionError):
        diffsolve.get_solver("dc_solver", dc_ratios=[1.0, float("nan")])


def test_compensation_is_lagrange_in_t(model):
    g = make_grid("karras", 8, model.schedule)
    plan = diffsolve.get_solver("dc_solver").plan(model.schedule, g.finite_lams())
    pts = plan.points
    assert dc_weights(pts, 1, 1.3, 2) is None and dc_weights(pts, 4, 1.0, 2) is None
    assert dc_weights(pts, 4, 0.0, 2) == pytest.approx((0.0, 1.0, 0.0), abs=1e-12)
    rho = 1.37
    w = dc_weights(pts, 4, rho, 2)
    tau = rho * pts[4].t + (1 - rho) * pts[3].t
    f = [2.0 - 0.5 * pts[4 - k].t + 0.01 * pts[4 - k].t ** 2 for k in range(3)]
    assert sum(a * b for a, b in zip(w, f, strict=True)) == pytest.approx(
        2.0 - 0.5 * tau + 0.01 * tau ** 2, rel=1e-10)


def test_searched_ratios_beat_unipc_on_new_noise(model):
    nfe = 6
    g = make_grid("karras", diffsolve.get_solver("dc_solver").steps_for_nfe(nfe),
                  model.schedule)
    calib = initial_noise((10, 2), seed=75_000, dtype=torch.float64)
    r = search_ratios(model, calib, g)
    assert r.ratios[:2] == [1.0, 1.0] and len(r.ratios) == nfe - 1
    assert all(a <= b for a, b in zip(r.loss_dc, r.loss_plain, strict=True))
    assert r.nfe > 0 and r.seconds > 0
    held = initial_noise((256, 2), seed=1, dtype=torch.float64)
    ref = diffsolve.sample(model, held, solver="dpm_solver_3", nfe=150, progress=False).x
    plain = diffsolve.sample(model, held, solver="unipc", nfe=nfe, progress=False).x
    dc = diffsolve.sample(model, held, solver="dc_solver", nfe=nfe, dc_ratios=r.ratios,
                          progress=False).x

    def rms(x: torch.Tensor) -> float:
        return float((x - ref).square().mean().sqrt())

    assert rms(dc) < 0.6 * rms(plain)  # measured 0.10 vs 0.50


def test_cpr_recovers_a_polynomial_and_predicts_an_unseen_budget():
    rng = np.random.default_rng(0)
    true = rng.normal(size=36) * 0.1

    def ratios(g: float, nfe: int) -> list[float]:
        return predict_ratios(true.tolist(), g, nfe, nfe - 1)

    fit = [(g, n, ratios(g, n)) for g in (1.5, 3.0, 5.0) for n in (5, 6, 10, 12, 15)]
    coeffs = fit_cpr(fit, ridge=0.0)
    got = predict_ratios(coeffs, 3.0, 8, 7)
    assert got[:2] == [1.0, 1.0]
    assert np.allclose(got, ratios(3.0, 8), atol=1e-6)
    assert cpr_features(3.0, 8, 1).shape == (36,)


def test_calibration_artefact_drives_sample(model, tmp_path):
    art = calibrate({1.0: model}, (2,), [6], samples=6, maxiter=8)
    assert art.calibration["nfe"] > 0 and art.calibration["cpr"] is None
    path = tmp_path / "dc.json"
    art.save(path)
    entry = art.entries[0]
    assert entry.solver == "dc_solver" and len(entry.solver_options["dc_ratios"]) == 5
    a = diffsolve.sample(model, SHAPE, nfe=6, grid=str(path), progress=False)
    b = diffsolve.sample(model, SHAPE, solver="dc_solver", nfe=6, progress=False,
                         dc_ratios=entry.solver_options["dc_ratios"])
    assert a.nfe == 6 and torch.equal(a.x, b.x)
    with pytest.raises(SolverOptionError):  # one guidance scale: no regression
        cpr_ratios(art, 1.0, 6)
    fits = [(g, n, [1.0, 1.0] + [1.0 + 0.01 * g] * (n - 3)) for g in (1, 2, 3) for n in (5, 6, 8)]
    art.calibration["cpr"] = {"coefficients": fit_cpr(fits)}
    assert cpr_ratios(art, 2.0, 7) == pytest.approx([1.0, 1.0] + [1.02] * 4, abs=1e-3)


def test_docs_example_runs(capsys, tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[1] / "docs" / "dc_solver.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/dc_solver.md", "exec"), {})
    assert "\n5 [1.0, 1.0, " in capsys.readouterr().out


def test_autoguided_digits_is_the_cfg_formula():
    from diffsolve.zoo.guided import autoguided_digits
    from diffsolve.zoo.pretrained import load_model

    main, weak = load_model("digits"), load_model("hier_digits_w8")
    x = torch.randn(4, 1, 8, 8) * 2.0
    p = main.schedule.point(0.3)
    dm, dw = main.data(x, p), weak.data(x, p)
    guided = autoguided_digits(3.0)
    d = guided.data(x, p)
    assert guided.nfe == 1
    assert torch.allclose(d, dw + 3.0 * (dm - dw), atol=1e-4)
    assert torch.allclose(autoguided_digits(1.0).data(x, p), dm, atol=1e-5)


#: the CPR coefficients the DC-Solver authors ship for SD-2.1 (wl-zhao/DC-Solver,
#: diffusers/dc_solver/cpr_coeffs_path/sd2.1.npy, HEAD f82d060), used as data for a cross-check
SD21_CPR = [
    1523.676619658719, -1111.4746450817747, 198.38349617752823,
    -1346.0890022783242, 1007.1949412581944, -186.2547577408646,
    168.39730243270586, -128.0389489406508, 24.884789751788965,
    -8140.644018577604, 5906.748279115223, -1035.9941123139745,
    6941.413899402556, -5193.980659818976, 950.3205652979913,
    -848.2104675050633, 650.6903333310611, -121.28674276636774,
    13309.270384617059, -9616.6703205253, 1668.7685962068279,
    -11037.107794392457, 8256.66668566493, -1503.7992035851387,
    1293.9740435093065, -999.5629328211232, 188.2217041354989,
    -6747.4218216104955, 4853.153053347587, -835.5116792834909,
    5489.115183777738, -4096.897218212316, 743.0953413127122,
    -619.5612763258621, 480.1497146559675, -90.89633128561563,
]


def test_cpr_reproduces_the_authors_shipped_ratios():
    # the ratios for SD-2.1 in research notes C.2 (the shipped coefficients evaluated with the
    # layout of the authors' cascade_polynomial_regression), to the 4 decimals given there
    assert predict_ratios(SD21_CPR, 7.5, 5, 5) == pytest.approx(
        [1, 1, 1.0271, 0.7392, 1.2263], abs=6e-5)
    assert predict_ratios(SD21_CPR, 6.0, 6, 6) == pytest.approx(
        [1, 1, 1.1056, 0.9250, 0.6616, 1.3009], abs=6e-5)
    assert predict_ratios(SD21_CPR, 7.5, 10, 10) == pytest.approx(
        [1, 1, 0.4446, 0.8980, 1.0628, 1.0426, 0.9408, 0.8610, 0.9068, 1.1816], abs=6e-5)
