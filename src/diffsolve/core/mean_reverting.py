r"""Mean-reverting diffusion: the IR-SDE schedule and the model wrapper that shifts by mu.

A mean-reverting (MR) SDE pulls the state toward a conditioning image mu (e.g. the degraded
image in restoration; Luo et al. 2023 "IR-SDE"; Li et al. 2025 "MRS", arXiv 2502.07856):

    dx = theta_t (mu - x) dt + g_t dW.

With alpha_t = exp(-int_0^t theta) and sigma_t^2 = int_0^t exp(-2 int_s^t theta) g_s^2 ds,
x_t | x_0 ~ N(alpha_t x_0 + (1 - alpha_t) mu, sigma_t^2 I) (standard Ornstein-Uhlenbeck; research
note methods_lml_langevin_dmcmc_mrs_skipping.md Sec. D.2 [D]). The shift y = x - mu gives

    dy = -theta_t y dt + g_t dW,    y_t = alpha_t (x_0 - mu) + sigma_t n,

an ordinary linear Gaussian diffusion with alpha_t^2 + sigma_t^2 != 1 in general. So every
solver of this library, which works in lambda = log(alpha/sigma) for any (alpha, sigma),
integrates the MR probability-flow ODE and reverse SDE exactly as written for y, and the MRS
updates (MR Sampler, notes Sec. D.2) are the DPM-Solver(++) updates on y (checked term by term,
mu terms included, in tests/test_mean_reverting.py; :mod:`diffsolve.drivers.mean_reverting`).

* :class:`MeanReverting` -- IR-SDE's choice g_t^2 = 2 lambda_inf^2 theta_t (stationary std
  lambda_inf), so sigma_t = lambda_inf sqrt(1 - alpha_t^2) (notes Sec. D.2, as the authors'
  ``IRSDE``), with theta linear in t (constant when theta_min = theta_max).
* :class:`MeanRevertingDenoiser` -- wraps an MR network ``net(x, t, mu=mu)`` (eps, x0 or score
  prediction in x coordinates) into the data prediction D(y) = x0_hat - mu on the shifted
  state y that the solvers integrate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import IncompatibleModelError, ScheduleError
from .models import Denoiser, TimeInput
from .schedules import EvalPoint, NoiseSchedule, _softplus

MRPrediction = Literal["eps", "x0", "score"]


class MeanReverting(NoiseSchedule):
    r"""IR-SDE mean-reverting schedule: theta(t) = theta_min + t (theta_max - theta_min),
    g(t)^2 = 2 lambda_inf^2 theta(t) (Luo et al. 2023; notes Sec. D.2).

    log alpha(t) = -(theta_min t + (theta_max - theta_min) t^2/2),
    sigma(t) = lambda_inf sqrt(1 - alpha(t)^2), so lambda = log(alpha/sigma) is the VP half
    log-SNR of alpha minus log lambda_inf, and its inverse is closed form: with
    L = -log alpha = softplus(-2 (lambda + log lambda_inf))/2 (the VP relation),
    t = 2L / (theta_min + sqrt(theta_min^2 + 2 (theta_max - theta_min) L)) (derived here).

    Args:
        theta_min, theta_max: mean-reversion rate at t = 0 and t = 1 (equal: constant theta).
        lambda_inf: the stationary standard deviation (IR-SDE's ``max_sigma``).
        t_min, t_max: the time range (at t_max, alpha = exp(-int theta) should be small).
    """

    def __init__(self, theta_min: float = 4.6, theta_max: float = 4.6, lambda_inf: float = 0.5,
                 t_min: float = 1e-3, t_max: float = 1.0) -> None:
        if not (0 < theta_min <= theta_max < math.inf):
            raise ScheduleError(
                f"need 0 < theta_min <= theta_max, both finite, got {theta_min}, {theta_max}")
        if not (0 < lambda_inf < math.inf):
            raise ScheduleError(f"need 0 < lambda_inf < inf, got {lambda_inf}")
        if not (0 < t_min < t_max < math.inf):
            raise ScheduleError(f"need 0 < t_min < t_max, got {t_min}, {t_max}")
        self.theta_min, self.theta_max, self.lambda_inf = theta_min, theta_max, lambda_inf
        self.t_min, self.t_max = t_min, t_max

    def theta(self, t: float) -> float:
        """Mean-reversion rate theta(t) = -d log alpha/dt."""
        return self.theta_min + t * (self.theta_max - self.theta_min)

    def g2(self, t: float) -> float:
        """Squared diffusion coefficient g(t)^2 = 2 lambda_inf^2 theta(t)."""
        return 2.0 * self.lambda_inf**2 * self.theta(t)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -(self.theta_min * t + 0.5 * (self.theta_max - self.theta_min) * t * t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.lambda_inf) + 0.5 * torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def _t_of_lam(self, lam: Tensor) -> Tensor:
        big_l = 0.5 * _softplus(-2.0 * (lam + math.log(self.lambda_inf)))  # -log alpha
        d = self.theta_max - self.theta_min
        return 2.0 * big_l / (self.theta_min + torch.sqrt(self.theta_min**2 + 2.0 * d * big_l))

    def d_alpha_dt(self, t: float) -> float:
        return -self.theta(t) * float(self.alpha(t))

    def d_sigma_dt(self, t: float) -> float:
        # sigma = lambda_inf sqrt(1 - alpha^2)  =>  sigma' = -lambda_inf^2 alpha alpha'/sigma
        return -self.lambda_inf**2 * float(self.alpha(t)) * self.d_alpha_dt(t) / float(
            self.sigma(t))


class MeanRevertingDenoiser(Denoiser):
    r"""An MR network as the data prediction of the shifted state y = x - mu.

    The network is called as ``net(x, t_vec, mu=mu, **kwargs)`` on x = y + mu and predicts, in
    x coordinates (notes Sec. D.2, the authors' ``convert_model_output``):

    * "eps":   eps_hat = (x - alpha x_0 - (1 - alpha) mu)/sigma, the same noise as y's, so
      D(y) = (y - sigma eps_hat)/alpha  (= x0_hat - mu);
    * "x0":    x0_hat, so D(y) = x0_hat - mu;
    * "score": grad_x log p_t(x) = grad_y log p_t(y), so D(y) = (y + sigma^2 score)/alpha.

    Solvers integrate y (:meth:`state`) and the result maps back with :meth:`data_space`. mu
    is batch-first (one row per sample, or one row broadcast) and travels as a keyword
    argument, so classifier-free guidance batches it with the state.

    Args:
        net: the MR network.
        schedule: its :class:`MeanReverting` schedule (any schedule with alpha, sigma works).
        mu: the conditioning image (the mean the process reverts to).
        prediction: "eps" (IR-SDE's networks), "x0" or "score".
        time_input, guidance_scale, cond, uncond, model_dtype, extra_args: as in
            :class:`~diffsolve.models.Denoiser`.
    """

    def __init__(self, net: Callable[..., Tensor], schedule: NoiseSchedule, mu: Tensor, *,
                 prediction: MRPrediction = "eps",
                 time_input: TimeInput | Callable[[EvalPoint], float] | None = None,
                 guidance_scale: float | None = None, cond: Mapping[str, Any] | None = None,
                 uncond: Mapping[str, Any] | None = None,
                 model_dtype: torch.dtype | None = None,
                 extra_args: Mapping[str, Any] | None = None) -> None:
        if prediction not in ("eps", "x0", "score"):
            raise IncompatibleModelError(
                f"mean-reverting prediction must be 'eps', 'x0' or 'score', got {prediction!r}")
        if not isinstance(mu, Tensor):
            raise IncompatibleModelError("mu must be a tensor (batch first)")
        shift_output = prediction == "x0"

        def shifted(y: Tensor, t: Tensor, *, mu: Tensor, **kwargs: Any) -> Tensor:
            out = net(y + mu.to(y), t, mu=mu, **kwargs)
            return out - mu.to(out) if shift_output else out

        super().__init__(shifted, schedule, prediction=prediction, time_input=time_input,
                         guidance_scale=guidance_scale, cond=cond, uncond=uncond,
                         model_dtype=model_dtype, extra_args={**(extra_args or {}), "mu": mu})
        self.mu = mu

    def state(self, x: Tensor) -> Tensor:
        """The solver state y = x - mu of a state x in data coordinates."""
        return x - self.mu.to(x)

    def data_space(self, y: Tensor) -> Tensor:
        """Back to data coordinates: x = y + mu."""
        return y + self.mu.to(y)
