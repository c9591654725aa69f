"""Analytic test models: Gaussian mixtures with exact denoisers and PF-ODE references."""

from .gmm import GaussianMixture, default_2d
from .reference import gaussian_pf_ode_exact, pf_ode_reference

__all__ = ["GaussianMixture", "default_2d", "gaussian_pf_ode_exact", "pf_ode_reference"]
