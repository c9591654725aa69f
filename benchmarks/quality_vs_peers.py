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
* ``diffsolve tuned via CLI``: ``diffsolve generate --model digits --nfe n`` run in-process
  through the CLI's ``main`` (the shipped artefact is its default), samples read back from the
  shards; it must equal the ``diffsolve tuned`` row.
* ``converged ODE``: DPM-Solver-3 at ``--converged-nfe`` (default 150) NFE on the Karras grid,
  the probability-flow ODE's own solution from the same noise: the FD no sampler of this
  model's ODE can beat by more than the Monte Carlo spread.
* ``real data (held-out)``: the bench floor, digits never used as reference.

Metric: classifier-feature Frechet distance (``diffsolve.bench.runner.make_task("digits")``,
lower is better), per seed; rows report the mean and 95 % interval over ``--seeds`` seeds
(``diffsolve.bench.stats.mean_ci``). The evaluation noise (seeds ``--seed`` ...) is disjoint
from the artefact's calibration and held-out seeds (70000, 80000), so every tuned number here
is held out too. Writes ``quality.json`` and ``quality.png`` to ``--out``. Example::

    OMP_NUM_THREADS=1 python benchmarks/quality_vs_peers.py --samples 1000 --seeds 3 \
        --out docs/bench/quality
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffsolve import initial_noise, sample, solve
from diffsolve.bench.runner import make_task
from diffsolve.bench.stats import better, mean_ci
from diffsolve.cli import main as cli_main
from diffsolve.grids import make_grid
from diffsolve.solvers import get_solver
from diffsolve.tools.generate import load_samples
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
    p.add_argument("--seed", type=int, default=0, help="first evaluation seed")
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds (95%% intervals)")
    p.add_argument("--nfe", default="5,10,20")
    p.add_argument("--converged-nfe", type=int, default=150)
    p.add_argument("--tuned", default=None, help="artefact (default: the shipped digits one)")
    p.add_argument("--out", type=Path, default=Path("out/bench/quality"))
    args = p.parse_args()
    art = load_tuned(args.tuned) if args.tuned else shipped("digits")
    if art is None:
        raise SystemExit("no tuned artefact: pass --tuned or ship zoo/tuned/digits.json")
    budgets = [int(v) for v in args.nfe.split(",")]
    seeds = [args.seed + i for i in range(args.seeds)]
    task = make_task("digits", args.samples)
    model = task.model
    shape = (args.samples, *task.shape)
    kd = load_kdiffusion_sampling()
    sched = model.schedule

    def kd_model(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        return model.data(x, sched.point(-math.log(float(sigma.flatten()[0]))))

    runs: list[dict] = []  # one per (label, nfe, seed)

    def record(label: str, family: str, nfe: int, seed: int, x: torch.Tensor, used: int,
               t: float, **extra: object) -> None:
        fd = float(task.evaluate(x, seed)["feature_fd"])
        runs.append({"label": label, "family": family, "nfe": nfe, "seed": seed,
                     "nfe_used": used, "feature_fd": fd, "seconds": round(t, 2), **extra})
        print(f"seed {seed} {nfe:3d} NFE  {label:36s} FD {fd:8.3f}  ({used} NFE)", flush=True)

    floor = {s: float(task.floor(s)["feature_fd"]) for s in seeds}
    for seed in seeds:
        noise = initial_noise(shape, seed=seed)
        with torch.no_grad():
            model.nfe = 0
            t0 = time.perf_counter()
            r = sample(model, shape, solver="dpm_solver_3", nfe=args.converged_nfe, seed=seed,
                       progress=False)
            record(f"converged ODE (dpm_solver_3, {args.converged_nfe} NFE)", "converged",
                   args.converged_nfe, seed, r.x, r.nfe, time.perf_counter() - t0)
        for nfe in budgets:
            run_budget(nfe, seed, noise, art, args.tuned, model, shape, kd, kd_model, record)
    rows = aggregate_rows(runs)
    summary = summarize(rows, budgets, floor)
    meta = {"samples": args.samples, "seeds": seeds, "metric": "classifier-feature FD",
            "artefact_calibration": {k: art.calibration[k] for k in
                                     ("calib_seed", "calib_samples", "heldout_seed",
                                      "heldout_samples", "calibration_nfe")},
            "weights_sha256": art.model.get("weights_sha256"), "torch": torch.__version__,
            "command": "python benchmarks/quality_vs_peers.py " + " ".join(sys.argv[1:]),
            "real_data_floor": {"per_seed": floor, **(mean_ci(list(floor.values())) or {}),
                                "note": task.floor(seeds[0]).get("note", "")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "rows": rows, "runs": runs}, indent=1) + "\n")
    plot(rows, meta["real_data_floor"], args.out / "quality.png")
    print(json.dumps(summary, indent=1))


