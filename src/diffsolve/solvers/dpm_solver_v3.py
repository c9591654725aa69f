r"""DPM-Solver-v3 (Zheng, Lu, Chen, Zhu 2023, arXiv 2310.13268): multistep predictor-corrector
on the ODE reparameterised by empirical model statistics (EMS,
:mod:`~diffsolve.solvers.engines.model_statistics`).

With y = x/alpha, f = (1 - l) y - D and g the rescaled f of v3 eq. (9) (see
``model_statistics``), the exact solution from lambda_s to lambda_t is (v3 eq. 10)

    y_t = e^{-(L_t - L_s)} y_s - int_s^t e^{-(L_t - L_u) + S_u - S_s} [g(u) + B_s(u)] du.

Taylor-expanding g at lambda_s to order n - 1 gives the n-th order update (v3 eq. 14)

    y_t = decay y_s - sum_{k<n} c_k g^(k)(lambda_s) - c_b,
    c_k = int_s^t e^{-(L_t - L_u) + S_u - S_s} (u - lambda_s)^k / k! du,

computed exactly for the piecewise-linear EMS (engine
:class:`~diffsolve.solvers.engines.model_statistics.StepIntegrals`).
The derivatives come from the values g_j = E_j f_j - B_s(lambda_j) at the previous nodes
(multistep, v3 Sec. 3.3 / eq. 15): "exact" fits the interpolating polynomial through all n
nodes (v3's full-order estimate), ``pseudo=True`` uses the v3 "pseudo-order" estimate
g^(k) ~ k! g[lambda_s, ..., lambda_{s-k}] (Newton divided differences on the first k + 1
nodes only; v3 Sec. 3.4), which is more stable at very few steps.

Corrector (v3 Sec. 3.3, a UniC-like implicit step that costs no NFE): after D at the new node
is evaluated, x_{i} is recomputed from x_{i-1} with the same update whose nodes are
lambda_{i-1} (expansion point), lambda_i, lambda_{i-2}, ... (order = predictor order of the
previous step + 1), and the stored f_i is kept (D_i shifted by (1 - l_i)(x_new - x_old)/alpha_i)
so no re-evaluation is needed. ``corrector="half"`` corrects only on the first half of the
steps (our reading of the paper's half-corrector for large guidance scales; not verified
against its text).

Every update is linear in the history: x_{i+1} = sum_j cx_j x_j + sum_j cd_j D_j + const with
per-dimension (or scalar) coefficients precomputed in :meth:`plan`.

Degenerate statistics: ``statistics=None`` means l = 1, s = b = 0 (the official code's
"degenerated" EMS), for which g = -D and the update is exactly DPM-Solver++'s multistep
exponential Adams method (order 2: ``dpmpp_2m`` with ``solver_type="heun"``; order 3: the
exponential Adams weights of ``dpmpp_3m``), tested in tests/test_dpm_solver_v3.py.
``statistics="zero"`` is the paper's literal l = s = b = 0: then f = sigma eps/alpha and the
method is a plain (non-exponential) Adams-Bashforth method for dy/dlambda = -e^{-lambda} eps.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.expint import lagrange_monomials
from ..core.schedules import NoiseSchedule
from .base import (
    GridPlan,
    Solver,
    StepOutput,
    check_choice,
    check_range,
    register,
    uniform_evaluations,
)
from .engines.history import step_orders
from .engines.model_statistics import EMS, StepIntegrals, _Piecewise

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource

Coef = float | Tensor


@dataclass(frozen=True)
class V3Update:
    """x_new = sum_j cx[j] x_j + sum_j cd[j] D_j + const over history nodes (newest first)."""

    nodes: tuple[int, ...]
    cx: tuple[Coef, ...]
    cd: tuple[Coef, ...]
    const: Coef


@dataclass(frozen=True)
class V3Step:
    predictor: V3Update
    corrector: V3Update | None
    keep_f: Coef  # (1 - l_i)/alpha_i: shift of D_i when x_i is corrected


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> EMS:
    return EMS.load(path)


def resolve_statistics(statistics: Any) -> EMS:
    if statistics is None:
        return EMS.constant(1.0)
    if isinstance(statistics, str) and statistics == "zero":
        return EMS.constant(0.0)
    if isinstance(statistics, EMS):
        return statistics
    if isinstance(statistics, (str, os.PathLike)):
        p = os.fspath(statistics)
        if not os.path.exists(p):
            raise SolverOptionError(f"dpm_solver_v3: statistics file {p!r} does not exist")
        return _load(p, os.path.getmtime(p))
    raise SolverOptionError("dpm_solver_v3: statistics must be None, 'zero', an EMS or a path, "
                            f"got {type(statistics).__name__}")


def derivative_matrix(lams: list[float], h: float, pseudo: bool) -> list[list[float]]:
    """M[k][j]: g^(k)(lambda_0) ~ sum_j M[k][j] g(lambda_j) (lams[0] is the expansion point)."""
    n = len(lams)
    if not pseudo:
        mono = lagrange_monomials([(v - lams[0]) / h for v in lams])
        return [[math.factorial(k) * mono[j][k] / h**k for j in range(n)] for k in range(n)]
    m = [[0.0] * n for _ in range(n)]
    for k in range(n):
        for j in range(k + 1):
            den = 1.0
            for q in range(k + 1):
                if q != j:
                    den *= lams[j] - lams[q]
            m[k][j] = math.factorial(k) / den  # Newton divided difference (pseudo-order)
    return m


def _coef(v: np.ndarray, shape: tuple[int, ...]) -> Coef:
    return float(v[0]) if shape == () else torch.from_numpy(np.ascontiguousarray(v)).reshape(shape)


def update_coefficients(pw: _Piecewise, shape: tuple[int, ...], schedule: NoiseSchedule,
                        nodes: tuple[int, ...], lams: list[float], i_s: int, i_t: int,
                        pseudo: bool) -> V3Update:
    """The linear update from node i_s to node i_t using g at ``nodes`` (nodes[0] == i_s)."""
    lam_s, lam_t = lams[i_s], lams[i_t]
    a_t, a_s = schedule.point(lam_t).alpha, schedule.point(lam_s).alpha
    n = len(nodes)
    ints = StepIntegrals(pw, lam_s, lam_t, n)
    node_l = [lams[j] for j in nodes]
    mat = derivative_matrix(node_l, lam_t - lam_s, pseudo)
    l_nodes = pw.value("l", np.array(node_l))
    cx, cd = [], []
    const = -a_t * ints.c_b
    for jj, j in enumerate(nodes):
        w = sum(ints.c[k] * mat[k][jj] for k in range(n))  # W_j = sum_k c_k M[k][j]
        e_j, bs_j = ints.node(lams[j])
        a_j = schedule.point(lams[j]).alpha
        x_c = -a_t * w * e_j * (1.0 - l_nodes[jj]) / a_j
        if jj == 0:
            x_c = x_c + a_t * ints.decay / a_s
        cx.append(_coef(x_c, shape))
        cd.append(_coef(a_t * w * e_j, shape))
        const = const + a_t * w * bs_j
    return V3Update(nodes=nodes, cx=tuple(cx), cd=tuple(cd), const=_coef(const, shape))


@register
@dataclass(frozen=True)
class DPMSolverV3(Solver):
    """DPM-Solver-v3: EMS-reparameterised multistep predictor(-corrector). 1 NFE per step.

    Args:
        statistics: EMS object, path of a saved EMS (safetensors), None (l = 1, s = b = 0:
            reduces to DPM-Solver++ multistep) or "zero" (l = s = b = 0).
        predictor_order: order of the multistep predictor (1-4); warm-up min(order, i + 1).
        pseudo: pseudo-order derivative estimates in the predictor (v3 Sec. 3.4).
        corrector: "all", "half" (first half of the steps) or "none".
        lower_order_final: cap the final orders for grids of fewer than 15 steps.
    """

    name = "dpm_solver_v3"
    title = "DPM-Solver-v3 with empirical model statistics"
    reference = "Zheng, Lu, Chen, Zhu 2023 (arXiv 2310.13268) eq. 9-15, Alg. 1"
    statistics: Any = None
    predictor_order: int = 3
    pseudo: bool = False
    corrector: Literal["all", "half", "none"] = "all"
    lower_order_final: bool = True

    def __post_init__(self) -> None:
        check_range(self.name, "predictor_order", self.predictor_order, 1, 4)
        check_choice(self.name, "corrector", self.corrector, ("all", "half", "none"))
        resolve_statistics(self.statistics)

    @property
    def order(self) -> int:
        """Predictor order p, +1 with the corrector; the lower-order start bounds it (a first
        interval corrected at order 2 has local error O(h^3); uncorrected O(h^2))."""
        p = self.predictor_order
        if self.corrector == "none":
            return min(p, 2)
        if self.corrector == "half":  # the second half is predictor-only
            return min(p, 3)
        return min(p + 1, 3)

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(1, steps)

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = super().plan(schedule, lams, denoise_final=denoise_final)
        ems = resolve_statistics(self.statistics)
        pw, shape = ems.piecewise(), ems.feature_shape
        lam = [p.lam for p in base.points]
        orders = step_orders(self.predictor_order, base.steps, denoise_final,
                             self.lower_order_final)
        steps = []
        for i, o in enumerate(orders):
            pred = update_coefficients(pw, shape, schedule, tuple(i - j for j in range(o)), lam,
                                       i, i + 1, self.pseudo)
            corr = None
            use = self.corrector == "all" or (self.corrector == "half" and i < base.steps / 2)
            if i >= 1 and use:
                c_order = orders[i - 1] + 1
                nodes = (i - 1, i, *[i - 1 - j for j in range(1, c_order - 1)])
                corr = update_coefficients(pw, shape, schedule, nodes, lam, i - 1, i, False)
            keep = (1.0 - pw.value("l", np.array([lam[i]]))[0]) / base.points[i].alpha
            steps.append(V3Step(pred, corr, _coef(keep, shape)))
        return base.with_extra(steps)

    def init_state(self, x: Tensor, plan: GridPlan) -> dict[int, tuple[Tensor, Tensor]]:
        statistics_shape_check(resolve_statistics(self.statistics), x)
        return {}

    @property
    def feature_shape(self) -> tuple[int, ...] | None:
        shape = tuple(resolve_statistics(self.statistics).feature_shape)
        return shape or None

    def step(self, i: int, x: Tensor, state: dict[int, tuple[Tensor, Tensor]], plan: GridPlan,
             model: Denoiser, noise: NoiseSource) -> StepOutput:
        st: V3Step = plan.extra[i]
        d = model.data(x, plan.points[i])
        hist = dict(state)
        if st.corrector is not None:
            hist[i] = (x, d)
            x_new = _apply(st.corrector, hist, x)
            d = d + _on(st.keep_f, x) * (x_new - x)  # keep f_i fixed (no new NFE)
            x = x_new
        hist[i] = (x, d)
        x_next = _apply(st.predictor, hist, x)
        keep = max(self.predictor_order + 1, 2)
        new_state = {k: v for k, v in hist.items() if k > i - keep}
        return StepOutput(x=x_next, state=new_state, denoised=d)


def _on(c: Coef, like: Tensor) -> Coef:
    return c if isinstance(c, float) else _moved(c, like.device, like.dtype)


@functools.lru_cache(maxsize=512)
def _moved(c: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A plan's per-feature coefficient on the state's device/dtype, copied once per run
    configuration instead of at every step (the cache holds ``c``, so its identity is stable)."""
    return c.to(device=device, dtype=dtype)


def _apply(u: V3Update, hist: dict[int, tuple[Tensor, Tensor]], like: Tensor) -> Tensor:
    out = None
    for j, cx, cd in zip(u.nodes, u.cx, u.cd, strict=True):
        xj, dj = hist[j]
        term = _on(cx, like) * xj + _on(cd, like) * dj
        out = term if out is None else out + term
    assert out is not None
    const = u.const
    if isinstance(const, float):
        return out + const if const != 0.0 else out
    return out + _moved(const, like.device, like.dtype)


def statistics_shape_check(ems: EMS, x: Tensor) -> None:
    if ems.feature_shape not in ((), tuple(x.shape[1:])):
        raise SolverOptionError(f"dpm_solver_v3: statistics of feature shape {ems.feature_shape}"
                                f" do not match samples of shape {tuple(x.shape[1:])}")


__all__ = ["DPMSolverV3", "derivative_matrix", "resolve_statistics", "update_coefficients"]
