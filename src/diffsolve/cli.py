"""The ``diffsolve`` command line (subcommands: sample, solvers, generate, bench, gamma, train).

Every bad input ends the command with exit code 2 and one line on stderr,
``diffsolve <command>: error: <what was wrong and what is accepted>``; no traceback. Library
errors (:class:`diffsolve.errors.DiffsolveError`) and file-system errors are reported that way;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

DEFAULT_SOLVER = "dpmpp_2m"
DEFAULT_NFE = 20
BUILTIN_SAMPLE_MODELS = ("digits", "moons", "gmm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".webp", ".tif", ".tiff")

DESCRIPTION = """\
Fast, training-free samplers for pretrained diffusion models.

commands:
  sample     sample a model (built-in name or a .safetensors file with its .json card)
             and write a PNG
  solvers    list the solvers with their declared order, weak order, NFE per step and
             source (--markdown: README's tables)
  generate   generate N samples into resumable, verified shard files (optionally one PNG
             per sample); run under torchrun for several processes or GPUs
  bench      benchmark solvers x NFE budgets on a built-in model (resumable)
  gamma      measure gamma (error ~ cost^(-1/gamma)) of a shipped ML-EM model hierarchy
  train      train a built-in model (see 'diffsolve train --help')
  tune       search grids (and solver settings) for a model at several NFE budgets and
             write one JSON artefact (used by sample --tuned, and by default when shipped)

'diffsolve COMMAND --help' shows a command's options and their defaults. Bad input ends
with exit code 2 and one line on stderr.
"""


class CliExit(SystemExit):
    """Exit code 2 for bad input; ``str()`` is the one-line message (already on stderr)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _fail(prog: str, message: str) -> NoReturn:
    line = f"{prog}: error: {' '.join(str(message).split())}"
    print(line, file=sys.stderr, flush=True)
    raise CliExit(line)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default; keeps the description's line breaks."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        _fail(self.prog, f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------------
# argument types (each raises ArgumentTypeError with what is accepted)

def _int_type(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"expected an integer {rng}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def _solver_type(text: str) -> str:
    from .core.errors import SolverOptionError
    from .solvers import solver_class

    try:
        solver_class(text)
    except SolverOptionError as e:
        raise argparse.ArgumentTypeError(f"invalid choice: {e} (list: diffsolve solvers)"
                                         ) from None
    return text


_solver_type.__name__ = "solver"


def _nfe_type() -> Callable[[str], int]:
    from .core.validation import MAX_NFE

    return _int_type(1, MAX_NFE)


def _seed_type() -> Callable[[str], int]:
    from .core.validation import MAX_SEED

    return _int_type(0, MAX_SEED - 1)


def _add_solver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", default=DEFAULT_SOLVER, type=_solver_type, metavar="NAME",
                   help="solver name ('diffsolve solvers' lists them)")
    p.add_argument("--nfe", type=_nfe_type(), default=None, metavar="N",
                   help="model-evaluation budget, 1..100000. A solver whose step cost does "
                   "not divide it uses the largest budget below; the NFE used is printed "
                   f"(default: {DEFAULT_NFE}; with a grid file: the grid's own)%(default).0s")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a solver option, repeatable, e.g. --option eta=0.5 --option "
                   "order=3 (values are JSON numbers/true/false or strings)%(default).0s")
    p.add_argument("--solver-options", default=None, metavar="JSON",
                   help="solver options as a JSON object, e.g. '{\"eta\": 0.5}'%(default).0s")
    p.add_argument("--seed", type=_seed_type(), default=0,
                   help="seed: sample i's noise is keyed by (seed, i); 0..2^64-1")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu "
                   "for sample; cuda:LOCAL_RANK if available for generate)%(default).0s")


def _add_tuned_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tuned", default=None, metavar="FILE",
                   help="a tuned artefact (diffsolve tune): its grid, solver and options at "
                   "--nfe%(default).0s")
    p.add_argument("--no-tuned", action="store_true",
                   help="do not use the tuned grid shipped for the model (the default when "
                   "--grid is karras and the model has one at that budget)")


