r"""Noise schedules: alpha(t), sigma(t), the half-log-SNR lambda(t) and its inverse t(lambda).

The forward process is x_t = alpha_t x_0 + sigma_t n with n ~ N(0, I). Every solver works in
lambda = log(alpha/sigma) (Lu et al. 2022, DPM-Solver, arXiv 2206.00927, Sec. 3.1), so every
schedule provides the exact inverse t(lambda): stages of single-step solvers sit at off-grid
lambdas and the model must be evaluated there.

All arithmetic is float64. Methods accept a Python float or a tensor and return the same kind
(tensors are promoted to float64). ``point(lam)`` bundles everything the model wrapper needs at
one evaluation point into an :class:`EvalPoint` of Python floats, computed once per grid on the
host, so the sampling loop never synchronises with the device.

Schedules provided:

* :class:`VPLinear`  -- beta(t) = beta_min + t (beta_max - beta_min)   (Song et al. 2021, eq. 32)
* :class:`VPCosine`  -- log alpha(t) = log cos((t+s)/(1+s) pi/2) - log cos(s/(1+s) pi/2)
  (Nichol & Dhariwal 2021, eq. 17; DPM-Solver App. D.2)
* :class:`DiscreteVP` -- a table of DDPM ``alphas_cumprod``; log alpha is interpolated linearly
  in continuous t between integer timesteps (DPM-Solver ``NoiseScheduleVP('discrete')``)
* :class:`VE`        -- alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t  (Song et al. 2021)
* :class:`EDM`       -- alpha = 1, sigma(t) = t  (Karras et al. 2022, Table 1)
* :class:`RectifiedFlow` -- alpha = 1 - t, sigma = t  (Liu et al. 2022; Esser et al. 2024)
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from .errors import ScheduleError

Scalar = TypeVar("Scalar", float, Tensor)


@dataclass(frozen=True)
class EvalPoint:
    """Everything a model wrapper needs at one evaluation point, as host floats.

    Attributes:
        lam: half log-SNR log(alpha/sigma).
        t: the schedule's own time variable at ``lam``.
        alpha: signal scale alpha(t).
        sigma: noise scale sigma(t).
    """

    lam: float
    t: float
    alpha: float
    sigma: float

    @property
    def sigma_edm(self) -> float:
        """EDM / k-diffusion noise level sigma/alpha = exp(-lam)."""
        return self.sigma / self.alpha


def _f64(v: Scalar) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def _like(result: Tensor, v: Scalar) -> Scalar:
    return result if isinstance(v, Tensor) else float(result)


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) without overflow or torch's threshold approximation."""
    return torch.clamp(x, min=0.0) + torch.log1p(torch.exp(-torch.abs(x)))


def _log_alpha_vp(lam: Tensor) -> Tensor:
    # VP: alpha^2 + sigma^2 = 1 and lam = log(alpha/sigma)  =>  log alpha = -log(1 + e^{-2 lam})/2
    return -0.5 * _softplus(-2.0 * lam)


