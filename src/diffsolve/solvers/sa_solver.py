r"""SA-Solver: stochastic Adams predictor-corrector (Xue et al. 2023, arXiv 2309.05019).

SA-Solver integrates the variance-controlled reverse SDE in lambda = log(alpha/sigma), written
in data prediction (research note seeds_sa_solver.md Sec. 1.2-1.3)

    dx = [(d log sigma/d lambda - eta) x + k alpha D(x, lambda)] d lambda
         + sqrt(2 eta) sigma dW_lambda,          eta = tau^2,  k = 1 + eta,

whose marginals are the data marginals for every tau(.) (tau = 0: the probability-flow ODE,
tau = 1: the reverse SDE of Song et al.). On a step lambda_i -> lambda_{i+1} (h_i > 0) tau is
frozen at tau_i and the linear part and the noise are exact; only the weighted integral of D
is approximated by Lagrange interpolation through past data predictions (note Sec. 3.2):

SA-Predictor (s = ``predictor_order`` nodes lambda_i, lambda_{i-1}, ..., lambda_{i-s+1}):

    x^p_{i+1} = (sigma_{i+1}/sigma_i) e^{-eta_i h_i} x_i + sum_j b_j D_{i-j}
                + sigma_{i+1} sqrt(1 - e^{-2 eta_i h_i}) xi_i,

    b_j = alpha_{i+1} k int_{lambda_i}^{lambda_{i+1}} e^{-k(lambda_{i+1}-lambda)} l_j(lambda) dl
        = alpha_{i+1} k h w_j,   w_j = int_0^1 e^{-k h (1-theta)} l_j(theta) dtheta,

with l_j the Lagrange basis on the nodes. The weights are computed by
:func:`diffsolve.expint.exp_lagrange_weights` in the normalised variable
theta = (lambda - lambda_i)/h with phi-functions, in float64 (note Sec. 3.4): the closed forms
of the official code, diffusers and ComfyUI integrate lambda^p e^{k lambda} in absolute lambda
and lose digits at small h (note pitfall P3).

SA-Corrector (c = ``corrector_order`` nodes lambda_{i+1}, lambda_i, ..., lambda_{i-c+2}):
the same formula with its own weights b^c_j, the new node carrying D~_{i+1} = D(x^p_{i+1}),
and the SAME xi_i as the predictor (note T6; all three reference implementations do this):

    x_{i+1} = (sigma_{i+1}/sigma_i) e^{-eta_i h_i} x_i + sum_j b^c_j D_node_j
              + sigma_{i+1} sqrt(1 - e^{-2 eta_i h_i}) xi_i.

Since the linear part and the noise term of predictor and corrector coincide, we apply the
corrector as  x_{i+1} = x^p_{i+1} + sum_j (b^c_j - b_j) D_node_j  (one precomputed weight
vector over the history): algebraically identical, it needs neither x_i nor xi_i in the state
and makes the reuse of xi_i structural. The state is the tuple of data predictions at the
past nodes, newest first.

Step structure (what one call of :meth:`SASolver.step` does at node i):

1. Evaluate D~_i = D(x_i) at the predicted state (1 NFE).
2. If i > 0: correct the interval [i-1, i] with D~_i (giving x^c_i); with ``pece`` re-evaluate
   D_i = D(x^c_i) (1 more NFE) and keep it in the history in place of D~_i ("PECE");
   by default the history keeps D~_i ("PEC", 1 NFE per step).
3. Predict x^p_{i+1} from x^c_i with a fresh xi_i (one noise draw: step=i, draw=0).

Last interval: the corrector of the last finite interval needs D at the last predicted point.
The sampling loop evaluates D there for its final denoise (grids ending at sigma = 0), but the
solver never sees that value, so by default the last finite step is predictor-only (as the
official "few_steps" mode and ComfyUI). ``final_corrector=True`` instead spends one extra NFE
in the last step to evaluate D(x^p_N) and correct the last interval (the official
"more_steps" behaviour); the loop's final denoise, if any, then evaluates D(x^c_N).

NFE for ``steps`` finite steps (the loop's final denoise into sigma = 0 adds 1):
PEC: steps; PECE: 2 steps - 1 (step 0 has nothing to correct, so nothing to re-evaluate);
``final_corrector`` adds 1. :meth:`SASolver.step_evaluations` declares exactly this, and
``sample(nfe=...)`` picks the largest grid that fits the budget from it.

Orders: warm-up uses min(order, available nodes): predictor min(s, i + 1), corrector
min(c, i + 2) on interval i. ``lower_order_final`` (for grids of fewer than 15 steps, as the
multistep solvers) caps the predictor at min(s, total - i) and the corrector at one more.
Deterministic orders (tau = 0, measured in tests/test_sa_solver.py, N = 32..512):
predictor-only s = 1, 2 converge with order s; PEC (1, 2) and (2, 3) with order 2 and 3.
The first, first-order step has local error O(h^2), so on uniform grids predictor-only s = 3
is asymptotically second order (as DPM-Solver++(3M)); with the first two steps shortened to
h^2 it measures 3.1-3.2. PEC (3, 4) measures 4.0-4.4 (its first corrector has two nodes, so
it is asymptotically third order on uniform grids; ~4 with the shortened start). Weak order
with tau = 1 (mean + variance error, Gaussian data): 1 for (1, 0), ~2 for predictor order
>= 2 or any corrector (2.9 for (2, 2); note Appendix C).
Special cases: tau = 0 and predictor order 1 is DDIM; predictor order 1 with tau > 0 is
SEEDS-1 / SDE-DPM-Solver++(1) with eta = tau^2.

Naming pitfall (note P10): this solver's ``tau`` is SA-Solver's tau, the *square root* of the
eta used by SEEDS, by k-diffusion's ``dpmpp_*_sde`` and by ComfyUI's SEEDS nodes
(eta = tau^2). ComfyUI's SA-Solver node calls tau "eta".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Literal

from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.expint import exp_lagrange_weights, stage_coefficients
from ..core.schedules import EvalPoint, NoiseSchedule
from .base import GridPlan, Solver, StepOutput, check_choice, check_range, register
from .engines.history import LOWER_ORDER_FINAL_BELOW, accumulate, step_orders

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource

MAX_ORDER = 4
MAX_TAU = 10.0
#: Default stochastic window in EDM sigma~ = sigma/alpha: the image of the official
#: recommendation tau = 1 for t in [0.2, 0.8] under VP-linear (beta_min 0.1, beta_max 20),
#: sigma~(0.2) = 0.7204 and sigma~(0.8) = 25.11 (diffusers' discrete t in [200, 800] with linear
#: betas 1e-4..0.02 gives [0.724, 25.7]).
DEFAULT_TAU_WINDOW = (0.72, 25.1)
_WINDOW_RTOL = 1e-12

TauFunction = Callable[[float], float]


@dataclass(frozen=True)
class SAStepCoefficients:
    """Precomputed float64 weights of SA-Solver step i (the call at node i).

    Attributes:
        tau, eta: tau_i and eta_i = tau_i^2 of interval [i, i+1].
        predictor_order, corrector_order: orders used on interval i (corrector 0 when the
            interval is not corrected).
        correct: corrector of interval [i-1, i] applied first, as weights (b^c - b) over the
            history (D~_i, D_{i-1}, ...); () when there is none.
        lin: (sigma_{i+1}/sigma_i) e^{-eta h}.
        predict: predictor weights b_j over the history (D_i, D_{i-1}, ...).
        noise_std: sigma_{i+1} sqrt(1 - e^{-2 eta h}) (before ``s_noise``).
        final_correct: with ``final_corrector`` on the last step: the corrector of interval
            [i, i+1] over (D~_{i+1}, D_i, ...); () otherwise.
    """

    tau: float
    eta: float
    predictor_order: int
    corrector_order: int
    correct: tuple[float, ...]
    lin: float
    predict: tuple[float, ...]
    noise_std: float
    final_correct: tuple[float, ...] = ()


def sa_weights(points: Sequence[EvalPoint], i: int, nodes: Sequence[int], eta: float,
               ) -> tuple[float, ...]:
    """b_j = alpha_{i+1} k int e^{-k(lambda_{i+1} - lambda)} l_j(lambda) dlambda on [i, i+1].

    ``nodes`` are grid indices (any order, distinct); l_j is the Lagrange basis on their
    lambdas. Computed in theta = (lambda - lambda_i)/h with phi-functions (float64).
    """
    p_s, p_t = points[i], points[i + 1]
    h = p_t.lam - p_s.lam
    k = 1.0 + eta
    theta = [(points[j].lam - p_s.lam) / h for j in nodes]
    return tuple(p_t.alpha * k * h * w for w in exp_lagrange_weights(theta, -k * h))


def predictor_weights(points: Sequence[EvalPoint], i: int, order: int, eta: float,
                      simple_order_2: bool = False) -> tuple[float, ...]:
    """SA-Predictor weights on D_i, D_{i-1}, ..., D_{i-order+1}.

    With ``simple_order_2`` and order 2 the exact slope weight alpha k h phi_2(-k h) h/h_prev on
    (D_i - D_{i-1}) is replaced by its leading term alpha k h^2/(2 h_prev) (the official
    "rescaling trick"; UniPC-bh1's predictor at tau = 0).
    """
    if order == 2 and simple_order_2:
        p_t = points[i + 1]
        h = p_t.lam - points[i].lam
        h_prev = points[i].lam - points[i - 1].lam
        w0 = stage_coefficients(points[i], p_t, eta=eta).w0
        slope = p_t.alpha * (1.0 + eta) * h * h / (2.0 * h_prev)
        return (w0 + slope, -slope)
    return sa_weights(points, i, [i - j for j in range(order)], eta)


def corrector_weights(points: Sequence[EvalPoint], i: int, order: int, eta: float,
                      simple_order_2: bool = False) -> tuple[float, ...]:
    """SA-Corrector weights on D~_{i+1}, D_i, ..., D_{i-order+2}.

    With ``simple_order_2`` and order 2 the exact weight alpha k h phi_2(-k h) on
    (D~_{i+1} - D_i) is replaced by alpha k h/2 (UniPC-bh1's corrector at tau = 0).
    """
    if order == 2 and simple_order_2:
        p_t = points[i + 1]
        h = p_t.lam - points[i].lam
        w0 = stage_coefficients(points[i], p_t, eta=eta).w0
        slope = p_t.alpha * (1.0 + eta) * h / 2.0
        return (slope, w0 - slope)
    return sa_weights(points, i, [i + 1 - j for j in range(order)], eta)


def correction_delta(corrector: Sequence[float], predictor: Sequence[float],
                     ) -> tuple[float, ...]:
    """(b^c - b) over the history (D~_{i+1}, D_i, D_{i-1}, ...): the predictor's weights sit
    one place later because its newest node is lambda_i."""
    n = max(len(corrector), len(predictor) + 1)
    delta = [0.0] * n
    for j, w in enumerate(corrector):
        delta[j] += w
    for j, w in enumerate(predictor):
        delta[j + 1] -= w
    return tuple(delta)


@register
@dataclass(frozen=True)
class SASolver(Solver):
    r"""SA-Solver (Xue et al. 2023, arXiv 2309.05019): stochastic Adams predictor-corrector
    in data prediction, with exact linear part and noise (module docstring for the update).

    Order s of the predictor with tau = 0 (s + 1 for PEC (s, s+1), s <= 2); weak order 2 for
    predictor order >= 2 with tau > 0. NFE per step: 1 (PEC, default) or 2 (PECE; step 0
    costs 1), plus 1 in the last step with ``final_corrector``; see :meth:`nfe`.

    Args:
        predictor_order: s in 1..4 (default 3): Lagrange nodes of the SA-Predictor.
        corrector_order: c in 0..4 (default 4; 0 disables the corrector): nodes of the
            SA-Corrector, the newest being the predicted point.
        tau: None (default) for the window rule below; a float >= 0 for a constant tau; or a
            function sigma~ -> tau of the EDM noise level sigma~ = sigma/alpha = e^{-lambda}.
            tau is SA-Solver's tau: eta = tau^2 is the eta of SEEDS / k-diffusion
            (pitfall P10). Range [0, 10].
        tau_window: (sigma_lo, sigma_hi) in sigma~ (default (0.72, 25.1)): with ``tau=None``,
            tau = ``tau_value`` when sigma_lo <= sigma~ <= sigma_hi (inclusive, 1e-12 relative
            slack for sigmas that round-trip through lambda) and 0 outside. The default
            is the official recommendation tau = 1 on t in [0.2, 0.8] of VP-linear
            (sigma~(0.2) = 0.720, sigma~(0.8) = 25.1; diffusers' t in [200, 800] is
            [0.724, 25.7]). ComfyUI places its window at sigma "percent" 0.2-0.8 of the
            model's own schedule, which depends on the model (for Stable Diffusion's discrete
            schedule it is sigma~ in [0.57, 5.1]: pass that window to reproduce it).
        tau_value: tau inside the window (default 1).
        pece: False (default): PEC, 1 NFE per step, the history keeps D at predicted points.
            True: PECE, D re-evaluated at every corrected point (2 NFE per step).
        lower_order_final: for grids of fewer than 15 steps cap the orders of the last steps
            (predictor min(s, total - i), corrector one more), as the multistep solvers.
        lower_order_final_always: with ``lower_order_final``, lower them on every grid
            (diffusers' SASolverScheduler), not only below 15 steps.
        s_noise: multiplies the injected noise (1 keeps the marginals exact; heuristic, P8).
        simple_order_2: use the order-2 "rescaling trick" (predictor slope alpha k h^2/(2
            h_prev), corrector slope alpha k h/2; UniPC-bh1 at tau = 0) wherever the order
            used is 2. Off by default (exact Lagrange integrals).
        final_corrector: also correct the last finite interval at the cost of one extra NFE
            (default False: the last step is predictor-only, as the official "few_steps"
            mode and ComfyUI).
        tau_point: where tau of an interval is evaluated (below): "end" (default) or "start".
        noise_every_step: draw the step's noise also where tau = 0 (below; default False).

    Where tau is evaluated: interval [i, i+1] uses tau_i = tau(sigma~_{i+1}), its END node,
    as the official code (tau(t) at the step's target time) and ComfyUI (tau at sigma_next);
    diffusers evaluates at the start timestep (``tau_point="start"``). The end rule keeps a
    window given in the reference implementations' terms meaning the same here. Any rule is
    consistent: every piecewise-constant tau is a valid member of the SDE family, so the
    marginals are right.

    Noise: one draw per step where tau > 0; with ``noise_every_step`` one draw per step also
    where tau is 0 (unused there), so that a sequential generator is consumed once per step,
    as diffusers' scheduler does.
    """

    name = "sa_solver"
    title = "SA-Solver, predictor 1–4 / corrector 0–4, PEC or PECE"
    reference = ("Xue et al. 2023 (NeurIPS; arXiv 2309.05019) SA-Predictor/SA-Corrector, data "
                 "prediction; coefficients per research note seeds_sa_solver.md Sec. 3.4")

    predictor_order: int = 3
    corrector_order: int = 4
    tau: float | TauFunction | None = None
    tau_window: tuple[float, float] = DEFAULT_TAU_WINDOW
    tau_value: float = 1.0
    pece: bool = False
    lower_order_final: bool = True
    s_noise: float = 1.0
    simple_order_2: bool = False
    final_corrector: bool = False
    tau_point: Literal["end", "start"] = "end"
    lower_order_final_always: bool = False
    noise_every_step: bool = False

    def __post_init__(self) -> None:
        n = self.name
        check_choice(n, "predictor_order", self.predictor_order, tuple(range(1, MAX_ORDER + 1)))
        check_choice(n, "corrector_order", self.corrector_order, tuple(range(MAX_ORDER + 1)))
        for flag in ("pece", "lower_order_final", "simple_order_2", "final_corrector",
                     "lower_order_final_always", "noise_every_step"):
            check_choice(n, flag, getattr(self, flag), (True, False))
        check_choice(n, "tau_point", self.tau_point, ("end", "start"))
        if self.tau is not None and not callable(self.tau):
            if isinstance(self.tau, bool) or not isinstance(self.tau, Real):
                raise SolverOptionError(
                    f"{n}: option tau={self.tau!r} must be None (window rule), a float in "
                    f"[0, {MAX_TAU}] or a function sigma -> tau")
            check_range(n, "tau", float(self.tau), 0.0, MAX_TAU)
        window = self.tau_window
        if (not isinstance(window, Sequence) or len(window) != 2
                or not all(isinstance(v, Real) and not isinstance(v, bool) for v in window)):
            raise SolverOptionError(
                f"{n}: option tau_window={window!r} must be a pair (sigma_lo, sigma_hi) of "
                "EDM noise levels sigma/alpha")
        lo, hi = float(window[0]), float(window[1])
        check_range(n, "tau_window[0]", lo, 0.0, math.inf)
        check_range(n, "tau_window[1]", hi, lo, math.inf)
        object.__setattr__(self, "tau_window", (lo, hi))
        check_range(n, "tau_value", self.tau_value, 0.0, MAX_TAU)
        check_range(n, "s_noise", self.s_noise, 0.0, 10.0)
        if self.corrector_order == 0 and self.pece:
            raise SolverOptionError(f"{n}: option pece=True needs corrector_order >= 1")
        if self.corrector_order == 0 and self.final_corrector:
            raise SolverOptionError(f"{n}: option final_corrector=True needs corrector_order >= 1")

    # -- tau ---------------------------------------------------------------------------------
    def tau_at(self, sigma_edm: float) -> float:
        """tau at EDM noise level sigma~ = sigma/alpha (validated)."""
        if self.tau is None:
            # inclusive, with a 1e-12 relative slack: grid sigmas round-trip through lambda
            lo, hi = self.tau_window
            inside = lo * (1.0 - _WINDOW_RTOL) <= sigma_edm <= hi * (1.0 + _WINDOW_RTOL)
            return float(self.tau_value) if inside else 0.0
        if callable(self.tau):
            value = self.tau(sigma_edm)
            try:
                tau = float(value)
            except (TypeError, ValueError):
                raise SolverOptionError(
                    f"{self.name}: tau({sigma_edm:.6g}) returned {value!r}, not a float") from None
            if not (0.0 <= tau <= MAX_TAU):
                raise SolverOptionError(
                    f"{self.name}: tau({sigma_edm:.6g}) = {tau!r} is out of range [0, {MAX_TAU}]")
            return tau
        return float(self.tau)

    # -- declared order and cost -------------------------------------------------------------
    @property
    def order(self) -> int:
        """Order of the tau = 0 limit: predictor-only min(s, 2), with a corrector of c nodes
        min(c, s + 1, 3). The first interval is predicted at order 1 and corrected with two
        nodes, a local error O(h^3) that is not divided by h, hence the 3 (2 without the
        corrector); measured in tests/test_convergence.py and docs/sde_solvers.md."""
        s, c = self.predictor_order, self.corrector_order
        return min(s, 2) if c == 0 else min(c, s + 1, 3)

    @property
    def weak_order(self) -> float | None:
        """2 (Xue et al. 2023, Thm. 4.1-4.2: the Brownian increments limit the weak order to
        2), except 1 for a one-node corrector (the new point alone, an implicit Euler-type
        rule) and for predictor order 1 without corrector (measured 0.97-0.99 for both,
        tests/test_weak_order.py); None when tau is 0 everywhere."""
        if self.tau is not None and not callable(self.tau) and float(self.tau) == 0.0:
            return None
        if self.tau is None and self.tau_value == 0.0:
            return None
        s, c = self.predictor_order, self.corrector_order
        return 1.0 if c == 1 or (s == 1 and c == 0) else 2.0

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        """PEC: 1 per step; PECE: 2 per step but the first (nothing to correct at step 0);
        ``final_corrector``: 1 more in the last step."""
        evals = [2 if self.pece and i > 0 else 1 for i in range(steps)]
        if self.final_corrector and steps > 0:
            evals[-1] += 1
        return tuple(evals)

    @property
    def history_length(self) -> int:
        if self.corrector_order == 0:
            return self.predictor_order
        return max(self.predictor_order + 1, self.corrector_order)

    # -- plan ----------------------------------------------------------------------------------
    def _lowers(self, total: int) -> bool:
        """Whether ``lower_order_final`` caps the last orders on a grid of ``total`` steps."""
        return self.lower_order_final and (self.lower_order_final_always
                                           or total < LOWER_ORDER_FINAL_BELOW)

    def corrector_orders(self, steps: int, denoise_final: bool) -> list[int]:
        """Corrector order of each interval: min(c, i + 2), capped at the predictor's
        lower_order_final cap + 1."""
        total = steps + (1 if denoise_final else 0)
        orders = []
        for i in range(steps):
            c = min(self.corrector_order, i + 2)
            if self._lowers(total):
                c = min(c, total - i + 1)
            orders.append(c)
        return orders

    def predictor_orders(self, steps: int, denoise_final: bool) -> list[int]:
        """Predictor order of each interval: min(s, i + 1), with lower_order_final
        min(s, total - i)."""
        total = steps + (1 if denoise_final else 0)
        return [min(o, total - i) if self._lowers(total) else o for i, o in
                enumerate(step_orders(self.predictor_order, steps, denoise_final, False))]

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = super().plan(schedule, lams, denoise_final=denoise_final)
        pts, steps = base.points, base.steps
        p_orders = self.predictor_orders(steps, denoise_final)
        c_orders = self.corrector_orders(steps, denoise_final)
        at = 0 if self.tau_point == "start" else 1
        taus = [self.tau_at(pts[i + at].sigma_edm) for i in range(steps)]
        predict = [predictor_weights(pts, i, p_orders[i], taus[i] ** 2, self.simple_order_2)
                   for i in range(steps)]

        def delta(i: int) -> tuple[float, ...]:
            eta = taus[i] ** 2
            corr = corrector_weights(pts, i, c_orders[i], eta, self.simple_order_2)
            return correction_delta(corr, predict[i])

        extra = []
        for i in range(steps):
            eta = taus[i] ** 2
            lin_noise = stage_coefficients(pts[i], pts[i + 1], eta=eta)
            last = i == steps - 1
            corrected_here = self.corrector_order > 0 and (not last or self.final_corrector)
            extra.append(SAStepCoefficients(
                tau=taus[i], eta=eta, predictor_order=p_orders[i],
                corrector_order=c_orders[i] if corrected_here else 0,
                correct=delta(i - 1) if (i > 0 and self.corrector_order > 0) else (),
                lin=lin_noise.lin, predict=predict[i], noise_std=lin_noise.noise_std,
                final_correct=delta(i) if (last and self.final_corrector) else ()))
        return base.with_extra(extra)

    def init_state(self, x: Tensor, plan: GridPlan) -> tuple[Tensor, ...]:
        return ()

    # -- step ----------------------------------------------------------------------------------
    def step(self, i: int, x: Tensor, state: tuple[Tensor, ...], plan: GridPlan,
             model: Denoiser, noise: NoiseSource) -> StepOutput:
        co: SAStepCoefficients = plan.extra[i]
        p_s, p_t = plan.points[i], plan.points[i + 1]
        d = model.data(x, p_s)  # D~_i at the predicted point (x_0 at step 0)
        history: tuple[Tensor, ...] = (d, *state)
        if co.correct:  # corrector of [i-1, i]: x^c_i = x^p_i + sum (b^c - b) D
            x = accumulate(x, co.correct, history)
            if self.pece:
                d = model.data(x, p_s)
                history = (d, *state)
        x_next = accumulate(co.lin * x, co.predict, history)
        if noise is not None and (co.noise_std > 0.0 or self.noise_every_step):
            xi = noise.normal(x, step=i, draw=0, lam_from=p_s.lam, lam_to=p_t.lam)
            if co.noise_std > 0.0:
                x_next = x_next + (self.s_noise * co.noise_std) * xi
        if co.final_correct:  # corrector of the last interval (extra NFE)
            d_next = model.data(x_next, p_t)
            x_next = accumulate(x_next, co.final_correct, (d_next, *history))
        return StepOutput(x=x_next, state=history[: self.history_length], denoised=d)