def _solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options from --option and --solver-options, checked against the solver (names, types)
    before any model is loaded."""
    from .core.validation import ArgumentError, parse_option_pairs, parse_options_json
    from .drivers.arguments import check_solver_options
    from .solvers import get_solver

    opts = parse_options_json(args.solver_options) if args.solver_options else {}
    for k, v in parse_option_pairs(args.option).items():
        if k in opts and opts[k] != v:
            raise ArgumentError(f"solver option {k!r} given twice with different values "
                                f"({opts[k]!r} in --solver-options, {v!r} in --option)")
        opts[k] = v
    check_solver_options(args.solver, opts)
    get_solver(args.solver, **opts)  # unknown names and out-of-range values raise here
    return opts


def _check_out_file(out: str) -> Path:
    """The image path that will be written (a missing suffix becomes .png), checked before
    any sampling: its folder can be created and the suffix is an image format."""
    from .core.validation import ArgumentError

    if not out or out.endswith(("/", "\\")) or Path(out).is_dir():
        raise ArgumentError(f"--out {out!r} is a folder; give a file path such as "
                            f"{str(Path(out) / 'samples.png')!r}")
    p = Path(out)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        if p.suffix and p.suffix[1:].isalpha() and len(p.suffix) <= 5:
            raise ArgumentError(f"--out {out!r}: unsupported image type {p.suffix!r}; use one "
                                f"of {', '.join(IMAGE_SUFFIXES)}")
        p = p.with_name(p.name + ".png")
    if p.exists() and p.is_dir():
        raise ArgumentError(f"--out {out!r} is a folder; give a file path such as "
                            f"{str(p / 'samples.png')!r}")
    _make_parent(p)
    return p


def _make_parent(p: Path) -> None:
    from .core.validation import ArgumentError

    for parent in [p.parent, *p.parent.parents]:
        if parent.exists() and not parent.is_dir():
            raise ArgumentError(f"cannot write {str(p)!r}: {str(parent)!r} is a file, not a "
                                "folder")
    p.parent.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------
# plots

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

    imgs = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)  # (N, C, H, W) in [0, 1]
    imgs = imgs[:, 0] if imgs.shape[1] == 1 else imgs.permute(0, 2, 3, 1)
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


# --------------------------------------------------------------------------------------------
# sample

def _load_sample_model(name: str, device: torch.device | None) -> tuple[Any, Any]:
    """(denoiser, gmm or None) for ``--model``: gmm, a shipped name, or a zoo path."""
    from .core.schedules import EDM
    from .zoo import GaussianMixture
    from .zoo.pretrained import load_model

    if name == "gmm":
        gmm = GaussianMixture.default_2d()
        return gmm.denoiser(EDM(sigma_min=0.002, sigma_max=20.0)), gmm  # data std ~0.7
    return load_model(name, device=device), None


def _load_grid_file(path: str) -> Any:
    from .core.validation import ArgumentError
    from .tools.grid_search import load_grid

    try:
        return load_grid(path)
    except FileNotFoundError:
        raise ArgumentError(f"--grid {path!r}: no such file (a grid name such as karras, or "
                            "a searched-grid JSON file)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArgumentError(f"--grid {path!r} is not a searched-grid JSON file "
                            f"({type(e).__name__}: {e})") from None


def _nfe_note(prog: str, solver: str, asked: int | None, used: int) -> None:
    if asked is not None and used != asked:
        print(f"{prog}: note: {solver} used {used} NFE, not the {asked} asked: its steps cost "
              "a fixed number of evaluations each, so the largest budget <= the request is "
              "used", file=sys.stderr, flush=True)


def cmd_sample(args: argparse.Namespace) -> int:
    from .core.grids import GRID_NAMES
    from .core.validation import ArgumentError, check_device
    from .drivers.loop import sample
    from .tools.tune import cli_grid

    dev = check_device(args.device, "--device")
    opts = _solver_options(args)
    out = _check_out_file(args.out)
    nfe = args.nfe
    grid: Any
    grid, tuned_note = cli_grid(args, args.model, nfe if nfe is not None else DEFAULT_NFE)
    if tuned_note:
        nfe = nfe if nfe is not None else DEFAULT_NFE
        print(f"diffsolve sample: {tuned_note}", file=sys.stderr)
    elif grid.endswith(".json") or Path(grid).suffix:  # a searched grid file
        grid = _load_grid_file(grid)
    elif grid not in GRID_NAMES:
        raise ArgumentError(f"--grid {grid!r} is neither a grid name ({', '.join(GRID_NAMES)}) "
                            "nor a searched-grid .json file")
    elif nfe is None:
        nfe = DEFAULT_NFE
    model, gmm = _load_sample_model(args.model, dev)
    shape = (args.n, *getattr(model, "shape", (2,)))
    start = time.perf_counter()
    with torch.no_grad():
        result = sample(model, shape, solver=args.solver, nfe=nfe, grid=grid,
                        seed=args.seed, device=dev, progress=not args.quiet, **opts)
    seconds = time.perf_counter() - start
    solver_used = args.solver
    if tuned_note:  # the tuned entry sets the solver (the one asked, if it has an entry)
        from .drivers.tuned import load_tuned

        solver_used = load_tuned(grid).entry(nfe, args.solver).solver
    _nfe_note("diffsolve sample", solver_used, nfe, result.nfe)
    grid_label = ("tuned" if tuned_note else args.grid if isinstance(grid, str)
                  else Path(args.grid).name)
    head = (f"diffsolve {args.model}: {solver_used}, {result.nfe} NFE, {grid_label} grid, "
            f"seed {args.seed}")
    summary: dict[str, Any] = {
        "model": args.model, "solver": solver_used, "nfe": result.nfe, "nfe_requested": nfe,
        "steps": result.grid.steps, "n": args.n, "seed": args.seed,
        "solver_options": opts, "seconds": round(seconds, 3), "image": str(out)}
    if tuned_note:
        summary["tuned"] = tuned_note
    x = result.x.float().cpu()
    if gmm is not None:
        _plot_gmm(x, gmm, out, f"{head}\n{args.n} samples over the exact mixture density")
    elif x.ndim == 2:
        _plot_gmm_free(x, out, f"{head}\n{args.n} samples")
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        labels = None
        if getattr(model, "card", {}).get("dataset") == "digits" and x.shape[1:] == (1, 8, 8):
            from .zoo.classifier import load_classifier

            probs = load_classifier().predict_proba(x)
            conf, pred = probs.max(dim=1)
            labels = [f"{int(p)} ({float(c):.2f})" for p, c in zip(pred, conf, strict=True)]
            summary["confident_fraction"] = round(float((conf >= 0.9).float().mean()), 4)
            summary["class_histogram"] = torch.bincount(pred, minlength=10).tolist()
        _plot_digits(x[:128], out, head + (" (classifier label, confidence)" if labels else ""),
                     labels[:128] if labels else None)
    else:
        raise ArgumentError(f"cannot plot samples of shape {tuple(x.shape[1:])}; use "
                            "'diffsolve generate' to save them as tensors")
    print(json.dumps(summary))
    return 0


# --------------------------------------------------------------------------------------------
# solvers, bench, generate, gamma, train

def cmd_solvers(args: argparse.Namespace) -> int:
    from .solvers import catalog, get_solver, list_solvers, solver_class

    if args.markdown_update:
        path = Path(args.markdown_update)
        path.write_text(catalog.replace_in(path.read_text()))
        print(f"solver tables updated in {path}")
        return 0
    if args.markdown:
        print(catalog.markdown_tables())
        return 0
    print(f"{'name':18s} {'order':>5s} {'weak':>5s} {'NFE/step':>8s}  reference")
    for name in list_solvers():
        s = get_solver(name)  # what the configured (default) solver declares
        weak = "-" if s.weak_order is None else f"{s.weak_order:g}"
        print(f"{name:18s} {s.order:5d} {weak:>5s} {s.steady_evaluations:8d}  "
              f"{solver_class(name).reference}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.runner import DEFAULT_SAMPLES, failure_message, run_benchmark
    from .core.validation import MAX_NFE, ArgumentError, check_device

    try:
        nfes = [int(v) for v in args.nfe.split(",") if v.strip()]
    except ValueError:
        raise ArgumentError(f"--nfe must be comma-separated integers, got {args.nfe!r}"
                            ) from None
    if not nfes or any(not 1 <= v <= MAX_NFE for v in nfes):
        raise ArgumentError(f"--nfe must list integers in 1..{MAX_NFE}, got {args.nfe!r}")
    check_device(args.device, "--device")
    from .core.grids import GRID_NAMES

    if args.grid not in GRID_NAMES:
        raise ArgumentError(f"--grid {args.grid!r} is not a grid name; choose one of "
                            f"{', '.join(GRID_NAMES)}")
    samples = args.samples if args.samples is not None else DEFAULT_SAMPLES[args.model]
    out = args.out if args.out is not None else f"results/{args.model}"
    res = run_benchmark(args.model, args.solvers, nfes, samples, args.seed, out,
                        progress=not args.quiet, grid=args.grid, device=args.device,
                        n_seeds=args.seeds, tuned=args.tuned)
    s = res["summary"]
    print(json.dumps({"model": args.model, "computed": res["computed"],
                      "reused": res["reused"], "metric": s["metric"],
                      "best_per_nfe": {n: (b["best"] or {}).get("solver")
                                       for n, b in s["best_per_nfe"].items()},
                      "sde_beats_ode_from_nfe": s["sde_beats_ode_from_nfe"],
                      **res["paths"]}))
    msg = failure_message(res)
    if msg:  # failed cells: the run is not a result (exit 1, one line per failed cell)
        print(msg, file=sys.stderr)
        return 1
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``diffsolve generate``: sharded, resumable, verified generation (torchrun-aware)."""
    import os

    from .tools.generate import generate
    from .tools.tune import cli_grid

    opts = _solver_options(args)
    nfe = args.nfe if args.nfe is not None else DEFAULT_NFE
    grid, tuned_note = cli_grid(args, args.model, nfe)
    if tuned_note and int(os.environ.get("RANK", "0")) == 0:
        print(f"diffsolve generate: {tuned_note}", file=sys.stderr)
    res = generate(args.model, args.n, args.out, solver=args.solver, nfe=nfe,
                   grid=args.grid if tuned_note else grid,
                   tuned=grid if tuned_note else None, seed=args.seed,
                   shard_size=args.shard_size, device=args.device,
                   solver_options=opts, retry_failed=args.retry_failed,
                   image_format=args.format, progress=not args.quiet)
    if res.nfe is not None:
        used = res.manifest.get("config", {}).get("solver", args.solver)
        _nfe_note("diffsolve generate", used, nfe, res.nfe)
    if int(os.environ.get("RANK", "0")) == 0:
        m = res.manifest
        print(json.dumps({"out": str(res.out), "status": m["status"], "n_done": m["n_done"],
                          "shards": res.n_shards, "failed": [f["shard"] for f in m["failed"]],
                          "nfe": res.nfe, "nfe_requested": nfe,
                          "computed_by_rank0": len(res.computed),
                          "reused_by_rank0": len(res.reused),
                          "computed": res.computed, "repaired": sorted(res.repaired),
                          "waited": res.waited}))
    return 0


