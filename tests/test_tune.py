"""Tuned artefacts: tune -> JSON -> sample / CLI / k-diffusion / diffusers settings."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from diffsolve import Denoiser, initial_noise, sample, solve
from diffsolve.errors import DiffsolveError, SolverOptionError
from diffsolve.grid_search import reference_endpoints
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver
from diffsolve.tools.tune import (
    TunedArtefact,
    is_tuned_file,
    kdiffusion_sigmas,
    load_tuned,
    scheduler_settings,
    shipped,
    tune,
    weights_hash,
)

SCHED = EDM(sigma_min=0.002, sigma_max=20.0)


class _Net(nn.Module):
    """A smooth toy x0-denoiser with weights (so the weights hash means something)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.9, 0.1], [-0.2, 0.8]]))
            self.lin.bias.fill_(0.1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1).to(x.dtype)
        return torch.tanh(self.lin(x) / (1 + s**2) ** 0.5)


def _model() -> Denoiser:
    return Denoiser(_Net(), SCHED, prediction="x0", time_input="sigma")


@pytest.fixture(scope="module")
def artefact(tmp_path_factory) -> tuple[TunedArtefact, str]:
    torch.manual_seed(0)
    art = tune(_model(), (2,), nfes=(5, 8), solvers=("dpmpp_3m", "dpm_solver_v3"),
               calib_samples=16, heldout_samples=24, reference_nfe=41, max_evals=8,
               ems_points=12, ems_samples=16, dtype=torch.float64, name="toy")
    path = str(tmp_path_factory.mktemp("tuned") / "toy.json")
    art.save(path)
    return art, path


def test_artefact_records_what_it_must(artefact) -> None:
    art, path = artefact
    data = json.loads(open(path).read())
    assert data["format"] == "diffsolve-tuned-v1"
    assert data["model"]["weights_sha256"] == weights_hash(_model())
    cal = data["calibration"]
    assert cal["calib_seed"] != cal["heldout_seed"]
    assert cal["calibration_nfe"] > 0 and cal["noise_stream_version"] >= 2
    assert sorted(art.budgets) == [5, 8]
    for e in art.entries:
        assert {"calibration", "heldout", "heldout_karras"} <= set(e.scores)
        assert e.sigmas[-1] == 0.0 and all(
            a > b for a, b in zip(e.sigmas[:-1], e.sigmas[1:], strict=True))
    # the chosen entry per budget has the lowest calibration objective
    for n in art.budgets:
        cands = [e for e in art.entries if e.nfe == n]
        assert art.entry(n).scores["calibration"] == min(e.scores["calibration"] for e in cands)
    # per-step orders were searched for the multistep solver, and v3 carries its statistics
    m3 = art.entry(5, "dpmpp_3m")
    assert len(m3.solver_options["step_order_caps"]) == len(m3.sigmas) - 2
    v3 = art.entry(5, "dpm_solver_v3")
    assert v3.statistics and art.solver_kwargs(v3)["statistics"] is not None


def test_roundtrip_and_heldout_score_is_on_the_other_noise(artefact) -> None:
    art, path = artefact
    loaded = load_tuned(path)
    assert is_tuned_file(path) and not is_tuned_file("nope.json")
    e = loaded.entry(5, "dpm_solver_v3")
    assert e.sigmas == art.entry(5, "dpm_solver_v3").sigmas
    # recompute the held-out score from scratch: the held-out seed, the loaded statistics
    model = _model()
    cal = loaded.calibration
    held = initial_noise((cal["heldout_samples"], 2), seed=cal["heldout_seed"],
                         dtype=torch.float64)
    ref, _ = reference_endpoints(model, held, nfe=cal["reference"]["nfe"])
    with torch.no_grad():
        x = solve(model, held * e.sigmas[0], e.grid,
                  get_solver(e.solver, **loaded.solver_kwargs(e)), progress=False).x
    assert float(((x - ref) ** 2).mean().sqrt()) == pytest.approx(e.scores["heldout"], rel=1e-4)
    # and it is not the calibration score (different noise)
    assert e.scores["heldout"] != pytest.approx(e.scores["calibration"], rel=1e-6)


def test_sample_with_artefact_uses_its_grid_solver_and_options(artefact) -> None:
    art, path = artefact
    model = _model()
    for grid in (path, art):
        res = sample(model, (6, 2), nfe=5, grid=grid, dtype=torch.float64, progress=False)
        e = art.entry(5)
        assert res.nfe == 5
        assert torch.allclose(res.grid.sigmas, torch.tensor(e.sigmas, dtype=torch.float64))
        n = initial_noise((6, 2), dtype=torch.float64)
        want = solve(model, n * e.sigmas[0], e.grid, get_solver(e.solver,
                     **art.solver_kwargs(e)), progress=False).x
        assert torch.equal(res.x, want)
    # a solver with its own entry gets that entry
    res = sample(model, (3, 2), nfe=8, grid=path, solver="dpmpp_3m", dtype=torch.float64,
                 progress=False)
    assert torch.allclose(res.grid.sigmas, torch.tensor(art.entry(8, "dpmpp_3m").sigmas,
                                                        dtype=torch.float64))


