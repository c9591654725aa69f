r"""Model hierarchies for multilevel sampling (ML-EM, :mod:`diffsolve.mlem`).

A hierarchy is a family of denoisers f^1, ..., f^k of geometrically rising width (so of
rising cost per call and, after equal training, falling error), trained with the same EDM
recipe as ``diffsolve train`` (:func:`diffsolve.zoo.train.train`) and shipped as
``zoo/weights/hier_<family>_w<width>.{safetensors,json}``:

* ``digits``: U-Nets with channels [w, 2w], time-embedding width 4w, GroupNorm groups
  min(8, w), w = 4, 8, 16, 32 (about 16k, 60k, 234k, 922k parameters; FLOPs per call grow
  ~4x per level); 2000 Adam steps, batch 128, lr 1e-3, seed 0 each.
* ``moons``: residual MLPs of hidden width w = 16, 32, 64, 128, depth 4 (the 2-D toy set);
  2000 steps, batch 512.

The largest shipped digits model ``digits`` (channels [32, 64], 6000 steps) serves as the
extra-large reference of the gamma measurement.

Rebuild (each model is trained from its seed; deterministic on CPU)::

    python -m diffsolve.zoo.hierarchy --family digits --work /tmp/hier   # or --family moons
    python -m diffsolve.zoo.hierarchy --only hier_digits_w8 --work /tmp/hier

The trained EMA weights and cards are copied into ``zoo/weights`` (``--dest`` to change).
FLOPs per call (batch 1, :func:`flops_per_call`) are recorded in each card as
``flops_per_call``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import DiffsolveError
from ..core.integrity import sha256_file
from .pretrained import HASH_KEY, WEIGHTS_DIR

DIGITS_WIDTHS = (4, 8, 16, 32)
MOONS_WIDTHS = (16, 32, 64, 128)
FAMILIES = ("digits", "moons")


def spec(family: str, width: int) -> dict[str, Any]:
    """Training config (for :func:`diffsolve.zoo.train.train`) of one hierarchy member."""
    if family == "digits":
        net = {"arch": "unet", "channels": [width, 2 * width], "emb_dim": 4 * width,
               "groups": min(8, width)}
        return {"dataset": "digits", "arch": "unet", "net": net, "steps": 2000, "batch": 128,
                "lr": 1e-3, "seed": 0}
    if family == "moons":
        net = {"arch": "mlp", "hidden": width, "depth": 4, "emb_dim": max(32, width)}
        return {"dataset": "moons", "arch": "mlp", "net": net, "steps": 2000, "batch": 512,
                "lr": 1e-3, "seed": 0}
    raise DiffsolveError(f"unknown hierarchy family {family!r}; choose one of {FAMILIES}")


def widths(family: str) -> tuple[int, ...]:
    if family == "digits":
        return DIGITS_WIDTHS
    if family == "moons":
        return MOONS_WIDTHS
    raise DiffsolveError(f"unknown hierarchy family {family!r}; choose one of {FAMILIES}")


def member_names(family: str) -> list[str]:
    """Shipped names of a family, cheapest first: ``hier_<family>_w<width>``."""
    return [f"hier_{family}_w{w}" for w in widths(family)]


def flops_per_call(net: torch.nn.Module, shape: Sequence[int]) -> int:
    """FLOPs of one network call on one sample (torch's FlopCounterMode: 2 per multiply-add
    of matmuls/convolutions; normalisations and activations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *shape)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(x, torch.zeros(1))
    return int(fc.get_total_flops())


def load_hierarchy(family: str, *, device: torch.device | str | None = None) -> list[Any]:
    """The shipped denoisers of a family, cheapest first (each with ``.card``; the card's
    ``flops_per_call`` is the declared cost)."""
    from .pretrained import load_model

    return [load_model(n, device=device) for n in member_names(family)]


REFERENCES = {"digits": "digits", "moons": "moons"}


