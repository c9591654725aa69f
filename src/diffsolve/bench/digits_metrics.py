r"""Digits metrics in the shipped classifier's feature space, with a held-out real-data floor.

The 1797 digits are split once by a seeded permutation (seed 0) into a *reference* half A
(899 images) and a *held-out* half B (898 images). Samples are scored against A:

* ``feature_fd`` -- Frechet distance of the 128-d penultimate-layer features (FID recipe);
* ``kid`` -- unbiased KID (cubic polynomial kernel) in the same space;
* ``precision`` / ``recall`` -- improved precision/recall (Kynkaanniemi et al. 2019, k = 3) in
  the same space: low precision = samples off the data manifold (too smooth, broken digits),
  low recall = missing modes;
* ``pixel_fd``, ``confident_fraction`` (share labelled with probability >= 0.9) and
  ``class_histogram``.

The real-data floor (:meth:`DigitsScorer.floor`) scores n digits of half B, which never
overlaps A: drawn without replacement when n <= 898, and as a bootstrap (with replacement)
beyond, which the result states. (The old floor drew from the reference set itself and
reported 0 at n >= 1797.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .metrics import (
    batched_features,
    frechet_distance,
    kernel_distance,
    pixel_frechet_distance,
    precision_recall,
    sample_moments,
)

CONFIDENCE = 0.9
SPLIT_SEED = 0
N_REFERENCE = 899


class DigitsScorer:
    """Scores digit samples (N, 1, 8, 8) in [-1, 1] against the reference half of the digits."""

    def __init__(self) -> None:
        from ..zoo.classifier import load_classifier
        from ..zoo.data import load_digits_split

        x, y = load_digits_split("all")
        perm = torch.as_tensor(np.random.default_rng(SPLIT_SEED).permutation(len(x)))
        self.ref_x, self.ref_y = x[perm[:N_REFERENCE]], y[perm[:N_REFERENCE]]
        self.held_x, self.held_y = x[perm[N_REFERENCE:]], y[perm[N_REFERENCE:]]
        self.clf = load_classifier()
        self.ref_feat = batched_features(self.ref_x, self.clf.features)
        self.ref_moments = sample_moments(self.ref_feat)

    def evaluate(self, x: Tensor) -> dict[str, Any]:
        """Every digits metric of samples x (clamped to [-1, 1])."""
        x = x.detach().float().cpu().clamp(-1.0, 1.0)
        feat = batched_features(x, self.clf.features)
        probs = batched_features(x, self.clf.predict_proba)
        conf, pred = probs.max(dim=1)
        return {"feature_fd": frechet_distance(*sample_moments(feat), *self.ref_moments),
                "kid": kernel_distance(feat, self.ref_feat),
                **precision_recall(feat, self.ref_feat),
                "pixel_fd": pixel_frechet_distance(x, self.ref_x),
                "confident_fraction": float((conf >= CONFIDENCE).double().mean()),
                "class_histogram": torch.bincount(pred, minlength=10).tolist()}

    def held_out(self, n: int, seed: int) -> tuple[Tensor, str]:
        """n digits of the held-out half B and how they were drawn."""
        g = torch.Generator().manual_seed(seed)
        m = self.held_x.shape[0]
        if n <= m:
            idx = torch.randperm(m, generator=g)[:n]
            how = f"{n} of the {m} held-out digits (half B), without replacement"
        else:
            idx = torch.randint(0, m, (n,), generator=g)
            how = f"bootstrap: {n} draws with replacement from the {m} held-out digits"
        return self.held_x[idx], how

    def floor(self, n: int, seed: int) -> dict[str, Any]:
        """Metrics of n held-out real digits (the floor that sampling error alone leaves)."""
        x, how = self.held_out(n, seed)
        return {**self.evaluate(x), "note": how}

    def real_perturbed(self, kind: str, n: int, seed: int) -> Tensor:
        """Held-out digits, exact or perturbed ("blurred": 3x3 box filter; "dropped": without
        digits 0-2, resampled to n; "noisy": + N(0, 0.3^2) per pixel), for known answers."""
        g = torch.Generator().manual_seed(seed)
        if kind == "dropped":
            pool = self.held_x[self.held_y >= 3]
            idx = torch.randperm(pool.shape[0], generator=g)
            idx = idx[:n] if n <= pool.shape[0] else torch.randint(0, pool.shape[0], (n,),
                                                                     generator=g)
            return pool[idx]
        x, _ = self.held_out(n, seed)
        if kind == "exact":
            return x
        if kind == "blurred":
            k = torch.ones(1, 1, 3, 3) / 9.0
            return torch.nn.functional.conv2d(x, k, padding=1, ).clamp(-1, 1)
        if kind == "noisy":
            return (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        raise ValueError(f"unknown perturbation {kind!r}")
