"""The seed aggregation of the benchmark scripts (benchmarks/fast_samplers.py,
benchmarks/mlem.py): per-seed cells become mean +- 95 % CI, a "win" needs separated
intervals, and paired quantities (ratios, speed-ups) pair cells of the same seed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" /
                                                  f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _fs_results(values: dict[str, list[float]]) -> dict:
    cells = {}
    for label, vals in values.items():
        for seed, v in enumerate(vals):
            cells[f"{label}|{seed}"] = {"model": "m", "variant": label, "samples": 10, "nfe": 5,
                                        "seed": seed, "status": "ok",
                                        "metrics": {"fd": v, "ode_error": v}}
    return {"models": {"m": {"samples": 10, "primary_metric": "fd"}}, "cells": cells,
            "seeds": [0, 1, 2]}


def test_fast_samplers_marks_only_separated_wins():
    fs = _script("fast_samplers")
    res = _fs_results({"dpmpp_3m": [1.0, 1.1, 0.9], "clear_win": [0.5, 0.52, 0.48],
                       "overlapping": [0.8, 1.3, 0.6], "clear_loss": [2.0, 2.1, 1.9]})
    rows = {r[0]: r[1] for r in fs.table(res, "m", "fd", [5])}
    assert rows["dpmpp_3m"]["n"] == 3
    assert rows["clear_win"]["mean"] == pytest.approx(0.5)
    base = rows["dpmpp_3m"]
    assert fs._fmt(rows["clear_win"], base).endswith("✓")
    assert fs._fmt(rows["clear_loss"], base).endswith("✗")
    assert not fs._fmt(rows["overlapping"], base).endswith(("✓", "✗"))
    verdict = "\n".join(fs.verdict(res, "m", [5]))
    assert "`clear_win`; 1 not told apart; 1 worse" in verdict


def test_fast_samplers_paired_ratio_pairs_seeds():
    fs = _script("fast_samplers")
    # the variant is exactly half the baseline on every seed: paired ratio 0.5 with no spread,
    # though the unpaired intervals overlap
    res = _fs_results({"dpmpp_3m": [1.0, 4.0, 2.0], "v+ems": [0.5, 2.0, 1.0]})
    rows = fs.seed_values(res, "m", "fd", [5])
    r = fs.paired_ratio(rows, "v+ems", 5)
    assert r["mean"] == pytest.approx(0.5) and r["ci95"] == pytest.approx(0.0, abs=1e-12)
    table = {row[0]: row[1] for row in fs.table(res, "m", "fd", [5])}
    assert not fs._fmt(table["v+ems"], table["dpmpp_3m"]).endswith("✓")


def test_mlem_speedup_uses_the_same_seeds_em_curve():
    ml = _script("mlem")
    cells = {}
    for seed, scale in ((0, 1.0), (1, 2.0)):  # seed 1's EM curve has twice the FD
        for steps, flops, fd in ((11, 1.0, 8.0), (21, 2.0, 4.0), (41, 4.0, 2.0)):
            cells[f"em_{steps}@seed{seed}"] = {"method": "euler_maruyama", "seed": seed,
                                               "flops_per_sample": flops, "wall_s": flops,
                                               "fd": fd * scale}
        cells[f"mlem_m2_81@seed{seed}"] = {"method": "mlem", "top_evals": 2.0, "steps": 81,
                                           "seed": seed, "flops_per_sample": 0.5,
                                           "wall_s": 1.0, "fd": 4.0 * scale}
    sp = ml.digits_speedups(cells)
    # each seed's ML-EM FD equals its own EM curve at 2 FLOPs: speed-up 4 on both seeds
    assert [s["speedup_flops"] for s in sp] == pytest.approx([4.0, 4.0])
    summary = ml.digits_summary(cells, sp)
    assert summary["mlem_m2_81"]["speedup_flops"]["mean"] == pytest.approx(4.0)
    assert summary["mlem_m2_81"]["fd"]["n"] == 2
    assert summary["em_21"]["fd"]["mean"] == pytest.approx(6.0)


def test_fast_samplers_failed_cells_and_single_seed_are_not_ties():
    fs = _script("fast_samplers")
    res = _fs_results({"dpmpp_3m": [1.0, 1.1, 0.9], "clear_win": [0.5, 0.52, 0.48],
                       "broken": [1.0, 1.0, 1.0]})
    for c in res["cells"].values():
        if c["variant"] == "broken":
            c["status"] = "error"
    verdict = "\n".join(fs.verdict(res, "m", [5]))
    assert "0 not told apart; 0 worse; 1 failed or missing." in verdict
    one = _fs_results({"dpmpp_3m": [1.0], "clear_win": [0.5]})
    rows = {r[0]: r[1] for r in fs.table(one, "m", "fd", [5])}
    assert fs._fmt(rows["clear_win"], rows["dpmpp_3m"]) == "0.5"  # no mark from one seed
    assert "no comparison" in "\n".join(fs.verdict(one, "m", [5]))


def test_mlem_ignores_cells_of_other_settings(tmp_path):
    """Cells written before the seed loop (no "@seed" key) or with another sample count are
    dropped, so they can never be averaged with the current seeds."""
    ml = _script("mlem")
    setting = {"n": 4, "diff_norms": None, "noise_stream_version": 2}
    res = {"cells": {"em_11": {"method": "euler_maruyama", "fd": 1.0, **setting},
                     "em_11@seed0": {"method": "euler_maruyama", "fd": 2.0, **setting,
                                     "n": 999}}}
    full: dict = {}
    ml.part_digits(res, tmp_path / "mlem.json", full, 4, [], [], [1.0], [0])
    assert full["digits"]["cells"] == {}


def test_mlem_em_cost_is_the_first_crossing_of_a_non_monotone_curve():
    ml = _script("mlem")
    # EM FD 8 -> 2 -> 3 with cost 1 -> 2 -> 4 (seed noise near the floor): FD 2.5 is first
    # reached between cost 1 and 2, not between the two points nearest in FD (2 and 3)
    cost = ml._interp_cost([1.0, 2.0, 4.0], [8.0, 2.0, 3.0], 2.5)
    assert 1.0 < cost < 2.0
    assert ml._interp_cost([1.0, 2.0], [8.0, 2.0], 9.0) is None  # cheapest EM already better
    assert ml._interp_cost([1.0, 2.0], [8.0, 2.0], 1.0) is None  # EM never gets there