class NoiseSchedule(abc.ABC):
    """Abstract noise schedule. Subclasses define ``log_alpha``, ``log_sigma`` and ``t_of_lam``.

    Attributes:
        t_min, t_max: the time range the model was trained on (sampling runs from t_max down).
        variance_preserving: True when alpha^2 + sigma^2 = 1.
    """

    t_min: float
    t_max: float
    variance_preserving: bool = False

    @abc.abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _log_sigma(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _t_of_lam(self, lam: Tensor) -> Tensor: ...

    # public API -------------------------------------------------------------------------
    def log_alpha(self, t: Scalar) -> Scalar:
        return _like(self._log_alpha(_f64(t)), t)

    def log_sigma(self, t: Scalar) -> Scalar:
        return _like(self._log_sigma(_f64(t)), t)

    def alpha(self, t: Scalar) -> Scalar:
        return _like(torch.exp(self._log_alpha(_f64(t))), t)

    def sigma(self, t: Scalar) -> Scalar:
        return _like(torch.exp(self._log_sigma(_f64(t))), t)

    def lam(self, t: Scalar) -> Scalar:
        """Half log-SNR lambda(t) = log alpha(t) - log sigma(t)."""
        tt = _f64(t)
        return _like(self._log_alpha(tt) - self._log_sigma(tt), t)

    def t_of_lam(self, lam: Scalar) -> Scalar:
        """Inverse of :meth:`lam`: the time at which the half log-SNR equals ``lam``."""
        return _like(self._t_of_lam(_f64(lam)), lam)

    @property
    def lam_min(self) -> float:
        """lambda at t_max (the noisiest point the model knows)."""
        return float(self.lam(self.t_max))

    @property
    def lam_max(self) -> float:
        """lambda at t_min (the cleanest point the model knows)."""
        return float(self.lam(self.t_min))

    @property
    def sigma_edm_min(self) -> float:
        return math.exp(-self.lam_max)

    @property
    def sigma_edm_max(self) -> float:
        return math.exp(-self.lam_min)

    def point(self, lam: float) -> EvalPoint:
        """All model-side quantities at ``lam`` (finite), as Python floats."""
        if not math.isfinite(lam):
            raise ScheduleError(f"cannot evaluate the model at lambda={lam}; it must be finite")
        t = float(self._t_of_lam(_f64(lam)))
        return EvalPoint(
            lam=float(lam),
            t=t,
            alpha=math.exp(float(self._log_alpha(_f64(t)))),
            sigma=math.exp(float(self._log_sigma(_f64(t)))),
        )

    def sigma_at_lam(self, lam: Scalar) -> Scalar:
        """sigma(t(lam)); exact, used by solvers for the linear part sigma_t / sigma_s."""
        ll = _f64(lam)
        return _like(torch.exp(self._log_sigma(self._t_of_lam(ll))), lam)

    def alpha_at_lam(self, lam: Scalar) -> Scalar:
        ll = _f64(lam)
        return _like(torch.exp(self._log_alpha(self._t_of_lam(ll))), lam)

    def d_alpha_dt(self, t: float) -> float:
        """d alpha / dt; used only by the flow-velocity parameterization. Central difference
        of order 2 by default; schedules with a closed form override it."""
        eps = 1e-6 * max(1.0, abs(t))
        return (float(self.alpha(t + eps)) - float(self.alpha(t - eps))) / (2 * eps)

    def d_sigma_dt(self, t: float) -> float:
        if self.variance_preserving:
            # sigma = sqrt(1 - alpha^2)  =>  sigma' = -alpha alpha' / sigma. A central difference
            # straddles t = 0 (NaN) for t < eps and loses accuracy where sigma ~ sqrt(t).
            return -float(self.alpha(t)) * self.d_alpha_dt(t) / float(self.sigma(t))
        eps = 1e-6 * max(1.0, abs(t))
        return (float(self.sigma(t + eps)) - float(self.sigma(t - eps))) / (2 * eps)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class VPLinear(NoiseSchedule):
    """Continuous VP with linear beta(t) (Song et al. 2021; DPM-Solver App. D.1).

    log alpha(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2, sigma = sqrt(1 - alpha^2).
    Inverse (DPM-Solver eq. in App. D.1): with L = log(1 + e^{-2 lam}),
    t = 2L / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) L)).
    """

    variance_preserving = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0) -> None:
        if not (0 <= beta_min < beta_max):
            raise ScheduleError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        if not (0 < t_min < t_max <= 1):
            raise ScheduleError(f"need 0 < t_min < t_max <= 1, got {t_min}, {t_max}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = beta_min, beta_max, t_min, t_max

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def _t_of_lam(self, lam: Tensor) -> Tensor:
        big_l = _softplus(-2.0 * lam)
        db = self.beta_max - self.beta_min
        return 2.0 * big_l / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * db * big_l))

    def d_alpha_dt(self, t: float) -> float:
        return float(self.alpha(t)) * (-0.5 * t * (self.beta_max - self.beta_min)
                                       - 0.5 * self.beta_min)


