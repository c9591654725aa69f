"""Hash every solver's seeded output (issue 12, item 7): run on two commits and compare.

For each registered solver (default options) on the shipped digits model and the analytic
Gaussian mixture, at a few NFE budgets, this records the SHA-256 of the output tensor's bytes,
the evaluations the run used and the grid's step count, and saves the tensors so that two runs
can be compared numerically (``--compare A.json B.json``).

    python benchmarks/output_hashes.py --out /tmp/hashes_old      # on the old commit
    python benchmarks/output_hashes.py --out /tmp/hashes_new      # on the new commit
    python benchmarks/output_hashes.py --compare /tmp/hashes_old /tmp/hashes_new

Only the public API that both commits share is used (``diffsolve.sample``,
``diffsolve.list_solvers``, the zoo loaders).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import torch

BUDGETS = (6, 10, 20)
CONFIGS = {  # extra option sets whose step counts the cost fix changes
    "dpmpp_2m+singlestep": ("dpmpp_2m", {"warmup": "singlestep"}),
    "dpmpp_3m+singlestep": ("dpmpp_3m", {"warmup": "singlestep"}),
    "sa_solver+pece": ("sa_solver", {"pece": True}),
    "unipc+singlestep": ("unipc", {"warmup": "singlestep"}),
}


def _models():
    from diffsolve.schedules import EDM
    from diffsolve.zoo import GaussianMixture
    from diffsolve.zoo.pretrained import load_model

    digits = load_model("digits")
    gmm = GaussianMixture.default_2d().denoiser(EDM())
    return {"digits": (digits, (8, *digits.shape)), "gmm": (gmm, (64, 2))}


def run(out: Path) -> None:
    import diffsolve

    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    tensors = {}
    runs = {name: (name, {}) for name in diffsolve.list_solvers()}
    runs.update(CONFIGS)
    for model_name, (model, shape) in _models().items():
        for label, (solver, options) in runs.items():
            for budget in BUDGETS:
                key = f"{model_name}/{label}/{budget}"
                try:
                    with torch.no_grad():
                        res = diffsolve.sample(model, shape, solver=solver, nfe=budget, seed=0,
                                               progress=False, **options)
                except Exception as exc:
                    rows[key] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                x = res.x.contiguous()
                rows[key] = {"sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
                             "nfe_used": int(res.nfe), "intervals": int(res.grid.steps)}
                tensors[key] = x.clone()
    (out / "hashes.json").write_text(json.dumps(rows, indent=1, sort_keys=True))
    torch.save(tensors, out / "outputs.pt")
    print(f"{len(rows)} runs -> {out}")


def compare(a: Path, b: Path) -> None:
    ra = json.loads((a / "hashes.json").read_text())
    rb = json.loads((b / "hashes.json").read_text())
    ta, tb = torch.load(a / "outputs.pt"), torch.load(b / "outputs.pt")
    same = changed_steps = 0
    diffs = []
    for key in sorted(set(ra) | set(rb)):
        x, y = ra.get(key), rb.get(key)
        if x == y:
            same += 1
            continue
        if x is None or y is None or "error" in x or "error" in y:
            diffs.append(f"{key}: {x} -> {y}")
            continue
        if (x["nfe_used"], x["intervals"]) != (y["nfe_used"], y["intervals"]):
            changed_steps += 1
            diffs.append(f"{key}: step count {x['intervals']} -> {y['intervals']}, "
                         f"NFE used {x['nfe_used']} -> {y['nfe_used']}")
            continue
        d = (ta[key].double() - tb[key].double()).abs().max().item()
        scale = ta[key].double().abs().max().item()
        diffs.append(f"{key}: same steps, max abs diff {d:.3g} (rel {d / max(scale, 1e-300):.3g})"
                     + ("" if math.isfinite(d) else " NON-FINITE"))
    print(f"identical: {same} of {len(set(ra) | set(rb))}; step count changed: {changed_steps}")
    for line in diffs:
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        run(args.out)


if __name__ == "__main__":
    main()
