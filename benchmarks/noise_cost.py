"""Cost of diffsolve's noise sources per draw / per solver step, relative to ``torch.randn_like``.

For each state shape (default 64x3x64x64 and 1x4x64x64, the shapes of issue 16, and 4000x2
and 4000x16, low-dimensional batches like the analytic benchmarks') it times,
interleaved in one loop (randn, streams, randn, streams, ...) so that load spikes on a shared
machine hit both alike:

* ``torch.randn_like`` of the state (the baseline: one global-RNG draw, no per-sample keying);
* :class:`PerSampleStreams` (one keyed draw per sample and (step, draw));
* :class:`BatchStream` (``noise="batch"``: one keyed ``randn`` for the whole batch);
* :class:`BrownianPath` over EDM's lambda range: one normalised increment per step of a
  20-step Karras grid (monotone queries, as a solver makes them), for a few tree depths;

and writes ``noise_cost.json`` and ``noise_cost.png`` into ``--out``. Times are medians (and
minima) over ``--repeats`` rounds. Example::

    OMP_NUM_THREADS=1 python benchmarks/noise_cost.py --out docs/bench/noise
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffsolve.noise import NOISE_STREAM_VERSION, BatchStream, BrownianPath, PerSampleStreams

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def karras_lams(steps: int, rho: float = 7.0) -> np.ndarray:
    r = np.linspace(0.0, 1.0, steps + 1)
    a, b = SIGMA_MAX ** (1 / rho), SIGMA_MIN ** (1 / rho)
    return -np.log((a + r * (b - a)) ** rho)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, object], repeats: int, device: torch.device) -> dict:
    """Median and min seconds per call of each ``fn()``, timed in interleaved rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v)} for k, v in times.items()}


def bench(shape: tuple[int, ...], steps: int, depths: list[int | None], repeats: int,
          device: torch.device) -> dict:
    like = torch.empty(*shape, device=device)
    batch = shape[0]
    lams = karras_lams(steps)
    streams = PerSampleStreams.from_seed(0, batch)
    whole = BatchStream(0)
    counter = iter(range(10**9))  # fresh seeds for the Brownian paths
    step = iter(range(10**9))  # consecutive steps, as a solver asks for them
    # streams against randn alone (a Brownian sweep in between would evict the caches)
    t = interleaved({"randn_like": lambda: torch.randn_like(like),
                     "streams": lambda: streams.normal(like, step=next(step), draw=0),
                     "batch": lambda: whole.normal(like, step=next(step), draw=0)},
                    repeats, device)
    fns = {"randn_like (Brownian rounds)": lambda: torch.randn_like(like)}
    for depth in depths:
        def brownian_step(depth: int | None = depth) -> None:
            # a fresh path (new seed) queried over a whole grid; time per step
            bp = BrownianPath.from_seed(next(counter), batch, lams[0], lams[-1], depth=depth)
            for i in range(steps):
                bp.normal(like, step=i, draw=0, lam_from=lams[i], lam_to=lams[i + 1])
        fns[f"brownian_depth_{depth or 'default'}_{steps}steps"] = brownian_step
    tb = interleaved(fns, max(3, repeats // 3), device)
    for k, v in tb.items():
        if k.startswith("brownian"):
            v["median_s"] /= steps
            v["min_s"] /= steps
            v["per"] = "solver step"
    t["streams"]["per"] = t["randn_like"]["per"] = t["batch"]["per"] = "draw"
    ratios = {k: {"median": t[k]["median_s"] / t["randn_like"]["median_s"],
                  "min": t[k]["min_s"] / t["randn_like"]["min_s"]} for k in ("streams", "batch")}
    base = tb.pop("randn_like (Brownian rounds)")
    for k, v in tb.items():
        ratios[k] = {"median": v["median_s"] / base["median_s"], "min": v["min_s"] / base["min_s"]}
        t[k] = v
    return {"shape": list(shape), "device": str(device), "times": t, "ratio_vs_randn_like": ratios}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        names = list(res["ratio_vs_randn_like"])
        vals = [res["ratio_vs_randn_like"][k]["median"] for k in names]
        ax.barh(range(len(names)), vals,
                color=[{"streams": "C0", "batch": "C2"}.get(k, "C1") for k in names])
        ax.set_yticks(range(len(names)), [k.replace("_", " ") for k in names], fontsize=7)
        ax.axvline(1.0, color="grey", ls=":", label="randn_like")
        ax.axvline(1.5, color="r", ls="--", lw=0.8, label="1.5x target (streams)")
        ax.set_xscale("log")
        ax.set_xlabel("time / torch.randn_like (median, interleaved)")
        ax.set_title(f"{'x'.join(map(str, res['shape']))}, {res['device']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+",
                   default=["64x3x64x64", "1x4x64x64", "4000x2", "4000x16"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--depths", type=str, default="default,6",
                   help="comma-separated tree depths; 'default' = the library default")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    args = p.parse_args()
    device = torch.device(args.device)
    depths = [None if d == "default" else int(d) for d in args.depths.split(",")]
    results = []
    for spec in args.shapes:
        shape = tuple(int(v) for v in spec.split("x"))
        r = bench(shape, args.steps, depths, args.repeats, device)
        results.append(r)
        base = r["times"]["randn_like"]
        print(f"{spec}: randn_like {base['median_s'] * 1e3:.3f} ms (min {base['min_s'] * 1e3:.3f})")
        for k, v in r["ratio_vs_randn_like"].items():
            tm = r["times"][k]
            print(f"    {k}: {tm['median_s'] * 1e3:.3f} ms per {tm['per']} = "
                  f"{v['median']:.2f}x randn_like (min-based {v['min']:.2f}x)")
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "noise_stream_version": NOISE_STREAM_VERSION,
        "sigma_range": [SIGMA_MIN, SIGMA_MAX],
        "grid": f"karras rho=7, {args.steps} steps",
        "repeats": args.repeats,
        "command": "python benchmarks/noise_cost.py " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise_cost.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2)
    )
    plot(results, args.out / "noise_cost.png")
    print(f"wrote {args.out / 'noise_cost.json'} and {args.out / 'noise_cost.png'}")


if __name__ == "__main__":
    main()
