"""Benchmark tools: metrics, tasks and the harness. Never imported by the library core.

Modules: :mod:`.metrics` (sample-set distances), :mod:`.density_metrics` (against a known
mixture density), :mod:`.digits_metrics` (classifier feature space, held-out floor),
:mod:`.stats` (95 % intervals over seeds), :mod:`.tasks` (models and their scoring),
:mod:`.cells` (one solver x budget x seed), :mod:`.store` (results.json), :mod:`.summary`
(aggregation, wins), :mod:`.report` (report.md), :mod:`.plots`, :mod:`.runner`
(:func:`~diffsolve.bench.runner.run_benchmark`).
"""

from .metrics import (
    feature_frechet_distance,
    frechet_distance,
    kernel_distance,
    mmd_multiscale,
    moment_frechet_distance,
    ode_error,
    pixel_frechet_distance,
    precision_recall,
    sliced_wasserstein,
)

__all__ = [
    "feature_frechet_distance",
    "frechet_distance",
    "kernel_distance",
    "mmd_multiscale",
    "moment_frechet_distance",
    "ode_error",
    "pixel_frechet_distance",
    "precision_recall",
    "sliced_wasserstein",
]
