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
from diffsolve.bench.stats import mean_ci
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
    """EM cost needed for FD ``fd``: walking the EM curve in order of cost, the first segment
    whose FD falls from above ``fd`` to at most ``fd``, interpolated log-log (None when the
    cheapest EM point is already at or below ``fd``, or no point reaches it). Near the FD
    floor the EM curve is not monotone (seed noise); the first crossing is the cost at which
    EM first reaches that FD."""
    pts = sorted(zip(costs, fds, strict=True))
    if not pts or pts[0][1] <= fd:
        return None
    for (c0, f0), (c1, f1) in itertools.pairwise(pts):
        if f0 > fd >= f1:
            w = (math.log(fd) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return math.exp(math.log(c0) + w * (math.log(c1) - math.log(c0)))
    return None


def _seed_key(name: str, seed: int) -> str:
    return f"{name}@seed{seed}"


def part_digits(res: dict[str, Any], path: Path, full: dict[str, Any], n: int,
                em_steps: list[int], mlem_steps: list[int], top_evals: list[float],
                seeds: list[int]) -> None:
    """Digits cells for every noise seed. Seed ``s`` draws the initial noise with seed ``s``,
    the Brownian increments with ``1000 + s`` and ML-EM's Bernoulli level draws with
    ``2000 + s``; cells are keyed ``<cell>@seed<s>``, and ``summary`` holds, per cell, the
    FD / FLOPs / wall-clock as mean +- 95 % CI over the seeds and the speed-up over EM at
    equal FD computed per seed against that seed's EM curve."""
    from diffsolve.core.noise import NOISE_STREAM_VERSION
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
    res["n"] = n
    res["diff_norms"] = diff
    res["noise_stream_version"] = NOISE_STREAM_VERSION
    setting = {"n": n, "diff_norms": diff, "noise_stream_version": NOISE_STREAM_VERSION}
    # cells of other settings (another n, level errors or noise version, or the unseeded cells
    # of files written before the seed loop) are dropped, never mixed in
    cells = {k: c for k, c in res.get("cells", {}).items()
             if "@seed" in k and all(c.get(f) == v for f, v in setting.items())}
    res["cells"] = cells

    def fd_of(x: torch.Tensor) -> float:
        feat = batched_features(x.clamp(-1, 1), clf.features)
        return frechet_distance(*sample_moments(feat), *ref_mom)

    def record(key: str, fn: Any) -> None:
        if key in cells:
            return
        cells[key] = {**fn(), **setting}
        print(key, json.dumps({k: v for k, v in cells[key].items() if k != "probs"}),
              flush=True)
        full["digits"] = res
        _save(path, full)

    def run_seed(seed: int) -> None:
        noise = initial_noise((n, 1, 8, 8), seed=seed)
        for steps in em_steps:
            def em(steps: int = steps) -> dict[str, Any]:
                grid = make_grid("karras", steps, top.schedule)
                x = grid_sigma0(grid, top) * noise
                t0 = time.perf_counter()
                r = solve(top, x, grid, "euler_maruyama", seed=1000 + seed, progress=False)
                wall = time.perf_counter() - t0
                return {"method": "euler_maruyama", "steps": steps, "nfe": r.nfe, "seed": seed,
                        "flops_per_sample": r.nfe * levels[-1].cost, "wall_s": wall,
                        "fd": fd_of(r.x)}
            record(_seed_key(f"em_{steps}", seed), em)

            def seeds2(nfe: int = steps) -> dict[str, Any]:
                sv = get_solver("seeds_2")
                grid = make_grid("karras", sv.steps_for_nfe(nfe), top.schedule)
                x = grid_sigma0(grid, top) * noise
                t0 = time.perf_counter()
                r = solve(top, x, grid, sv, seed=1000 + seed, progress=False)
                wall = time.perf_counter() - t0
                return {"method": "seeds_2", "nfe": r.nfe, "seed": seed,
                        "flops_per_sample": r.nfe * levels[-1].cost, "wall_s": wall,
                        "fd": fd_of(r.x)}
            record(_seed_key(f"seeds2_{steps}", seed), seeds2)
        for m in top_evals:
            for steps in mlem_steps:
                def ml(steps: int = steps, m: float = m) -> dict[str, Any]:
                    grid = make_grid("karras", steps, top.schedule)
                    probs = level_probabilities([lv.cost for lv in levels], steps - 1,
                                                top_evals=m, diff_norms=diff,
                                                gamma=None if diff else 3.0)
                    x = grid_sigma0(grid, top) * noise
                    r = mlem_solve(levels, x, grid, probs=probs, seed=1000 + seed,
                                   draw_seed=2000 + seed)
                    return {"method": "mlem", "steps": steps, "top_evals": m, "seed": seed,
                            "probs": list(probs),
                            "evals_per_sample": [e / n for e in r.cost.evals],
                            "flops_per_sample": r.cost.per_sample, "wall_s": r.cost.wall_s,
                            "fd": fd_of(r.x)}
                record(_seed_key(f"mlem_m{m:g}_{steps}", seed), ml)

    for seed in seeds:
        run_seed(seed)
    wanted = {_seed_key(k.split("@")[0], s) for k in cells for s in seeds}
    used = {k: c for k, c in cells.items() if k in wanted}
    res["seeds"] = seeds
    res["speedups"] = digits_speedups(used)
    res["summary"] = digits_summary(used, res["speedups"])
    full["digits"] = res
    _save(path, full)


def digits_speedups(cells: dict[str, Any]) -> list[dict[str, Any]]:
    """Per seed: ML-EM's speed-up over EM at equal FD, the EM cost (FLOPs, wall-clock) at the
    ML-EM cell's FD by log-log interpolation along the same seed's EM curve."""
    out = []
    for key, c in cells.items():
        if c["method"] != "mlem":
            continue
        em_pts = [e for e in cells.values()
                  if e["method"] == "euler_maruyama" and e.get("seed") == c.get("seed")]
        em_f = [e["fd"] for e in em_pts]
        need = _interp_cost([e["flops_per_sample"] for e in em_pts], em_f, c["fd"])
        need_w = _interp_cost([e["wall_s"] for e in em_pts], em_f, c["fd"])
        out.append({"cell": key, "seed": c.get("seed"), "fd": c["fd"],
                    "mlem_flops": c["flops_per_sample"], "em_flops_same_fd": need,
                    "speedup_flops": None if need is None else need / c["flops_per_sample"],
                    "speedup_wall": None if need_w is None else need_w / c["wall_s"]})
    return out


def digits_summary(cells: dict[str, Any], speedups: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell over seeds: FD, FLOPs and wall-clock as mean +- 95 % CI, and the per-seed
    speed-ups over EM (``None`` where the ML-EM FD lies outside that seed's EM curve)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, c in cells.items():
        groups.setdefault(key.split("@")[0], []).append(c)
    sp: dict[str, list[dict[str, Any]]] = {}
    for s in speedups:
        sp.setdefault(s["cell"].split("@")[0], []).append(s)
    out = {}
    for name, cs in groups.items():
        row = {k: cs[0].get(k) for k in ("method", "steps", "nfe", "top_evals")}
        row.update({"fd": mean_ci([c["fd"] for c in cs]),
                    "flops_per_sample": mean_ci([c["flops_per_sample"] for c in cs]),
                    "wall_s": mean_ci([c["wall_s"] for c in cs]), "seeds": len(cs)})
        if name in sp:
            row["speedup_flops"] = mean_ci([s["speedup_flops"] for s in sp[name]])
            row["speedup_wall"] = mean_ci([s["speedup_wall"] for s in sp[name]])
            row["speedup_defined_seeds"] = sum(s["speedup_flops"] is not None for s in sp[name])
        out[name] = row
    return out


def _ci(v: dict[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    if v is None:
        return "—"
    mean = v["mean"] * scale
    if v["n"] < 2 or not math.isfinite(v["ci95"]):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {v['ci95'] * scale:.2g}"


def write_digits_table(full: dict[str, Any], out: Path) -> Path:
    """``digits.md``: the digits cells over seeds (mean ± 95 % CI) and the per-seed speed-ups
    of ML-EM over Euler-Maruyama at equal FD, from ``mlem.json``."""
    d = full.get("digits", {})
    summary = d.get("summary", {})
    seeds = d.get("seeds", [])
    lines = ["# ML-EM on the digits hierarchy", "",
             f"{d.get('n')} samples per cell and seed, seeds {', '.join(map(str, seeds))} "
             f"(initial noise, Brownian path and level draws), noise streams "
             f"v{d.get('noise_stream_version')}; classifier-feature FD against all 1797 digits. "
             "Mean ± 95 % Student-t half-width over the seeds. Speed-up: EM cost at the ML-EM "
             "cell's FD by log-log interpolation along the *same seed's* EM curve, divided by "
             "the ML-EM cost, then mean ± CI over the seeds where the FD lies on that curve "
             "(count in the last column). Generated by `benchmarks/mlem.py`.", "",
             "| method | steps / NFE | m | GFLOPs/sample | wall s | feature FD | "
             "evals per sample (w4, w8, w16, w32) | speed-up FLOPs | speed-up wall | seeds |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    names = {"euler_maruyama": "EM (w32)", "seeds_2": "SEEDS-2 (w32)", "mlem": "ML-EM"}
    order = sorted(summary.items(), key=lambda kv: (list(names).index(kv[1]["method"]),
                                                    kv[1].get("top_evals") or 0,
                                                    kv[1].get("steps") or kv[1].get("nfe")))
    cells = d.get("cells", {})
    for name, r in order:
        evals = "—"
        if r["method"] == "mlem":
            per = [c["evals_per_sample"] for k, c in cells.items()
                   if k.split("@")[0] == name and int(k.split("@seed")[1]) in seeds]
            evals = "(" + ", ".join(f"{sum(col) / len(col):.3g}" for col in zip(*per,
                                                                             strict=True)) + ")"
        m = "" if r.get("top_evals") is None else f"{r['top_evals']:g}"
        lines.append(
            f"| {names[r['method']]} | {r.get('steps') or r.get('nfe')} | {m} | "
            f"{_ci(r['flops_per_sample'], 1e-9)} | {_ci(r['wall_s'], 1.0, 2)} | {_ci(r['fd'])} | "
            f"{evals} | {_ci(r.get('speedup_flops'), 1.0, 2)} | "
            f"{_ci(r.get('speedup_wall'), 1.0, 2)} | "
            f"{r.get('speedup_defined_seeds', r['seeds'])}/{r['seeds']} |")
    path = out / "digits.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def grid_sigma0(grid: Any, model: Any) -> float:
    return model.schedule.point(float(grid.lams[0])).sigma


def plot(full: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

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
    summary = full.get("digits", {}).get("summary", {})
    n_seeds = max((r["seeds"] for r in summary.values()), default=0)
    mcol = {1.0: "#f4a582", 2.0: "tab:red", 8.0: "#b2182b", 32.0: "#67001f"}
    for ax, xkey, xlab in ((axes[2], "flops_per_sample", "FLOPs per sample"),
                           (axes[3], "wall_s", "wall-clock s (1000 samples, 1 thread)")):
        for meth, lab in (("euler_maruyama", "EM (w32)"), ("seeds_2", "SEEDS-2 (w32)"),
                          ("mlem", "ML-EM")):
            groups: dict[Any, list[dict[str, Any]]] = {}
            for r in summary.values():
                if r["method"] == meth and r["fd"] is not None and r[xkey] is not None:
                    groups.setdefault(r.get("top_evals"), []).append(r)
            for m, pts in sorted(groups.items(), key=lambda kv: kv[0] or 0):
                pts = sorted(pts, key=lambda r: r["flops_per_sample"]["mean"])
                col = {"euler_maruyama": "tab:blue", "seeds_2": "tab:green"}.get(
                    meth, mcol.get(m, "tab:red"))
                ys = [r["fd"]["mean"] for r in pts]
                # 95 % CI over seeds, clipped so the log axis keeps the lower bar
                hi = [r["fd"]["ci95"] if r["fd"]["n"] >= 2 and math.isfinite(r["fd"]["ci95"])
                      else 0.0 for r in pts]
                lo = [min(h, 0.9 * r["fd"]["mean"]) for h, r in zip(hi, pts, strict=True)]
                ax.errorbar([r[xkey]["mean"] for r in pts], ys, yerr=[lo, hi], fmt="o-",
                            color=col, ms=3, capsize=2,
                            label=lab + ("" if m is None else f" m={m:g}"))
                ax.set_xscale("log")
                ax.set_yscale("log")
        ax.set_xlabel(xlab)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(f"feature FD, mean ± 95 % CI ({n_seeds} seeds)")
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
    p.add_argument("--digits-seeds", default="0,1,2",
                   help="noise seeds of the digits part (each cell is run once per seed)")
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
                    [float(v) for v in a.top_evals.split(",")],
                    [int(v) for v in a.digits_seeds.split(",")])
    plot(full, out / "mlem.png")
    if full.get("digits", {}).get("summary"):
        write_digits_table(full, out)
    print(json.dumps({"out": str(path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
