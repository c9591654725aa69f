r"""EDM training of the zoo networks (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", arXiv 2206.00364, Sec. 5 and Table 1).

Preconditioning (Table 1), per sample with noise level sigma and data std sd:

    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise),
    c_skip = sd^2/(sigma^2 + sd^2), c_out = sigma sd/sqrt(sigma^2 + sd^2),
    c_in = 1/sqrt(sigma^2 + sd^2), c_noise = log(sigma)/4,

identical to :class:`diffsolve.models.Denoiser` with ``prediction="edm"``.

Training objective (Table 1): ln sigma ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2,
x = x0 + sigma n with n ~ N(0, I), and

    L = E[ lambda(sigma) ||D(x; sigma) - x0||^2 ],  lambda(sigma) = (sigma^2 + sd^2)/(sigma sd)^2,

(the squared norm is averaged over the data dimensions). sd is the standard deviation of the
training data, computed over all its elements and stored in the model card.

Optimiser: Adam (Kingma & Ba 2015) with a linear learning-rate warm-up
lr_k = lr min(1, (k+1)/warmup), constant afterwards (as in EDM).

EMA of the weights (Polyak averaging): theta_ema <- d_k theta_ema + (1 - d_k) theta after every
step, with d_k = min(ema_decay, (1 + k)/(10 + k)) -- the warm-up keeps the average from being
dominated by the random initialisation early on; ``ema_decay = 0.999`` by default, a half-life
of ln 2 / (1 - 0.999) ~ 693 steps. The shipped weights are the EMA weights.

Checkpoints are written with safetensors only: ``checkpoint.safetensors`` holds the model
(``model.*``), EMA (``ema.*``) and Adam state (``optim.<i>.<key>``) tensors, and, in its
metadata, the JSON training state (step, RNG states as integer lists, loss EMA, wall time,
config); ``checkpoint.json`` is a human-readable copy of that JSON. Writing goes through a
temporary file and ``os.replace``, so an interruption never leaves a torn checkpoint. Resuming
restores model, EMA, optimiser, step and every RNG, so on CPU an interrupted and resumed run is
bitwise identical to an uninterrupted one. Every random draw (net initialisation, batch
indices, sigma, noise) comes from seeded generators, so a run is a deterministic function of
its config.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..core.errors import DiffsolveError
from . import data as zdata
from .nets import build_net, count_parameters

DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "arch": None,  # None: "unet" for digits, "mlp" for the 2-D toys
    "net": {},  # overrides of the architecture's defaults (nets.UNET_DEFAULTS / MLP_DEFAULTS)
    "steps": 8000,
    "batch": 128,
    "lr": 1e-3,
    "warmup": 200,
    "ema_decay": 0.999,
    "p_mean": -1.2,
    "p_std": 1.2,
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "seed": 0,
    "n_toy": 50_000,
    "grad_clip": 1.0,  # max global gradient norm; None disables clipping
    "out": None,
    "ckpt_every": 500,
    "num_threads": None,
    "progress": True,
    "command": None,
}
# keys that may change between an interrupted run and its resumption
RESUMABLE_KEYS = frozenset({"steps", "out", "ckpt_every", "num_threads", "progress", "command"})
CARD_FORMAT = "diffsolve-zoo-v1"
# set by the CLI's signal handlers; train() checks it between steps
_STOP = threading.Event()


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        net: the EMA network (eval mode).
        config: the full training config.
        step: number of optimisation steps done.
        final_loss: bias-corrected EMA (decay 0.99) of the training loss.
        sigma_data: the data standard deviation used for preconditioning.
        n_params: trainable parameter count.
        wall_time_s: wall time of training, summed over resumptions.
        card: the model card (also written to ``out/model.json`` when ``out`` is set).
        losses: per-step training losses of this invocation.
    """

    net: nn.Module
    config: dict[str, Any]
    step: int
    final_loss: float
    sigma_data: float
    n_params: int
    wall_time_s: float
    card: dict[str, Any]
    losses: list[float]


