r"""Time-step grids. Every grid is built in float64 and handed to solvers as half log-SNR values.

A grid is a :class:`Grid`: strictly increasing lambda = log(alpha/sigma) values. Its last value
may be +inf, meaning sigma = 0: the final interval is then the "denoise" step x <- D(x)
(the limit of every data-prediction exponential integrator as h -> inf, and what k-diffusion
and ComfyUI do when ``sigmas[-1] == 0``). Grids are usually described by the EDM noise level
sigma~ = sigma/alpha = exp(-lambda), the coordinate k-diffusion calls ``sigma``.

Grids provided (``steps`` = number of intervals; ``to_zero`` appends sigma = 0 as the last node,
so the decreasing ramp itself has ``steps`` nodes):

* ``karras``: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho
  (Karras et al. 2022, eq. 5), rho = 7 by default.
* ``uniform_lambda`` (k-diffusion's "exponential"): uniform in log sigma~ (DPM-Solver "logSNR").
* ``uniform_t``: uniform in the schedule's time t (DDPM/DDIM "linspace").
* ``quadratic_t``: t_i spaced quadratically, dense near t_min (Song et al. 2021 DDIM, App. D.2).
* ``polyexponential``: log sigma~ ramps as (1 - i/(n-1))^rho (k-diffusion).
* user-given sigma~, t or lambda sequences via :meth:`Grid.from_sigmas`, :meth:`Grid.from_t`,
  :meth:`Grid.from_lambdas`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import GridError
from .schedules import NoiseSchedule

GRID_NAMES = ("karras", "uniform_lambda", "uniform_t", "quadratic_t", "polyexponential")
_RANGE_RTOL = 1e-6


def _as_f64_1d(values: Sequence[float] | Tensor, what: str) -> Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if v.ndim != 1:
        raise GridError(f"{what} must be one-dimensional, got shape {tuple(v.shape)}")
    if v.numel() < 2:
        raise GridError(f"{what} needs at least 2 values (one step), got {v.numel()}")
    return v


@dataclass(frozen=True, eq=False)
class Grid:
    """A validated sampling grid: strictly increasing lambdas (float64), last one maybe +inf.

    Attributes:
        lams: 1-D float64 tensor, strictly increasing, finite except possibly the last (+inf).
    """

    lams: Tensor

    def __post_init__(self) -> None:
        lams = self.lams
        if lams.dtype != torch.float64 or lams.ndim != 1 or lams.numel() < 2:
            raise GridError("Grid.lams must be a 1-D float64 tensor with at least 2 values")
        if torch.isnan(lams).any() or torch.isinf(lams[:-1]).any() or lams[-1] == -math.inf:
            raise GridError(
                f"grid values must be finite (only a final sigma = 0 is allowed); got "
                f"sigmas {torch.exp(-lams).tolist()}")
        diffs = lams[1:] - lams[:-1]
        if not torch.all(diffs > 0):
            bad = int(torch.nonzero(~(diffs > 0))[0])
            raise GridError(
                f"the grid must be strictly decreasing in sigma (increasing in lambda); node "
                f"{bad} (sigma={math.exp(-float(lams[bad])):.6g}) is followed by node {bad + 1} "
                f"(sigma={math.exp(-float(lams[bad + 1])):.6g}). Remove repeated values and sort "
                "from high noise to low noise")

    # constructors -----------------------------------------------------------------------
    @classmethod
    def from_sigmas(cls, sigmas: Sequence[float] | Tensor,
                    schedule: NoiseSchedule | None = None) -> Grid:
        """From EDM noise levels sigma~ = sigma/alpha, decreasing, optionally ending in 0."""
        s = _as_f64_1d(sigmas, "sigmas")
        if not torch.isfinite(s).all():
            raise GridError(f"sigmas must be finite, got {s.tolist()}")
        if (s[:-1] <= 0).any() or s[-1] < 0:
            raise GridError(f"sigmas must be positive (only the last may be 0), got {s.tolist()}")
        lams = torch.where(s > 0, -torch.log(s.clamp_min(1e-300)),
                           torch.full_like(s, math.inf))
        grid = cls(lams)
        if schedule is not None:
            grid.check_range(schedule)
        return grid

    @classmethod
    def from_lambdas(cls, lams: Sequence[float] | Tensor,
                     schedule: NoiseSchedule | None = None) -> Grid:
        grid = cls(_as_f64_1d(lams, "lambdas").clone())
        if schedule is not None:
            grid.check_range(schedule)
        return grid

    @classmethod
    def from_t(cls, ts: Sequence[float] | Tensor, schedule: NoiseSchedule) -> Grid:
        """From the schedule's own times, decreasing (t_max ... t_min)."""
        t = _as_f64_1d(ts, "t")
        if not torch.isfinite(t).all():
            raise GridError(f"times must be finite, got {t.tolist()}")
        lo, hi = schedule.t_min, schedule.t_max
        tol = _RANGE_RTOL * max(1.0, abs(hi))
        if (t < lo - tol).any() or (t > hi + tol).any():
            raise GridError(f"times {t.tolist()} leave the schedule's range [{lo}, {hi}]")
        grid = cls(schedule.lam(t.clamp(lo, hi)))
        return grid

    # queries ----------------------------------------------------------------------------
    @property
    def to_zero(self) -> bool:
        """True when the last node is sigma = 0 (a final denoising step)."""
        return bool(self.lams[-1] == math.inf)

    @property
    def steps(self) -> int:
        return self.lams.numel() - 1

    @property
    def sigmas(self) -> Tensor:
        """EDM noise levels sigma~ = exp(-lambda), decreasing, 0 for a final +inf."""
        return torch.exp(-self.lams)

    def finite_lams(self) -> Tensor:
        """The lambdas without a final +inf."""
        return self.lams[:-1] if self.to_zero else self.lams

    def check_range(self, schedule: NoiseSchedule) -> None:
        """Raise :class:`GridError` if a finite node lies outside the schedule's lambda range."""
        lams = self.finite_lams()
        lo, hi = schedule.lam_min, schedule.lam_max
        tol = _RANGE_RTOL * max(1.0, abs(lo), abs(hi))
        if float(lams[0]) < lo - tol or float(lams[-1]) > hi + tol:
            raise GridError(
                f"the grid spans sigma~ in [{math.exp(-float(lams[-1])):.6g}, "
                f"{math.exp(-float(lams[0])):.6g}] but the schedule covers only "
                f"[{math.exp(-hi):.6g}, {math.exp(-lo):.6g}] (sigma~ = sigma/alpha); "
                "choose sigma_min/sigma_max inside it")

    def __len__(self) -> int:
        return self.lams.numel()

    def __repr__(self) -> str:
        return f"Grid(steps={self.steps}, sigmas={[round(v, 6) for v in self.sigmas.tolist()]})"


