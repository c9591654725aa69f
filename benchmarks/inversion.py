"""Round-trip error and NFE of DDIM inversion, EDICT and BDIA on the built-in models.

For each model (the analytic 2-D mixture ``gmm`` with its exact denoiser, the zoo networks
``moons`` and ``digits``), dtype (float32, float64), method and step count: x0 (held-out data:
mixture samples, moons points, the digits test split) -> ``invert`` -> ``reconstruct``, on
the model's own EDM range (sigma 80 -> 0.002, uniform in lambda). Reports the relative L2 error
||x0_hat - x0|| / ||x0|| over the batch, the worst sample's relative error, and the model
evaluations of each direction (counted by the model's own counter). Writes OUT/results.json
and OUT/inversion.png. About a minute on one CPU core.

Usage:
    python benchmarks/inversion.py --out docs/bench/inversion
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffsolve.inversion import invert, reconstruct
from diffsolve.schedules import EDM
from diffsolve.zoo import GaussianMixture
from diffsolve.zoo.data import load_digits_split, toy2d
from diffsolve.zoo.pretrained import load_model

METHODS = {  # label -> invert() options
    "ddim": {"method": "ddim"},
    "edict (p 0.93)": {"method": "edict", "p": 0.93},
    "bdia (gamma 1)": {"method": "bdia", "gamma": 1.0},
    "bdia (gamma 0.5)": {"method": "bdia", "gamma": 0.5},
}
STEPS = (10, 20, 50)


def models(n: int):
    """(name, model, x0 in float64) for each built-in model."""
    gmm = GaussianMixture.default_2d()
    yield "gmm", gmm.denoiser(EDM(0.002, 80.0)), gmm.sample(
        n, generator=torch.Generator().manual_seed(1))
    yield "moons", load_model("moons"), toy2d("moons", n, seed=1).double()
    digits = load_digits_split("test")[0][: max(4, n // 32)]
    yield "digits", load_model("digits"), digits.double()


def run(n: int) -> list[dict]:
    rows = []
    for name, model, x0_64 in models(n):
        net = getattr(model, "net", None)
        for dtype in (torch.float32, torch.float64):
            if isinstance(net, torch.nn.Module):
                net.to(dtype)
            x0 = x0_64.to(dtype)
            for label, opts in METHODS.items():
                for steps in STEPS:
                    t0 = time.perf_counter()
                    nfe0 = model.nfe
                    inv = invert(model, x0, "uniform_lambda", steps=steps, **opts)
                    nfe1 = model.nfe
                    x_hat = reconstruct(model, inv)
                    nfe_rec = model.nfe - nfe1
                    diff = (x_hat - x0).double().flatten(1)
                    ref = x0.double().flatten(1)
                    rows.append({
                        "model": name, "dtype": str(dtype).replace("torch.", ""),
                        "method": label, "steps": steps, "n": int(x0.shape[0]),
                        "rel_l2": float(diff.norm() / ref.norm()),
                        "worst_rel": float((diff.norm(dim=1) / ref.norm(dim=1)).max()),
                        "nfe_invert": nfe1 - nfe0, "nfe_reconstruct": nfe_rec,
                        "seconds": time.perf_counter() - t0,
                    })
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 5.0), dpi=90)
    cmap = plt.get_cmap("tab10")
    for ax, name in zip(axes, names, strict=True):
        for j, label in enumerate(METHODS):
            for dtype, style in (("float32", "-"), ("float64", "--")):
                sel = [r for r in rows if r["model"] == name and r["method"] == label
                       and r["dtype"] == dtype]
                ax.loglog([r["nfe_invert"] + r["nfe_reconstruct"] for r in sel],
                          [max(r["rel_l2"], 1e-17) for r in sel], style, marker="o",
                          color=cmap(j), label=f"{label}, {dtype}")
        ax.set_title(f"{name}: x0 -> invert -> reconstruct")
        ax.set_xlabel("NFE (invert + reconstruct)")
        ax.set_ylabel("relative L2 round-trip error")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/inversion"))
    ap.add_argument("--n", type=int, default=256,
                    help="2-D points per model (digits: n/32 test images)")
    ap.add_argument("--replot", action="store_true", help="redraw OUT/inversion.png only")
    args = ap.parse_args()
    if args.replot:
        rows = json.loads((args.out / "results.json").read_text())["rows"]
        plot(rows, args.out / "inversion.png")
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = run(args.n)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"steps": STEPS, "methods": METHODS, "grid": "uniform_lambda, EDM sigma 80 -> 0.002",
            "torch": torch.__version__, "python": platform.python_version(),
            "seconds": time.perf_counter() - t0}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, args.out / "inversion.png")
    print(f"wrote {args.out} in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
