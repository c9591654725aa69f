"""The benchmark harness: files written, seeds and intervals, cells reused, interrupted runs
resumed, honest time accounting, failures surfaced, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffsolve.bench import cells as bench_cells
from diffsolve.bench import runner
from diffsolve.bench.summary import aggregate, summarize
from diffsolve.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class CountingSample:
    """Wraps the harness's sample() and counts the calls (each call is one sampling run)."""

    def __init__(self) -> None:
        self.calls = 0
        self.inner = bench_cells.sample

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def _gmm_run(out, **kwargs):
    return runner.run_benchmark("gmm", ["dpmpp_2m", "seeds_2"], [5, 10], 200, 0, out,
                                progress=False, reference_nfe=31, **kwargs)


def test_tiny_gmm_run_writes_results_report_and_plot(tmp_path):
    res = _gmm_run(tmp_path)
    assert res["computed"] == 12 and res["reused"] == 0 and res["runs"] == 12  # 2 x 2 x 3 seeds
    assert res["failures"] == [] and runner.failure_message(res) is None
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["versions"]) >= {"diffsolve", "torch", "python"}
    assert data["seeds"]["sampling"] == [0, 1, 2] and data["config"]["seeds"] == [0, 1, 2]
    assert data["config"]["model"] == "gmm" and data["config"]["nfe"] == [5, 10]
    runs = data["cells"]
    assert len(runs) == 12
    for cell in runs.values():
        assert cell["status"] == "ok" and cell["seconds"] >= 0
        assert cell["nfe_used"] <= cell["nfe"] and not cell["over_budget"]
        for m in ("mode_kl", "ll_gap", "var_ratio", "grid_kl", "mmd", "fd", "sw"):
            assert math.isfinite(cell["metrics"][m]), m
        assert (cell["metrics"]["ode_error"] is None) == cell["stochastic"]
    agg = data["aggregated"]["dpmpp_2m|nfe=10"]
    ci = agg["metrics"]["ode_error"]
    assert ci["n"] == 3 and ci["lo"] < ci["mean"] < ci["hi"] and len(ci["values"]) == 3
    assert agg["metrics"]["ode_error"]["mean"] < data["aggregated"]["dpmpp_2m|nfe=5"][
        "metrics"]["ode_error"]["mean"]  # the ODE error shrinks with the budget
    assert data["aggregated"]["seeds_2|nfe=10"]["nfe_used"] == 9
    # the floor: exact samples, per seed, with an interval
    assert data["floor"]["mode_kl"]["n"] == 3 and "exact samples" in data["floor"]["note"]
    # the time accounting includes the reference solves (one per seed) and the floor
    t = data["timing"]
    assert t["reference_s"] > 0 and len(data["references"]) == 3
    assert t["total_s"] == pytest.approx(t["sampling_s"] + t["metric_s"] + t["reference_s"]
                                         + t["floor_s"])
    report = (tmp_path / "report.md").read_text()
    assert "ODE reference solves" in report and f"total {t['total_s']:.0f} s" in report
    assert "| dpmpp_2m | ODE |" in report and "| seeds_2 | SDE |" in report
    assert " ± " in report and "Best solver per NFE budget" in report
    assert "Wins need separated 95 % intervals" in report
    assert (tmp_path / "metric_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    best = data["summary"]["best_per_nfe"]["10"]["best"]
    assert best["solver"] in ("dpmpp_2m", "seeds_2") and best["value"] > 0


def test_rerun_reuses_every_cell(tmp_path, monkeypatch):
    _gmm_run(tmp_path, n_seeds=1)
    before = json.loads((tmp_path / "results.json").read_text())["cells"]
    counter = CountingSample()
    monkeypatch.setattr(bench_cells, "sample", counter)
    res = _gmm_run(tmp_path, n_seeds=1)
    assert res["computed"] == 0 and res["reused"] == 4
    assert counter.calls == 0  # no sampling at all, not even the ODE reference
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == before
    # a new budget only computes the new cells; a second seed only its own runs
    res = runner.run_benchmark("gmm", ["dpmpp_2m", "seeds_2"], [5, 10, 20], 200, 0, tmp_path,
                               progress=False, reference_nfe=31, n_seeds=1)
    assert res["computed"] == 2 and res["reused"] == 4 and counter.calls == 2
    res = _gmm_run(tmp_path, n_seeds=2)
    assert res["computed"] == 4 and res["reused"] == 4


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    def boom(cell):
        raise KeyboardInterrupt("stop after the first cell")

    with pytest.raises(KeyboardInterrupt):
        _gmm_run(tmp_path, on_cell=boom, n_seeds=1)
    data = json.loads((tmp_path / "results.json").read_text())
    assert list(data["cells"]) == [runner.cell_key("gmm", "dpmpp_2m", 5, 200, 0)]
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary file left behind
    assert not (tmp_path / "report.md").exists()
    counter = CountingSample()
    monkeypatch.setattr(bench_cells, "sample", counter)
    res = _gmm_run(tmp_path, n_seeds=1)
    assert res["computed"] == 3 and res["reused"] == 1 and counter.calls == 3


def test_budget_below_minimum_is_skipped_with_reason(tmp_path):
    res = runner.run_benchmark("gmm-err", "dpm_solver_3", [2, 7], 100, 1, tmp_path,
                               progress=False, reference_nfe=None, n_seeds=1)
    runs = json.loads((tmp_path / "results.json").read_text())["cells"]
    skipped = runs[runner.cell_key("gmm-err", "dpm_solver_3", 2, 100, 1)]
    assert skipped["status"] == "skipped" and "at least 4 NFE" in skipped["reason"]
    ok = runs[runner.cell_key("gmm-err", "dpm_solver_3", 7, 100, 1)]
    assert ok["status"] == "ok" and ok["nfe_used"] == 7 and ok["metrics"]["ode_error"] is None
    assert res["summary"]["table"]["dpm_solver_3"]["2"] is None
    assert res["failures"] == []  # a skipped budget is not a failure
    assert "skip" in (tmp_path / "report.md").read_text()


def test_solver_spec_with_options_runs_seeds_3_noise_form(tmp_path):
    spec = "seeds_3[prediction=noise]"
    res = runner.run_benchmark("gmm", [spec, "seeds_3"], [10], 100, 0, tmp_path,
                               progress=False, reference_nfe=None, n_seeds=1)
    runs = json.loads((tmp_path / "results.json").read_text())["cells"]
    a = runs[runner.cell_key("gmm", spec, 10, 100, 0)]["metrics"]["ll_gap"]
    b = runs[runner.cell_key("gmm", "seeds_3", 10, 100, 0)]["metrics"]["ll_gap"]
    assert math.isfinite(a) and math.isfinite(b) and a != b
    assert res["summary"]["table"][spec]["10"] is not None
    with pytest.raises(Exception, match="no option"):
        runner.run_benchmark("gmm", ["seeds_3[nope=1]"], [10], 100, 0, tmp_path)


def test_tiny_digits_run_gives_finite_metrics_and_held_out_floor(tmp_path):
    res = runner.run_benchmark("digits", ["dpmpp_2m"], [5], 16, 0, tmp_path, progress=False,
                               reference_nfe=10, n_seeds=1)
    data = json.loads((tmp_path / "results.json").read_text())
    m = data["cells"][runner.cell_key("digits", "dpmpp_2m", 5, 16, 0)]["metrics"]
    for name in ("feature_fd", "kid", "pixel_fd", "ode_error", "precision", "recall"):
        assert math.isfinite(m[name]), name
    assert m["feature_fd"] > 0 and m["pixel_fd"] > 0
    assert 0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0
    assert len(m["class_histogram"]) == 10 and sum(m["class_histogram"]) == 16
    assert "held-out" in data["floor"]["note"]
    assert (tmp_path / "samples_dpmpp_2m.png").read_bytes()[:8] == PNG_MAGIC
    assert res["paths"]["sample_grids"] == [str(tmp_path / "samples_dpmpp_2m.png")]
    assert "classifier-feature Frechet distance" in (tmp_path / "report.md").read_text()


def _cell(solver, nfe, stochastic, values):
    return aggregate([{"model": "m", "solver": solver, "nfe": nfe, "samples": 10, "seed": i,
                       "stochastic": stochastic, "order": 1, "nfe_per_step": 1,
                       "status": "ok", "nfe_used": nfe, "seconds": 1.0,
                       "metrics": {"fd": v}} for i, v in enumerate(values)])


def test_summary_declares_a_win_only_when_intervals_separate():
    cells = [_cell("ode", 5, False, [1.0, 1.1, 0.9]), _cell("sde", 5, True, [2.0, 2.1, 1.9]),
             _cell("ode", 50, False, [0.10, 0.30, 0.05]),
             _cell("sde", 50, True, [0.08, 0.12, 0.10]),
             _cell("ode", 500, False, [0.10, 0.11, 0.09]),
             _cell("sde", 500, True, [0.05, 0.051, 0.049])]
    s = summarize(cells, "fd", ["ode", "sde"], [5, 50, 500])
    assert s["best_per_nfe"]["5"]["sde_vs_ode"] == "ode"
    assert s["best_per_nfe"]["5"]["best"]["clear"]
    # at 50 the SDE mean is lower but the intervals overlap: a tie, no win
    assert s["best_per_nfe"]["50"]["best"]["solver"] == "sde"
    assert not s["best_per_nfe"]["50"]["best"]["clear"]
    assert s["best_per_nfe"]["50"]["best"]["tied_with"] == ["ode"]
    assert s["best_per_nfe"]["50"]["sde_vs_ode"] == "tie"
    assert s["sde_beats_ode_at_nfe"] == [500] and s["ode_beats_sde_at_nfe"] == [5]
    assert s["table"]["sde"]["500"]["mean"] == pytest.approx(0.05)


def test_target_metrics_rank_by_distance_to_target():
    def cell(solver, values):
        return aggregate([{"model": "m", "solver": solver, "nfe": 5, "samples": 10, "seed": i,
                           "stochastic": True, "order": 1, "nfe_per_step": 1, "status": "ok",
                           "nfe_used": 5, "seconds": 1.0, "metrics": {"ll_gap": v}}
                          for i, v in enumerate(values)])

    s = summarize([cell("a", [-0.50, -0.51, -0.49]), cell("b", [0.02, 0.03, 0.01])],
                  "ll_gap", ["a", "b"], [5])
    assert s["best_per_nfe"]["5"]["best"]["solver"] == "b"  # |0.02| beats |-0.5|


def test_cli_bench_moons(tmp_path, capsys):
    out = tmp_path / "moons"
    assert main(["bench", "--model", "moons", "--solvers", "dpmpp_2m,euler", "--nfe", "4,8",
                 "--samples", "100", "--seed", "1", "--seeds", "2", "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "moons" and summary["computed"] == 8
    assert summary["metric"] == "sw"
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["solvers"] == ["dpmpp_2m", "euler"] and data["config"]["seeds"] == [1, 2]
    assert (out / "report.md").exists() and (out / "metric_vs_nfe.png").exists()


def test_cli_bench_exits_non_zero_with_the_reason_when_cells_fail(tmp_path, capsys,
                                                                  monkeypatch):
    """A bad grid name is bad input (exit 2, one line, before any cell); a cell that fails
    while running makes the run exit 1 with one line per failed cell."""
    with pytest.raises(SystemExit) as e:
        main(["bench", "--model", "moons", "--solvers", "euler", "--nfe", "4", "--samples",
              "50", "--seeds", "1", "--grid", "nope", "--out", str(tmp_path), "--quiet"])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err
    import diffsolve.bench.cells as cells

    def broken(*args, **kwargs):
        raise RuntimeError("the solver broke")

    monkeypatch.setattr(cells, "sample", broken)
    code = main(["bench", "--model", "moons", "--solvers", "euler", "--nfe", "4",
                 "--samples", "50", "--seeds", "1", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 of 1 cell runs failed" in err and "the solver broke" in err and "error" in err


def test_cli_bench_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="unknown solver"):
        main(["bench", "--model", "gmm", "--solvers", "dpmpp_2n", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["bench", "--model", "cifar"])
    with pytest.raises(SystemExit, match="--nfe"):
        main(["bench", "--model", "gmm", "--nfe", "5,x", "--out", str(tmp_path)])


@pytest.mark.parametrize("name", ["gmm", "gmm-err", "gmm-learned-2d", "moons", "digits"])
def test_every_bench_model_builds_and_scores(name: str) -> None:
    """Each ``--model`` of ``diffsolve bench`` builds its task and scores a few samples (a
    wrong card key once made the learned mixtures crash before the first cell; the 16-D
    learned model shares that code path and is too slow to score here)."""
    from diffsolve.bench.tasks import make_task

    task = make_task(name, 16, mmd_points=None)
    x = torch.randn(16, *task.shape, generator=torch.Generator().manual_seed(0))
    vals = task.evaluate(x.to(task.dtype), 0)
    assert task.primary in vals and isinstance(task.setup, dict)


def test_plot_highlights_the_best_two_per_budget_only_for_large_tables():
    from diffsolve.bench.plots import HIGHLIGHT_MAX, highlighted

    names = [f"s{k}" for k in range(HIGHLIGHT_MAX + 2)]
    # s_k has FD k + 1 at 5 NFE (best: s0, s1) and |k - 5.4| + 1 at 50 NFE (best: s5, s6)
    cells = {}
    for k, name in enumerate(names):
        cells[(name, 5)] = _cell(name, 5, False, [k + 1.0] * 3)
        cells[(name, 50)] = _cell(name, 50, False, [abs(k - 5.4) + 1.0] * 3)
    assert highlighted(names, cells, "fd") == ["s0", "s1", "s5", "s6"]
    few = names[:HIGHLIGHT_MAX]
    assert highlighted(few, cells, "fd") == few