def cmd_gamma(args: argparse.Namespace) -> int:
    """``diffsolve gamma``: measure gamma (eps ~ cost^(-1/gamma)) of a shipped hierarchy."""
    from .zoo.hierarchy import measure_gamma
    from .zoo.pretrained import resolve

    if args.reference is not None:
        resolve(args.reference)  # a bad name/path fails now, not after loading the hierarchy
    _make_parent(Path(args.out) / "gamma.json")
    rep = measure_gamma(args.family, reference=args.reference, seed=args.seed, out=args.out)
    print(json.dumps({k: rep[k] for k in ("family", "reference", "flops_per_call", "errors",
                                          "gamma")}))
    return 0


def cmd_train(argv: list[str]) -> int:
    """``diffsolve train``: the zoo trainer's own options, checked here first."""
    from .core.validation import ArgumentError
    from .zoo import train

    p = train.build_parser()
    p.formatter_class = _Formatter

    def one_line(message: str) -> NoReturn:
        _fail(p.prog, f"{message} (see '{p.prog} --help')")

    p.error = one_line  # type: ignore[method-assign]
    a = p.parse_args(argv)
    limits = {"steps": (1, 10**8), "batch": (1, 10**6), "ckpt_every": (1, 10**8),
              "threads": (1, 4096), "seed": (0, 2**63 - 1)}
    for name, (lo, hi) in limits.items():
        v = getattr(a, name)
        if v is not None and not lo <= v <= hi:
            raise ArgumentError(f"--{name.replace('_', '-')} must be in {lo}..{hi}, got {v}")
    if a.lr is not None and not (math.isfinite(a.lr) and 0 < a.lr <= 10):
        raise ArgumentError(f"--lr must be a number in (0, 10], got {a.lr}")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {a.out!r} is a file; give a folder")
    _make_parent(out / "model.json")
    return int(train.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffsolve", description=DESCRIPTION, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, description=helptext,
                              formatter_class=_Formatter)

    p = add("sample", "sample a model and write a PNG")
    p.add_argument("--model", default="digits", metavar="NAME|PATH",
                   help="digits (a U-Net trained on scikit-learn's 8x8 digits, shipped), "
                   "moons, gmm (2-D Gaussian mixture, exact denoiser), another shipped model, "
                   "or a .safetensors file with its .json card (or a training folder)")
    _add_solver_args(p)
    p.add_argument("--grid", default="karras", help="time-step grid name (karras, "
                   "uniform_lambda, uniform_t, quadratic_t, polyexponential) or a searched-"
                   "grid JSON file (diffsolve.grid_search)")
    _add_tuned_args(p)
    p.add_argument("--n", type=_int_type(1), default=64,
                   help="number of samples (gmm/moons: use a few thousand)")
    p.add_argument("--out", default="samples.png", help="output image path (without a "
                   "suffix, .png is added; the path written is reported)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    s = add("solvers", "list solvers with their declared order, weak order, NFE per step and "
            "source")
    s.add_argument("--markdown", action="store_true",
                   help="print the solver tables as markdown (README's)")
    s.add_argument("--markdown-update", metavar="FILE", default=None,
                   help="rewrite the generated solver tables inside FILE (e.g. README.md)")
    s.set_defaults(func=cmd_solvers)

    g = add("generate", "generate N samples into resumable, verified shard files (run under "
            "torchrun for several processes/GPUs)")
    g.add_argument("--model", default="digits", metavar="NAME|PATH",
                   help="gmm, a shipped zoo model (digits, moons) or a zoo .safetensors path / "
                   "training folder")
    _add_solver_args(g)
    g.add_argument("--grid", default="karras", help="time-step grid name")
    _add_tuned_args(g)
    g.add_argument("--n", "--num-samples", dest="n", type=_int_type(1), default=50000,
                   help="number of samples (under torchrun write --num-samples: torchrun's "
                   "own parser rejects --n as an ambiguous abbreviation)")
    g.add_argument("--shard-size", type=_int_type(1), default=500,
                   help="samples per shard file (also the batch size)")
    g.add_argument("--out", required=True, help="output folder (an existing run is verified "
                   "and resumed)")
    g.add_argument("--format", choices=["safetensors", "png"], default="safetensors",
                   help="png: also one image per sample in OUT/png/ (image models only)")
    g.add_argument("--retry-failed", action="store_true", help="recompute shards that "
                   "failed with NaN/inf in an earlier call")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    b = add("bench", "benchmark solvers x NFE budgets on a built-in model (resumable; writes "
            "results.json, report.md and PNG plots)")
    b.add_argument("--model", default="digits",
                   choices=["gmm", "gmm-err", "gmm-learned-2d", "gmm-learned-16d", "digits",
                            "moons"],
                   help="gmm: exact mixture denoiser; gmm-err: with a smooth error; "
                   "gmm-learned-2d/16d: networks trained on a known mixture (exact metrics); "
                   "digits: the shipped U-Net (feature FD, KID, precision/recall); moons: the "
                   "shipped 2-D MLP (sliced W1)")
    b.add_argument("--solvers", default="all", help="comma-separated solver names or 'all'")
    b.add_argument("--nfe", default="5,10,20,50,100", help="comma-separated NFE budgets")
    b.add_argument("--samples", type=_int_type(1), default=None,
                   help="samples per cell (default: gmm 10000, digits 1000, moons 5000)"
                   "%(default).0s")
    b.add_argument("--seed", type=_seed_type(), default=0, help="first sampling seed")
    b.add_argument("--seeds", type=_int_type(1, 100), default=3,
                   help="seeds per cell (results as mean and 95%% interval)")
    b.add_argument("--grid", default="karras", help="time-step grid name")
    b.add_argument("--tuned", default=None, metavar="FILE|MODEL",
                   help="a tuned artefact (diffsolve tune), or a built-in model name for the "
                   "shipped one: adds the row 'tuned' (its solver and grid at each of its "
                   "budgets)")
    b.add_argument("--device", default="cpu", help="sampling device (metrics run on CPU)")
    b.add_argument("--out", default=None, help="output folder (default: results/MODEL); "
                   "cells already in its results.json are reused%(default).0s")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    gm = add("gamma", "measure gamma (error ~ cost^(-1/gamma)) of a shipped ML-EM model "
             "hierarchy; writes gamma.json and gamma.png")
    gm.add_argument("--family", default="digits", choices=["digits", "moons"],
                    help="model family")
    gm.add_argument("--reference", default=None, help="reference model (default: the shipped "
                    "extra-large model of the family)%(default).0s")
    gm.add_argument("--seed", type=_seed_type(), default=0, help="seed of the data draw")
    gm.add_argument("--out", default="gamma", help="output folder")
    gm.set_defaults(func=cmd_gamma)

    sub.add_parser("train", help="train a built-in model (see 'diffsolve train --help')",
                   add_help=False)
    from .tools.tune import add_tune_parser

    add_tune_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input raises :class:`CliExit` (exit code 2, one stderr line)."""
    from .core.errors import DiffsolveError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    prog = f"diffsolve {command}".strip()
    try:
        if command == "train":
            return cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except DiffsolveError as e:
        _fail(prog, str(e))
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _fail(prog, f"{e.strerror or e}{where}")


if __name__ == "__main__":
    raise SystemExit(main())
