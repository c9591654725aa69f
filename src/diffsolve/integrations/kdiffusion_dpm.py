r"""k-diffusion's ``sample_dpm_fast`` and ``sample_dpm_adaptive`` on diffsolve's DPM-Solver steps.

Both run DPM-Solver-1/2/3 in noise prediction (Lu et al. 2022, arXiv 2206.00927, eq. 3.7 and
Alg. 1-2; the registered ``dpm_solver_1/2/3`` solvers) between lambda nodes of their own
choosing, with k-diffusion's conventions; the model is a k-diffusion denoiser (VE scaling).

* :func:`dpm_fast` -- DPM-Solver-fast (Lu et al. 2022, Sec. 3.4): K = floor(n/3) + 1 steps
  uniform in lambda from sigma_max to sigma_min, orders [3, ..., 3, 2, 1] if 3 | n, else
  [3, ..., 3, n mod 3], so exactly n model evaluations.
* :func:`dpm_adaptive` -- DPM-Solver-12 / 23 with k-diffusion's PID step-size controller: a
  trial step of size h pairs a low- and a high-order solution sharing their evaluations
  (12: DPM-Solver-1 and -2; 23: DPM-Solver-2 with r1 = 1/3 and DPM-Solver-3), the error is
  E = ||(x_low - x_high)/delta||_2 / sqrt(numel) with delta = max(atol, rtol max(|x_low|,
  |x_prev|)), and the controller (Soederlind 2003, "Digital filters in adaptive time-stepping",
  with k-diffusion's limiter 1 + atan(f - 1)) sets h <- h f with
  f = limiter(e_0^{b1} e_1^{b2} e_2^{b3}), e_j = 1/(E_j + 1e-8) over the last accepted errors,
  b1 = (k_P + k_I + k_D)/k, b2 = -(k_P + 2 k_D)/k, b3 = k_D/k (k = order, or 1.5 with eta > 0);
  the step is accepted when f >= accept_safety. (:mod:`diffsolve.adaptive` keeps the paper's
  own accept rule instead.)

With eta > 0 both are ancestral: each step goes to sigma_down = the ancestral split's down
level (clipped at sigma_min) and adds sqrt(sigma_next^2 - sigma_down^2) s_noise xi.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.models import Denoiser
from ..core.noise import NoiseSource
from ..core.schedules import EvalPoint
from ..solvers import get_solver
from ..solvers.engines.renoise import ancestral_split

Callback = Callable[[dict[str, Any]], None]


class _SharedEvaluations:
    """A denoiser that answers repeated (x, lambda) queries of one trial step from a cache, so
    that the low- and high-order solutions of an embedded pair share their evaluations."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model
        self.schedule = model.schedule
        self._cache: list[tuple[float, Tensor, Tensor]] = []

    def clear(self) -> None:
        self._cache.clear()

    def data(self, x: Tensor, point: EvalPoint) -> Tensor:
        for lam, cx, d in self._cache:
            if lam == point.lam and (cx is x or torch.equal(cx, x)):
                return d
        d = self.model.data(x, point)
        self._cache.append((point.lam, x, d))
        return d

    __call__ = data


def _dpm_step(order: int, x: Tensor, lam_from: float, lam_to: float, model: Any,
              r1: float | None = None) -> tuple[Tensor, Tensor]:
    """One DPM-Solver-``order`` step (noise prediction) from lam_from to lam_to: (x, D)."""
    options: dict[str, Any] = {"prediction": "noise"}
    if r1 is not None:
        options["r1"] = r1
    solver = get_solver(f"dpm_solver_{order}", **options)
    plan = solver.plan(model.schedule, torch.tensor([lam_from, lam_to], dtype=torch.float64))
    out = solver.step(0, x, solver.init_state(x, plan), plan, model, None)
    return out.x, out.denoised


def check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    """k-diffusion's rule: both ends of the noise-level range must be positive (and here
    distinct and finite)."""
    lo, hi = float(sigma_min), float(sigma_max)
    if not (0 < lo < math.inf and 0 < hi < math.inf) or lo == hi:
        raise SolverOptionError(
            f"sigma_min and sigma_max must be positive, finite and distinct, got {lo}, {hi}")


def _ancestral_target(lam: float, lam_next: float, lam_end: float, eta: float,
                      ) -> tuple[float, float]:
    """(lambda actually stepped to, std of the noise added) of an ancestral step."""
    if not eta:
        return lam_next, 0.0
    down, _ = ancestral_split(math.exp(-lam), math.exp(-lam_next), eta)
    lam_down = min(lam_end, -math.log(down)) if down > 0 else lam_end
    sig_next, sig_down = math.exp(-lam_next), math.exp(-lam_down)
    return lam_down, math.sqrt(max(0.0, sig_next * sig_next - sig_down * sig_down))