class VPCosine(NoiseSchedule):
    """Continuous cosine VP schedule (Nichol & Dhariwal 2021 eq. 17, as in DPM-Solver App. D.2).

    log alpha(t) = log cos((t+s)/(1+s) pi/2) - log cos(s/(1+s) pi/2); t_max defaults to 0.9946
    (DPM-Solver's cut-off, where lambda stays finite).
    """

    variance_preserving = True

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> None:
        if not (0 < t_min < t_max < 1):
            raise ScheduleError(f"need 0 < t_min < t_max < 1, got {t_min}, {t_max}")
        self.s, self.t_min, self.t_max = s, t_min, t_max
        self._log_alpha0 = math.log(math.cos(s / (1 + s) * math.pi / 2))

    def _log_alpha(self, t: Tensor) -> Tensor:
        # alpha = cos(u0 + d)/cos(u0) = 1 - 2 sin^2(d/2) - tan(u0) sin(d), d = t/(1+s) pi/2.
        # log1p of that keeps full relative accuracy as t -> 0, where log(cos(.)) - log(cos u0)
        # cancels (and t + s rounds t); plain log where alpha is small.
        d = t / (1 + self.s) * (math.pi / 2)
        u0 = self.s / (1 + self.s) * math.pi / 2
        x = -2.0 * torch.sin(d / 2) ** 2 - math.tan(u0) * torch.sin(d)
        small = torch.log(torch.cos(d + u0)) - self._log_alpha0
        return torch.where(x > -0.5, torch.log1p(x), small)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def _t_of_lam(self, lam: Tensor) -> Tensor:
        # t = (2(1+s)/pi) (u - u0) with cos u = alpha cos u0. Forming arccos(.) - s cancels
        # catastrophically as t -> 0 (relative error ~1e-17/t; negative t, hence NaN lambda,
        # for large lambda), so take the angle difference d = u - u0 directly:
        # sin d = cos u0 sigma^2 / (sin u + alpha sin u0), cos d = cos u0 cos u + sin u0 sin u.
        log_alpha = _log_alpha_vp(lam)
        alpha = torch.exp(log_alpha)
        sigma2 = -torch.expm1(2.0 * log_alpha)
        u0 = self.s / (1 + self.s) * math.pi / 2
        c0, s0 = math.cos(u0), math.sin(u0)
        one_minus_cos_u = 2.0 * math.sin(u0 / 2) ** 2 - c0 * torch.expm1(log_alpha)
        sin_u = torch.sqrt(one_minus_cos_u * (1.0 + c0 * alpha))
        d = torch.atan2(c0 * sigma2 / (sin_u + alpha * s0), c0 * c0 * alpha + s0 * sin_u)
        return (2 * (1 + self.s) / math.pi) * d

    def d_alpha_dt(self, t: float) -> float:
        u = (t + self.s) / (1 + self.s) * math.pi / 2
        return -math.sin(u) * math.exp(-self._log_alpha0) * math.pi / (2 * (1 + self.s))


