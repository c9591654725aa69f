r"""DPM-Solver with adaptive step size (Lu et al. 2022, arXiv 2206.00927, Sec. 3.4 / App. C).

DPM-Solver-12 (order 2) and DPM-Solver-23 (order 3) pair a lower- and a higher-order single
step from lambda_s to lambda_t = lambda_s + h that share their model evaluations:

* 12: x_low = DPM-Solver-1 (DDIM), x_high = DPM-Solver-2 with r1 = 1/2      (2 NFE per try)
* 23: x_low = DPM-Solver-2 with r1 = 1/3, x_high = DPM-Solver-3 (1/3, 2/3)   (3 NFE per try)

Both are the single-step stage engine (:mod:`diffsolve.solvers.engines.stages`); the lower-order
solution reuses the higher method's evaluations (recorded while the engine runs).
Why not the sampling loop (:func:`diffsolve.drivers.loop.integrate`): the grid is not known
in advance (each step size depends on the last error estimate, and rejected tries are
retaken), so this driver runs the stage engine directly. The local
error estimate is the mixed-tolerance RMS norm

    delta = max(atol, rtol * max(|x_low|, |x_prev|)),
    E = max_b sqrt(mean(((x_high - x_low)/delta)^2))

(per sample b, worst sample decides). A step is accepted if E <= 1 (then x <- x_high, local
extrapolation); either way the next step is h <- min(theta h E^{-1/order}, lambda_end -
lambda) with theta = 0.9 (DPM-Solver App. C; order = 2 for 12, 3 for 23). The first trial step
is h_init (0.05 in lambda, the paper's default). k-diffusion's ``sample_dpm_adaptive`` uses a
PID controller with accept_safety 0.81 instead; :func:`sample_dpm_adaptive` here keeps the
paper's rule with k-diffusion's calling convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..core.errors import NonFiniteError, SolverOptionError
from ..core.expint import stage_coefficients
from ..core.models import Denoiser, eps_from_data
from ..core.schedules import EvalPoint
from ..solvers.base import check_choice, check_range
from ..solvers.engines.stages import StageTable, build_stages, run_stages

Form = Literal["data", "noise"]


@dataclass(frozen=True)
class AdaptiveInfo:
    """Statistics of an adaptive run.

    Attributes:
        nfe: model evaluations (tries x evaluations per try, plus a final denoise if any).
        accepted, rejected: numbers of accepted and rejected trial steps.
        lams: the accepted lambda grid, first node to last (len = accepted + 1).
        errors: the error estimate E of every accepted step.
    """

    nfe: int
    accepted: int
    rejected: int
    lams: tuple[float, ...]
    errors: tuple[float, ...]

    @property
    def sigmas(self) -> list[float]:
        """The accepted grid as EDM sigmas (sigma/alpha = e^{-lambda})."""
        return [math.exp(-v) for v in self.lams]


@dataclass(frozen=True)
class AdaptiveResult:
    x: Tensor
    info: AdaptiveInfo


class _Recorder:
    """Forwards ``data`` calls to the model and keeps (x, point, D) of each evaluation."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model
        self.calls: list[tuple[Tensor, EvalPoint, Tensor]] = []

    def data(self, x: Tensor, point: EvalPoint) -> Tensor:
        d = self.model.data(x, point)
        self.calls.append((x, point, d))
        return d


def _pair_step(model: Denoiser, x: Tensor, p_s: EvalPoint, p_t: EvalPoint, order: int,
               form: Form) -> tuple[Tensor, Tensor, Tensor]:
    """(x_low, x_high, D_s) of the embedded pair from p_s to p_t (module docstring)."""
    sched = model.schedule
    rec = _Recorder(model)
    high = build_stages(sched, p_s, p_t, StageTable.of_order(order), eta=0.0, form=form)
    x_high = run_stages(0, x, high, p_s, rec, None, eta=0.0, form=form).x  # type: ignore[arg-type]
    f = [d if form == "data" else eps_from_data(xi, d, pt) for xi, pt, d in rec.calls]
    c = stage_coefficients(p_s, p_t, form=form)
    x_low = c.lin * x + c.w0 * f[0]
    if order == 3:  # DPM-Solver-2 with r1 = 1/3 on the first stage (Lu et al. 2022 Alg. 1)
        r1 = 1.0 / 3.0
        x_low = x_low + (0.5 * c.w0 / r1) * (f[1] - f[0])
    return x_low, x_high, rec.calls[0][2]


def _error(x_low: Tensor, x_high: Tensor, x_prev: Tensor, rtol: float, atol: float) -> float:
    delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
    ratio = ((x_high - x_low) / delta).reshape(x_low.shape[0], -1)
    return float(ratio.square().mean(dim=1).sqrt().max())


