"""Benchmark tools: metrics and runners. Never imported by the library core."""

from .metrics import (
    feature_frechet_distance,
    frechet_distance,
    kernel_distance,
    moment_frechet_distance,
    ode_error,
    pixel_frechet_distance,
    sliced_wasserstein,
)

__all__ = [
    "feature_frechet_distance",
    "frechet_distance",
    "kernel_distance",
    "moment_frechet_distance",
    "ode_error",
    "pixel_frechet_distance",
    "sliced_wasserstein",
]