class DiscreteVP(NoiseSchedule):
    """Discrete-time DDPM schedule given by ``alphas_cumprod`` (length N, index n = 0..N-1).

    The continuous time t is the (fractional) training index in [0, N-1], so a network trained
    on integer timesteps receives t directly. log alpha is linear in t between integer steps,
    as DPM-Solver's ``NoiseScheduleVP('discrete')`` interpolates it; the inverse is exact.

    Args:
        alphas_cumprod: 1-D table of cumulative products abar_n, strictly decreasing in n.
    """

    variance_preserving = True

    def __init__(self, alphas_cumprod: Tensor | list[float]) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2:
            raise ScheduleError("alphas_cumprod needs at least 2 entries")
        if not torch.all((ac > 0) & (ac < 1)):
            raise ScheduleError("alphas_cumprod entries must lie strictly in (0, 1)")
        if not torch.all(ac[1:] < ac[:-1]):
            raise ScheduleError("alphas_cumprod must be strictly decreasing in the timestep")
        self.alphas_cumprod = ac
        self._log_alpha_table = 0.5 * torch.log(ac)
        self._neg_log_alpha = -self._log_alpha_table  # increasing in n
        self.t_min, self.t_max = 0.0, float(ac.numel() - 1)

    @classmethod
    def from_betas(cls, betas: Tensor | list[float]) -> DiscreteVP:
        b = torch.as_tensor(betas, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - b, dim=0))

    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
        """DDPM's linear beta table (Ho et al. 2020, Sec. 4)."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, n, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, n: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> DiscreteVP:
        """Stable Diffusion's table: betas linear in sqrt(beta)."""
        b = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        return cls.from_betas(b)

    def _log_alpha(self, t: Tensor) -> Tensor:
        n = self.alphas_cumprod.numel()
        tc = t.clamp(0.0, n - 1.0)
        i0 = torch.floor(tc).clamp(max=n - 2).long()
        w = tc - i0.to(torch.float64)
        la = self._log_alpha_table
        return la[i0] * (1 - w) + la[i0 + 1] * w

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def d_alpha_dt(self, t: float) -> float:
        # log alpha is piecewise linear: alpha' = alpha * slope of the interval _log_alpha uses
        # (right derivative at a kink). A central difference halves it at t = 0 and t = N-1.
        n = self.alphas_cumprod.numel()
        i0 = min(math.floor(min(max(t, 0.0), n - 1.0)), n - 2)
        slope = float(self._log_alpha_table[i0 + 1] - self._log_alpha_table[i0])
        return float(self.alpha(t)) * slope

    def _t_of_lam(self, lam: Tensor) -> Tensor:
        target = -_log_alpha_vp(lam)  # -log alpha, increasing in t
        table = self._neg_log_alpha
        n = table.numel()
        i1 = torch.searchsorted(table, target.reshape(-1).contiguous()).reshape(target.shape)
        i1 = i1.clamp(1, n - 1)
        lo, hi = table[i1 - 1], table[i1]
        w = (target - lo) / (hi - lo)
        return (i1 - 1).to(torch.float64) + w


class VE(NoiseSchedule):
    """Variance-exploding schedule (Song et al. 2021): alpha = 1,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t for t in [t_min, 1]."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0,
                 t_min: float = 1e-5) -> None:
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ScheduleError(
                f"need 0 < sigma_min < sigma_max, both finite, got {sigma_min}, {sigma_max}")
        if not (0 <= t_min < 1):
            raise ScheduleError(f"need 0 <= t_min < 1 (VE's t_max is 1), got t_min={t_min}")
        self.sigma_min, self.sigma_max, self.t_min, self.t_max = sigma_min, sigma_max, t_min, 1.0
        self._log_ratio = math.log(sigma_max / sigma_min)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def _t_of_lam(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def d_alpha_dt(self, t: float) -> float:
        return 0.0


class EDM(NoiseSchedule):
    """EDM / k-diffusion schedule (Karras et al. 2022, Table 1): alpha = 1, sigma = t.

    This is the coordinate system of k-diffusion denoisers ``model(x, sigma)``.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ScheduleError(
                f"need 0 < sigma_min < sigma_max, both finite, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.t_min, self.t_max = sigma_min, sigma_max

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def _t_of_lam(self, lam: Tensor) -> Tensor:
        return torch.exp(-lam)

    def d_alpha_dt(self, t: float) -> float:
        return 0.0

    def d_sigma_dt(self, t: float) -> float:
        return 1.0


class RectifiedFlow(NoiseSchedule):
    """Rectified flow / flow matching (Liu et al. 2022): alpha = 1 - t, sigma = t.

    lambda = log((1-t)/t), so t(lambda) = sigmoid(-lambda). t = 1 is pure noise with
    lambda = -inf, so sampling must start at t_max < 1 (default 0.999).
    """

    def __init__(self, t_min: float = 1e-4, t_max: float = 0.999) -> None:
        if not (0 < t_min < t_max < 1):
            raise ScheduleError(
                f"need 0 < t_min < t_max < 1, got {t_min}, {t_max} (t = 1 is lambda = -inf; "
                "start slightly below 1)")
        self.t_min, self.t_max = t_min, t_max

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def _t_of_lam(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)

    def d_alpha_dt(self, t: float) -> float:
        return -1.0

    def d_sigma_dt(self, t: float) -> float:
        return 1.0