def full_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill defaults, resolve ``arch`` and validate a training config."""
    unknown = set(config or {}) - set(DEFAULTS)
    if unknown:
        raise DiffsolveError(f"unknown training config keys {sorted(unknown)}")
    cfg = {**DEFAULTS, **(config or {})}
    cfg["net"] = dict(cfg["net"] or {})
    if cfg["dataset"] not in zdata.DATASETS:
        raise DiffsolveError(f"unknown dataset {cfg['dataset']!r}; choose one of {zdata.DATASETS}")
    if cfg["arch"] is None:
        cfg["arch"] = "unet" if cfg["dataset"] == "digits" else "mlp"
    if cfg["arch"] == "unet" and cfg["dataset"] != "digits":
        raise DiffsolveError("the unet architecture is for image data (--dataset digits)")
    if cfg["arch"] == "mlp" and cfg["dataset"] == "digits":
        cfg["net"].setdefault("in_dim", math.prod(zdata.DIGITS_SHAPE))
    for k in ("steps", "batch", "warmup", "ckpt_every"):
        if int(cfg[k]) < (0 if k == "steps" else 1):
            raise DiffsolveError(f"{k} must be positive, got {cfg[k]}")
    if not (0.0 <= float(cfg["ema_decay"]) < 1.0):
        raise DiffsolveError(f"ema_decay must lie in [0, 1), got {cfg['ema_decay']}")
    return cfg


def edm_precond(net: nn.Module, x: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma)/4) with per-sample ``sigma`` (B,)
    (Karras et al. 2022, Table 1)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    sd2 = sigma_data * sigma_data
    c_skip = sd2 / (s * s + sd2)
    c_out = s * sigma_data / torch.sqrt(s * s + sd2)
    c_in = 1.0 / torch.sqrt(s * s + sd2)
    return c_skip * x + c_out * net(c_in * x, torch.log(sigma.to(x.dtype)) / 4)


def edm_loss(net: nn.Module, x0: Tensor, sigma_data: float, gen: torch.Generator,
             p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """One Monte-Carlo estimate of the EDM loss on the batch ``x0``: ln sigma ~ N(p_mean,
    p_std^2), x = x0 + sigma n, loss = mean_b lambda(sigma_b) mean_d (D - x0)^2 with
    lambda = (sigma^2 + sd^2)/(sigma sd)^2. Draws sigma then n from ``gen``."""
    b = x0.shape[0]
    sigma = torch.exp(torch.randn(b, generator=gen) * p_std + p_mean).to(x0.dtype)
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    d = edm_precond(net, x0 + s * noise, sigma, sigma_data)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return (weight * (d - x0).square().flatten(1).mean(1)).mean()


def data_std(x: Tensor) -> float:
    """Standard deviation of all elements of the training data (float64), EDM's sigma_data."""
    return float(x.double().std())


# checkpointing ------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if not isinstance(v, Tensor):
                v = torch.tensor(v)
            tensors[f"optim.{i}.{k}"] = v.detach().clone().contiguous()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: Mapping[str, Tensor], groups: list[dict]) -> dict[str, Any]:
    state: dict[int, dict[str, Tensor]] = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, i, k = name.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    fixed = []
    for g in groups:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        fixed.append(g)
    return {"state": state, "param_groups": fixed}


def _rng_list(state: Tensor) -> list[int]:
    return [int(v) for v in state.tolist()]


def _rng_tensor(values: Sequence[int]) -> Tensor:
    return torch.tensor(list(values), dtype=torch.uint8)


