"""The digits model's tuned artefact used through the diffusers adapter, scored like
``quality_vs_peers.py``.

The shipped digits U-Net is an EDM-preconditioned network (it returns F with
D = c_skip x + c_out F and takes c_noise = log(sigma) / 4), which is what diffusers'
``EDMEulerScheduler`` drives. So the row is exactly what a diffusers user writes::

    peer = EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=<card>)
    sched = DiffsolveScheduler.from_config(peer.config, tuned="digits.json")
    sched.set_timesteps(nfe)                        # nfe: a budget of the artefact
    x = noise * sched.init_noise_sigma if x_init is None else x_init
    for t in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, t), t), t, x).prev_sample

with the network's raw output (no diffsolve wrapper). Per budget and seed it checks that the
loop, started from the same state x_T, equals ``diffsolve.sample(model, shape, nfe=n,
grid=<artefact>)`` (the CLI / Python row of ``quality_vs_peers.py``), and scores the pipeline's
own run (x_T = noise * init_noise_sigma, which diffusers' EDM schedulers set to
sqrt(sigma_max^2 + 1), not sigma_max) with the classifier-feature FD and a 95 % interval over
the seeds. Writes ``adapter.json`` to ``--out``::

    OMP_NUM_THREADS=1 python benchmarks/quality_adapter.py --samples 1000 --seeds 3 \\
        --out docs/bench/quality
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from diffsolve import initial_noise, sample
from diffsolve.bench.runner import make_task
from diffsolve.bench.stats import mean_ci
from diffsolve.tools.tune import TUNED_DIR, load_tuned


def adapter_samples(model, tuned: str, nfe: int, noise: torch.Tensor, *,
                    x_init: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """The diffusers loop above on ``model``'s own network, from ``noise *
    init_noise_sigma`` (diffusers' EDM schedulers: sqrt(sigma_max^2 + 1)) or from ``x_init``;
    returns (x, network calls)."""
    from diffusers import EDMEulerScheduler

    from diffsolve.integrations.diffusers import DiffsolveScheduler

    sched_ = model.schedule
    peer = EDMEulerScheduler(sigma_min=sched_.sigma_min, sigma_max=sched_.sigma_max,
                             sigma_data=float(model.sigma_data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dropped key or option would be a silent change
        sched = DiffsolveScheduler.from_config(peer.config, tuned=tuned)
    sched.set_timesteps(nfe)
    calls = 0
    x = noise * sched.init_noise_sigma if x_init is None else x_init
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = model.net(inp, t.expand(inp.shape[0]).to(inp.dtype))
        calls += 1
        x = sched.step(out, t, x).prev_sample
    return x, calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tuned", default=str(TUNED_DIR / "digits.json"))
    p.add_argument("--out", type=Path, default=Path("out/bench/quality"))
    args = p.parse_args()
    art = load_tuned(args.tuned)
    task = make_task("digits", args.samples)
    model = task.model
    shape = (args.samples, *task.shape)
    runs = []
    for seed in range(args.seed, args.seed + args.seeds):
        noise = initial_noise(shape, seed=seed)
        for nfe in art.budgets:
            with torch.no_grad():
                t0 = time.perf_counter()
                x, calls = adapter_samples(model, args.tuned, nfe, noise)
                seconds = time.perf_counter() - t0
                res = sample(model, shape, nfe=nfe, grid=art, seed=seed, progress=False,
                             return_trajectory=True)
                same, _ = adapter_samples(model, args.tuned, nfe, noise,
                                          x_init=res.trajectory[0])
            ref = res.x
            diff = float((x - ref).abs().max() / ref.abs().max())
            diff_same = float((same - ref).abs().max() / ref.abs().max())
            fd = float(task.evaluate(x, seed)["feature_fd"])
            runs.append({"nfe": nfe, "seed": seed, "network_calls": calls, "feature_fd": fd,
                         "max_rel_diff_to_sample": diff,
                         "max_rel_diff_same_initial_state": diff_same,
                         "seconds": round(seconds, 2), "solver": art.entry(nfe).solver})
            print(f"seed {seed} {nfe:3d} NFE  adapter FD {fd:8.3f}  ({calls} calls; max rel "
                  f"diff to sample() {diff:.1e}, from the same x_T {diff_same:.1e})",
                  flush=True)
            assert calls == nfe and diff_same < 1e-4, "the adapter must reproduce the tuned run"
    rows = [{"nfe": n, "solver": art.entry(n).solver,
             "feature_fd": mean_ci([r["feature_fd"] for r in runs if r["nfe"] == n]),
             "max_rel_diff_to_sample": max(r["max_rel_diff_to_sample"] for r in runs
                                           if r["nfe"] == n),
             "max_rel_diff_same_initial_state": max(r["max_rel_diff_same_initial_state"]
                                                    for r in runs if r["nfe"] == n)}
            for n in art.budgets]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adapter.json").write_text(json.dumps({
        "meta": {"samples": args.samples, "seeds": list(range(args.seed,
                                                             args.seed + args.seeds)),
                 "command": "python benchmarks/quality_adapter.py " + " ".join(sys.argv[1:]),
                 "torch": torch.__version__},
        "rows": rows, "runs": runs}, indent=1) + "\n")
    for r in rows:
        fd = r["feature_fd"]
        print(f"{r['nfe']:3d} NFE  {r['solver']:14s} FD {fd['mean']:.2f} ± {fd['ci95']:.2f}  "
              f"max rel diff {r['max_rel_diff_to_sample']:.1e}")


if __name__ == "__main__":
    main()
