"""Analytic test models: Gaussian mixtures with exact denoisers and PF-ODE references, and
Gaussian data under a mean-reverting SDE (exact flow)."""

from .gmm import GaussianMixture, default_2d
from .mean_reverting import MeanRevertingGaussian
from .reference import gaussian_pf_ode_exact, pf_ode_reference

__all__ = ["GaussianMixture", "MeanRevertingGaussian", "default_2d", "gaussian_pf_ode_exact",
           "pf_ode_reference"]
