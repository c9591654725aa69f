"""Quality per NFE on the shipped digits model: diffsolve's tuned artefact vs Karras grids vs
k-diffusion's samplers, all from the same initial noise, in one run.

Rows, per NFE budget (default 5, 10, 20):

* ``diffsolve tuned``: ``diffsolve.sample(model, shape, nfe=n, grid=<tuned artefact>)``, the
  call ``diffsolve sample --tuned FILE`` (and the CLI's shipped default) makes.
* ``diffsolve <solver> karras``: diffsolve solvers on the Karras grid (rho = 7).
* ``k-diffusion <sampler>``: k-diffusion's own ``sample_*`` functions (its ``sampling.py``,
  loaded alone) on the same Karras sigmas (``sample_dpm_fast`` with its own NFE budget), with
  the largest step count whose evaluations fit the budget.
* ``k-diffusion dpmpp_2m tuned``: k-diffusion's DPM-Solver++(2M) on the artefact's sigmas
  (``diffsolve.tools.tune.kdiffusion_sigmas``): the hook for k-diffusion users.

Metric: classifier-feature Frechet distance (``diffsolve.bench.runner.make_task("digits")``,
lower is better). The evaluation noise (seed ``--seed``, default 0) is disjoint from the
artefact's calibration and held-out seeds, so every tuned number here is held out too.
Writes ``quality.json`` and ``quality.png`` to ``--out``. Example::

    OMP_NUM_THREADS=1 python benchmarks/quality_vs_peers.py --samples 1000 \
        --out docs/bench/quality
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from diffsolve import initial_noise, sample, solve
from diffsolve.bench.runner import make_task
from diffsolve.grids import make_grid
from diffsolve.solvers import get_solver
from diffsolve.tools.tune import kdiffusion_sigmas, load_tuned, shipped

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import load_kdiffusion_sampling

OURS_KARRAS = ["dpmpp_2m", "dpmpp_3m", "unipc", "dpm_solver_3", "dpmpp_3s"]
# k-diffusion sampler -> NFE per step (their last step to sigma = 0 is a plain Euler step)
KD = {"sample_euler": 1, "sample_heun": 2, "sample_dpm_2": 2, "sample_lms": 1,
      "sample_dpmpp_2m": 1}


def kd_steps(per_step: int, nfe: int) -> int:
    return nfe if per_step == 1 else (nfe + 1) // 2  # 2n - 1 evaluations for n steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", default="5,10,20")
    p.add_argument("--tuned", default=None, help="artefact (default: the shipped digits one)")
    p.add_argument("--out", type=Path, default=Path("out/bench/quality"))
    args = p.parse_args()
    art = load_tuned(args.tuned) if args.tuned else shipped("digits")
    if art is None:
        raise SystemExit("no tuned artefact: pass --tuned or ship zoo/tuned/digits.json")
    task = make_task("digits", args.samples, args.seed)
    model = task.model
    shape = (args.samples, *task.shape)
    noise = initial_noise(shape, seed=args.seed)
    kd = load_kdiffusion_sampling()
    sched = model.schedule

    def kd_model(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        return model.data(x, sched.point(-math.log(float(sigma.flatten()[0]))))

    rows: list[dict] = []

    def record(label: str, family: str, nfe: int, x: torch.Tensor, used: int, t: float,
               **extra: object) -> None:
        fd = float(task.evaluate(x)["feature_fd"])
        rows.append({"label": label, "family": family, "nfe": nfe, "nfe_used": used,
                     "feature_fd": fd, "seconds": round(t, 2), **extra})
        print(f"{nfe:3d} NFE  {label:34s} FD {fd:8.3f}  ({used} NFE)", flush=True)

    for nfe in [int(v) for v in args.nfe.split(",")]:
        with torch.no_grad():
            e = art.entry(nfe)
            model.nfe = 0
            t0 = time.perf_counter()
            res = sample(model, shape, nfe=nfe, grid=art, seed=args.seed, progress=False)
            record(f"diffsolve tuned ({e.solver})", "diffsolve tuned", nfe, res.x, res.nfe,
                   time.perf_counter() - t0, heldout_rms=e.scores.get("heldout"),
                   heldout_rms_karras=e.scores.get("heldout_karras"))
            for name in [*OURS_KARRAS, e.solver]:
                opts = art.solver_kwargs(e) if name == e.solver else {}
                opts.pop("step_order_caps", None)
                label = f"diffsolve {name}{' +EMS' if 'statistics' in opts else ''} karras"
                if any(r["label"] == label and r["nfe"] == nfe for r in rows):
                    continue
                try:
                    t0 = time.perf_counter()
                    r = sample(model, shape, solver=name, nfe=nfe, seed=args.seed,
                               progress=False, **opts)
                except Exception as exc:  # a budget a solver cannot meet
                    print(f"{nfe:3d} NFE  {label}: skipped ({exc})")
                    continue
                record(label, "diffsolve karras", nfe, r.x, r.nfe, time.perf_counter() - t0)
            for fn, per in KD.items():
                steps = kd_steps(per, nfe)
                sig = make_grid("karras", steps, sched).sigmas.to(torch.float32)
                model.nfe = 0
                t0 = time.perf_counter()
                x = getattr(kd, fn)(kd_model, noise * sig[0], sig, disable=True)
                record(f"k-diffusion {fn[7:]} karras", "k-diffusion", nfe, x, model.nfe,
                       time.perf_counter() - t0)
            model.nfe = 0
            t0 = time.perf_counter()
            x = kd.sample_dpm_fast(kd_model, noise * sched.sigma_max, sched.sigma_min,
                                   sched.sigma_max, nfe, disable=True)
            record("k-diffusion dpm_fast", "k-diffusion", nfe, x, model.nfe,
                   time.perf_counter() - t0)
            sig = kdiffusion_sigmas(art, nfe)
            model.nfe = 0
            t0 = time.perf_counter()
            x = kd.sample_dpmpp_2m(kd_model, noise * sig[0], sig, disable=True)
            record("k-diffusion dpmpp_2m on the tuned grid", "k-diffusion tuned grid", nfe,
                   x, model.nfe, time.perf_counter() - t0)
            # sanity: the tuned row is the artefact's solver on the artefact's grid
            chk = solve(model, noise[:4] * e.sigmas[0], e.grid,
                        get_solver(e.solver, **art.solver_kwargs(e)), progress=False).x
            assert torch.allclose(chk, res.x[:4], atol=1e-5)
    summary = {}
    for nfe in sorted({r["nfe"] for r in rows}):
        at = [r for r in rows if r["nfe"] == nfe and r["nfe_used"] <= nfe]
        peer = min((r for r in at if r["family"] == "k-diffusion"), key=lambda r: r["feature_fd"])
        karras = min((r for r in at if r["family"] == "diffsolve karras"),
                     key=lambda r: r["feature_fd"])
        tuned = next(r for r in at if r["family"] == "diffsolve tuned")
        summary[str(nfe)] = {
            "best_peer": [peer["label"], peer["feature_fd"]],
            "best_diffsolve_karras": [karras["label"], karras["feature_fd"],
                                      karras["feature_fd"] / peer["feature_fd"]],
            "diffsolve_tuned": [tuned["label"], tuned["feature_fd"],
                                tuned["feature_fd"] / peer["feature_fd"]],
        }
    meta = {"samples": args.samples, "seed": args.seed, "metric": "classifier-feature FD",
            "artefact_calibration": {k: art.calibration[k] for k in
                                     ("calib_seed", "calib_samples", "heldout_seed",
                                      "heldout_samples", "calibration_nfe")},
            "weights_sha256": art.model.get("weights_sha256"), "torch": torch.__version__,
            "command": "python benchmarks/quality_vs_peers.py " + " ".join(sys.argv[1:]),
            "real_data_fd": task.baseline.get("feature_fd")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "rows": rows}, indent=1) + "\n")
    plot(rows, args.out / "quality.png")
    print(json.dumps(summary, indent=1))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"diffsolve tuned": ("C3", "o-", 2.5), "diffsolve karras": ("C0", ".--", 0.8),
              "k-diffusion": ("C1", ".:", 0.8), "k-diffusion tuned grid": ("C2", "s-", 1.5)}
    for label in dict.fromkeys(r["label"] for r in rows):
        pts = sorted((r["nfe"], r["feature_fd"]) for r in rows if r["label"] == label)
        fam = next(r["family"] for r in rows if r["label"] == label)
        c, st, lw = styles[fam]
        ax.plot(*zip(*pts, strict=True), st, color=c, lw=lw, ms=4, alpha=0.9,
                label=label if fam != "diffsolve karras" else None)
    ax.plot([], [], ".--", color="C0", lw=0.8, label="diffsolve solvers, Karras grid")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("classifier-feature FD (lower is better)")
    ax.set_title("digits: tuned artefact vs Karras grids vs k-diffusion")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