def run_budget(nfe: int, seed: int, noise: torch.Tensor, art, tuned_path: str | None, model,
               shape, kd, kd_model, record) -> None:
    """Every row at one budget and seed, all from the same initial noise."""
    sched = model.schedule
    with torch.no_grad():
        e = art.entry(nfe)
        model.nfe = 0
        t0 = time.perf_counter()
        res = sample(model, shape, nfe=nfe, grid=art, seed=seed, progress=False)
        record(f"diffsolve tuned ({e.solver})", "diffsolve tuned", nfe, seed, res.x, res.nfe,
               time.perf_counter() - t0, heldout_rms=e.scores.get("heldout"),
               heldout_rms_karras=e.scores.get("heldout_karras"))
        # the same through the CLI (the shipped artefact is `diffsolve generate`'s default)
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["generate", "--model", "digits", "--nfe", str(nfe), "--n", str(shape[0]),
                    "--seed", str(seed), "--shard-size", str(shape[0]), "--quiet",
                    "--out", tmp]
            argv += ["--tuned", tuned_path] if tuned_path else []
            t0 = time.perf_counter()
            assert cli_main(argv) == 0
            x_cli = load_samples(tmp)[0]
            cfg = json.loads((Path(tmp) / "manifest.json").read_text())["config"]
        record(f"diffsolve tuned via CLI ({cfg['solver']})", "diffsolve tuned CLI", nfe, seed,
               x_cli, nfe, time.perf_counter() - t0)
        assert torch.allclose(x_cli, res.x.float(), atol=1e-5), "CLI row differs from sample()"
        for name in [*OURS_KARRAS, e.solver]:
            opts = art.solver_kwargs(e) if name == e.solver else {}
            opts.pop("step_order_caps", None)
            label = f"diffsolve {name}{' +EMS' if 'statistics' in opts else ''} karras"
            if name == e.solver and name in OURS_KARRAS and "statistics" not in opts:
                continue
            try:
                t0 = time.perf_counter()
                r = sample(model, shape, solver=name, nfe=nfe, seed=seed, progress=False,
                           **opts)
            except Exception as exc:  # a budget a solver cannot meet
                print(f"{nfe:3d} NFE  {label}: skipped ({exc})")
                continue
            record(label, "diffsolve karras", nfe, seed, r.x, r.nfe, time.perf_counter() - t0)
        for fn, per in KD.items():
            steps = kd_steps(per, nfe)
            sig = make_grid("karras", steps, sched).sigmas.to(torch.float32)
            model.nfe = 0
            t0 = time.perf_counter()
            x = getattr(kd, fn)(kd_model, noise * sig[0], sig, disable=True)
            record(f"k-diffusion {fn[7:]} karras", "k-diffusion", nfe, seed, x, model.nfe,
                   time.perf_counter() - t0)
        model.nfe = 0
        t0 = time.perf_counter()
        x = kd.sample_dpm_fast(kd_model, noise * sched.sigma_max, sched.sigma_min,
                               sched.sigma_max, nfe, disable=True)
        record("k-diffusion dpm_fast", "k-diffusion", nfe, seed, x, model.nfe,
               time.perf_counter() - t0)
        sig = kdiffusion_sigmas(art, nfe)
        model.nfe = 0
        t0 = time.perf_counter()
        x = kd.sample_dpmpp_2m(kd_model, noise * sig[0], sig, disable=True)
        record("k-diffusion dpmpp_2m on the tuned grid", "k-diffusion tuned grid", nfe, seed,
               x, model.nfe, time.perf_counter() - t0)
        # sanity: the tuned row is the artefact's solver on the artefact's grid
        chk = solve(model, noise[:4] * e.sigmas[0], e.grid,
                    get_solver(e.solver, **art.solver_kwargs(e)), progress=False).x
        assert torch.allclose(chk, res.x[:4], atol=1e-5)