def sample_adaptive(
    model: Denoiser,
    x: Tensor,
    sigma_max: float,
    sigma_min: float,
    *,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    theta: float = 0.9,
    form: Form = "noise",
    denoise_final: bool = False,
    max_tries: int = 100_000,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> AdaptiveResult:
    """Integrate the PF-ODE from sigma_max to sigma_min (EDM sigmas, sigma/alpha) adaptively.

    Args:
        model: the denoiser (its NFE counter is advanced).
        x: the state at sigma_max in the schedule's scaling.
        sigma_max, sigma_min: start and end noise levels, sigma_max > sigma_min > 0.
        order: 2 (DPM-Solver-12) or 3 (DPM-Solver-23).
        rtol, atol: relative and absolute tolerance of the error estimate (paper defaults
            0.05 and 0.0078 for images in [-1, 1]).
        h_init: first trial step in lambda.
        theta: safety factor of the step-size update (0.9).
        form: "noise" (DPM-Solver, the paper) or "data" (DPM-Solver++ form).
        denoise_final: finish with x <- D(x, sigma_min) (one more NFE).
        max_tries: give up (SolverOptionError) after this many trial steps.
        callback: called after every accepted step with i, sigma, sigma_next, lam, x, denoised.

    Returns:
        AdaptiveResult(x, info) with info.nfe equal to the evaluations this call made.
    """
    check_choice("dpm_adaptive", "order", order, (2, 3))
    check_choice("dpm_adaptive", "form", form, ("data", "noise"))
    check_range("dpm_adaptive", "theta", theta, 1e-3, 1.0)
    if not (sigma_max > sigma_min > 0):
        raise SolverOptionError(
            f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if rtol < 0 or atol < 0 or rtol + atol <= 0:
        raise SolverOptionError(f"need rtol, atol >= 0 and not both 0, got {rtol}, {atol}")
    if h_init <= 0:
        raise SolverOptionError(f"h_init must be positive, got {h_init}")
    sched = model.schedule
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    nfe0 = model.nfe
    h = min(h_init, lam_end - lam)
    lams, errors = [lam], []
    rejected = 0
    p_s = sched.point(lam)
    for _ in range(max_tries):
        if lam_end - lam <= 1e-12 * max(1.0, abs(lam_end)):
            break
        lam_t = lam_end if lam + h >= lam_end - 1e-12 else lam + h
        p_t = sched.point(lam_t)
        h_tried = lam_t - lam
        x_low, x_high, d_s = _pair_step(model, x, p_s, p_t, order, form)
        err = _error(x_low, x_high, x, rtol, atol)
        if not math.isfinite(err):
            raise NonFiniteError(
                f"adaptive DPM-Solver: the error estimate is not finite at sigma="
                f"{math.exp(-lam):.6g} (NaN/inf in the state or the model output)",
                step=len(errors), sigma=math.exp(-lam))
        if err <= 1.0:
            x, lam, p_s = x_high, lam_t, p_t
            lams.append(lam)
            errors.append(err)
            if callback is not None:
                callback({"i": len(errors) - 1, "sigma": math.exp(-lams[-2]),
                          "sigma_hat": math.exp(-lams[-2]), "sigma_next": math.exp(-lam),
                          "lam": lams[-2], "x": x, "denoised": d_s})
        else:
            rejected += 1
        # DPM-Solver App. C: h <- min(theta h E^{-1/order}, lambda_end - lambda)
        h = min(theta * h_tried * max(err, 1e-10) ** (-1.0 / order), lam_end - lam)
    else:
        raise SolverOptionError(f"adaptive DPM-Solver did not reach sigma_min in {max_tries} "
                                "tries; loosen rtol/atol")
    if denoise_final:
        x = model.data(x, p_s)
    info = AdaptiveInfo(nfe=model.nfe - nfe0, accepted=len(errors), rejected=rejected,
                        lams=tuple(lams), errors=tuple(errors))
    return AdaptiveResult(x=x, info=info)


@torch.no_grad()
def sample_dpm_adaptive(model: Callable[..., Tensor], x: Tensor, sigma_min: float,
                        sigma_max: float, extra_args: dict[str, Any] | None = None,
                        callback: Callable[[dict[str, Any]], None] | None = None,
                        disable: bool | None = None, order: int = 3, rtol: float = 0.05,
                        atol: float = 0.0078, h_init: float = 0.05, theta: float = 0.9,
                        form: Form = "noise", return_info: bool = False,
                        ) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """k-diffusion-style adaptive DPM-Solver: ``model(x, sigma, **extra_args) -> x0`` (VE).

    Same signature shape as k-diffusion's ``sample_dpm_adaptive`` (without its PID and SDE
    options); returns x at sigma_min (no final denoise), and with ``return_info`` also a dict
    with k-diffusion's keys (steps, nfe, n_accept, n_reject) plus lams and errors.
    ``disable`` is accepted for compatibility (no progress bar is shown).
    """
    den = Denoiser.from_kdiffusion(model, sigma_min=float(sigma_min),
                                   sigma_max=float(sigma_max), extra_args=extra_args)
    res = sample_adaptive(den, x, float(sigma_max), float(sigma_min), order=order, rtol=rtol,
                          atol=atol, h_init=h_init, theta=theta, form=form, callback=callback)
    if not return_info:
        return res.x
    info = {"steps": res.info.accepted + res.info.rejected, "nfe": res.info.nfe,
            "n_accept": res.info.accepted, "n_reject": res.info.rejected,
            "lams": list(res.info.lams), "errors": list(res.info.errors)}
    return res.x, info
