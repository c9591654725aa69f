"""Benchmark tools: metrics and runners. Never imported by the library core."""

from .metrics import frechet_distance, moment_frechet_distance, sliced_wasserstein

__all__ = ["frechet_distance", "moment_frechet_distance", "sliced_wasserstein"]
