r"""Model-call skipping: reuse the denoiser's history instead of calling it, on chosen calls.

Training-free step skipping (FSampler, Vladimir 2025, arXiv 2511.09180; SADA, Jiang et al.
2025, arXiv 2507.17135; the rules below follow FSampler's released code, the paper bodies
were not reachable -- ``docs/skipping.md``). A :class:`SkippingDenoiser` wraps a
:class:`~diffsolve.core.models.Denoiser` and is handed to the unchanged loop with any solver.
Each request ``D(x, lambda)`` is either a REAL call (counted by the wrapped model's NFE
counter) or, when the policy allows it, answered by polynomial extrapolation of the REAL
history (only real calls enter the history):

    D^(x, s) = sum_{k=0}^{q-1} l_k(s) F_k,    l_k(s) = prod_{m != k} (s - s_m)/(s_k - s_m),

the Lagrange extrapolation through the q newest real calls at their own nodes s_k (lambda or
the EDM sigma: "sigma-aware", which keeps the nodes right after a skip, where FSampler's
uniform-index rule is misaligned). F is the data prediction D ("data") or the unit noise
eps = (x - alpha D)/sigma ("noise", then D^ = (x - sigma eps^)/alpha at the current x).

Policies (guard rails of FSampler's code: the first ``protect_first`` and last
``protect_last`` requests of the run, and the final denoise into sigma = 0, are always real;
at most ``max_consecutive`` skips in a row; a skip needs q real calls in the history):

* ``"fixed"``: after the protected start, ``calls`` real calls then one skip (FSampler hN/sK).
* ``"adaptive"``: the stability criterion of FSampler's adaptive gate -- skip when the
  extrapolations of degree q - 1 and q - 2 agree,
  rel = rms(D^_q - D^_{q-1}) / rms(D^_q) <= ``tol`` (an embedded estimate of the lower-order
  extrapolation's error, the difference being its leading term); the degree q - 1 value is
  used. (FSampler compares the two after one solver step; comparing the predictions
  themselves needs no solver internals, so it wraps any solver.)

The gate reads a norm on the host: one synchronisation per candidate request (skipping is a
host decision). ``sample_skipping`` returns the honest count: ``result.nfe`` is the wrapped
model's counter (real calls only), next to the nominal count the solver declares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.expint import lagrange_weights
from ..core.models import Denoiser
from ..core.schedules import EvalPoint
from ..solvers import Solver, get_solver
from .loop import SampleResult, sample

Mode = Literal["fixed", "adaptive"]
Target = Literal["data", "noise"]
Node = Literal["lambda", "sigma"]


@dataclass(frozen=True)
class SkipPolicy:
    """When to skip and how to extrapolate (module docstring).

    Args:
        mode: "fixed" cadence or "adaptive" stability gate.
        order: q, the number of real calls the extrapolation goes through (2: linear,
            3: quadratic; the adaptive gate compares q with q - 1).
        calls: fixed mode: real calls between two skips.
        tol: adaptive mode: the largest relative disagreement that still skips.
        max_consecutive: skips in a row at most.
        protect_first, protect_last: requests at the start / end of the run that are always
            real (the final denoise into sigma = 0 always is).
        target: extrapolate the data prediction ("data") or the unit noise ("noise").
        node: the variable the history is a polynomial in ("lambda" or "sigma" = sigma/alpha).
    """

    mode: Mode = "adaptive"
    order: int = 3
    calls: int = 2
    tol: float = 0.05
    max_consecutive: int = 1
    protect_first: int = 2
    protect_last: int = 2
    target: Target = "noise"
    node: Node = "lambda"

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "adaptive"):
            raise SolverOptionError(f"skip mode must be 'fixed' or 'adaptive', got {self.mode!r}")
        if self.target not in ("data", "noise"):
            raise SolverOptionError(f"skip target must be 'data' or 'noise', got {self.target!r}")
        if self.node not in ("lambda", "sigma"):
            raise SolverOptionError(f"skip node must be 'lambda' or 'sigma', got {self.node!r}")
        lowest = 2 if self.mode == "adaptive" else 1
        if not lowest <= self.order <= 4:
            raise SolverOptionError(f"skip order must be in {lowest}..4, got {self.order}")
        for name in ("calls", "max_consecutive"):
            if getattr(self, name) < 1:
                raise SolverOptionError(f"skip {name} must be >= 1, got {getattr(self, name)}")
        for name in ("protect_first", "protect_last"):
            if getattr(self, name) < 0:
                raise SolverOptionError(f"skip {name} must be >= 0, got {getattr(self, name)}")
        if not (self.tol >= 0 and math.isfinite(self.tol)):
            raise SolverOptionError(f"skip tol must be a finite number >= 0, got {self.tol}")


@dataclass
class CallRecord:
    """One request to the model: its index, lambda, whether it was skipped, and the gate's
    relative disagreement (None where the gate did not run)."""

    index: int
    lam: float
    skipped: bool
    rel: float | None = None


class SkippingDenoiser(Denoiser):
    """A Denoiser whose ``data`` may answer from the real-call history (module docstring).

    ``nfe`` is the wrapped model's counter (real calls only); every other attribute is the
    wrapped model's. ``total_requests`` (the solver's declared count for the run) places the
    protected end; :func:`sample_skipping` sets it.
    """

    def __init__(self, model: Denoiser, policy: SkipPolicy, total_requests: int) -> None:
        # no Denoiser.__init__: everything but `data` and `nfe` is the wrapped model's
        self.inner = model
        self.policy = policy
        self.total_requests = int(total_requests)
        self.reset()

    def reset(self) -> None:
        """Forget the history (a new run)."""
        self.history: list[tuple[float, Tensor]] = []  # (node, F) of real calls, newest last
        self.calls: list[CallRecord] = []
        self._run = 0  # consecutive skips
        self._since_skip = 0  # real calls since the last skip (fixed mode)

    def __getattr__(self, name: str) -> Any:  # only reached for names not set here
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property  # type: ignore[override]
    def nfe(self) -> int:
        return self.inner.nfe

    @nfe.setter
    def nfe(self, value: int) -> None:
        self.inner.nfe = value

    # -- extrapolation --------------------------------------------------------------------------
    def _node(self, point: EvalPoint) -> float:
        return point.lam if self.policy.node == "lambda" else point.sigma_edm

    def _extrapolate(self, q: int, at: float) -> Tensor:
        nodes, values = zip(*self.history[-q:], strict=True)
        weights = lagrange_weights(nodes, at)
        out = torch.mul(values[0], weights[0])
        for w, v in zip(weights[1:], values[1:], strict=True):
            out.add_(v, alpha=w)
        return out

    def _to_f(self, x: Tensor, d: Tensor, point: EvalPoint) -> Tensor:
        if self.policy.target == "data":
            return d
        return (x - point.alpha * d) / point.sigma

    def _to_d(self, x: Tensor, f: Tensor, point: EvalPoint) -> Tensor:
        if self.policy.target == "data":
            return f
        return (x - point.sigma * f) / point.alpha

    def _eligible(self, index: int, point: EvalPoint) -> bool:
        p = self.policy
        return (math.isfinite(point.lam) and index >= p.protect_first
                and index < self.total_requests - p.protect_last
                and len(self.history) >= p.order and self._run < p.max_consecutive
                and all(n != self._node(point) for n, _ in self.history))

    # -- the request ----------------------------------------------------------------------------
    def data(self, x: Tensor, point: EvalPoint) -> Tensor:
        """D(x, lambda): a real call of the wrapped model, or the extrapolation."""
        p = self.policy
        index = len(self.calls)
        if self._eligible(index, point):
            at = self._node(point)
            if p.mode == "fixed":
                if self._since_skip >= p.calls:
                    return self._skip(index, point, x, self._extrapolate(p.order, at), None)
            else:
                hi = self._extrapolate(p.order, at)
                lo = self._extrapolate(p.order - 1, at)
                num = float((hi - lo).double().square().mean().sqrt())
                den = float(hi.double().square().mean().sqrt())
                rel = num / max(den, 1e-12)
                if rel <= p.tol:
                    return self._skip(index, point, x, hi, rel)
                self.calls.append(CallRecord(index, point.lam, False, rel))
                return self._real(x, point, recorded=True)
        return self._real(x, point)

    def _skip(self, index: int, point: EvalPoint, x: Tensor, f: Tensor,
              rel: float | None) -> Tensor:
        self.calls.append(CallRecord(index, point.lam, True, rel))
        self._run += 1
        self._since_skip = 0
        return self._to_d(x, f, point)

    def _real(self, x: Tensor, point: EvalPoint, *, recorded: bool = False) -> Tensor:
        if not recorded:
            self.calls.append(CallRecord(len(self.calls), point.lam, False))
        d = self.inner.data(x, point)
        if math.isfinite(point.lam):  # one entry per node: a repeated node keeps the newest
            node = self._node(point)
            kept = [e for e in self.history if e[0] != node][-self.policy.order:]
            self.history = [*kept, (node, self._to_f(x, d, point))]
        self._run = 0
        self._since_skip += 1
        return d

    __call__ = data


@dataclass(frozen=True)
class SkipResult:
    """:class:`SampleResult` of a skipping run, with the nominal count and the call record.

    ``result.nfe`` is the real calls (the wrapped model's counter); ``nominal_nfe`` what the
    solver declares for the grid; ``saved`` their difference.
    """

    result: SampleResult
    nominal_nfe: int
    calls: list[CallRecord] = field(default_factory=list)

    @property
    def nfe(self) -> int:
        return self.result.nfe

    @property
    def saved(self) -> int:
        return self.nominal_nfe - self.result.nfe

    @property
    def x(self) -> Tensor:
        return self.result.x


def sample_skipping(model: Denoiser, shape_or_noise: Sequence[int] | Tensor, *,
                    skip: SkipPolicy | None = None, solver: str | Solver = "dpmpp_2m",
                    steps: int | None = None, nfe: int | None = None,
                    grid: str = "karras", **kwargs: Any) -> SkipResult:
    """:func:`diffsolve.sample` with model-call skipping (module docstring).

    ``nfe`` / ``steps`` set the *nominal* grid exactly as :func:`diffsolve.sample` would
    (the solver's declared cost); the run then makes at most that many real calls, and
    ``SkipResult.nfe`` says how many it made. Solver options and the other keyword arguments
    of :func:`diffsolve.sample` pass through (``check_finite`` defaults to "end": a replay
    would not see the same skip decisions).
    """
    policy = skip or SkipPolicy()
    options = {k: v for k, v in kwargs.items() if k not in _SAMPLE_KEYS}
    solver_obj = get_solver(solver, **options) if isinstance(solver, str) else solver
    to_zero = bool((kwargs.get("grid_options") or {}).get("to_zero", True))
    if (steps is None) == (nfe is None):
        raise SolverOptionError("give exactly one of `steps` and `nfe`")
    if steps is None:
        assert nfe is not None
        steps = solver_obj.steps_for_nfe(nfe, to_zero=to_zero)
    finite = steps - 1 if to_zero else steps
    nominal = solver_obj.nfe(finite, denoise_final=to_zero or bool(kwargs.get("denoise_final")))
    wrapper = SkippingDenoiser(model, policy, nominal)
    rest = {k: v for k, v in kwargs.items() if k in _SAMPLE_KEYS}
    rest.setdefault("check_finite", "end")
    result = sample(wrapper, shape_or_noise, solver=solver_obj, steps=steps, grid=grid, **rest)
    return SkipResult(result=result, nominal_nfe=nominal, calls=list(wrapper.calls))


_SAMPLE_KEYS = frozenset({"seed", "offset", "noise", "dtype", "device", "grid_options",
                          "callback", "progress", "return_trajectory", "denoise_final",
                          "check_finite"})