# named grids ------------------------------------------------------------------------------
def _check_steps(steps: int, to_zero: bool) -> None:
    need = 2 if to_zero else 1
    if not isinstance(steps, int) or steps < need:
        raise GridError(f"steps must be an integer >= {need}"
                        f"{' when the grid ends at sigma = 0' if to_zero else ''}, got {steps!r}")


def _finish(ramp: Tensor, to_zero: bool, schedule: NoiseSchedule | None) -> Grid:
    if to_zero:
        ramp = torch.cat([ramp, ramp.new_zeros(1)])
    return Grid.from_sigmas(ramp, schedule)


def _sigma_range(schedule: NoiseSchedule | None, sigma_min: float | None,
                 sigma_max: float | None) -> tuple[float, float]:
    if schedule is not None:
        sigma_min = schedule.sigma_edm_min if sigma_min is None else sigma_min
        sigma_max = schedule.sigma_edm_max if sigma_max is None else sigma_max
    if sigma_min is None or sigma_max is None:
        raise GridError("give sigma_min and sigma_max, or a schedule to read them from")
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise GridError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    return float(sigma_min), float(sigma_max)


def karras(steps: int, schedule: NoiseSchedule | None = None, *, sigma_min: float | None = None,
           sigma_max: float | None = None, rho: float = 7.0, to_zero: bool = True) -> Grid:
    """Karras et al. (2022) eq. 5 grid with exponent ``rho`` (7 by default)."""
    _check_steps(steps, to_zero)
    if rho <= 0:
        raise GridError(f"rho must be positive, got {rho}")
    smin, smax = _sigma_range(schedule, sigma_min, sigma_max)
    n = steps if to_zero else steps + 1
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = smin ** (1 / rho), smax ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    sig[0], sig[-1] = smax, smin  # exact endpoints despite the power round trip
    return _finish(sig, to_zero, schedule)


