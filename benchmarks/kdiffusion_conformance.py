"""Conformance table of diffsolve.kdiffusion against k-diffusion 0.1.1.post1's own samplers.

Runs every case of tests/test_kdiffusion_peer.py (same denoiser, sigmas and injected noise,
float64) and records, per k-diffusion function, the largest absolute and relative output
difference over its cases, the largest relative callback difference (x and denoised, each
against its own max) and whether the keyword set (names, order, defaults) equals
k-diffusion's. Not a speed benchmark: a report.

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/kdiffusion_conformance.py \
        --out docs/bench/kdiffusion
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_kdiffusion_peer as peer
from diffsolve import kdiffusion as ds


def keywords_equal(name: str) -> bool:
    theirs = inspect.signature(getattr(peer.K, f"sample_{name}")).parameters
    ours = [p for p in inspect.signature(getattr(ds, f"sample_{name}")).parameters.values()
            if p.kind != inspect.Parameter.VAR_KEYWORD]
    return ([p.name for p in ours] == list(theirs)
            and all(p.default == theirs[p.name].default for p in ours))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs/bench/kdiffusion"))
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    gmm = peer.GaussianMixture.random(d=4, k=3, seed=1)
    sigmas = peer.K.get_sigmas_karras(12, 0.02, 40.0, device="cpu").to(torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    setup = (gmm.kdiffusion_denoiser(), sigmas, x * sigmas[0])
    rows: dict[str, dict] = {}
    for name, kwargs, noise in peer.CASES:
        ref, ours, seen_ref, seen_ours = peer.run_pair(setup, name, kwargs, noise)
        row = rows.setdefault(name, {"cases": [], "max_abs": 0.0, "max_rel": 0.0,
                                     "max_callback_rel": 0.0,
                                     "keywords_equal": keywords_equal(name)})
        abs_diff = float((ours - ref).abs().max())
        cb = max(max(float((a[k] - b[k]).abs().max() / a[k].abs().max())
                     for k in ("x", "denoised"))
                 for a, b in zip(seen_ref, seen_ours, strict=True))
        row["cases"].append({"kwargs": kwargs, "noise": noise, "max_abs": abs_diff,
                             "callbacks": len(seen_ours)})
        row["max_abs"] = max(row["max_abs"], abs_diff)
        row["max_rel"] = max(row["max_rel"], abs_diff / float(ref.abs().max()))
        row["max_callback_rel"] = max(row["max_callback_rel"], cb)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "conformance.json").write_text(json.dumps(rows, indent=1))
    lines = ["| k-diffusion function | cases | max abs diff | max rel diff | max callback rel diff "
             "| keywords equal |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| `sample_{name}` | {len(r['cases'])} | {r['max_abs']:.1e} | "
                     f"{r['max_rel']:.1e} | {r['max_callback_rel']:.1e} | "
                     f"{'yes' if r['keywords_equal'] else 'no'} |")
    table = "\n".join(lines)
    (args.out / "conformance.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
