r"""Benchmark tasks: each built-in model, how its samples are scored, and its real-data floor.

Models and metrics (the first listed is the primary metric of tables, plots and "best"):

* ``gmm``: the 2-D analytic Gaussian mixture with its exact denoiser on EDM(0.002, 80),
  float64. Exact-density metrics (:mod:`.density_metrics`): ``mode_kl`` (mode-resolved KL),
  ``ll_gap`` (exact log-density gap; target 0), ``var_ratio`` (within-mode variance ratio;
  target 1), ``weight_tv``, ``grid_kl``/``grid_tv`` (48 x 48 grid); sample metrics: ``mmd``
  (multi-scale Gaussian MMD^2 against exact samples, first 2000 points), ``fd`` (Frechet
  distance to the exact moments) and ``sw`` (sliced W1 against exact samples).
* ``gmm-err``: the same mixture with a smooth denoiser error (eps = 0.1,
  :func:`diffsolve.bench.models.erroneous_model`), scored against the exact mixture.
* ``gmm-learned-2d`` / ``gmm-learned-16d``: shipped MLPs trained on samples of the 2-D and of a
  16-D mixture (:mod:`diffsolve.zoo.gmm_learned`); float32; scored against the exact mixture
  with the same metrics (no grid metrics in 16-D).
* ``digits``: the shipped 8x8 digits U-Net, samples clamped to [-1, 1], scored against the
  reference half of the digits (:mod:`.digits_metrics`): ``feature_fd``, ``kid``,
  ``precision``, ``recall``, ``pixel_fd``, ``confident_fraction``, ``class_histogram``.
* ``moons``: the shipped 2-D moons MLP: ``sw`` and ``fd`` against data samples.

The floor of every metric (``BenchTask.floor(seed)``) is its value on exact samples of the
same size (mixtures, moons) or on held-out real digits, drawn independently per seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.errors import DiffsolveError
from ..core.models import Denoiser
from .metrics import (
    mmd_multiscale,
    moment_frechet_distance,
    pixel_frechet_distance,
    sliced_wasserstein,
)

MODELS: tuple[str, ...] = ("gmm", "gmm-err", "gmm-learned-2d", "gmm-learned-16d", "digits",
                           "moons")
DEFAULT_SAMPLES: dict[str, int] = {"gmm": 10000, "gmm-err": 10000, "gmm-learned-2d": 10000,
                                   "gmm-learned-16d": 10000, "digits": 800, "moons": 5000}
GMM_ERROR_EPS = 0.1
REF_DATA_SEED_OFFSET = 10_000
BASELINE_SEED_OFFSET = 20_000
MMD_POINTS = 2000

METRIC_LABELS: dict[str, str] = {
    "mode_kl": "mode-resolved KL (weights + per-mode Gaussian fits)",
    "ll_gap": "exact log-density gap (target 0)",
    "var_ratio": "within-mode variance ratio (target 1)",
    "weight_tv": "mode weight total variation",
    "mean_err": "mode mean error (Mahalanobis)",
    "grid_kl": "KL(histogram || exact) on a 48x48 grid",
    "grid_tv": "TV(histogram, exact) on a 48x48 grid",
    "mmd": "multi-scale Gaussian MMD^2",
    "fd": "Frechet distance",
    "sw": "sliced W1",
    "feature_fd": "classifier-feature Frechet distance",
    "kid": "KID (unbiased MMD^2, cubic kernel)",
    "precision": "precision (k-NN manifold, classifier features)",
    "recall": "recall (k-NN manifold, classifier features)",
    "pixel_fd": "pixel Frechet distance",
    "confident_fraction": "fraction classified with confidence >= 0.9",
    "ode_error": "RMS error vs reference ODE solution",
}
LOWER_IS_BETTER: dict[str, bool] = {
    "mode_kl": True, "weight_tv": True, "mean_err": True, "grid_kl": True, "grid_tv": True,
    "mmd": True, "fd": True, "sw": True, "feature_fd": True, "kid": True, "pixel_fd": True,
    "ode_error": True, "precision": False, "recall": False, "confident_fraction": False,
    "ll_gap": True, "var_ratio": True}
TARGET: dict[str, float] = {"ll_gap": 0.0, "var_ratio": 1.0}
"""Metrics whose ideal value is not an extreme: "better" means closer to this target."""


def badness(metric: str, value: float) -> float:
    """A number that is smaller when ``value`` is better, for every metric."""
    if metric in TARGET:
        return abs(value - TARGET[metric])
    return value if LOWER_IS_BETTER.get(metric, True) else -value


@dataclass
class BenchTask:
    """A model to benchmark and how to score its samples.

    Attributes:
        name: model name (one of :data:`MODELS`).
        model: the denoiser.
        shape: one sample's shape.
        dtype: sampling dtype.
        evaluate: (samples (N, ...), seed) -> metric dict (floats, or lists for histograms).
        metrics: scalar metric names, primary first.
        setup: JSON-able description of everything besides the cell key that changes results.
        floor: seed -> metrics of real/exact data of the same size (the sampling-error floor).
        image: whether samples are images (sample grids are drawn).
    """

    name: str
    model: Denoiser
    shape: tuple[int, ...]
    dtype: torch.dtype
    evaluate: Callable[[Tensor, int], dict[str, Any]]
    metrics: tuple[str, ...]
    setup: dict[str, Any]
    floor: Callable[[int], dict[str, Any]]
    image: bool = False

    @property
    def primary(self) -> str:
        return self.metrics[0]


def _mixture_task(name: str, gmm: Any, model: Denoiser, dtype: torch.dtype, samples: int,
                  setup: dict[str, Any], mmd_points: int | None) -> BenchTask:
    from .density_metrics import mixture_metrics

    exact = mixture_metrics(gmm)
    mean, cov = gmm.mean, gmm.cov

    def evaluate(x: Tensor, seed: int) -> dict[str, Any]:
        ref = gmm.sample(samples, torch.Generator().manual_seed(seed + REF_DATA_SEED_OFFSET))
        x64 = x.detach().double().cpu().reshape(x.shape[0], -1)
        out = {**exact(x64), "fd": moment_frechet_distance(x64, mean, cov),
               "sw": sliced_wasserstein(x64, ref, seed=seed)}
        if mmd_points:
            out["mmd"] = mmd_multiscale(x64, ref, max_points=mmd_points)
        return out

    def floor(seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed + BASELINE_SEED_OFFSET)
        return {**evaluate(gmm.sample(samples, g), seed),
                "note": f"{samples} exact samples of the mixture (independent of the "
                        "reference samples)"}

    metrics = ("mode_kl", "ll_gap", "var_ratio", "weight_tv", "mean_err",
               *(("grid_kl", "grid_tv") if gmm.dim == 2 else ()),
               *(("mmd",) if mmd_points else ()), "fd", "sw")
    return BenchTask(name, model, (gmm.dim,), dtype, evaluate, metrics,
                     {**setup, "reference": f"exact mixture density; {samples} exact samples",
                      "mmd_points": mmd_points}, floor)


def make_task(model_name: str, samples: int, *,
              mmd_points: int | None = MMD_POINTS) -> BenchTask:
    """Build the :class:`BenchTask` of a model name from :data:`MODELS`. ``mmd_points``: rows
    of each set used by the MMD of mixture models (None or 0: no MMD, the costliest metric)."""
    if model_name in ("gmm", "gmm-err"):
        from .models import GMM_SCHEDULE, gmm_model

        eps = GMM_ERROR_EPS if model_name == "gmm-err" else 0.0
        gmm, model = gmm_model(eps)
        return _mixture_task(model_name, gmm, model, torch.float64, samples,
                             {"schedule": f"EDM{GMM_SCHEDULE}", "eps": eps}, mmd_points)
    if model_name in ("gmm-learned-2d", "gmm-learned-16d"):
        from ..zoo.gmm_learned import load_learned

        zoo_name = model_name.replace("-", "_")
        gmm, model = load_learned(zoo_name)
        return _mixture_task(model_name, gmm, model, torch.float32, samples,
                             {"zoo_model": zoo_name, "sha256": model.card["weights_sha256"]},
                             mmd_points)
    if model_name == "moons":
        from ..zoo.data import toy2d
        from ..zoo.pretrained import load_model

        model = load_model("moons")

        def evaluate(x: Tensor, seed: int) -> dict[str, Any]:
            ref = toy2d("moons", samples, seed=seed + REF_DATA_SEED_OFFSET).double()
            return {"sw": sliced_wasserstein(x, ref, seed=seed),
                    "fd": pixel_frechet_distance(x, ref)}

        def floor(seed: int) -> dict[str, Any]:
            return {**evaluate(toy2d("moons", samples, seed=seed + BASELINE_SEED_OFFSET),
                               seed), "note": f"{samples} samples of the data distribution"}

        return BenchTask("moons", model, tuple(model.shape), torch.float32, evaluate,
                         ("sw", "fd"), {"reference": f"toy2d moons, {samples} samples"}, floor)
    if model_name == "digits":
        from ..zoo.pretrained import load_model
        from .digits_metrics import N_REFERENCE, DigitsScorer

        model = load_model("digits")
        scorer = DigitsScorer()

        def evaluate(x: Tensor, seed: int) -> dict[str, Any]:
            return scorer.evaluate(x)

        def floor(seed: int) -> dict[str, Any]:
            return scorer.floor(samples, seed + BASELINE_SEED_OFFSET)

        return BenchTask("digits", model, tuple(model.shape), torch.float32, evaluate,
                         ("feature_fd", "kid", "precision", "recall", "pixel_fd",
                          "confident_fraction"),
                         {"reference": f"reference half of the digits ({N_REFERENCE} images; "
                                       "floor: the held-out half)", "clamp": [-1.0, 1.0],
                          "classifier_heldout_accuracy": scorer.clf.card.get(
                              "heldout_accuracy")}, floor, image=True)
    raise DiffsolveError(f"unknown benchmark model {model_name!r}; choose from {list(MODELS)}")
