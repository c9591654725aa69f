r"""Learned denoisers of a *known* density: small networks trained on the analytic mixtures.

The benchmark needs a model whose error is that of a real learned network (not a hand-made
perturbation) while the target density stays known exactly, so that exact metrics (the
log-density gap, the mode-resolved error, KL/TV on a grid) can score it at every budget. Each
model here is the zoo's residual MLP (:class:`diffsolve.zoo.nets.MLP`) trained with the EDM
objective of :mod:`diffsolve.zoo.train` (Karras et al. 2022, Table 1: preconditioning,
ln sigma ~ N(-1.2, 1.2^2), loss weight (sigma^2 + sd^2)/(sigma sd)^2) on exact samples of

* ``gmm_learned_2d``: :meth:`GaussianMixture.default_2d` (8 components in 2-D), and
* ``gmm_learned_16d``: :meth:`GaussianMixture.random` ``(16, 8, seed=3)`` (8 components in
  16-D; minimal mean distance 4.6, covariance eigenvalues 0.005 to 1.1).

The sampled density of the *trained network's* PF-ODE/SDE is not exactly the mixture: the
gap is the network's own error, and every metric reports it against the mixture's exact
density, so a solver can only approach the network's floor, not zero.

Shipped like the other zoo models: ``weights/<name>.safetensors`` (EMA weights, float32) and
``weights/<name>.json`` (card with the network config, EDM ``sigma_data``/``sigma_min``/
``sigma_max``, the mixture's name, the training settings, and the SHA-256 of the weights
file, checked by :func:`load_learned`). Re-train with
``python -m diffsolve.zoo.gmm_learned --name gmm_learned_2d``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..core.errors import IncompatibleModelError
from ..core.models import Denoiser
from .gmm import GaussianMixture
from .nets import build_net, count_parameters
from .pretrained import HASH_KEY, WEIGHTS_DIR, load_model
from .train import data_std, edm_loss

LEARNED: dict[str, dict[str, Any]] = {
    "gmm_learned_2d": {"mixture": "default_2d", "dim": 2},
    "gmm_learned_16d": {"mixture": "random(16, 8, seed=3)", "dim": 16},
}
NET: dict[str, Any] = {"arch": "mlp", "hidden": 96, "depth": 3, "emb_dim": 64,
                       "fourier_dim": 32, "fourier_min_freq": 0.1, "fourier_max_freq": 32.0}
TRAIN: dict[str, Any] = {"steps": 8000, "batch": 512, "lr": 2e-3, "warmup": 200,
                         "ema_decay": 0.999, "n_train": 200_000, "seed": 0,
                         "sigma_min": 0.002, "sigma_max": 80.0}


def mixture(name: str) -> GaussianMixture:
    """The analytic mixture a learned model was trained on."""
    if name not in LEARNED:
        raise IncompatibleModelError(f"unknown learned mixture model {name!r}; choose from "
                                     f"{sorted(LEARNED)}")
    if LEARNED[name]["mixture"] == "default_2d":
        return GaussianMixture.default_2d()
    return GaussianMixture.random(16, 8, seed=3)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_learned(name: str, *, out_dir: Path = WEIGHTS_DIR, steps: int | None = None,
                  threads: int = 1) -> dict[str, Any]:
    """Train ``name`` (see :data:`LEARNED`) and write its weights and card to ``out_dir``.

    Adam with linear warm-up, EMA of the weights with decay min(ema_decay, (1+k)/(10+k)),
    ``n_train`` fixed exact samples of the mixture (seeded), all as in
    :mod:`diffsolve.zoo.train`. Returns the card."""
    torch.set_num_threads(threads)
    cfg = {**TRAIN, **({"steps": steps} if steps else {})}
    gmm = mixture(name)
    x_train = gmm.sample(cfg["n_train"], torch.Generator().manual_seed(cfg["seed"])).float()
    sd = data_std(x_train)
    torch.manual_seed(cfg["seed"])
    net_cfg = {**NET, "in_dim": gmm.dim}
    net = build_net(net_cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    start = time.perf_counter()
    loss_avg = None
    for k in range(cfg["steps"]):
        for grp in opt.param_groups:
            grp["lr"] = cfg["lr"] * min(1.0, (k + 1) / cfg["warmup"])
        idx = torch.randint(0, x_train.shape[0], (cfg["batch"],), generator=gen)
        loss = edm_loss(net, x_train[idx], sd, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        d = min(cfg["ema_decay"], (1 + k) / (10 + k))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        lv = loss.item()
        loss_avg = lv if loss_avg is None else 0.99 * loss_avg + 0.01 * lv
    wall = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    w = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(w))
    card = {"format": "diffsolve-zoo-v1", "dataset": f"GaussianMixture.{LEARNED[name]['mixture']}",
            "shape": [gmm.dim], "net": net_cfg, "prediction": "edm", "sigma_data": sd,
            "sigma_min": cfg["sigma_min"], "sigma_max": cfg["sigma_max"],
            "steps": cfg["steps"], "final_loss": loss_avg, "n_params": count_parameters(net),
            "wall_time_s": wall, "torch_version": torch.__version__, "weights": "EMA",
            "train_config": cfg, "threads": threads,
            "command": f"python -m diffsolve.zoo.gmm_learned --name {name} --steps "
                       f"{cfg['steps']}",
            "known_density": "the exact mixture diffsolve.zoo.gmm_learned.mixture(name)",
            HASH_KEY: sha256_of(w)}
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def load_learned(name: str) -> tuple[GaussianMixture, Denoiser]:
    """(exact mixture, learned denoiser) of a shipped learned model; the weights' SHA-256 must
    match the card's."""
    gmm = mixture(name)
    w = WEIGHTS_DIR / f"{name}.safetensors"
    card = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    if sha256_of(w) != card.get(HASH_KEY):
        raise IncompatibleModelError(f"{str(w)!r}: SHA-256 differs from its card's")
    return gmm, load_model(name)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train a learned known-density mixture model")
    p.add_argument("--name", choices=sorted(LEARNED), required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    card = train_learned(a.name, out_dir=Path(a.out), steps=a.steps, threads=a.threads)
    print(json.dumps({k: card[k] for k in ("n_params", "final_loss", "wall_time_s", HASH_KEY)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