def polyexponential(steps: int, schedule: NoiseSchedule | None = None, *,
                    sigma_min: float | None = None, sigma_max: float | None = None,
                    rho: float = 1.0, to_zero: bool = True) -> Grid:
    """log sigma~ = log smin + (1 - i/(n-1))^rho (log smax - log smin) (k-diffusion)."""
    _check_steps(steps, to_zero)
    if rho <= 0:
        raise GridError(f"rho must be positive, got {rho}")
    smin, smax = _sigma_range(schedule, sigma_min, sigma_max)
    n = steps if to_zero else steps + 1
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    sig = torch.exp(ramp * (math.log(smax) - math.log(smin)) + math.log(smin))
    sig[0], sig[-1] = smax, smin
    return _finish(sig, to_zero, schedule)


def uniform_lambda(steps: int, schedule: NoiseSchedule | None = None, *,
                   sigma_min: float | None = None, sigma_max: float | None = None,
                   to_zero: bool = True) -> Grid:
    """Uniform in lambda = -log sigma~ (DPM-Solver "logSNR", k-diffusion "exponential")."""
    return polyexponential(steps, schedule, sigma_min=sigma_min, sigma_max=sigma_max, rho=1.0,
                           to_zero=to_zero)


def _t_grid(steps: int, schedule: NoiseSchedule, power: float, to_zero: bool,
            t_min: float | None, t_max: float | None) -> Grid:
    _check_steps(steps, to_zero)
    lo = schedule.t_min if t_min is None else t_min
    hi = schedule.t_max if t_max is None else t_max
    if not lo < hi:
        raise GridError(f"need t_min < t_max, got {lo}, {hi}")
    n = steps if to_zero else steps + 1
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** power
    t = lo + ramp * (hi - lo)
    grid = Grid.from_t(t, schedule)
    if to_zero:
        grid = Grid(torch.cat([grid.lams, grid.lams.new_full((1,), math.inf)]))
    return grid


def uniform_t(steps: int, schedule: NoiseSchedule, *, t_min: float | None = None,
              t_max: float | None = None, to_zero: bool = True) -> Grid:
    """Uniform in the schedule's own time t, from t_max down to t_min."""
    return _t_grid(steps, schedule, 1.0, to_zero, t_min, t_max)


def quadratic_t(steps: int, schedule: NoiseSchedule, *, t_min: float | None = None,
                t_max: float | None = None, to_zero: bool = True) -> Grid:
    """t_i = t_min + (t_max - t_min) (1 - i/n)^2: DDIM's quadratic spacing (Song et al. 2021)."""
    return _t_grid(steps, schedule, 2.0, to_zero, t_min, t_max)


_BUILDERS = {
    "karras": karras,
    "uniform_lambda": uniform_lambda,
    "polyexponential": polyexponential,
    "uniform_t": uniform_t,
    "quadratic_t": quadratic_t,
}


def make_grid(name: str, steps: int, schedule: NoiseSchedule, **options: float | bool) -> Grid:
    """Build a named grid for ``schedule``; see the module docstring for the names."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise GridError(f"unknown grid {name!r}; choose one of {', '.join(GRID_NAMES)}") from None
    return builder(steps, schedule, **options)
