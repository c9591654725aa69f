r"""An analytic mean-reverting model: Gaussian data, exact network, exact ODE flow and marginals.

Data x_0 ~ N(m, diag(s2)) under the MR SDE dx = theta_t (mu - x) dt + g_t dW of a
:class:`~diffsolve.core.mean_reverting.MeanReverting` schedule. Derived here (research note
methods_lml_langevin_dmcmc_mrs_skipping.md Sec. D.5, re-derived and checked numerically in
tests/test_mean_reverting.py):

* marginal p_t = N(a_t, v_t) per coordinate, a_t = alpha_t m + (1 - alpha_t) mu,
  v_t = alpha_t^2 s2 + sigma_t^2 (linear SDE, Gaussian start);
* exact posterior mean x0*(x, t) = m + (alpha_t s2/v_t)(x - a_t), and
  eps*(x, t) = sigma_t (x - a_t)/v_t (the noise's posterior mean given x_t);
* the probability-flow ODE dx/dt = theta_t (mu - x) + g_t^2/2 (x - a_t)/v_t keeps
  z = (x - a_t)/sqrt(v_t) constant, because d(x - a)/dt = (g^2/(2v) - theta)(x - a) and
  dv/dt = g^2 - 2 theta v, i.e. d log sqrt(v)/dt = g^2/(2v) - theta; hence
  x_t = a_t + sqrt(v_t/v_u) (x_u - a_u) between any two times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..core.mean_reverting import MeanReverting, MeanRevertingDenoiser, MRPrediction


class MeanRevertingGaussian:
    """Gaussian data under a mean-reverting schedule, with everything exact (module docstring).

    Args:
        schedule: the MR schedule.
        m, s2: per-coordinate mean and variance of x_0.
        mu: the condition the process reverts to (per coordinate).
    """

    def __init__(self, schedule: MeanReverting, m: Sequence[float], s2: Sequence[float],
                 mu: Sequence[float]) -> None:
        self.schedule = schedule
        self.m = torch.tensor(m, dtype=torch.float64)
        self.s2 = torch.tensor(s2, dtype=torch.float64)
        self.mu = torch.tensor(mu, dtype=torch.float64)

    def marginal(self, t: float) -> tuple[Tensor, Tensor]:
        """(a_t, v_t): mean and variance of x_t per coordinate."""
        a, s = float(self.schedule.alpha(t)), float(self.schedule.sigma(t))
        return a * self.m + (1 - a) * self.mu, a * a * self.s2 + s * s

    def sample(self, n: int, t: float, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of x_t (float64)."""
        a, v = self.marginal(t)
        z = torch.randn(n, self.m.numel(), dtype=torch.float64, generator=generator)
        return a + v.sqrt() * z

    def flow(self, x: Tensor, t_from: float, t_to: float) -> Tensor:
        """The exact probability-flow ODE map from time t_from to t_to."""
        a0, v0 = self.marginal(t_from)
        a1, v1 = self.marginal(t_to)
        return a1.to(x) + (v1 / v0).sqrt().to(x) * (x - a0.to(x))

    def net(self, prediction: MRPrediction = "x0") -> Callable[..., Tensor]:
        """The exact MR network ``net(x, t_vec, mu=...)`` (the model's own mu is used)."""

        def f(x: Tensor, t_vec: Tensor, *, mu: Tensor) -> Tensor:
            t = float(t_vec[0])
            a_t, v_t = (w.to(x) for w in self.marginal(t))
            alpha, sigma = float(self.schedule.alpha(t)), float(self.schedule.sigma(t))
            if prediction == "x0":
                return self.m.to(x) + alpha * self.s2.to(x) / v_t * (x - a_t)
            if prediction == "eps":
                return sigma * (x - a_t) / v_t
            return -(x - a_t) / v_t  # score

        return f

    def denoiser(self, prediction: MRPrediction = "eps") -> MeanRevertingDenoiser:
        """The exact network wrapped for the solvers (state y = x - mu)."""
        return MeanRevertingDenoiser(self.net(prediction), self.schedule,
                                     self.mu.reshape(1, -1), prediction=prediction)
