"""Cost of the sampling loop's finite check at batch 1, against the loop's per-step overhead.

A trivial "network" (``x * 0.5``) drives ``solve()`` over a 20-step Karras grid, so the loop
time is all overhead. For each check mode (off, auto = the default, step, end) the loops run
interleaved (off/auto/step/end, off/auto/..., ``--repeats`` rounds) so that load from other
processes hits all modes alike, and the per-step overhead is
(loop time - model calls x one model call) / steps.

Two estimates of the default check's cost are reported:

* ``differential``: overhead(auto) - overhead(off), per step (median and min over rounds).
  On a loaded machine this difference is below the noise of either number.
* ``direct``: the work the default adds, timed alone: building the guard, one ``is None``
  test per step, and the final finiteness test of the result, divided by the steps.

Writes ``finite_check.json`` and ``finite_check.png`` to ``--out``. Example::

    OMP_NUM_THREADS=1 python benchmarks/finite_check.py --out docs/bench/finite_check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from diffsolve import Denoiser, solve
from diffsolve.drivers.finite import FiniteGuard, all_finite
from diffsolve.grids import karras
from diffsolve.schedules import EDM

MODES = ("off", "auto", "step", "end")


def bench(shape: tuple[int, ...], solver: str, steps: int, repeats: int) -> dict:
    sched = EDM(sigma_min=0.002, sigma_max=80.0)
    grid = karras(steps, sched)
    calls = [0]

    def net(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return x * 0.5

    model = Denoiser(net, sched, prediction="x0", time_input="sigma")
    x0 = torch.randn(shape) * 80.0
    runs = {m: (lambda m=m: solve(model, x0, grid, solver, progress=False, check_finite=m))
            for m in MODES}
    for fn in runs.values():
        fn()
    calls[0] = 0
    runs["off"]()
    n_calls = calls[0]
    xs = torch.randn(shape)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    model_t, direct_t = [], []
    for _ in range(repeats):
        for m, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n_calls):
            xs * 0.5
        model_t.append((time.perf_counter() - t0) / n_calls)
        t0 = time.perf_counter()
        guard = FiniteGuard("auto", grid, xs)
        for _ in range(steps):
            if guard.per_step is not None:  # the loop's only per-step work for "auto"
                guard.per_step(0, xs)
        all_finite(xs)
        direct_t.append(time.perf_counter() - t0)
    t_model = statistics.median(model_t)

    def overhead(ts: list[float], stat) -> float:
        return 1e6 * max(stat(ts) - n_calls * t_model, 0.0) / steps

    res = {m: {"overhead_us_per_step_median": overhead(times[m], statistics.median),
               "overhead_us_per_step_min": overhead(times[m], min)} for m in MODES}
    off_med = res["off"]["overhead_us_per_step_median"]
    off_min = res["off"]["overhead_us_per_step_min"]
    direct_med = 1e6 * statistics.median(direct_t) / steps
    direct_min = 1e6 * min(direct_t) / steps
    return {
        "shape": list(shape), "solver": solver, "steps": steps, "model_calls": n_calls,
        "modes": res,
        "default_check_cost_us_per_step": {
            "differential_median": res["auto"]["overhead_us_per_step_median"] - off_med,
            "differential_min": res["auto"]["overhead_us_per_step_min"] - off_min,
            "direct_median": direct_med, "direct_min": direct_min,
        },
        "default_check_share_of_overhead": {
            "direct_median": direct_med / off_med if off_med else None,
            "direct_min": direct_min / off_min if off_min else None,
        },
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [f"{r['solver']} {'x'.join(map(str, r['shape']))}" for r in results]
    w = 0.18
    for j, m in enumerate(MODES):
        ax.bar([i + (j - 1.5) * w for i in range(len(results))],
               [r["modes"][m]["overhead_us_per_step_min"] for r in results], w, label=m)
    ax.bar([i + 2.5 * w for i in range(len(results))],
           [r["default_check_cost_us_per_step"]["direct_min"] for r in results], w,
           label="default check alone (direct)", color="k")
    ax.set_xticks(range(len(results)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("µs per step (min over rounds)")
    ax.set_title("Loop overhead per step by finite-check mode, batch 1, trivial model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["1x3x64x64", "1x4x64x64"])
    p.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "euler"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    args = p.parse_args()
    results = []
    for spec in args.shapes:
        shape = tuple(int(v) for v in spec.split("x"))
        for solver in args.solvers:
            r = bench(shape, solver, args.steps, args.repeats)
            results.append(r)
            c = r["default_check_cost_us_per_step"]
            line = "  ".join(f"{m} {v['overhead_us_per_step_min']:.1f}/"
                             f"{v['overhead_us_per_step_median']:.1f}"
                             for m, v in r["modes"].items())
            print(f"{spec} {solver}: overhead us/step min/median: {line}; default check: "
                  f"direct {c['direct_min']:.2f}/{c['direct_median']:.2f} us/step = "
                  f"{100 * r['default_check_share_of_overhead']['direct_min']:.1f}% (min) of "
                  f"the loop overhead; differential {c['differential_min']:.1f}/"
                  f"{c['differential_median']:.1f}")
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "repeats": args.repeats,
            "command": "python benchmarks/finite_check.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finite_check.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    plot(results, args.out / "finite_check.png")
    print(f"wrote {args.out / 'finite_check.json'} and {args.out / 'finite_check.png'}")


if __name__ == "__main__":
    main()
