r"""Linear multistep methods on the noise-prediction ODE in EDM coordinates: LMS and iPNDM.

With x~ = x/alpha, sigma~ = sigma/alpha = e^{-lambda} and eps = (x - alpha D)/sigma, the
probability-flow ODE of every schedule is

    dx~/dsigma~ = eps = (x~ - D)/sigma~          (Karras et al. 2022, eq. 4; DDIM eq. 14)

and an explicit multistep method on it reads

    x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j C_ij eps_{i-j}.

* LMS (k-diffusion ``sample_lms``, Crowson 2022): C_ij = int_{sigma~_i}^{sigma~_{i+1}} l_j
  d sigma~, l_j the Lagrange basis in sigma~ on nodes sigma~_i, ..., sigma~_{i-p+1}: the
  variable-step Adams-Bashforth method in sigma~. Computed exactly at plan time in float64
  as Delta sigma~ int_0^1 l_j(theta) d theta on normalised nodes (expint.exp_lagrange_weights
  at c = 0). This is also DEIS's rhoAB variant (Zhang & Chen 2023) and the
  "iPNDM with variable step size".
* iPNDM (Zhang & Chen 2023, appendix, "improved PNDM"): the DDIM transfer
  x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) eps' with eps' the fixed-coefficient
  Adams-Bashforth combination (55 eps_i - 59 eps_{i-1} + 37 eps_{i-2} - 9 eps_{i-3})/24
  and the lower-order AB formulas during warm-up (Bashforth & Adams 1883 coefficients, as in
  PNDM, Liu et al. 2022 eq. 12). The fixed coefficients assume steps uniform in sigma~;
  on other grids (e.g. uniform in lambda, Karras rho = 7) the step ratio is 1 + O(h) and
  the method is globally second order (measured, docs/multistep_family.md).

Warm-up (the engine's, :mod:`diffsolve.solvers.engines.history`): ``warmup="lower_order"``
(the papers) starts with orders 1, 2, ...; its first-order first step has local error O(h^2),
so the global error is O(h^2) asymptotically. ``warmup="singlestep"`` runs the first
``order - 1`` steps with DPM-Solver++(2S)/(3S), which restores the nominal global order up to 4.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.expint import exp_lagrange_weights
from ..core.models import eps_from_data
from ..core.schedules import EvalPoint, NoiseSchedule
from .base import GridPlan, check_choice, register
from .engines.history import (
    ADAMS_BASHFORTH,
    LOWER_ORDER_FINAL_BELOW,
    WARMUPS,
    HistorySolver,
    LinearStep,
)


def lagrange_integrals(nodes: Sequence[float], s_to: float) -> tuple[float, ...]:
    """int_{s_0}^{s_to} l_j(s) ds for the Lagrange basis in s = sigma~ on ``nodes`` = s_0,
    s_1, ... (newest first). Exact: Delta s int_0^1 l_j(theta) d theta on the normalised
    nodes theta_k = (s_k - s_0)/Delta s, Delta s = s_to - s_0 (s_to = 0 included)."""
    ds = s_to - nodes[0]
    return tuple(ds * w for w in exp_lagrange_weights([(v - nodes[0]) / ds for v in nodes], 0.0))


def lms_weights(points: tuple[EvalPoint, ...], i: int, order: int) -> tuple[float, ...]:
    """C_ij = int_{s_i}^{s_{i+1}} l_j(s) ds, Lagrange basis in s = sigma~ on s_i .. s_{i-p+1}."""
    return lagrange_integrals([points[i - k].sigma_edm for k in range(order)],
                              points[i + 1].sigma_edm)


def eps_step(points: tuple[EvalPoint, ...], i: int, weights: tuple[float, ...]) -> LinearStep:
    """x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j C_ij eps_{i-j} (module docstring)."""
    p_s, p_t = points[i], points[i + 1]
    return LinearStep(lin=p_t.alpha / p_s.alpha, weights=tuple(p_t.alpha * w for w in weights))


@dataclass(frozen=True)
class _EpsMultistep(HistorySolver):
    """Options of the eps-history solvers (not registered)."""

    solver_order: int = 4
    history_form = "noise"
    max_order: ClassVar[int] = 4

    def __post_init__(self) -> None:
        check_choice(self.name, "solver_order", self.solver_order,
                     tuple(range(1, self.max_order + 1)))
        check_choice(self.name, "warmup", self.warmup, WARMUPS)

    @property
    def history_order(self) -> int:
        return int(self.solver_order)


@register
@dataclass(frozen=True)
class LMS(_EpsMultistep):
    """Linear multistep (variable-step Adams-Bashforth) in sigma~ on dx~/dsigma~ = (x~ - D)/sigma~.

    k-diffusion's ``sample_lms``; coefficients are exact integrals of the Lagrange basis in
    sigma~ (module docstring). 1 NFE per step (plus 1-2 per warm-up step with
    ``warmup="singlestep"``).

    The final step into sigma = 0 is x <- D(x) (``final_step="denoise"``, the Euler step to
    sigma~ = 0), or with ``final_step="multistep"`` the LMS step of order min(p, N + 1) from
    the last node s_N to 0, x~ = x~_N + sum_j C_j eps_{N-j}, C_j = int_{s_N}^0 l_j (what
    k-diffusion's ``sample_lms`` and diffusers' LMSDiscreteScheduler do).

    ``prior_sigmas`` reproduces diffusers' LMSDiscreteScheduler when sampling starts at node
    k > 0 of its grid (img2img): its order is min(p, k + i + 1) from the *absolute* step
    index and its Lagrange basis uses the k earlier nodes s_0 .. s_{k-1} (``prior_sigmas``,
    oldest first), of which only the weights of the derivatives it has (min(p, i + 1), the
    newest first) enter the step. Not a consistent method on its own (the weights of a
    higher-order basis applied to fewer derivatives); use it with ``lower_order_final=False``.

    Args:
        solver_order: 1..4 (default 4, k-diffusion's ``order``); 1 is Euler in sigma~ (= DDIM).
        warmup: "lower_order" (k-diffusion; globally O(h^2) for order > 2) or "singlestep".
        lower_order_final: lower the order of the last steps on grids of fewer than 15 steps.
        final_step: "denoise" (default) or "multistep" (above).
        prior_sigmas: sigma~ of the grid nodes before this run's first one (above).
    """

    name = "lms"
    title = "linear multistep in σ, orders 1–4 (k-diffusion `sample_lms`)"
    reference = "Crowson, k-diffusion sample_lms (2022); Karras et al. 2022 eq. 4"
    final_step: Literal["denoise", "multistep"] = "denoise"
    prior_sigmas: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "final_step", self.final_step, ("denoise", "multistep"))
        prior = tuple(float(v) for v in self.prior_sigmas)
        if any(not v > 0.0 for v in prior):
            raise SolverOptionError(f"{self.name}: prior_sigmas must be positive, got {prior}")
        if any(a <= b for a, b in itertools.pairwise(prior)):
            raise SolverOptionError(f"{self.name}: prior_sigmas must be strictly decreasing "
                                    f"(the grid nodes before the run's first), got {prior}")
        object.__setattr__(self, "prior_sigmas", prior)

    def _nodes(self, points: Sequence[EvalPoint]) -> list[float]:
        """sigma~ of the prior nodes and the run's nodes (the Lagrange basis's abscissae)."""
        sig = [*self.prior_sigmas, *(p.sigma_edm for p in points)]
        if self.prior_sigmas and not self.prior_sigmas[-1] > sig[len(self.prior_sigmas)]:
            raise SolverOptionError(
                f"{self.name}: prior_sigmas {self.prior_sigmas} must lie above the grid's first "
                f"sigma {sig[len(self.prior_sigmas)]:.6g} (they are the nodes before it)")
        return sig

    def _weights(self, sigmas: Sequence[float], j: int, s_to: float, order: int,
                 ) -> tuple[float, ...]:
        """Weights of the step from sigmas[j] (absolute index j, earlier nodes before it):
        the basis of order min(p, j + 1) with prior sigmas, else ``order``; the first
        ``order`` of them (the derivatives available)."""
        full = min(self.history_order, j + 1) if self.prior_sigmas else order
        return lagrange_integrals([sigmas[j - k] for k in range(max(full, order))],
                                  s_to)[:order]

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        sig = self._nodes(points)
        j = i + len(self.prior_sigmas)
        return eps_step(points, i, self._weights(sig, j, points[i + 1].sigma_edm, order))

    def final_data(self, x: Tensor, state: Any, plan: GridPlan, denoised: Tensor) -> Tensor:
        """x <- D(x), or the LMS step from the last node to sigma = 0 (``final_step``)."""
        steps = plan.steps
        order = min(self.history_order, steps + 1)
        if self.lower_order_final and steps + 1 < LOWER_ORDER_FINAL_BELOW:
            order = 1
        if self.final_step == "denoise" or (order == 1 and not self.prior_sigmas):
            return denoised
        p = plan.points[-1]
        hist = (eps_from_data(x, denoised, p), *(state or ()))[:order]
        sig = self._nodes(plan.points)
        w = self._weights(sig, len(sig) - 1, 0.0, len(hist))
        out = x / p.alpha
        for wj, e in zip(w, hist, strict=True):
            out = out + wj * e
        return out


@register
@dataclass(frozen=True)
class IPNDM(_EpsMultistep):
    """iPNDM: DDIM transfer with fixed Adams-Bashforth eps combinations (Zhang & Chen 2023).

    x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) sum_j b_j eps_{i-j}, b = (55, -59, 37, -9)/24
    after the lower-order warm-up (1), (3, -1)/2, (23, -16, 5)/12. Globally second order on
    grids that are not uniform in sigma~ (fixed coefficients); fourth order on uniform-sigma~
    grids with ``warmup="singlestep"``. 1 NFE per step (+1-2 per single-step warm-up step).

    Args:
        solver_order: 1..4 (default 4).
        warmup: "lower_order" (the paper) or "singlestep".
        lower_order_final: lower the order of the last steps on grids of fewer than 15 steps.
    """

    name = "ipndm"
    title = "iPNDM (fixed Adams weights)"
    reference = "Zhang & Chen 2023 (arXiv 2204.13902) App. iPNDM; Liu et al. 2022 PNDM eq. 12"
    @property
    def nominal_order(self) -> int:  # fixed weights: at most 2 on grids not uniform in sigma~
        return min(self.history_order, 2)

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        ds = points[i + 1].sigma_edm - points[i].sigma_edm
        return eps_step(points, i, tuple(ds * b for b in ADAMS_BASHFORTH[order]))
