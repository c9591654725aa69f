"""Can any sampler of the digits model reach half the best peer's FD at a budget? A paired
test over seeds.

The target of issue 16 is FD(ours) <= 0.5 FD(best peer). No sampler of the probability-flow
ODE can do much better than the ODE's own converged solution from the same noise, so per seed
s this script measures

    gap_s = 0.5 FD(best peer at n NFE, seed s) - FD(converged ODE, seed s)

(the converged ODE is DPM-Solver-3 at ``--converged-nfe`` NFE on the Karras grid) and
reports its mean with a 95 % Student-t interval over the seeds: an interval entirely below 0
says the target lies below what the model's exact ODE solution reaches, i.e. it is out of
reach for any ODE sampler of this model. It also records the tuned artefact's FD at n (the
same noise), so the ratio tuned / peer is paired too. Same metric and noise as
``quality_vs_peers.py`` (whose seeds 0-2 it can extend with ``--seed 3``)::

    OMP_NUM_THREADS=1 python benchmarks/quality_feasibility.py --nfe 10 --seed 0 --seeds 8 \\
        --out docs/bench/quality
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
from scipy.stats import t as student_t

from diffsolve import initial_noise, sample
from diffsolve.bench.runner import make_task
from diffsolve.tools.tune import shipped

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import load_kdiffusion_sampling

# the best k-diffusion sampler per budget in quality_vs_peers.py's run (docs/bench/quality)
BEST_PEER = {5: "sample_dpmpp_2m", 10: "sample_dpm_fast", 20: "sample_dpm_fast"}


def paired(values: list[float]) -> dict:
    m = statistics.fmean(values)
    half = (float(student_t.ppf(0.975, len(values) - 1)) * statistics.stdev(values)
            / math.sqrt(len(values))) if len(values) > 1 else math.inf
    return {"mean": m, "ci95": half, "lo": m - half, "hi": m + half, "n": len(values),
            "values": values}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--converged-nfe", type=int, default=150)
    p.add_argument("--out", type=Path, default=Path("out/bench/quality"))
    args = p.parse_args()
    art = shipped("digits")
    task = make_task("digits", args.samples)
    model, sched = task.model, task.model.schedule
    shape = (args.samples, *task.shape)
    kd = load_kdiffusion_sampling()
    peer_fn = BEST_PEER[args.nfe]

    def kd_model(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        return model.data(x, sched.point(-math.log(float(sigma.flatten()[0]))))

    runs = []
    for seed in range(args.seed, args.seed + args.seeds):
        noise = initial_noise(shape, seed=seed)
        with torch.no_grad():
            conv = sample(model, shape, solver="dpm_solver_3", nfe=args.converged_nfe,
                          seed=seed, progress=False).x
            tuned = sample(model, shape, nfe=args.nfe, grid=art, seed=seed, progress=False).x
            if peer_fn == "sample_dpm_fast":
                peer = kd.sample_dpm_fast(kd_model, noise * sched.sigma_max, sched.sigma_min,
                                          sched.sigma_max, args.nfe, disable=True)
            else:
                from diffsolve.grids import make_grid

                sig = make_grid("karras", args.nfe, sched).sigmas.to(torch.float32)
                peer = getattr(kd, peer_fn)(kd_model, noise * sig[0], sig, disable=True)
        fd = {k: float(task.evaluate(x, seed)["feature_fd"])
              for k, x in (("converged", conv), ("tuned", tuned), ("peer", peer))}
        runs.append({"seed": seed, **fd})
        print(f"seed {seed}: converged {fd['converged']:.3f}  tuned {fd['tuned']:.3f}  "
              f"{peer_fn[7:]} {fd['peer']:.3f}  0.5 peer - converged "
              f"{0.5 * fd['peer'] - fd['converged']:+.3f}", flush=True)
    out = {"meta": {"samples": args.samples, "nfe": args.nfe, "peer": peer_fn,
                    "converged": f"dpm_solver_3 at {args.converged_nfe} NFE, Karras grid",
                    "command": "python benchmarks/quality_feasibility.py "
                               + " ".join(sys.argv[1:])},
           "gap_half_peer_minus_converged": paired([0.5 * r["peer"] - r["converged"]
                                                    for r in runs]),
           "ratio_tuned_to_peer": paired([r["tuned"] / r["peer"] for r in runs]),
           "ratio_converged_to_peer": paired([r["converged"] / r["peer"] for r in runs]),
           "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"feasibility_{args.nfe}nfe.json").write_text(json.dumps(out, indent=1) + "\n")
    for k in ("gap_half_peer_minus_converged", "ratio_tuned_to_peer", "ratio_converged_to_peer"):
        print(f"{k}: {out[k]['mean']:.3f} ± {out[k]['ci95']:.3f}")


if __name__ == "__main__":
    main()