def test_artefact_errors_are_clear(artefact, tmp_path) -> None:
    _, path = artefact
    with pytest.raises(SolverOptionError, match="tuned budgets: 5, 8"):
        sample(_model(), (2, 2), nfe=7, grid=path)
    with pytest.raises(SolverOptionError, match="nfe="):
        sample(_model(), (2, 2), steps=4, grid=path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(DiffsolveError, match="not a diffsolve tuned artefact"):
        load_tuned(bad)
    with pytest.raises(DiffsolveError, match="does not exist"):
        load_tuned(tmp_path / "missing.json")


def test_weights_hash_detects_other_weights(artefact) -> None:
    _, path = artefact
    other = _model()
    with torch.no_grad():
        other.net.lin.bias.add_(1e-3)
    assert weights_hash(other) != weights_hash(_model())
    with pytest.warns(UserWarning, match="weights"):
        sample(other, (2, 2), nfe=5, grid=path, dtype=torch.float64, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample(_model(), (2, 2), nfe=5, grid=path, dtype=torch.float64, progress=False)


def test_kdiffusion_and_diffusers_settings(artefact) -> None:
    art, path = artefact
    s = kdiffusion_sigmas(path, 5)
    assert s.dtype == torch.float32 and float(s[-1]) == 0.0
    assert torch.allclose(s.double(), torch.tensor(art.entry(5).sigmas, dtype=torch.float64),
                          rtol=1e-6)
    solver, options, sigmas = scheduler_settings(path, 8)
    assert solver == art.entry(8).solver and sigmas == art.entry(8).sigmas
    get_solver(solver, **options)  # builds


def test_tuned_grid_beats_karras_on_heldout_noise(artefact) -> None:
    """The point of tuning: on noise it never saw, the searched grid is closer to the
    reference than the Karras grid (the toy model is smooth, so the margin is wide)."""
    art, _ = artefact
    for n in art.budgets:
        e = art.entry(n)
        assert e.scores["heldout"] < 0.8 * e.scores["heldout_karras"], (n, e.scores)
        assert math.isfinite(e.scores["heldout"])


def test_shipped_digits_artefact_is_valid() -> None:
    art = shipped("digits")
    if art is None:
        pytest.skip("no shipped digits artefact")
    from diffsolve.zoo.pretrained import load_model

    assert art.model["weights_sha256"] == weights_hash(load_model("digits"))
    assert {5, 10, 20} <= set(art.budgets)
    for n in (5, 10, 20):
        e = art.entry(n)
        assert e.scores["heldout"] < e.scores["heldout_karras"], (n, e.scores)


def test_diffusers_scheduler_takes_a_tuned_artefact(tmp_path) -> None:
    pytest.importorskip("diffusers")
    from diffsolve.grids import make_grid
    from diffsolve.integrations.diffusers import DiffsolveScheduler
    from diffsolve.tools.tune import TunedEntry

    base = DiffsolveScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)
    sig = make_grid("uniform_lambda", 4, base.schedule).sigmas.tolist()
    art = TunedArtefact(model={"name": "vp-toy"}, best={"5": 0},
                        entries=[TunedEntry(nfe=5, solver="dpmpp_3m", sigmas=sig,
                                            solver_options={"step_order_caps": [1, 2, 3]})])
    path = tmp_path / "vp.json"
    art.save(path)
    sch = DiffsolveScheduler.from_config(base.config, tuned=str(path))
    sch.set_timesteps(5)
    assert sch.solver.name == "dpmpp_3m" and list(sch.solver.step_order_caps) == [1, 2, 3]
    assert torch.allclose(sch.grid.sigmas, torch.tensor(sig, dtype=torch.float64), rtol=1e-9)
    assert len(sch.timesteps) == 4  # one evaluation per finite node (the last is D(x))
    plain = DiffsolveScheduler.from_config(base.config)
    plain.set_timesteps(5)
    assert plain.sigmas.shape != sch.sigmas.shape or not torch.allclose(plain.sigmas, sch.sigmas)
    with pytest.raises(SolverOptionError, match="tuned budgets: 5"):
        sch.set_timesteps(7)


def test_kdiffusion_module_exposes_tuned_sigmas(artefact) -> None:
    from diffsolve import kdiffusion

    _, path = artefact
    assert torch.equal(kdiffusion.tuned_sigmas(path, 5), kdiffusion_sigmas(path, 5))


def test_cli_uses_the_shipped_artefact_by_default_and_says_so(tmp_path, capsys) -> None:
    if shipped("digits") is None:
        pytest.skip("no shipped digits artefact")
    from diffsolve.cli import main

    out = tmp_path / "d.png"
    assert main(["sample", "--model", "digits", "--nfe", "5", "--n", "4", "--quiet",
                 "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "using the shipped tuned grid for digits at 5 NFE" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["tuned"].startswith("using the shipped")
    assert main(["sample", "--model", "digits", "--nfe", "5", "--n", "4", "--quiet",
                 "--no-tuned", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "tuned" not in cap.err and "tuned" not in json.loads(cap.out.strip())
    # a budget the artefact lacks falls back to the Karras grid, silently
    assert main(["sample", "--model", "digits", "--nfe", "7", "--n", "4", "--quiet",
                 "--out", str(out)]) == 0
    assert "tuned" not in capsys.readouterr().err


def test_generate_takes_a_tuned_artefact_and_records_it(artefact, tmp_path) -> None:
    from diffsolve.tools.generate import generate, load_samples

    art, path = artefact
    e = art.entry(5)
    res = generate(_model(), 12, tmp_path / "g", nfe=5, tuned=path, shard_size=6, seed=3,
                   shape=(2,), dtype=torch.float64)
    cfg = res.manifest["config"]
    assert cfg["solver"] == e.solver and cfg["grid"] == "tuned"
    assert cfg["tuned"]["sigmas"] == pytest.approx(list(e.sigmas))
    # the shards hold exactly what sample() makes on the artefact (sample i keyed (seed, i))
    want = sample(_model(), (12, 2), nfe=5, grid=path, seed=3, dtype=torch.float64,
                  progress=False).x
    got = load_samples(tmp_path / "g")[0]
    torch.testing.assert_close(got, want.float())
    with pytest.raises(DiffsolveError, match="nfe"):
        generate(_model(), 4, tmp_path / "h", steps=4, tuned=path, shape=(2,))
    with pytest.raises(SolverOptionError, match="tuned budgets: 5, 8"):
        generate(_model(), 4, tmp_path / "i", nfe=6, tuned=path, shape=(2,))


def test_cli_generate_uses_the_shipped_artefact_and_says_so(tmp_path, capsys) -> None:
    if shipped("digits") is None:
        pytest.skip("no shipped digits artefact")
    from diffsolve.cli import main

    assert main(["generate", "--model", "digits", "--nfe", "5", "--n", "4", "--quiet",
                 "--out", str(tmp_path / "a")]) == 0
    assert "using the shipped tuned grid for digits at 5 NFE" in capsys.readouterr().err
    cfg = json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]
    assert cfg["grid"] == "tuned" and cfg["solver"] == shipped("digits").entry(5).solver
    assert main(["generate", "--model", "digits", "--nfe", "5", "--n", "4", "--quiet",
                 "--no-tuned", "--out", str(tmp_path / "b")]) == 0
    assert "tuned" not in capsys.readouterr().err
    cfg = json.loads((tmp_path / "b" / "manifest.json").read_text())["config"]
    assert cfg["grid"] == "karras" and "tuned" not in cfg


def test_bench_adds_a_tuned_row(artefact, tmp_path, monkeypatch) -> None:
    """``run_benchmark(..., tuned=FILE)``: the row 'tuned' runs the artefact's entry at each of
    its budgets (same numbers as sample() on it) and is skipped where it has none."""
    from diffsolve.bench import runner
    from diffsolve.bench.tasks import BenchTask

    art, path = artefact
    model = _model()

    def evaluate(x: torch.Tensor, seed: int = 0) -> dict:
        return {"mean_x": float(x.double().mean())}

    task = BenchTask(name="toy", model=model, shape=(2,), dtype=torch.float64,
                     evaluate=evaluate, metrics=("mean_x",), setup={},
                     floor=lambda s: {"mean_x": 0.0})
    monkeypatch.setattr(runner, "make_task", lambda *a, **k: task)
    monkeypatch.setattr(runner, "MODELS", (*runner.MODELS, "toy"))
    res = runner.run_benchmark("toy", "dpmpp_2m", [5, 6], 16, 0, tmp_path, progress=False,
                               reference_nfe=None, n_seeds=2, tuned=path)
    data = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["solver"], c["nfe"], c["seed"]): c for c in data["cells"].values()}
    t5 = cells[("tuned", 5, 1)]
    assert t5["status"] == "ok" and t5["tuned_solver"] == art.entry(5).solver
    want = sample(model, (16, 2), nfe=5, grid=path, seed=1, dtype=torch.float64,
                  progress=False).x.detach()
    assert t5["metrics"]["mean_x"] == pytest.approx(float(want.mean()), abs=1e-12)
    assert cells[("tuned", 6, 0)]["status"] == "skipped"
    assert "tuned" in (tmp_path / "report.md").read_text()
    assert res["failures"] == []
    with pytest.raises(DiffsolveError, match="needs a tuned artefact"):
        runner.run_benchmark("toy", "dpmpp_2m,tuned", [5], 16, 0, tmp_path / "x",
                             progress=False, reference_nfe=None)
