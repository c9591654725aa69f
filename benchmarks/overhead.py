"""Per-step solver overhead of diffsolve vs k-diffusion vs diffusers (trivial model).

Overhead = everything but the network: (loop time - model calls x one model call's time) /
steps, where the "network" is ``x * 0.5`` for all three libraries, so the loop, the solver
arithmetic, diffsolve's Denoiser wrapper, k-diffusion's sampler function and diffusers'
``scale_model_input``/``step``/``set_timesteps`` all count as overhead.

For every state shape (1x3x64x64 and 64x3x64x64 pixels, 1x4x64x64 and 64x4x64x64 latents) and
every algorithm, the three libraries run back to back inside each repeat (A/B/C, A/B/C, ...)
and the medians over the repeats are reported, so that load from other processes on the
machine hits all of them alike.

Run: ``OMP_NUM_THREADS=1 python benchmarks/overhead.py [--repeats 7] [--steps 20]``; writes
docs/bench/overhead/{overhead.json, overhead.png} (README.md is written by hand from them).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from diffsolve import Denoiser, Grid, list_solvers, solve
from diffsolve.grids import karras
from diffsolve.schedules import EDM

OUT = Path(__file__).resolve().parents[1] / "docs" / "bench" / "overhead"
SHAPES = {"pixels b1": (1, 3, 64, 64), "pixels b64": (64, 3, 64, 64),
          "latents b1": (1, 4, 64, 64), "latents b64": (64, 4, 64, 64)}

# diffsolve name -> k-diffusion sampler (randn noise) / diffusers scheduler factory
KDIFF = {"euler": "sample_euler", "euler_ancestral": "sample_euler_ancestral",
         "heun": "sample_heun", "dpmpp_2m": "sample_dpmpp_2m",
         "dpmpp_2m_sde": "sample_dpmpp_2m_sde", "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
         "lms": "sample_lms"}


def _diffusers_factories() -> dict[str, Callable[[], object]]:
    import diffusers as d

    dpm = d.DPMSolverMultistepScheduler
    return {
        "euler": lambda: d.EulerDiscreteScheduler(),
        "euler_ancestral": lambda: d.EulerAncestralDiscreteScheduler(),
        "heun": lambda: d.HeunDiscreteScheduler(),
        "dpmpp_2m": lambda: dpm(algorithm_type="dpmsolver++", solver_order=2),
        "dpmpp_3m": lambda: dpm(algorithm_type="dpmsolver++", solver_order=3),
        "dpmpp_2m_sde": lambda: dpm(algorithm_type="sde-dpmsolver++", solver_order=2),
        "dpmpp_3m_sde": lambda: dpm(algorithm_type="sde-dpmsolver++", solver_order=3),
        "lms": lambda: d.LMSDiscreteScheduler(),
        "ddim": lambda: d.DDIMScheduler(),
        "unipc": lambda: d.UniPCMultistepScheduler(),
        "deis": lambda: d.DEISMultistepScheduler(),
        "sa_solver": lambda: d.SASolverScheduler(),
    }


def load_kdiffusion_sampling() -> types.ModuleType:
    """k-diffusion's sampling.py alone: its package __init__ imports heavy optional deps
    (torchvision, skimage, ...), but sampling.py needs only ``utils.append_dims``."""
    spec0 = importlib.util.find_spec("k_diffusion")
    if spec0 is None or not spec0.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install k-diffusion --no-deps)")
    root = Path(next(iter(spec0.submodule_search_locations)))
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
        missing = target_dims - x.ndim
        if missing < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
        return x[(...,) + (None,) * missing]

    utils.append_dims = append_dims  # type: ignore[attr-defined]
    pkg.utils = utils  # type: ignore[attr-defined]
    sys.modules.setdefault("k_diffusion", pkg)
    sys.modules.setdefault("k_diffusion.utils", utils)
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["k_diffusion.sampling"] = mod
    spec.loader.exec_module(mod)
    return mod


def _trivial(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return x * 0.5


class _Counted:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        self.calls += 1
        return x * 0.5


def _time(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    calls = fn()
    return time.perf_counter() - t0, calls


def runners(name: str, shape: tuple[int, ...], steps: int, kd: types.ModuleType | None,
            factories: dict[str, Callable[[], object]]) -> dict[str, Callable[[], int]]:
    """Closures running one full sampling loop each and returning their model calls."""
    sched = EDM(sigma_min=0.002, sigma_max=80.0)
    sigmas = karras(steps, sched).sigmas.to(torch.float32)
    grid = Grid.from_sigmas(sigmas.double())
    x0 = torch.randn(shape) * 80.0
    out: dict[str, Callable[[], int]] = {}

    def ours(check: str, noise: object = None) -> Callable[[], int]:
        net = _Counted()
        model = Denoiser(net, sched, prediction="x0", time_input="sigma")

        def run() -> int:
            net.calls = 0
            solve(model, x0, grid, name, progress=False, check_finite=check, noise=noise)
            return net.calls
        return run

    out["diffsolve"] = ours("off")
    out["diffsolve+check"] = ours("auto")
    from diffsolve.solvers import get_solver

    if get_solver(name).stochastic:
        out["diffsolve randn"] = ours("off", noise=lambda s, sn: torch.randn_like(x0))
    if kd is not None and name in KDIFF:
        fn = getattr(kd, KDIFF[name])

        def run_kd() -> int:
            net = _Counted()
            kwargs = {}
            if name in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
                kwargs["noise_sampler"] = kd.default_noise_sampler(x0)  # randn, not a tree
            fn(net, x0, sigmas, disable=True, **kwargs)
            return net.calls
        out["k-diffusion"] = run_kd
    if name in factories:
        scheduler = factories[name]()
        takes_generator = "generator" in inspect.signature(
            scheduler.step).parameters  # type: ignore[attr-defined]

        def run_diffusers() -> int:
            net = _Counted()
            gen = torch.Generator().manual_seed(0)
            scheduler.set_timesteps(steps)  # type: ignore[attr-defined]
            x = x0 / 80.0 * scheduler.init_noise_sigma  # type: ignore[attr-defined]
            kw = {"generator": gen} if takes_generator else {}
            for t in scheduler.timesteps:  # type: ignore[attr-defined]
                eps = net(scheduler.scale_model_input(x, t), t)  # type: ignore[attr-defined]
                x = scheduler.step(eps, t, x, **kw).prev_sample  # type: ignore
            return net.calls
        out["diffusers"] = run_diffusers
    return out


def model_time(shape: tuple[int, ...], reps: int = 50) -> float:
    x = torch.randn(shape)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _trivial(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--solvers", default="all")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--table", action="store_true", help="print the markdown tables of an "
                    "existing overhead.json in --out and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads((Path(args.out) / "overhead.json").read_text())
                             ["results"]))
        return 0
    torch.manual_seed(0)
    try:
        kd = load_kdiffusion_sampling()
    except Exception as e:
        print(f"k-diffusion unavailable: {e}", file=sys.stderr)
        kd = None
    try:
        factories = _diffusers_factories()
    except Exception as e:
        print(f"diffusers unavailable: {e}", file=sys.stderr)
        factories = {}
    names = list_solvers() if args.solvers == "all" else args.solvers.split(",")
    results: dict[str, dict[str, dict[str, float]]] = {}
    skipped: dict[str, str] = {}
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        results[shape_name] = {}
        for name in names:
            try:
                runs = runners(name, shape, args.steps, kd, factories)
            except Exception as e:
                skipped[name] = f"{type(e).__name__}: {e}"[:200]
                continue
            for lib, fn in list(runs.items()):  # warm-up (and check that it runs)
                try:
                    fn()
                except Exception as e:
                    skipped[f"{name} ({lib})"] = f"{type(e).__name__}: {e}"[:200]
                    del runs[lib]
            if "diffsolve" not in runs:
                continue
            samples: dict[str, list[float]] = {k: [] for k in runs}
            calls: dict[str, int] = {}
            m_times = []
            for _ in range(args.repeats):
                m_times.append(model_time(shape, reps=5))
                for lib, fn in runs.items():  # interleaved A/B/C per repeat
                    t, c = _time(fn)
                    samples[lib].append(t)
                    calls[lib] = c
            t_model = statistics.median(m_times)
            row = {}
            for lib, ts in samples.items():
                total = statistics.median(ts)
                row[lib] = {"total_ms": 1e3 * total, "calls": calls[lib],
                            "overhead_us_per_step":
                                1e6 * max(total - calls[lib] * t_model, 0.0) / args.steps,
                            "overhead_us_per_step_min":
                                1e6 * max(min(ts) - calls[lib] * min(m_times), 0.0) / args.steps}
            row["_model_us_per_call"] = {"value": 1e6 * t_model}  # type: ignore[assignment]
            results[shape_name][name] = row  # type: ignore[assignment]
            line = "  ".join(f"{lib} {v['overhead_us_per_step']:8.1f}" for lib, v in
                             row.items() if not lib.startswith("_"))
            print(f"{shape_name:12s} {name:16s} {line}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"steps": args.steps, "repeats": args.repeats, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": "cpu", "skipped": skipped,
            "definition": "median over repeats of (loop time - calls x median model-call "
                          "time) / steps; model = x * 0.5"}
    (out / "overhead.json").write_text(json.dumps({"meta": meta, "results": results},
                                                  indent=1) + "\n")
    plot(results, out / "overhead.png", args.steps)
    return 0


def markdown_table(results: dict) -> str:
    """Per-shape tables: overhead (µs/step, median) and the verdicts of the README."""
    lines = []
    for shape_name, rows in results.items():
        lines += [f"### {shape_name} {SHAPES[shape_name]}", "",
                  "| solver | diffsolve | diffsolve+check | diffsolve randn | k-diffusion | "
                  "diffusers | vs k-diff | vs diffusers |", "|---|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            def cell(lib: str, row: dict = row) -> str:
                v = row.get(lib)
                return f"{v['overhead_us_per_step']:.0f}" if v else "-"
            ours = row["diffsolve"]["overhead_us_per_step"]
            kd = row.get("k-diffusion", {}).get("overhead_us_per_step")
            df = row.get("diffusers", {}).get("overhead_us_per_step")
            vs_kd = f"{ours / kd:.2f}x" if kd else "-"
            vs_df = f"{ours / df:.2f}x" if df else "-"
            lines.append(f"| {name} | {cell('diffsolve')} | {cell('diffsolve+check')} | "
                         f"{cell('diffsolve randn')} | {cell('k-diffusion')} | "
                         f"{cell('diffusers')} | {vs_kd} | {vs_df} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libs = ["diffsolve", "k-diffusion", "diffusers"]
    colors = {"diffsolve": "tab:blue", "k-diffusion": "tab:orange", "diffusers": "tab:green"}
    shapes = list(results)
    fig, axes = plt.subplots(len(shapes), 1, figsize=(12, 3.2 * len(shapes)), dpi=100,
                             squeeze=False)
    for ax, shape_name in zip(axes[:, 0], shapes, strict=True):
        rows = results[shape_name]
        names = [n for n in rows if any(lib in rows[n] for lib in libs[1:])]
        names += [n for n in rows if n not in names]
        width = 0.27
        for j, lib in enumerate(libs):
            xs, ys = [], []
            for i, n in enumerate(names):
                if lib in rows[n]:
                    xs.append(i + (j - 1) * width)
                    ys.append(max(rows[n][lib]["overhead_us_per_step"], 0.1))
            ax.bar(xs, ys, width, label=lib, color=colors[lib])
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("overhead µs / step")
        ax.set_title(f"{shape_name}: per-step overhead, {steps} steps, trivial model "
                     "(lower is better)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