def fast_orders(n: int) -> list[int]:
    """DPM-Solver-fast's per-step orders for n model evaluations (Lu et al. 2022, Sec. 3.4)."""
    if n < 1:
        raise SolverOptionError(f"dpm_fast needs n >= 1 model evaluations, got {n}")
    k = n // 3 + 1
    return [3] * (k - 2) + [2, 1] if n % 3 == 0 else [3] * (k - 1) + [n % 3]


def dpm_fast(model: Denoiser, x: Tensor, sigma_min: float, sigma_max: float, n: int, *,
             callback: Callback | None, eta: float, s_noise: float,
             noise: NoiseSource) -> Tensor:
    """DPM-Solver-fast from sigma_max to sigma_min in n evaluations (module docstring)."""
    check_sigma_range(sigma_min, sigma_max)
    orders = fast_orders(int(n))
    lam_start, lam_end = -math.log(float(sigma_max)), -math.log(float(sigma_min))
    lams = torch.linspace(lam_start, lam_end, len(orders) + 1, dtype=torch.float64).tolist()
    for i, order in enumerate(orders):
        lam, lam_next = lams[i], lams[i + 1]
        lam_to, up = _ancestral_target(lam, lam_next, lam_end, eta)
        x_next, d = _dpm_step(order, x, lam, lam_to, model)
        if callback is not None:
            sig = math.exp(-lam)
            callback({"x": x, "i": i, "t": lam, "t_up": lam, "denoised": d, "sigma": sig,
                      "sigma_hat": sig})
        if up > 0.0 and s_noise != 0.0:
            xi = noise.normal(x, step=i, draw=0, lam_from=lam, lam_to=lam_next)
            x_next = x_next + (up * s_noise) * xi
        x = x_next
    return x


class PIDController:
    """k-diffusion's PID step-size controller (module docstring)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8) -> None:
        self.h = h
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2.0 * dcoeff) / order,
                  dcoeff / order)
        self.accept_safety = accept_safety
        self.eps = eps
        self.inv_errors: list[float] = []

    def propose(self, error: float) -> bool:
        """Scale h by the filtered factor; True when the step that produced ``error`` is kept."""
        inv = 1.0 / (error + self.eps)
        if not self.inv_errors:
            self.inv_errors = [inv, inv, inv]
        self.inv_errors[0] = inv
        e0, e1, e2 = self.inv_errors
        factor = e0 ** self.b[0] * e1 ** self.b[1] * e2 ** self.b[2]
        factor = 1.0 + math.atan(factor - 1.0)
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors = [e0, e0, e1]
        self.h *= factor
        return accept


def dpm_adaptive(model: Denoiser, x: Tensor, sigma_min: float, sigma_max: float, *,
                 callback: Callback | None, order: int, rtol: float, atol: float,
                 h_init: float, pcoeff: float, icoeff: float, dcoeff: float,
                 accept_safety: float, eta: float, s_noise: float, noise: NoiseSource,
                 ) -> tuple[Tensor, dict[str, int]]:
    """DPM-Solver-12/23 with k-diffusion's PID controller (module docstring): (x, info)."""
    check_sigma_range(sigma_min, sigma_max)
    if order not in (2, 3):
        raise SolverOptionError(f"dpm_adaptive: order must be 2 or 3, got {order!r}")
    lam_start, lam_end = -math.log(float(sigma_max)), -math.log(float(sigma_min))
    forward = lam_end > lam_start
    if not forward and eta:
        raise SolverOptionError("dpm_adaptive: eta must be 0 for reverse sampling")
    pid = PIDController(abs(h_init) * (1.0 if forward else -1.0), pcoeff, icoeff, dcoeff,
                        1.5 if eta else order, accept_safety)
    shared = _SharedEvaluations(model)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    lam, x_prev = lam_start, x
    while (lam < lam_end - 1e-5) if forward else (lam > lam_end + 1e-5):
        shared.clear()
        lam_next = min(lam_end, lam + pid.h) if forward else max(lam_end, lam + pid.h)
        lam_to, up = _ancestral_target(lam, lam_next, lam_end, eta)
        if order == 2:
            x_low, d = _dpm_step(1, x, lam, lam_to, shared)
            x_high, _ = _dpm_step(2, x, lam, lam_to, shared)
        else:
            x_low, d = _dpm_step(2, x, lam, lam_to, shared, r1=1.0 / 3.0)
            x_high, _ = _dpm_step(3, x, lam, lam_to, shared)
        delta = torch.maximum(torch.full_like(x_low, atol),
                              rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / delta)) / math.sqrt(x.numel())
        if pid.propose(error):
            x_prev = x_low
            if up > 0.0 and s_noise != 0.0:
                xi = noise.normal(x, step=info["n_accept"], draw=0, lam_from=lam,
                                  lam_to=lam_next)
                x_high = x_high + (up * s_noise) * xi
            x, lam = x_high, lam_next
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
        if callback is not None:
            sig = math.exp(-lam)
            callback({"x": x, "i": info["steps"] - 1, "t": lam, "t_up": lam, "denoised": d,
                      "error": error, "h": pid.h, "sigma": sig, "sigma_hat": sig, **info})
    return x, info
