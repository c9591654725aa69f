r"""A small CNN classifier of the 8×8 digits, for feature-space sample metrics.

Architecture (input 1×8×8 in [-1, 1]):
conv3×3(1→32)-ReLU-conv3×3(32→64)-ReLU-maxpool2 (4×4) - conv3×3(64→64)-ReLU-maxpool2 (2×2)
- flatten (256) - Linear(256→128)-ReLU  =: features phi(x) in R^128 - dropout - Linear(128→10).

``features(x)`` returns phi(x) (the penultimate layer, as Inception features are used for FID,
Heusel et al. 2017) and ``predict_proba(x)`` the softmax of the logits.

Training (:func:`train_classifier`): cross-entropy, Adam, on the digits training split
(:func:`diffsolve.zoo.data.load_digits_split`) with random translations of at most one pixel
(background -1 padding) as augmentation; the held-out accuracy on the 297 test images is stored
in the card. Deterministic given the seed. Weights ship as safetensors only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.errors import IncompatibleModelError
from ..core.integrity import sha256_file
from .data import DIGITS_SHAPE, load_digits_split
from .pretrained import HASH_KEY, verify_weights

CLASSIFIER_DEFAULTS: dict[str, Any] = {"arch": "digits_cnn", "width": 32, "features": 128,
                                       "dropout": 0.3}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_NAME = "digits_classifier"


class DigitsClassifier(nn.Module):
    """CNN for 1×8×8 digits; see the module docstring. ``config`` overrides
    :data:`CLASSIFIER_DEFAULTS` (width w gives channels w, 2w, 2w)."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        unknown = set(config or {}) - set(CLASSIFIER_DEFAULTS)
        if unknown:
            raise IncompatibleModelError(f"unknown classifier config keys {sorted(unknown)}")
        cfg = {**CLASSIFIER_DEFAULTS, **(config or {})}
        self.config = cfg
        w, nf = int(cfg["width"]), int(cfg["features"])
        self.conv1 = nn.Conv2d(1, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.fc = nn.Linear(2 * w * 4, nf)
        self.drop = nn.Dropout(float(cfg["dropout"]))
        self.head = nn.Linear(nf, 10)

    @property
    def feature_dim(self) -> int:
        return int(self.config["features"])

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations phi(x), shape (B, features)."""
        x = x.reshape(-1, *DIGITS_SHAPE)
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (B, 10)."""
        return self.head(self.drop(self.features(x)))

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities softmax(logits), shape (B, 10)."""
        return torch.softmax(self(x), dim=1)


def _shift(x: Tensor, gen: torch.Generator, max_shift: int = 1) -> Tensor:
    """Translate each image by an integer (dy, dx) in [-max_shift, max_shift]^2, padding -1."""
    b = x.shape[0]
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    d = torch.randint(0, 2 * p + 1, (b, 2), generator=gen)
    h, w = x.shape[-2:]
    rows = (d[:, 0, None] + torch.arange(h)[None, :])  # (B, H)
    cols = (d[:, 1, None] + torch.arange(w)[None, :])  # (B, W)
    bi = torch.arange(b)[:, None, None]
    return padded[bi, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` classified as ``y`` (model in eval mode)."""
    was = model.training
    model.eval()
    acc = float((model(x).argmax(1) == y).double().mean())
    model.train(was)
    return acc


def train_classifier(*, epochs: int = 40, batch: int = 64, lr: float = 1e-3, seed: int = 0,
                     config: Mapping[str, Any] | None = None, out: str | os.PathLike[str] | None
                     = None, name: str = DEFAULT_NAME, progress: bool = False,
                     command: str | None = None) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train the digits classifier; returns (model in eval mode, card).

    With ``out`` set, writes ``out/<name>.safetensors`` and ``out/<name>.json``.
    """
    x, y = load_digits_split("train")
    xt, yt = load_digits_split("test")
    torch.manual_seed(seed)
    model = DigitsClassifier(config)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    t0 = time.perf_counter()
    model.train()
    loss = torch.tensor(float("nan"))
    for ep in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(_shift(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress:
            print(f"epoch {ep + 1}/{epochs} loss {float(loss):.4f} "
                  f"held-out acc {accuracy(model, xt, yt):.4f}", file=sys.stderr)
    model.eval()
    card = {
        "format": "diffsolve-zoo-v1",
        "kind": "classifier",
        "command": command,
        "dataset": "digits",
        "shape": list(DIGITS_SHAPE),
        "net": dict(model.config),
        "feature_dim": model.feature_dim,
        "train_accuracy": accuracy(model, x, y),
        "heldout_accuracy": accuracy(model, xt, yt),
        "n_heldout": int(xt.shape[0]),
        "epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
        "n_params": sum(p.numel() for p in model.parameters()),
        "wall_time_s": time.perf_counter() - t0,
        "torch_version": torch.__version__,
    }
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(o / f"{name}.safetensors"), metadata={"format": "diffsolve-zoo-v1"})
        card[HASH_KEY] = sha256_file(o / f"{name}.safetensors")  # checked on every load
        (o / f"{name}.json").write_text(json.dumps(card, indent=1))
    return model, card


def load_classifier(path: str | os.PathLike[str] | None = None) -> DigitsClassifier:
    """Load the shipped classifier (default) or a ``.safetensors`` file with its ``.json`` card
    beside it; eval mode, parameters frozen. Pickle formats are refused."""
    p = Path(path) if path is not None else WEIGHTS_DIR / f"{DEFAULT_NAME}.safetensors"
    if p.suffix != ".safetensors":
        raise IncompatibleModelError(
            f"refusing to load {str(p)!r}: the classifier is read from .safetensors files only "
            "(pickle formats such as .pt/.pkl can run arbitrary code)")
    card = json.loads(p.with_suffix(".json").read_text())
    model = DigitsClassifier(card["net"])
    verify_weights(p, card, p.with_suffix(".json"))  # SHA-256 in the card (shipped: always)
    model.load_state_dict(load_file(str(p)))
    model.card = card  # type: ignore[assignment]
    return model.eval().requires_grad_(False)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m diffsolve.zoo.classifier --out DIR [--epochs N --seed S]``."""
    p = argparse.ArgumentParser(prog="diffsolve train-classifier",
                                description="Train the 8x8 digits CNN classifier.")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--threads", type=int, default=2)
    argv = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    _, card = train_classifier(epochs=a.epochs, batch=a.batch, lr=a.lr, seed=a.seed, out=a.out,
                               progress=True, command=shlex.join(
                                   ["python", "-m", "diffsolve.zoo.classifier", *argv]))
    print(json.dumps({k: card[k] for k in ("train_accuracy", "heldout_accuracy", "n_params",
                                            "wall_time_s")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
