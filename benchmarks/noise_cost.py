"""Cost of diffsolve's noise sources per solver step, relative to ``torch.randn``.

For each batch size it times, on the current device:

* ``torch.randn`` of the state shape (the baseline, one global-RNG draw);
* :class:`PerSampleStreams` (one counter-based draw per step);
* :class:`BrownianPath` over EDM's lambda range: one normalised increment per step of a
  Karras grid (monotone queries, as a solver makes them), for several tree depths;

and writes ``noise_cost.json`` and ``noise_cost.png`` into ``--out``. Times are medians over
``--repeats`` full sweeps. Example::

    OMP_NUM_THREADS=1 python benchmarks/noise_cost.py --batch 1 64 --out out/bench
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from diffsolve.noise import BrownianPath, PerSampleStreams

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def karras_lams(steps: int, rho: float = 7.0) -> np.ndarray:
    r = np.linspace(0.0, 1.0, steps + 1)
    a, b = SIGMA_MAX ** (1 / rho), SIGMA_MIN ** (1 / rho)
    return -np.log((a + r * (b - a)) ** rho)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_per_call(fn, calls: int, repeats: int, device: torch.device) -> float:
    """Median over repeats of (time for ``calls`` calls) / calls, in seconds."""
    fn(0)
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(calls):
            fn(i)
        _sync(device)
        out.append((time.perf_counter() - t0) / calls)
    return statistics.median(out)


def bench(
    batch: int,
    shape: tuple[int, ...],
    steps: int,
    depths: list[int | None],
    repeats: int,
    device: torch.device,
) -> dict:
    like = torch.empty(batch, *shape, device=device)
    lams = karras_lams(steps)
    res: dict = {"batch": batch, "shape": list(shape), "steps": steps}
    res["randn_s"] = time_per_call(
        lambda i: torch.randn(like.shape, device=device), steps, repeats, device
    )
    streams = PerSampleStreams.from_seed(0, batch)
    res["streams_s"] = time_per_call(
        lambda i: streams.normal(like, step=i, draw=0, lam_from=lams[0], lam_to=lams[1]),
        steps,
        repeats,
        device,
    )
    res["brownian"] = []
    for depth in depths:
        times, drawn = [], []
        for rep in range(repeats):
            # a fresh path per sweep (a new seed, so nothing is cached from the last sweep)
            bp = BrownianPath.from_seed(rep, batch, lams[0], lams[-1], depth=depth)
            _sync(device)
            t0 = time.perf_counter()
            for i in range(steps):
                bp.normal(like, step=i, draw=0, lam_from=lams[i], lam_to=lams[i + 1])
            _sync(device)
            times.append((time.perf_counter() - t0) / steps)
            drawn.append(bp.normals_drawn / steps)
        res["brownian"].append(
            {
                "depth": bp.depth,
                "default_depth": depth is None,
                "leaf_width": bp.leaf_width,
                "per_step_s": statistics.median(times),
                "normals_per_step": statistics.median(drawn),
            }
        )
    return res


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for steps_res in res["by_steps"]:
            base = steps_res["randn_s"]
            pts = sorted(
                {b["depth"]: b["per_step_s"] / base for b in steps_res["brownian"]}.items()
            )
            d, ratio = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(d, ratio, "o-", label=f"BrownianPath, {steps_res['steps']} steps")
        base = res["by_steps"][0]["randn_s"]
        ax.axhline(
            res["by_steps"][0]["streams_s"] / base, color="k", ls="--", label="PerSampleStreams"
        )
        ax.axhline(1.0, color="grey", ls=":", label="torch.randn")
        ax.axhline(10.0, color="r", ls=":", lw=0.8, label="10x target")
        ax.set_yscale("log")
        ax.set_xlabel("tree depth")
        ax.set_ylabel("time per step / torch.randn")
        ax.set_title(f"batch {res['batch']} x {tuple(res['shape'])}, {res['device']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--shape", type=int, nargs="+", default=[4, 64, 64])
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    p.add_argument(
        "--depths",
        type=str,
        default="default,6,7,8,10,12",
        help="comma-separated tree depths; 'default' = the library default",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    args = p.parse_args()
    device = torch.device(args.device)
    depths = [None if d == "default" else int(d) for d in args.depths.split(",")]
    results = []
    for batch in args.batch:
        by_steps = [
            bench(batch, tuple(args.shape), s, depths, args.repeats, device) for s in args.steps
        ]
        results.append(
            {"batch": batch, "shape": args.shape, "device": str(device), "by_steps": by_steps}
        )
        for r in by_steps:
            print(
                f"batch {batch:3d} steps {r['steps']:3d}: randn {r['randn_s'] * 1e3:.3f} ms, "
                f"streams {r['streams_s'] / r['randn_s']:.1f}x"
            )
            for b in r["brownian"]:
                tag = " (default)" if b["default_depth"] else ""
                print(
                    f"    brownian depth {b['depth']:2d}{tag}: {b['per_step_s'] * 1e3:.3f} ms "
                    f"= {b['per_step_s'] / r['randn_s']:.1f}x randn, "
                    f"{b['normals_per_step']:.2f} normal tensors/step"
                )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "sigma_range": [SIGMA_MIN, SIGMA_MAX],
        "grid": "karras rho=7",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise_cost.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2)
    )
    plot(results, args.out / "noise_cost.png")
    print(f"wrote {args.out / 'noise_cost.json'} and {args.out / 'noise_cost.png'}")


if __name__ == "__main__":
    main()