def aggregate_rows(runs: list[dict]) -> list[dict]:
    """One row per (label, nfe): FD mean and 95 % interval over the seeds."""
    rows = []
    for key in dict.fromkeys((r["label"], r["nfe"]) for r in runs):
        rs = [r for r in runs if (r["label"], r["nfe"]) == key]
        rows.append({"label": key[0], "family": rs[0]["family"], "nfe": key[1],
                     "nfe_used": max(r["nfe_used"] for r in rs),
                     "feature_fd": mean_ci([r["feature_fd"] for r in rs]),
                     "heldout_rms": rs[0].get("heldout_rms"),
                     "heldout_rms_karras": rs[0].get("heldout_rms_karras")})
    return rows


def _versus(r: dict, peer: dict) -> dict:
    return {"label": r["label"], "fd": r["feature_fd"],
            "ratio_to_best_peer": r["feature_fd"]["mean"] / peer["feature_fd"]["mean"],
            "beats_best_peer": better(r["feature_fd"], peer["feature_fd"], True)}


def summarize(rows: list[dict], budgets: list[int], floor: dict[int, float]) -> dict:
    """Per budget: best peer, best diffsolve on Karras, tuned (ratios of means, and whether
    the intervals separate); and the converged ODE and real-data floors."""
    conv = next(r for r in rows if r["family"] == "converged")["feature_fd"]
    out: dict = {"converged_ode": conv, "real_data_floor": mean_ci(list(floor.values()))}
    for nfe in budgets:
        at = [r for r in rows if r["nfe"] == nfe and r["nfe_used"] <= nfe]

        def best(fam: str, at: list[dict] = at) -> dict:
            return min((r for r in at if r["family"] == fam),
                       key=lambda r: r["feature_fd"]["mean"])
        peer, karras, tuned = best("k-diffusion"), best("diffsolve karras"), \
            best("diffsolve tuned")
        pm = peer["feature_fd"]["mean"]
        out[str(nfe)] = {"best_peer": {"label": peer["label"], "fd": peer["feature_fd"]},
                         "best_diffsolve_karras": _versus(karras, peer),
                         "diffsolve_tuned": _versus(tuned, peer),
                         "target_0.5x_peer": 0.5 * pm,
                         "target_below_converged_ode": 0.5 * pm < conv["lo"]}
    return out


def plot(rows: list[dict], floor: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"diffsolve tuned": ("C3", "o-", 2.5), "diffsolve tuned CLI": ("C3", "x", 0),
              "diffsolve karras": ("C0", ".--", 0.8), "k-diffusion": ("C1", ".:", 0.8),
              "k-diffusion tuned grid": ("C2", "s-", 1.5)}
    for label in dict.fromkeys(r["label"] for r in rows):
        pts = sorted((r["nfe"], r["feature_fd"]["mean"], r["feature_fd"]["ci95"])
                     for r in rows if r["label"] == label)
        fam = next(r["family"] for r in rows if r["label"] == label)
        if fam == "converged":
            m, lo, hi = pts[0][1], pts[0][1] - pts[0][2], pts[0][1] + pts[0][2]
            ax.axhspan(lo, hi, color="k", alpha=0.12)
            ax.axhline(m, color="k", lw=1, label=f"{label}: {m:.2f}")
            continue
        c, st, lw = styles[fam]
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=[min(e, 1e9) for e in es], fmt=st, color=c, lw=lw, ms=4,
                    capsize=2, alpha=0.9,
                    label=label if fam != "diffsolve karras" else None)
    if floor.get("mean") is not None:
        ax.axhline(floor["mean"], color="C2", ls="--", lw=1,
                   label=f"real digits (held-out floor): {floor['mean']:.2f}")
    ax.plot([], [], ".--", color="C0", lw=0.8, label="diffsolve solvers, Karras grid")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("classifier-feature FD (mean, 95% CI; lower is better)")
    ax.set_title("digits: tuned artefact vs Karras grids vs k-diffusion")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
