"""Command line: ``diffsolve sample``, ``diffsolve solvers``, ``diffsolve train`` and
``diffsolve bench``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .solvers import get_solver, list_solvers

DEFAULT_SOLVER = "dpmpp_2m"


def _plot_gmm(samples: torch.Tensor, gmm: object, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = samples.detach().double().cpu()
    lo = torch.quantile(xy, 0.002, dim=0) - 0.5
    hi = torch.quantile(xy, 0.998, dim=0) + 0.5
    gx = torch.linspace(float(lo[0]), float(hi[0]), 300, dtype=torch.float64)
    gy = torch.linspace(float(lo[1]), float(hi[1]), 300, dtype=torch.float64)
    mesh = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).reshape(-1, 2)
    dens = gmm.log_prob(mesh).exp().reshape(300, 300)  # type: ignore[attr-defined]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    ax.contourf(gx.numpy(), gy.numpy(), dens.numpy(), levels=30, cmap="Blues")
    ax.scatter(xy[:, 0].numpy(), xy[:, 1].numpy(), s=2, c="crimson", alpha=0.6, linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _plot_digits(x: torch.Tensor, out: Path, title: str, labels: list[str] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)[:, 0]  # (N, 8, 8) in [0, 1]
    n = imgs.shape[0]
    cols = min(16, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.7, rows * 0.8 + 0.6), dpi=110,
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(imgs[k].numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            if labels is not None:
                ax.set_title(labels[k], fontsize=6, pad=1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _sample_model(args: argparse.Namespace):
    from .core.schedules import EDM
    from .drivers.loop import sample
    from .zoo import GaussianMixture
    from .zoo.pretrained import list_models, load_model

    if args.model == "gmm":
        gmm = GaussianMixture.default_2d()
        model = gmm.denoiser(EDM(sigma_min=0.002, sigma_max=20.0))  # data std ~0.7
        shape: tuple[int, ...] = (args.n, 2)
    elif args.model in list_models():
        gmm = None
        model = load_model(args.model)
        shape = (args.n, *model.card["shape"])  # type: ignore[attr-defined]
    else:
        raise SystemExit(f"unknown model {args.model!r}; available: gmm, "
                         f"{', '.join(list_models())}")
    from .tools.tune import cli_grid, is_tuned_file

    grid, args.tuned_note = cli_grid(args, args.model, args.nfe)
    if str(grid).endswith(".json") and not is_tuned_file(grid):  # a searched grid file
        from .tools.grid_search import load_grid

        grid = load_grid(grid)
    start = time.perf_counter()
    with torch.no_grad():
        result = sample(model, shape, solver=args.solver, nfe=args.nfe, grid=grid,
                        seed=args.seed, progress=not args.quiet)
    return gmm, result, time.perf_counter() - start


def cmd_sample(args: argparse.Namespace) -> int:
    gmm, result, seconds = _sample_model(args)
    if args.tuned_note:
        print(args.tuned_note, file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = (f"diffsolve {args.model}: {args.solver}, {result.nfe} NFE, {args.grid} grid, "
            f"seed {args.seed}")
    summary = {"model": args.model, "solver": args.solver, "nfe": result.nfe,
               "steps": result.grid.steps, "n": args.n, "seed": args.seed,
               "seconds": round(seconds, 3), "image": str(out)}
    if args.tuned_note:
        summary["tuned"] = args.tuned_note
    if gmm is not None:
        _plot_gmm(result.x, gmm, out, f"{head}\n{args.n} samples over the exact mixture density")
    elif result.x.ndim == 2:
        _plot_gmm_free(result.x, out, f"{head}\n{args.n} samples")
    else:
        labels = None
        if args.model == "digits":
            from .zoo.classifier import load_classifier

            probs = load_classifier().predict_proba(result.x.float())
            conf, pred = probs.max(dim=1)
            labels = [f"{int(p)} ({float(c):.2f})" for p, c in zip(pred, conf, strict=True)]
            summary["confident_fraction"] = round(float((conf >= 0.9).float().mean()), 4)
            summary["class_histogram"] = torch.bincount(pred, minlength=10).tolist()
        _plot_digits(result.x[:128], out, head + " (classifier label, confidence)", labels)
    print(json.dumps(summary))
    return 0


def _plot_gmm_free(samples: torch.Tensor, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = samples.detach().double().cpu()
    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    ax.scatter(xy[:, 0].numpy(), xy[:, 1].numpy(), s=2, c="crimson", alpha=0.6, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def cmd_solvers(args: argparse.Namespace) -> int:
    from .solvers import catalog, solver_class

    if args.markdown_update:
        path = Path(args.markdown_update)
        path.write_text(catalog.replace_in(path.read_text()))
        print(f"solver tables updated in {path}")
        return 0
    if args.markdown:
        print(catalog.markdown_tables())
        return 0

    print(f"{'name':16s} {'order':>5s} {'NFE/step':>8s} {'stochastic':>10s}  reference")
    for name in list_solvers():
        cls = solver_class(name)
        s = get_solver(name)
        print(f"{name:16s} {s.order:5d} {s.steady_evaluations:8d} {s.stochastic!s:>10s}  "
              f"{cls.reference}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.runner import DEFAULT_SAMPLES, failure_message, run_benchmark
    from .core.errors import DiffsolveError

    try:
        nfes = [int(v) for v in args.nfe.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--nfe must be comma-separated integers, got {args.nfe!r}") from None
    samples = args.samples if args.samples is not None else DEFAULT_SAMPLES[args.model]
    out = args.out if args.out is not None else f"results/{args.model}"
    try:
        res = run_benchmark(args.model, args.solvers, nfes, samples, args.seed, out,
                            progress=not args.quiet, grid=args.grid, device=args.device,
                            n_seeds=args.seeds)
    except DiffsolveError as e:
        raise SystemExit(f"diffsolve bench: {e}") from None
    s = res["summary"]
    print(json.dumps({"model": args.model, "computed": res["computed"],
                      "reused": res["reused"], "metric": s["metric"],
                      "best_per_nfe": {n: (b["best"] or {}).get("solver")
                                       for n, b in s["best_per_nfe"].items()},
                      "sde_beats_ode_from_nfe": s["sde_beats_ode_from_nfe"],
                      **res["paths"]}))
    msg = failure_message(res)
    if msg:
        print(msg, file=sys.stderr)
        return 1
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``diffsolve generate``: sharded, resumable generation (torchrun-aware)."""
    import os

    from .core.errors import DiffsolveError
    from .tools.generate import generate

    try:
        res = generate(args.model, args.n, args.out, solver=args.solver, nfe=args.nfe,
                       grid=args.grid, seed=args.seed, shard_size=args.shard_size,
                       device=args.device, retry_failed=args.retry_failed,
                       progress=not args.quiet)
    except DiffsolveError as e:
        raise SystemExit(f"diffsolve generate: {e}") from None
    if int(os.environ.get("RANK", "0")) == 0:
        m = res.manifest
        print(json.dumps({"out": str(res.out), "status": m["status"], "n_done": m["n_done"],
                          "shards": res.n_shards, "failed": [f["shard"] for f in m["failed"]],
                          "computed_by_rank0": len(res.computed),
                          "reused_by_rank0": len(res.reused)}))
    return 0