def save_checkpoint(out: Path, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    """Write ``out/checkpoint.safetensors`` (+ ``checkpoint.json``) atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().clone().contiguous()
                    for k, v in ema.state_dict().items()})
    opt_tensors, groups = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    meta = {**state, "optimizer_param_groups": groups}
    text = json.dumps(meta, sort_keys=True)
    path = out / "checkpoint.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": CARD_FORMAT + "-checkpoint", "state": text})
    os.replace(tmp, path)
    _atomic_write_text(out / "checkpoint.json", json.dumps(meta, indent=1, sort_keys=True))
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a training checkpoint: (tensors, JSON state). safetensors only."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.safetensors"
    if p.suffix != ".safetensors":
        raise DiffsolveError(f"checkpoints are safetensors files; refusing {str(p)!r}")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "state" not in meta:
        raise DiffsolveError(f"{str(p)!r} is not a diffsolve training checkpoint (no state)")
    return tensors, json.loads(meta["state"])


def _command_of(cfg: Mapping[str, Any]) -> str:
    if cfg.get("command"):
        return str(cfg["command"])
    args = ["diffsolve", "train", "--dataset", cfg["dataset"], "--arch", cfg["arch"],
            "--steps", str(cfg["steps"]), "--batch", str(cfg["batch"]), "--lr", str(cfg["lr"]),
            "--seed", str(cfg["seed"])]
    if cfg.get("out"):
        args += ["--out", str(cfg["out"])]
    return shlex.join(args)


# training -----------------------------------------------------------------------------------
def train(config: Mapping[str, Any] | None = None, *, resume: bool = False,
          stop_at: int | None = None) -> TrainResult:
    """Train an EDM denoiser on a zoo dataset (see the module docstring for the maths).

    Args:
        config: overrides of :data:`DEFAULTS` (dataset, arch, net, steps, batch, lr, warmup,
            ema_decay, p_mean, p_std, sigma_min, sigma_max, seed, n_toy, grad_clip, out,
            ckpt_every, num_threads, progress, command).
        resume: continue from ``out/checkpoint.safetensors`` when it exists (the config must
            agree with the checkpoint's except for :data:`RESUMABLE_KEYS`).
        stop_at: stop after this step as if interrupted (a checkpoint is written first);
            used to test resumption.

    Returns:
        A :class:`TrainResult`. With ``out`` set and the run complete, ``out/model.safetensors``
        (EMA weights) and ``out/model.json`` (model card) are written.
    """
    cfg = full_config(config)
    out = Path(cfg["out"]) if cfg["out"] else None
    threads_before = torch.get_num_threads()
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    try:
        return _train(cfg, out, resume, stop_at)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: dict[str, Any], out: Path | None, resume: bool, stop_at: int | None,
           ) -> TrainResult:

    x_train = zdata.training_data(cfg["dataset"], seed=int(cfg["seed"]), n_toy=int(cfg["n_toy"]))
    sd = data_std(x_train)
    net_cfg = {"arch": cfg["arch"], **cfg["net"]}
    torch.manual_seed(int(cfg["seed"]))
    net = build_net(net_cfg)
    ema = build_net(net_cfg)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg["lr"]))
    gen = torch.Generator().manual_seed(int(cfg["seed"]))

    step, loss_acc, wall_prev = 0, 0.0, 0.0
    ckpt = out / "checkpoint.safetensors" if out else None
    if resume and ckpt is not None and ckpt.exists():
        tensors, st = load_checkpoint(ckpt)
        saved = full_config(st["config"])
        diff = sorted(k for k in DEFAULTS if k not in RESUMABLE_KEYS and saved[k] != cfg[k])
        if diff:
            raise DiffsolveError(
                f"cannot resume {str(ckpt)!r}: config differs in {diff} "
                f"(checkpoint: {[saved[k] for k in diff]}, now: {[cfg[k] for k in diff]})")
        net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        opt.load_state_dict(_unflatten_optimizer(tensors, st["optimizer_param_groups"]))
        gen.set_state(_rng_tensor(st["rng_generator"]))
        torch.set_rng_state(_rng_tensor(st["rng_torch"]))
        step, loss_acc, wall_prev = int(st["step"]), float(st["loss_acc"]), float(st["wall_s"])
    elif resume and out is None:
        raise DiffsolveError("resume needs an output directory (config 'out')")

    n_params = count_parameters(net)
    total = int(cfg["steps"])
    t0 = time.perf_counter()
    losses: list[float] = []

    def state() -> dict[str, Any]:
        return {"step": step, "loss_acc": loss_acc, "wall_s": wall_prev + time.perf_counter() - t0,
                "rng_generator": _rng_list(gen.get_state()),
                "rng_torch": _rng_list(torch.get_rng_state()),
                "config": cfg, "sigma_data": sd, "n_params": n_params,
                "torch_version": torch.__version__}

    def loss_ema() -> float:
        # bias-corrected EMA (decay 0.99) of the per-step loss
        return loss_acc / (1.0 - 0.99**step) if step else float("nan")

    bar = None
    if cfg["progress"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=f"train {cfg['dataset']}", dynamic_ncols=True)
    net.train()
    ema_params = list(ema.parameters())
    params = list(net.parameters())
    mid_step = False
    try:
        while step < total:
            if stop_at is not None and step >= stop_at:
                break
            if _STOP.is_set():
                raise KeyboardInterrupt
            mid_step = True
            for g in opt.param_groups:
                g["lr"] = float(cfg["lr"]) * min(1.0, (step + 1) / int(cfg["warmup"]))
            idx = torch.randint(x_train.shape[0], (int(cfg["batch"]),), generator=gen)
            loss = edm_loss(net, x_train[idx], sd, gen, float(cfg["p_mean"]),
                            float(cfg["p_std"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] is not None:
                nn.utils.clip_grad_norm_(params, float(cfg["grad_clip"]))
            opt.step()
            decay = min(float(cfg["ema_decay"]), (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema_params, params, strict=True):
                    pe.lerp_(p.detach(), 1.0 - decay)
            lv = float(loss.detach())
            losses.append(lv)
            loss_acc = 0.99 * loss_acc + 0.01 * lv
            step += 1
            mid_step = False
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss_ema():.4f}")
            if out is not None and (step % int(cfg["ckpt_every"]) == 0 or step == total):
                save_checkpoint(out, net, ema, opt, state())
    except KeyboardInterrupt:
        # a checkpoint is only consistent at a step boundary; an interrupt that lands inside
        # a step keeps the last periodic checkpoint instead (main() defers signals so that
        # they are always handled at a boundary)
        if out is not None and not mid_step:
            save_checkpoint(out, net, ema, opt, state())
            print(f"\ninterrupted at step {step}; checkpoint saved, resume with --resume",
                  file=sys.stderr)
        elif out is not None:
            print(f"\ninterrupted inside step {step + 1}; resume with --resume continues from "
                  "the last periodic checkpoint", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    if out is not None and stop_at is not None and step < total:
        save_checkpoint(out, net, ema, opt, state())

    ema.eval()
    wall = wall_prev + time.perf_counter() - t0
    card = {
        "format": CARD_FORMAT,
        "command": _command_of(cfg),
        "dataset": cfg["dataset"],
        "shape": list(zdata.data_shape(cfg["dataset"])),
        "net": dict(getattr(ema, "config", net_cfg)),
        "prediction": "edm",
        "sigma_data": sd,
        "sigma_min": float(cfg["sigma_min"]),
        "sigma_max": float(cfg["sigma_max"]),
        "steps": step,
        "final_loss": loss_ema(),
        "n_params": n_params,
        "wall_time_s": wall,
        "torch_version": torch.__version__,
        "weights": "EMA",
        "train_config": cfg,
    }
    if out is not None and step >= total:
        save_file({k: v.detach().contiguous() for k, v in ema.state_dict().items()},
                  str(out / "model.safetensors"), metadata={"format": CARD_FORMAT})
        _atomic_write_text(out / "model.json", json.dumps(card, indent=1))
    return TrainResult(net=ema, config=cfg, step=step, final_loss=loss_ema(), sigma_data=sd,
                       n_params=n_params, wall_time_s=wall, card=card, losses=losses)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffsolve train",
        description="Train a small EDM denoiser (Karras et al. 2022) on a bundled dataset.")
    p.add_argument("--dataset", choices=zdata.DATASETS, default=None,
                   help="training data (default digits)")
    p.add_argument("--arch", choices=("unet", "mlp"), default=None,
                   help="network (default: unet for digits, mlp for 2-D toys)")
    p.add_argument("--steps", type=int, default=None, help=f"optimiser steps ({DEFAULTS['steps']})")
    p.add_argument("--batch", type=int, default=None, help=f"batch size ({DEFAULTS['batch']})")
    p.add_argument("--lr", type=float, default=None, help=f"Adam learning rate ({DEFAULTS['lr']})")
    p.add_argument("--seed", type=int, default=None, help="seed (0)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, model files)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.safetensors if it exists")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint period in steps")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``diffsolve train --dataset digits --out DIR [--resume] ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    given = {"dataset": a.dataset, "arch": a.arch, "steps": a.steps, "batch": a.batch,
             "lr": a.lr, "seed": a.seed, "ckpt_every": a.ckpt_every}
    cfg: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    ckpt = Path(a.out) / "checkpoint.safetensors"
    if a.resume and ckpt.exists():
        saved = load_checkpoint(ckpt)[1]["config"]
        cfg = {**saved, **cfg}
    cfg.update(out=a.out, num_threads=a.threads, progress=not a.no_progress,
               command=shlex.join(["diffsolve", "train", *argv]))
    # Ctrl-C and SIGTERM (e.g. from a batch scheduler) are deferred to the next step
    # boundary, where train() writes a checkpoint and stops: nothing done is lost.
    def _on_signal(signum: int, frame: object) -> None:
        _STOP.set()

    _STOP.clear()
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        res = train(cfg, resume=a.resume)
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _STOP.clear()
    print(json.dumps({k: res.card[k] for k in ("dataset", "steps", "final_loss", "sigma_data",
                                                "n_params", "wall_time_s")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