def measure_gamma(family: str, *, reference: str | None = None, n_data: int = 1000,
                  n_sigmas: int = 16, seed: int = 0, out: str | Path | None = None,
                  ) -> dict[str, Any]:
    """gamma of a shipped hierarchy: per-level drift error against a reference model and
    cost (the card's FLOPs per call), fitted as eps = a cost^(-1/gamma)
    (:func:`diffsolve.mlem.level_errors`, :func:`diffsolve.mlem.fit_gamma`).

    The reference defaults to the extra-large shipped model of the family (``digits``: the
    [32, 64] U-Net trained 6000 steps; ``moons``: the width-128 MLP trained 4000 steps).
    Data: the held-out digits test split (297 images) or ``n_data`` fresh toy points.
    With ``out``, writes ``gamma.json`` and ``gamma.png`` there.
    """
    from ..drivers.mlem import fit_gamma, level_errors
    from .data import load_digits_split, toy2d
    from .pretrained import load_model

    models = load_hierarchy(family)
    ref = load_model(reference or REFERENCES[family])
    x0 = load_digits_split("test")[0] if family == "digits" else toy2d(family, n_data,
                                                                         seed=seed + 99)
    res = level_errors(models, ref, x0, n_sigmas=n_sigmas, seed=seed)
    costs = [float(m.card["flops_per_call"]) for m in models]
    use = [i for i, e in enumerate(res["errors"]) if e > 0]  # the reference itself: error 0
    gamma, a = fit_gamma([costs[i] for i in use], [res["errors"][i] for i in use])
    report = {"family": family, "members": member_names(family),
              "reference": reference or REFERENCES[family], "flops_per_call": costs,
              "n_params": [int(m.card["n_params"]) for m in models],
              "errors": res["errors"], "diff_norms": res["diff_norms"],
              "gamma": gamma, "a": a, "sigmas": res["sigmas"], "n_data": int(x0.shape[0])}
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "gamma.json").write_text(json.dumps(report, indent=1))
        _plot_gamma(report, o / "gamma.png")
    return report


def _plot_gamma(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    c = np.asarray(rep["flops_per_call"], float)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    pos = [i for i, e in enumerate(rep["errors"]) if e > 0]
    ax.loglog(c[pos], np.asarray(rep["errors"])[pos], "o-", label="error vs reference")
    ax.loglog(c[1:], rep["diff_norms"][1:], "s--", label="||D^l - D^(l-1)||")
    cc = np.geomspace(c.min(), c.max(), 50)
    ax.loglog(cc, rep["a"] * cc ** (-1.0 / rep["gamma"]), "k:",
              label=f"fit eps ~ cost^(-1/{rep['gamma']:.2f})")
    for i in pos:
        ax.annotate(rep["members"][i].split("_")[-1], (c[i], rep["errors"][i]), fontsize=7)
    ax.set_xlabel("FLOPs per call")
    ax.set_ylabel("RMS drift (D) error")
    ax.set_title(f"{rep['family']} hierarchy vs {rep['reference']}: gamma = {rep['gamma']:.2f}",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build(name: str, work: Path, dest: Path, *, threads: int = 1,
          progress: bool = False) -> dict[str, Any]:
    """Train one member ``hier_<family>_w<width>`` and copy its weights + card to ``dest``."""
    from .train import train

    try:
        _, family, w = name.split("_")
        width = int(w[1:])
    except ValueError as err:
        raise DiffsolveError(f"bad hierarchy member name {name!r}") from err
    if width not in widths(family):
        raise DiffsolveError(f"{name!r} is not a member of the {family} hierarchy")
    cfg = spec(family, width)
    out = work / name
    cfg.update(out=str(out), num_threads=threads, progress=progress,
               command=shlex.join(["python", "-m", "diffsolve.zoo.hierarchy", "--only", name,
                                   "--work", "DIR"]))
    res = train(cfg, resume=True)
    card = dict(res.card)
    card["flops_per_call"] = flops_per_call(res.net, card["shape"])
    card["hierarchy"] = {"family": family, "width": width, "members": member_names(family)}
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "model.safetensors", dest / f"{name}.safetensors")
    card[HASH_KEY] = sha256_file(dest / f"{name}.safetensors")  # checked on every load
    (dest / f"{name}.json").write_text(json.dumps(card, indent=1))
    return card


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffsolve.zoo.hierarchy",
                                description="Train the ML-EM model hierarchies.")
    p.add_argument("--family", choices=FAMILIES, action="append",
                   help="family to build (repeatable; default both)")
    p.add_argument("--only", action="append", help="member name(s) to build")
    p.add_argument("--work", required=True, help="directory for checkpoints")
    p.add_argument("--dest", default=str(WEIGHTS_DIR), help="where weights + cards go")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    names = list(a.only or [])
    if not names:
        for fam in a.family or FAMILIES:
            names += member_names(fam)
    for n in names:
        card = build(n, Path(a.work), Path(a.dest), threads=a.threads, progress=a.progress)
        print(json.dumps({"name": n, "n_params": card["n_params"],
                          "flops_per_call": card["flops_per_call"],
                          "final_loss": card["final_loss"],
                          "wall_time_s": card["wall_time_s"]}), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