def cmd_gamma(args: argparse.Namespace) -> int:
    """``diffsolve gamma``: measure gamma (eps ~ cost^(-1/gamma)) of a shipped hierarchy."""
    from .zoo.hierarchy import measure_gamma

    rep = measure_gamma(args.family, reference=args.reference, seed=args.seed, out=args.out)
    print(json.dumps({k: rep[k] for k in ("family", "reference", "flops_per_call", "errors",
                                          "gamma")}))
    return 0


def cmd_train(argv: list[str]) -> int:
    from .zoo import train

    return int(train.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffsolve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample a built-in model and write a PNG")
    p.add_argument("--model", default="digits", help="built-in model: digits (default; a "
                   "U-Net trained on scikit-learn's 8x8 digits, shipped), moons, or gmm (the "
                   "2-D Gaussian mixture with an exact denoiser)")
    p.add_argument("--solver", default=DEFAULT_SOLVER, choices=list_solvers())
    p.add_argument("--nfe", type=int, default=20, help="model-evaluation budget")
    p.add_argument("--grid", default="karras", help="time-step grid name, or a searched-grid "
                   "JSON file (diffsolve.grid_search)")
    p.add_argument("--tuned", default=None, help="tuned artefact JSON (diffsolve tune); "
                   "default: the one shipped for the model, when it has the --nfe budget")
    p.add_argument("--no-tuned", action="store_true", help="do not use a shipped tuned grid")
    p.add_argument("--n", type=int, default=64, help="number of samples (gmm/moons: use "
                   "a few thousand)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="output PNG path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)
    s = sub.add_parser("solvers", help="list solvers with order, NFE per step and source")
    s.add_argument("--markdown", action="store_true",
                   help="print the solver tables as markdown (README's)")
    s.add_argument("--markdown-update", metavar="FILE",
                   help="rewrite the generated solver tables inside FILE (e.g. README.md)")
    s.set_defaults(func=cmd_solvers)
    b = sub.add_parser("bench", help="benchmark solvers x NFE budgets on a built-in model "
                       "(resumable; writes results.json, report.md and PNG plots)")
    b.add_argument("--model", default="digits", choices=["gmm", "gmm-err", "gmm-learned-2d",
                                                          "gmm-learned-16d", "digits", "moons"],
                   help="gmm: exact mixture denoiser; gmm-err: with a smooth error; digits: "
                   "the shipped U-Net (classifier-feature FD, KID, pixel FD, confidence); "
                   "moons: the shipped 2-D MLP (sliced W1)")
    b.add_argument("--solvers", default="all", help="comma-separated solver names or 'all'")
    b.add_argument("--nfe", default="5,10,20,50,100", help="comma-separated NFE budgets")
    b.add_argument("--samples", type=int, default=None,
                   help="samples per cell and seed (default: mixtures 10000, digits 800, moons "
                   "5000)")
    b.add_argument("--seed", type=int, default=0, help="first seed")
    b.add_argument("--seeds", type=int, default=3, help="seeds per cell (mean ± 95%% CI)")
    b.add_argument("--grid", default="karras", help="time-step grid name")
    b.add_argument("--device", default="cpu", help="sampling device (metrics run on CPU)")
    b.add_argument("--out", default=None, help="output folder (default results/MODEL); "
                   "cells already in its results.json are reused")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)
    g = sub.add_parser("generate", help="generate N samples into resumable shard files "
                       "(run under torchrun for several processes/GPUs)")
    g.add_argument("--model", default="digits", help="gmm, a shipped zoo model (digits, "
                   "moons) or a zoo .safetensors path / training directory")
    g.add_argument("--solver", default=DEFAULT_SOLVER, choices=list_solvers())
    g.add_argument("--nfe", type=int, default=20, help="model-evaluation budget")
    g.add_argument("--grid", default="karras", help="time-step grid name")
    g.add_argument("--n", "--num-samples", dest="n", type=int, default=50000,
                   help="number of samples (under torchrun write --num-samples: torchrun's "
                   "own parser rejects --n as an ambiguous abbreviation)")
    g.add_argument("--seed", type=int, default=0, help="sample i is keyed by (seed, i)")
    g.add_argument("--shard-size", type=int, default=500, help="samples per shard file")
    g.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, "
                   "else cpu")
    g.add_argument("--out", required=True, help="output folder (an existing run is resumed)")
    g.add_argument("--retry-failed", action="store_true", help="recompute shards that "
                   "failed with NaN/inf in an earlier call")
    g.add_argument("--quiet", action="store_true", help="no per-shard progress lines")
    g.set_defaults(func=cmd_generate)
    gm = sub.add_parser("gamma", help="measure gamma (error ~ cost^(-1/gamma)) of a shipped "
                        "ML-EM model hierarchy; writes gamma.json and gamma.png")
    gm.add_argument("--family", default="digits", choices=["digits", "moons"])
    gm.add_argument("--reference", default=None, help="reference model (default: the shipped "
                    "extra-large model of the family)")
    gm.add_argument("--seed", type=int, default=0)
    gm.add_argument("--out", default="gamma", help="output folder (default ./gamma)")
    gm.set_defaults(func=cmd_gamma)
    from .tools.tune import add_tune_parser

    add_tune_parser(sub)
    sub.add_parser("train", help="train a built-in model (see `diffsolve train --help`)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
