r"""Datasets that need no download: scikit-learn's 8×8 digits and 2-D toy distributions.

* Digits: the UCI optical digits bundled with scikit-learn (``sklearn.datasets.load_digits``,
  1797 grey-scale 8×8 images, integer values 0..16), scaled to [-1, 1] by x = v/8 - 1 and
  split once by a seeded permutation into 1500 training and 297 held-out images.
* 2-D toys, each a deterministic function of ``(n, seed)`` (numpy PCG64 generator):
  ``moons`` (two interleaved half circles), ``swissroll`` (the 2-D spiral
  (t cos t, t sin t)/5, t ~ U[1.5 pi, 4.5 pi]), ``checkerboard`` (uniform on the black squares
  of a 4×4 board on [-2, 2]^2) and ``gaussians`` (8 Gaussians of std 0.1 on a circle of
  radius 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..core.errors import DiffsolveError

DIGITS_SHAPE: tuple[int, int, int] = (1, 8, 8)
DIGITS_N_TRAIN = 1500
DIGITS_SPLIT_SEED = 0
TOY_DATASETS: tuple[str, ...] = ("moons", "swissroll", "checkerboard", "gaussians")
DATASETS: tuple[str, ...] = ("digits", *TOY_DATASETS)


def load_digits_split(split: str = "train", *, seed: int = DIGITS_SPLIT_SEED,
                      n_train: int = DIGITS_N_TRAIN) -> tuple[Tensor, Tensor]:
    """The 8×8 digits as float32 images in [-1, 1] of shape (N, 1, 8, 8) and int64 labels.

    Args:
        split: "train" (the first ``n_train`` of a seeded permutation), "test" (the rest,
            held out: 297 images by default) or "all" (1797 images in the original order).
        seed: seed of the permutation that defines the split.
        n_train: size of the training split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DiffsolveError(
            "the digits dataset needs scikit-learn: pip install 'diffsolve[bench]'") from e
    bunch = load_digits()
    images = torch.as_tensor(np.asarray(bunch.images, dtype=np.float32)) / 8.0 - 1.0
    x = images.reshape(-1, *DIGITS_SHAPE)
    y = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    if split == "all":
        return x, y
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(len(x)))
    if split == "train":
        idx = perm[:n_train]
    elif split == "test":
        idx = perm[n_train:]
    else:
        raise DiffsolveError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return x[idx].contiguous(), y[idx].contiguous()


def toy2d(name: str, n: int, seed: int = 0) -> Tensor:
    """``n`` float32 samples of shape (n, 2) from the named 2-D toy distribution.

    * moons: upper arc (cos t, sin t) and lower arc (1 - cos t, 1/2 - sin t), t ~ U[0, pi],
      plus N(0, 0.05^2) noise, then centred by (-1/2, -1/4) and scaled by 1.5.
    * swissroll: (t cos t, t sin t)/5 with t ~ U[1.5 pi, 4.5 pi], plus N(0, 0.05^2) noise.
    * checkerboard: uniform on the squares (i, j) of a 4×4 board on [-2, 2]^2 with i + j even.
    * gaussians: mixture of 8 N(mu_k, 0.1^2 I), mu_k = 2 (cos(k pi/4), sin(k pi/4)).
    """
    if n < 0:
        raise DiffsolveError(f"n must be non-negative, got {n}")
    rng = np.random.default_rng(seed)
    if name == "moons":
        n_up = n // 2
        t = rng.uniform(0.0, math.pi, n)
        up = np.arange(n) < n_up
        x = np.where(up, np.cos(t), 1.0 - np.cos(t))
        y = np.where(up, np.sin(t), 0.5 - np.sin(t))
        pts = np.stack([x - 0.5, y - 0.25], axis=1) * 1.5
        pts += rng.normal(0.0, 0.05, size=pts.shape)
        pts = pts[rng.permutation(n)]
    elif name == "swissroll":
        t = rng.uniform(1.5 * math.pi, 4.5 * math.pi, n)
        pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0
        pts += rng.normal(0.0, 0.05, size=pts.shape)
    elif name == "checkerboard":
        # pick one of the 8 black squares uniformly, then a uniform point inside it
        squares = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0],
                           dtype=np.float64)
        k = rng.integers(0, len(squares), n)
        pts = squares[k] - 2.0 + rng.uniform(0.0, 1.0, size=(n, 2))
    elif name == "gaussians":
        k = rng.integers(0, 8, n)
        ang = k * math.pi / 4
        pts = 2.0 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
        pts += rng.normal(0.0, 0.1, size=pts.shape)
    else:
        raise DiffsolveError(f"unknown toy dataset {name!r}; choose one of {TOY_DATASETS}")
    return torch.as_tensor(pts, dtype=torch.float32)


def training_data(name: str, *, seed: int = 0, n_toy: int = 50_000) -> Tensor:
    """The fixed training tensor of a dataset: the digits training split (labels dropped) or
    ``n_toy`` toy points drawn with ``seed``."""
    if name == "digits":
        return load_digits_split("train")[0]
    return toy2d(name, n_toy, seed)


def data_shape(name: str) -> tuple[int, ...]:
    """Shape of one sample: (1, 8, 8) for digits, (2,) for the toys."""
    if name == "digits":
        return DIGITS_SHAPE
    if name in TOY_DATASETS:
        return (2,)
    raise DiffsolveError(f"unknown dataset {name!r}; choose one of {DATASETS}")
