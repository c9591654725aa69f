"""ML-EM benchmark: error against total cost (FLOPs and wall-clock, same runs) for
Multilevel Euler-Maruyama, single-level Euler-Maruyama and SEEDS with the largest model.

Parts (each cached in ``<out>/mlem.json``; rerunning skips finished parts):

* ``gaussian``: exact-moment computation (no Monte Carlo) on the one-component analytic
  mixture with synthetic levels of known error/cost law (gamma = 2.5 and 3):
  :func:`diffsolve.bench.mlem_experiments.gaussian_exact_cost_accuracy`.
* ``mixture``: Monte Carlo on the 2-D multimodal mixture (``GaussianMixture.default_2d``)
  with synthetic levels: strong error against a fine exact-drift EM path and exact-moment
  FD, for EM, ML-EM and SEEDS-2 (:func:`diffsolve.bench.mlem_experiments.synthetic_cost_accuracy`).
* ``digits``: the trained hierarchy ``hier_digits_w{4,8,16,32}`` (FLOPs per call from the
  cards), classifier-feature FD against all 1797 digits, for EM and SEEDS-2 with w32 and
  ML-EM with the four levels; speedup of ML-EM over EM at equal FD by log-log interpolation
  of the EM curve.

Run: ``OMP_NUM_THREADS=1 python benchmarks/mlem.py --out docs/bench/mlem [--parts ...]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from diffsolve import initial_noise, solve
from diffsolve.bench.metrics import batched_features, frechet_distance, sample_moments
from diffsolve.bench.mlem_experiments import gaussian_exact_cost_accuracy, synthetic_cost_accuracy
from diffsolve.drivers.mlem import Level, level_probabilities, mlem_solve
from diffsolve.grids import make_grid
from diffsolve.solvers import get_solver


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def part_gaussian() -> dict[str, Any]:
    out = {}
    for gamma in (2.5, 3.0):
        for m in (1.0, 2.0, 4.0):
            r = gaussian_exact_cost_accuracy(gamma, n_levels=8, base_steps=4, top_evals=m)
            out[f"gamma{gamma}_m{m:g}"] = r
    return out


def part_mixture(batch: int) -> dict[str, Any]:
    out = {}
    for gamma in (2.5, 3.0):
        t0 = time.perf_counter()
        r = synthetic_cost_accuracy(gamma, n_levels=6, base_steps=8, top_evals=16.0,
                                    batch=batch, ref_steps=2048, seeds_solver="seeds_2")
        r["wall_s"] = time.perf_counter() - t0
        out[f"gamma{gamma}"] = r
    return out


def _interp_cost(costs: list[float], fds: list[float], fd: float) -> float | None:
    """EM cost needed for FD ``fd``: log-log interpolation along the EM curve (None when
    ``fd`` lies outside the curve's FD range)."""
    pts = sorted(zip(fds, costs, strict=True))
    for (f0, c0), (f1, c1) in itertools.pairwise(pts):
        if f0 <= fd <= f1:
            if f1 == f0:
                return c0
            w = (math.log(fd) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return math.exp(math.log(c0) + w * (math.log(c1) - math.log(c0)))
    return None


def part_digits(res: dict[str, Any], path: Path, full: dict[str, Any], n: int,
                em_steps: list[int], mlem_steps: list[int], top_evals: list[float]) -> None:
    from diffsolve.zoo.classifier import load_classifier
    from diffsolve.zoo.data import load_digits_split
    from diffsolve.zoo.hierarchy import load_hierarchy

    models = load_hierarchy("digits")
    levels = [Level(m, float(m.card["flops_per_call"]), f"w{m.card['hierarchy']['width']}")
              for m in models]
    top = models[-1]
    clf = load_classifier()
    ref_x, _ = load_digits_split("all")
    ref_mom = sample_moments(batched_features(ref_x, clf.features))
    gpath = path.parent / "gamma_digits" / "gamma.json"
    diff = json.loads(gpath.read_text())["diff_norms"] if gpath.exists() else None
    res.setdefault("n", n)
    res.setdefault("diff_norms", diff)
    noise = initial_noise((n, 1, 8, 8), seed=0)
    cells = res.setdefault("cells", {})

    def fd_of(x: torch.Tensor) -> float:
        feat = batched_features(x.clamp(-1, 1), clf.features)
        return frechet_distance(*sample_moments(feat), *ref_mom)

    def record(key: str, fn: Any) -> None:
        if key in cells:
            return
        cells[key] = fn()
        print(key, json.dumps({k: v for k, v in cells[key].items() if k != "probs"}),
              flush=True)
        full["digits"] = res
        _save(path, full)

    for steps in em_steps:
        def em(steps: int = steps) -> dict[str, Any]:
            grid = make_grid("karras", steps, top.schedule)
            x = grid_sigma0(grid, top) * noise
            t0 = time.perf_counter()
            r = solve(top, x, grid, "euler_maruyama", seed=1, progress=False)
            wall = time.perf_counter() - t0
            return {"method": "euler_maruyama", "steps": steps, "nfe": r.nfe,
                    "flops_per_sample": r.nfe * levels[-1].cost, "wall_s": wall,
                    "fd": fd_of(r.x)}
        record(f"em_{steps}", em)
        def seeds(nfe: int = steps) -> dict[str, Any]:
            sv = get_solver("seeds_2")
            grid = make_grid("karras", sv.steps_for_nfe(nfe), top.schedule)
            x = grid_sigma0(grid, top) * noise
            t0 = time.perf_counter()
            r = solve(top, x, grid, sv, seed=1, progress=False)
            wall = time.perf_counter() - t0
            return {"method": "seeds_2", "nfe": r.nfe, "flops_per_sample": r.nfe * levels[-1].cost,
                    "wall_s": wall, "fd": fd_of(r.x)}
        record(f"seeds2_{steps}", seeds)
    for m in top_evals:
        for steps in mlem_steps:
            def ml(steps: int = steps, m: float = m) -> dict[str, Any]:
                grid = make_grid("karras", steps, top.schedule)
                probs = level_probabilities([lv.cost for lv in levels], steps - 1, top_evals=m,
                                            diff_norms=diff, gamma=None if diff else 3.0)
                x = grid_sigma0(grid, top) * noise
                r = mlem_solve(levels, x, grid, probs=probs, seed=1, draw_seed=2)
                return {"method": "mlem", "steps": steps, "top_evals": m, "probs": list(probs),
                        "evals_per_sample": [e / n for e in r.cost.evals],
                        "flops_per_sample": r.cost.per_sample, "wall_s": r.cost.wall_s,
                        "fd": fd_of(r.x)}
            record(f"mlem_m{m:g}_{steps}", ml)
    # speedup at equal FD
    em_pts = [c for c in cells.values() if c["method"] == "euler_maruyama"]
    em_c = [c["flops_per_sample"] for c in em_pts]
    em_w = [c["wall_s"] for c in em_pts]
    em_f = [c["fd"] for c in em_pts]
    sp = []
    for key, c in cells.items():
        if c["method"] != "mlem":
            continue
        need = _interp_cost(em_c, em_f, c["fd"])
        need_w = _interp_cost(em_w, em_f, c["fd"])
        sp.append({"cell": key, "fd": c["fd"], "mlem_flops": c["flops_per_sample"],
                   "em_flops_same_fd": need,
                   "speedup_flops": None if need is None else need / c["flops_per_sample"],
                   "speedup_wall": None if need_w is None else need_w / c["wall_s"]})
    res["speedups"] = sp
    full["digits"] = res
    _save(path, full)


def grid_sigma0(grid: Any, model: Any) -> float:
    return model.schedule.point(float(grid.lams[0])).sigma


def plot(full: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6), dpi=100)
    ax = axes[0]
    for key, style in (("gamma2.5_m2", "-"), ("gamma3.0_m2", "--")):
        r = full.get("gaussian", {}).get(key)
        if not r:
            continue
        rows = r["rows"][1:]
        for meth, col in (("em", "tab:blue"), ("mlem", "tab:red")):
            ax.loglog([math.sqrt(x[meth]["fd"]) for x in rows], [x[meth]["cost"] for x in rows],
                      style, color=col, marker="o", ms=3,
                      label=f"{meth.upper()} g={r['gamma']} beta={r['beta_' + meth + '_fd']:.2f}")
    ax.invert_xaxis()
    ax.set_xlabel("sqrt(exact-moment FD)")
    ax.set_ylabel("cost per sample (declared units)")
    ax.set_title("Gaussian, synthetic levels (exact moments)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    for key, style in (("gamma2.5", "-"), ("gamma3.0", "--")):
        r = full.get("mixture", {}).get(key)
        if not r:
            continue
        rows = r["rows"][1:]
        ax.loglog([x["em"]["fd"] for x in rows], [x["em"]["cost"] for x in rows], style,
                  color="tab:blue", marker="o", ms=3, label=f"EM g={r['gamma']}")
        ax.loglog([x["mlem"]["fd"] for x in rows], [x["mlem"]["cost"] for x in rows], style,
                  color="tab:red", marker="o", ms=3, label=f"ML-EM g={r['gamma']}")
        ax.loglog([x["seeds"]["fd"] for x in rows], [x["seeds"]["cost"] for x in rows], style,
                  color="tab:green", marker="o", ms=3, label=f"SEEDS-2 g={r['gamma']}")
    ax.invert_xaxis()
    ax.set_xlabel("exact-moment FD (Monte Carlo samples)")
    ax.set_ylabel("cost per sample (declared units)")
    ax.set_title("2-D mixture, synthetic levels", fontsize=9)
    ax.legend(fontsize=7)
    d = full.get("digits", {}).get("cells", {})
    mcol = {1.0: "#f4a582", 2.0: "tab:red", 8.0: "#b2182b", 32.0: "#67001f"}
    for ax, xkey, xlab in ((axes[2], "flops_per_sample", "FLOPs per sample"),
                           (axes[3], "wall_s", "wall-clock s (1000 samples, 1 thread)")):
        for meth, lab in (("euler_maruyama", "EM (w32)"), ("seeds_2", "SEEDS-2 (w32)"),
                          ("mlem", "ML-EM")):
            groups: dict[Any, list[dict[str, Any]]] = {}
            for c in d.values():
                if c["method"] == meth:
                    groups.setdefault(c.get("top_evals"), []).append(c)
            for m, pts in sorted(groups.items(), key=lambda kv: kv[0] or 0):
                pts = sorted(pts, key=lambda c: c["flops_per_sample"])
                col = {"euler_maruyama": "tab:blue", "seeds_2": "tab:green"}.get(
                    meth, mcol.get(m, "tab:red"))
                ax.loglog([c[xkey] for c in pts], [c["fd"] for c in pts], "o-", color=col,
                          ms=3, label=lab + ("" if m is None else f" m={m:g}"))
        ax.set_xlabel(xlab)
        ax.set_ylabel("classifier-feature FD (1000 samples)")
        ax.set_title("digits hierarchy w4/w8/w16/w32", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="docs/bench/mlem")
    p.add_argument("--parts", default="gaussian,mixture,digits")
    p.add_argument("--mixture-batch", type=int, default=4000)
    p.add_argument("--digits-n", type=int, default=500)
    p.add_argument("--em-steps", default="11,21,41,81")
    p.add_argument("--mlem-steps", default="21,41,81,161")
    p.add_argument("--top-evals", default="1,2")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mlem.json"
    full = json.loads(path.read_text()) if path.exists() else {}
    parts = a.parts.split(",")
    if "gaussian" in parts and "gaussian" not in full:
        full["gaussian"] = part_gaussian()
        _save(path, full)
        print("gaussian", {k: {b: round(v[b], 3) for b in v if b.startswith("beta")}
                           for k, v in full["gaussian"].items()}, flush=True)
    if "mixture" in parts and "mixture" not in full:
        full["mixture"] = part_mixture(a.mixture_batch)
        _save(path, full)
        print("mixture", {k: {b: round(v[b], 3) for b in v if b.startswith("beta")}
                          for k, v in full["mixture"].items()}, flush=True)
    if "digits" in parts:
        part_digits(full.get("digits", {}), path, full, a.digits_n,
                    [int(v) for v in a.em_steps.split(",") if v],
                    [int(v) for v in a.mlem_steps.split(",") if v],
                    [float(v) for v in a.top_evals.split(",")])
    plot(full, out / "mlem.png")
    print(json.dumps({"out": str(path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
