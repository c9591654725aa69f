"""The benchmark harness: files written, cells reused, interrupted runs resumed, CLI."""

from __future__ import annotations

import json
import math

import pytest

from diffsolve.bench import runner
from diffsolve.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class CountingSample:
    """Wraps runner.sample and counts the calls (each call is one sampling run)."""

    def __init__(self) -> None:
        self.calls = 0
        self.inner = runner.sample

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def _gmm_run(out, **kwargs):
    return runner.run_benchmark("gmm", ["dpmpp_2m", "seeds_2"], [5, 10], 200, 0, out,
                                progress=False, reference_nfe=31, **kwargs)


def test_tiny_gmm_run_writes_results_report_and_plot(tmp_path):
    res = _gmm_run(tmp_path)
    assert res["computed"] == 4 and res["reused"] == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["versions"]) >= {"diffsolve", "torch", "python"}
    assert data["hardware"]["cpu_count"] >= 1 and "cuda" in data["hardware"]
    assert data["seeds"]["sampling"] == 0
    assert data["config"]["model"] == "gmm" and data["config"]["nfe"] == [5, 10]
    cells = data["cells"]
    assert len(cells) == 4
    for cell in cells.values():
        assert cell["status"] == "ok" and cell["seconds"] >= 0
        assert math.isfinite(cell["metrics"]["fd"]) and math.isfinite(cell["metrics"]["sw"])
        assert (cell["metrics"]["ode_error"] is None) == cell["stochastic"]
    ode = cells[runner.cell_key("gmm", "dpmpp_2m", 10, 200, 0)]["metrics"]["ode_error"]
    ode5 = cells[runner.cell_key("gmm", "dpmpp_2m", 5, 200, 0)]["metrics"]["ode_error"]
    assert 0 < ode < ode5  # the ODE error shrinks with the budget
    assert cells[runner.cell_key("gmm", "seeds_2", 10, 200, 0)]["nfe_used"] == 9
    report = (tmp_path / "report.md").read_text()
    assert "| dpmpp_2m | ODE |" in report and "| seeds_2 | SDE |" in report
    assert "Best solver per NFE budget" in report
    assert (tmp_path / "metric_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    best = data["summary"]["best_per_nfe"]["10"]["best"]
    assert best["solver"] in ("dpmpp_2m", "seeds_2") and best["value"] > 0


def test_rerun_reuses_every_cell(tmp_path, monkeypatch):
    _gmm_run(tmp_path)
    before = json.loads((tmp_path / "results.json").read_text())["cells"]
    counter = CountingSample()
    monkeypatch.setattr(runner, "sample", counter)
    res = _gmm_run(tmp_path)
    assert res["computed"] == 0 and res["reused"] == 4
    assert counter.calls == 0  # no sampling at all, not even the ODE reference
    after = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert after == before
    # a new budget only computes the new cells
    res = runner.run_benchmark("gmm", ["dpmpp_2m", "seeds_2"], [5, 10, 20], 200, 0, tmp_path,
                               progress=False, reference_nfe=31)
    assert res["computed"] == 2 and res["reused"] == 4 and counter.calls == 2


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    def boom(cell):
        raise KeyboardInterrupt("stop after the first cell")

    with pytest.raises(KeyboardInterrupt):
        _gmm_run(tmp_path, on_cell=boom)
    data = json.loads((tmp_path / "results.json").read_text())
    assert list(data["cells"]) == [runner.cell_key("gmm", "dpmpp_2m", 5, 200, 0)]
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary file left behind
    assert not (tmp_path / "report.md").exists()
    counter = CountingSample()
    monkeypatch.setattr(runner, "sample", counter)
    res = _gmm_run(tmp_path)
    assert res["computed"] == 3 and res["reused"] == 1 and counter.calls == 3
    assert len(json.loads((tmp_path / "results.json").read_text())["cells"]) == 4


def test_budget_below_minimum_is_skipped_with_reason(tmp_path):
    res = runner.run_benchmark("gmm-err", "dpm_solver_3", [2, 7], 100, 1, tmp_path,
                               progress=False, reference_nfe=None)
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    skipped = cells[runner.cell_key("gmm-err", "dpm_solver_3", 2, 100, 1)]
    assert skipped["status"] == "skipped" and "at least 4 NFE" in skipped["reason"]
    ok = cells[runner.cell_key("gmm-err", "dpm_solver_3", 7, 100, 1)]
    assert ok["status"] == "ok" and ok["nfe_used"] == 7 and ok["metrics"]["ode_error"] is None
    assert res["summary"]["table"]["dpm_solver_3"]["2"] is None
    assert "skip" in (tmp_path / "report.md").read_text()


def test_tiny_digits_run_gives_finite_metrics(tmp_path):
    res = runner.run_benchmark("digits", ["dpmpp_2m"], [5], 16, 0, tmp_path, progress=False,
                               reference_nfe=10)
    cell = json.loads((tmp_path / "results.json").read_text())["cells"][
        runner.cell_key("digits", "dpmpp_2m", 5, 16, 0)]
    m = cell["metrics"]
    for name in ("feature_fd", "kid", "pixel_fd", "ode_error"):
        assert math.isfinite(m[name]), name
    assert m["feature_fd"] > 0 and m["pixel_fd"] > 0
    assert 0.0 <= m["confident_fraction"] <= 1.0
    assert len(m["class_histogram"]) == 10 and sum(m["class_histogram"]) == 16
    assert (tmp_path / "samples_dpmpp_2m.png").read_bytes()[:8] == PNG_MAGIC
    assert res["paths"]["sample_grids"] == [str(tmp_path / "samples_dpmpp_2m.png")]
    report = (tmp_path / "report.md").read_text()
    assert "classifier-feature Frechet distance" in report and "Class histograms" in report


def test_summary_finds_where_sde_beats_ode():
    def cell(solver, nfe, stochastic, fd):
        return {"solver": solver, "nfe": nfe, "stochastic": stochastic, "status": "ok",
                "metrics": {"fd": fd}}

    cells = [cell("ode", 5, False, 1.0), cell("ode", 50, False, 0.10),
             cell("sde", 5, True, 2.0), cell("sde", 50, True, 0.05)]
    s = runner.summarize(cells, "fd", ["ode", "sde"], [5, 50])
    assert s["sde_beats_ode_at_nfe"] == [50] and s["sde_beats_ode_from_nfe"] == 50
    assert s["best_per_nfe"]["5"]["best"] == {"solver": "ode", "value": 1.0}
    assert s["table"]["sde"] == {"5": 2.0, "50": 0.05}


def test_cli_bench_moons(tmp_path, capsys):
    out = tmp_path / "moons"
    assert main(["bench", "--model", "moons", "--solvers", "dpmpp_2m,euler", "--nfe", "4,8",
                 "--samples", "100", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "moons" and summary["computed"] == 4
    assert summary["metric"] == "sw"
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["solvers"] == ["dpmpp_2m", "euler"]
    assert all(math.isfinite(c["metrics"]["sw"]) for c in data["cells"].values())
    assert (out / "report.md").exists() and (out / "metric_vs_nfe.png").exists()


def test_cli_bench_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="unknown solver"):
        main(["bench", "--model", "gmm", "--solvers", "dpmpp_2n", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["bench", "--model", "cifar"])
    with pytest.raises(SystemExit, match="--nfe"):
        main(["bench", "--model", "gmm", "--nfe", "5,x", "--out", str(tmp_path)])
