"""Searched time grids (diffsolve.grid_search): held-out gain over Karras / uniform-lambda at
5 NFE on the 2-D mixture, determinism, save/load round trip, CLI loading, cost accounting."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffsolve import DiffsolveError, make_grid, solve
from diffsolve.bench.models import gmm_model
from diffsolve.grid_search import SearchedGrid, load_grid, reference_endpoints, search_grid


@pytest.fixture(scope="module")
def setup():
    gmm, model = gmm_model()
    calib = torch.randn(48, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    searched = search_grid(model, "dpmpp_3m", 5, calib, max_evals=80)
    return gmm, model, calib, searched


def test_searched_grid_beats_karras_and_uniform_lambda_on_held_out_noise(setup):
    gmm, model, _, searched = setup
    schedule = model.schedule
    held = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    smax = schedule.sigma_edm_max
    ref = gmm.ode_reference(held * smax, smax, schedule.sigma_edm_min)

    def rms(grid):
        out = solve(model, held * smax, grid, "dpmpp_3m", progress=False).x
        return float(((out - ref) ** 2).mean().sqrt())

    e_s = rms(searched.grid)
    e_k = rms(make_grid("karras", 5, schedule))
    e_u = rms(make_grid("uniform_lambda", 5, schedule))
    assert e_s < 0.5 * min(e_k, e_u), (e_s, e_k, e_u)
    assert searched.objective["final"] < searched.objective["initial"]


def test_search_is_deterministic_and_counts_cost(setup):
    _, model, calib, searched = setup
    again = search_grid(model, "dpmpp_3m", 5, calib, max_evals=80)
    assert again.sigmas == searched.sigmas
    cal = searched.calibration
    assert cal["search_nfe"] == cal["evaluations"] * 5  # 4 steps + final denoise each
    assert cal["reference_nfe"] == 301
    assert cal["total_nfe"] == cal["search_nfe"] + 301
    grid = searched.grid
    assert grid.to_zero and grid.steps == 5
    assert math.isclose(grid.sigmas[0], model.schedule.sigma_edm_max)


def test_save_load_round_trip_and_solve(tmp_path, setup):
    _, model, calib, searched = setup
    path = tmp_path / "grid.json"
    searched.save(path)
    back = SearchedGrid.load(path)
    assert back == searched
    assert torch.equal(load_grid(path).lams, searched.grid.lams)
    x = calib[:4] * searched.sigmas[0]
    a = solve(model, x, searched.grid, "dpmpp_3m", progress=False).x
    b = solve(model, x, load_grid(path), "dpmpp_3m", progress=False).x
    assert torch.equal(a, b)
    data = json.loads(path.read_text())
    data["format"] = "something-else"
    path.write_text(json.dumps(data))
    with pytest.raises(DiffsolveError):
        SearchedGrid.load(path)


def test_cli_accepts_a_grid_file(tmp_path):
    from diffsolve.cli import main
    from diffsolve.schedules import EDM

    cli_grid = make_grid("uniform_lambda", 5, EDM(sigma_min=0.002, sigma_max=20.0))  # CLI's gmm
    path = tmp_path / "grid.json"
    SearchedGrid("dpmpp_3m", 5, cli_grid.sigmas.tolist()).save(path)
    out = tmp_path / "s.png"
    rc = main(["sample", "--model", "gmm", "--solver", "dpmpp_3m", "--nfe", "5", "--grid",
               str(path), "--n", "64", "--out", str(out), "--quiet"])
    assert rc == 0 and out.exists()


def test_search_solvers_returns_the_best_candidate(setup):
    from diffsolve.grid_search import search_solvers

    _, model, calib, _ = setup
    best = search_solvers(model, ["ddim", "dpmpp_2m"], 5, calib[:16], max_evals=10)
    single = {name: search_grid(model, name, 5, calib[:16], max_evals=10).objective["final"]
              for name in ("ddim", "dpmpp_2m")}
    assert best.solver == min(single, key=single.get)
    assert best.objective["final"] == pytest.approx(min(single.values()), rel=1e-12)


def test_step_order_caps_reduce_to_known_methods():
    _gmm, model = gmm_model()
    grid = make_grid("karras", 8, model.schedule)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = x * grid.sigmas[0]

    def run(solver, **opts):
        return solve(model, x, grid, solver, progress=False, **opts).x

    torch.testing.assert_close(run("dpmpp_3m", step_order_caps=(3,) * 7), run("dpmpp_3m"),
                               rtol=0, atol=0)
    torch.testing.assert_close(run("dpmpp_3m", step_order_caps=(1,) * 7), run("ddim"),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run("dpmpp_3m", step_order_caps=(2,) * 7),
                               run("dpmpp_2m", lower_order_final=True), rtol=1e-12, atol=1e-12)
    with pytest.raises(DiffsolveError, match="7 steps"):
        run("dpmpp_3m", step_order_caps=(3,) * 5)
    with pytest.raises(DiffsolveError, match="out of range"):
        run("dpmpp_2m", step_order_caps=(3,) * 7)


def test_per_step_order_search(setup):
    """S^3's second dimension: the per-step orders, searched after the grid. The stored
    solver options rebuild the solver, and re-solving reproduces the recorded objective."""
    _gmm, model, calib, _ = setup
    with_orders = search_grid(model, "dpmpp_3m", 5, calib, max_evals=80, search_orders=True)
    obj = with_orders.objective
    assert obj["final"] <= obj["grid_only"] <= obj["initial"]
    caps = with_orders.solver_options["step_order_caps"]
    assert len(caps) == 4 and all(1 <= c <= 3 for c in caps)
    ref, _ = reference_endpoints(model, calib)
    out = solve(model, calib * with_orders.sigmas[0], with_orders.grid, with_orders.solver,
                progress=False, **with_orders.solver_options).x
    assert math.isclose(float(((out - ref) ** 2).mean().sqrt()), obj["final"], rel_tol=1e-9)
    with pytest.raises(DiffsolveError, match="per-step order"):
        search_grid(model, "heun", 5, calib, search_orders=True)
