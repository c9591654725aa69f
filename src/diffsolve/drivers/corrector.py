r"""Predictor-corrector sampling: any registered solver, with a Langevin-type corrector after
each of its steps (Song et al. 2021's PC sampler; its second-order LML variant).

**Setting.** Work in EDM scaling x~ = x/alpha, sigma~ = sigma/alpha (the corrector maps the
state in and out, so it runs with every schedule). The score of the marginal p_sigma is
(Tweedie, Efron 2011)

    g(x~) = grad log p_sigma(x~) = (D(x~, sigma) - x~) / sigma~^2.                     (T)

**Langevin corrector** (Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, ICLR 2021,
arXiv 2011.13456, Alg. 4 (VE) / Alg. 5 (VP)): at a fixed noise level, repeat ``n_steps`` times

    z ~ N(0, I);  eps = 2 (r ||z|| / ||g||)^2;  x~ <- x~ + eps g + sqrt(2 eps) z,        (L)

r = ``snr``, the ratio ||drift|| / ||noise|| of the update. Song et al.'s reference code
takes both norms as batch means; here they are per sample (over all non-batch dimensions), so
that sample b depends on its own seed only. Per sample, ||g|| can be near 0 (near a mode's
centre, in low dimension), so eps is capped at ``max_step`` sigma~^2: since J_D >= 0 (below),
the Hessian of -log p_sigma is at most I/sigma~^2 and a step eps <= 2 sigma~^2 is stable in
every direction (derived). Alg. 5 multiplies eps by alpha_i = 1 - beta_i of the discrete DDPM
chain (<= 2 % off 1 for N = 1000); we use 1 for every schedule, which makes (L) equivariant
to the scaling x = alpha x~ (derived; the paper's text was not reachable, the rule is from the
reference code, see ``docs/correctors.md``). With ``step_size`` = tau given instead, eps =
tau sigma~^2 (a fixed step relative to the noise level) -- the unadjusted Langevin algorithm,
whose stationary law on a Gaussian N(m, v) has variance v / (1 - eps/(2v)) (derived: the
AR(1) recursion x' - m = (1 - eps/v)(x - m) + sqrt(2 eps) z); tests check that number.

**LML corrector** (second-order Langevin with a damped low-rank Hessian; after Wang et al.
2025, "Levenberg-Marquardt-Langevin", arXiv 2505.24222, whose equations were not reachable:
this construction is derived, ``docs/correctors.md`` says what is ours). Differentiating (T),

    H = -grad^2 log p_sigma = (I - J_D) / sigma~^2,    J_D = dD/dx~ = Cov[x0 | x~] / sigma~^2,

so the Hessian is the identity minus a positive semi-definite term that is low-rank when the
data are (the "inherent structure"). Two denoiser outputs at the same noise level give a
secant pair (dx, dD = D(x~_k) - D(x~_{k-1})) with J_D dx ~ dD, and the rank-1 estimate
J_1 = mu u u^T, u = dD/||dD||, mu = ||dD||^2 / <dD, dx> (in [0, 1) for Gaussian data,
J_1 <= J_D: no extra evaluation). Between the modes of a mixture Cov[x0 | x~] can exceed
sigma~^2, so mu >= 1 and H is not positive along u: there the step falls back to the
gradient (P = I), as Levenberg-Marquardt does far from a minimum (clamping mu below 1
instead made the step blow up on the 2-D mixture). Levenberg-Marquardt damping adds
lambda/sigma~^2 to H:

    H_lambda = ((1 + lambda) I - mu u u^T) / sigma~^2,
    M = H_lambda^{-1} = sigma~^2/(1 + lambda) (I + c u u^T),   c = mu / (1 + lambda - mu),

(Sherman-Morrison), so the damping caps M's condition number at 1 + 1/lambda. The step is
preconditioned Langevin with P = I + c u u^T (the scalar factor is absorbed by the step
size), and the step size follows (L) measured in P's metric:

    eps = 2 (r ||z|| / ||P^{1/2} g||)^2;  x~ <- x~ + eps P g + sqrt(2 eps) P^{1/2} z,    (LML)

P^{1/2} = I + (sqrt(1 + c) - 1) u u^T. The secant is taken between consecutive steps at one
noise level (``n_steps`` >= 2; the first step at each node is (L)), and is not carried to the
next level: a transported estimate is exact for one Gaussian but, on a mixture, the spread
between modes seen at a high noise level is far too wide for a single mode at a low one (we
tried it: it diverged on the 2-D mixture).

**The loop.** After each predictor step i (grid node i + 1, sigma > 0) the corrector runs at
that node's noise level (predictor-then-corrector, as in Song et al.'s Alg. 4/5). Cost:
``corrector.evaluations`` per corrected node, added to the solver's declared cost
(:func:`corrected_nfe`, :func:`corrected_steps_for_nfe`); counted evaluations equal it
(tested). Multistep solvers keep their history of denoiser outputs from before the
correction. Noise: the corrector draws from its own per-sample streams keyed by
seeds derive_seed(derive_seed(seed, offset + b), CORRECTOR_DOMAIN), step node * n_steps + m,
so sample b depends only on (seed, offset + b) and never shares a draw with the solver.

The steps run in THE sampling loop, :func:`diffsolve.drivers.loop.integrate`, whose
``between_steps`` hook applies the corrector after each solver step (``solve``'s read-only
``after_step`` hook, replayed bitwise by the finite check, is not used here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.grids import Grid
from ..core.models import Denoiser
from ..core.noise import NoiseSource, PerSampleStreams, derive_seed, make_noise
from ..core.schedules import EvalPoint
from ..solvers import Solver, get_solver
from .loop import SampleResult, initial_noise, integrate, resolve_grid

CORRECTOR_DOMAIN = 0xC0_44EC_7012
"""Domain constant separating the corrector's noise streams from the solver's."""


def corrector_noise(seed: int, batch: int, offset: int = 0) -> PerSampleStreams:
    """Per-sample streams of the corrector: sample b is keyed by (seed, offset + b) only."""
    return PerSampleStreams(derive_seed(derive_seed(seed, offset + b), CORRECTOR_DOMAIN)
                            for b in range(batch))


def _norm(v: Tensor) -> Tensor:
    """Per-sample Euclidean norm over all non-batch dimensions, shape (B, 1, ..., 1)."""
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1).reshape(-1, *([1] * (a.dim() - 1)))


class Corrector(Protocol):
    """What the predictor-corrector loop needs from a corrector."""

    @property
    def evaluations(self) -> int:
        """Model evaluations per corrected node."""
        ...

    def init_state(self, x: Tensor) -> Any:
        """The corrector's state at the start of a run."""
        ...

    def correct(self, node: int, x: Tensor, point: EvalPoint, model: Denoiser,
                noise: NoiseSource, state: Any) -> tuple[Tensor, Any]:
        """Run the corrector at grid node ``node`` (noise level ``point``)."""
        ...


def _check(name: str, snr: float, n_steps: int, step_size: float | None,
           max_step: float) -> None:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise SolverOptionError(f"{name}: n_steps must be an int >= 1, got {n_steps!r}")
    if not (0.0 < snr <= 10.0):
        raise SolverOptionError(f"{name}: snr must be in (0, 10], got {snr!r}")
    if step_size is not None and not (0.0 < step_size <= 10.0):
        raise SolverOptionError(f"{name}: step_size must be in (0, 10], got {step_size!r}")
    if not (0.0 < max_step <= 2.0):
        raise SolverOptionError(f"{name}: max_step must be in (0, 2], got {max_step!r}")


def _step(snr: float, z: Tensor, g_norm: Tensor, sig2: float, step_size: float | None,
          max_step: float) -> Tensor | float:
    """eps: the fixed step tau sigma~^2, or Alg. 4 line 5's snr rule capped at
    max_step sigma~^2 (``g_norm``: the gradient's norm in the step's metric)."""
    if step_size is not None:
        return step_size * sig2
    eps = 2.0 * (snr * _norm(z) / g_norm.clamp_min(1e-30)) ** 2  # Alg. 4 line 5
    return eps.clamp_max(max_step * sig2)


@dataclass(frozen=True)
class LangevinCorrector:
    """First-order Langevin corrector (L) of Song et al. 2021, Alg. 4/5.

    Args:
        snr: r, the drift-to-noise norm ratio of each step (Song et al.'s default 0.16).
        n_steps: M, Langevin steps (= model evaluations) per corrected node.
        step_size: tau for a fixed step eps = tau sigma~^2 instead of the snr rule.
        max_step: cap of the snr rule's step, in units of sigma~^2.
    """

    label: ClassVar[str] = "langevin"

    snr: float = 0.16
    n_steps: int = 1
    step_size: float | None = None
    max_step: float = 1.0

    def __post_init__(self) -> None:
        _check(self.label, self.snr, self.n_steps, self.step_size, self.max_step)

    @property
    def evaluations(self) -> int:
        return self.n_steps

    def init_state(self, x: Tensor) -> Any:
        return None

    def _preconditioned(self, g: Tensor, z: Tensor, dx: Tensor, dd: Tensor,
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """(P g, P^{1/2} g, P^{1/2} z) given the secant (dx, dD) at this level: P = I here."""
        return g, g, z

    def correct(self, node: int, x: Tensor, point: EvalPoint, model: Denoiser,
                noise: NoiseSource, state: Any) -> tuple[Tensor, Any]:
        alpha, sig = point.alpha, point.sigma_edm
        sig2 = sig * sig
        y = x / alpha
        last: tuple[Tensor, Tensor] | None = None
        for m in range(self.n_steps):
            d = model.data(alpha * y, point)
            g = (d - y) / sig2  # (T)
            # one stream key per step (draw 0): the streams cache consecutive steps per draw
            z = noise.normal(y, step=node * self.n_steps + m, draw=0, lam_from=point.lam,
                             lam_to=point.lam)
            if last is None:  # the first step at a level has no secant: (L)
                pg, pg_half, pz = g, g, z
            else:
                pg, pg_half, pz = self._preconditioned(g, z, y - last[0], d - last[1])
            last = (y, d)
            eps = _step(self.snr, z, _norm(pg_half), sig2, self.step_size, self.max_step)
            y = y + eps * pg + (2.0 * eps) ** 0.5 * pz  # Alg. 4 lines 6-7; (LML) if P != I
        return alpha * y, state


@dataclass(frozen=True)
class LMLCorrector(LangevinCorrector):
    """Levenberg-Marquardt-Langevin corrector (LML): preconditioned Langevin with the damped
    rank-1 secant Hessian of the module docstring (derived; Wang et al. 2025's own equations
    were not reachable).

    Args:
        snr, step_size, max_step: as :class:`LangevinCorrector` (the snr rule is measured in
            the preconditioned metric).
        n_steps: Langevin steps (= evaluations) per corrected node, >= 2: step 1 is (L), each
            later step is preconditioned with the secant to the step before it.
        damping: lambda, the Levenberg-Marquardt damping (condition number <= 1 + 1/lambda).
    """

    label: ClassVar[str] = "lml"

    n_steps: int = 2
    damping: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_steps < 2:
            raise SolverOptionError("lml: n_steps must be >= 2 (the curvature comes from a "
                                    "secant between two steps at one noise level)")
        if not (0.0 < self.damping <= 1e3):
            raise SolverOptionError(f"lml: damping must be in (0, 1000], got {self.damping!r}")

    def _preconditioned(self, g: Tensor, z: Tensor, dx: Tensor, dd: Tensor,
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """(P g, P^{1/2} g, P^{1/2} z) for the rank-1 secant estimate J_1 = mu u u^T."""
        curv, nd2 = _dot(dd, dx), _dot(dd, dd)
        mu = nd2 / curv.where(curv > 0, torch.ones_like(curv))
        # mu in [0, 1): log p_sigma is concave along u. Else (no secant, or mu >= 1: between
        # modes, where Cov[x0|x] > sigma^2 and H is not positive) the step is first order,
        # the Levenberg-Marquardt fallback to the gradient
        ok = (curv > 0) & (nd2 > 0) & (mu < 1.0)
        mu = torch.where(ok, mu, torch.zeros_like(mu))
        u = dd / _norm(dd).clamp_min(1e-300)
        c = mu / (1.0 + self.damping - mu)  # Sherman-Morrison of H_lambda
        root = (1.0 + c).sqrt() - 1.0
        gu, zu = _dot(g, u), _dot(z, u)
        return g + c * gu * u, g + root * gu * u, z + root * zu * u


CORRECTORS: dict[str, type] = {"langevin": LangevinCorrector, "lml": LMLCorrector}


def make_corrector(corrector: str | Corrector, **options: Any) -> Corrector:
    """A corrector from a name in :data:`CORRECTORS` and its options, or an instance."""
    if not isinstance(corrector, str):
        if options:
            raise SolverOptionError("options were given together with a corrector instance")
        return corrector
    try:
        cls = CORRECTORS[corrector]
    except KeyError:
        raise SolverOptionError(f"unknown corrector {corrector!r}; choose from "
                                f"{sorted(CORRECTORS)}") from None
    try:
        return cls(**options)  # type: ignore[no-any-return]
    except TypeError as e:
        raise SolverOptionError(f"corrector {corrector!r}: {e}") from None


def corrected_nfe(solver: Solver, corrector: Corrector, steps: int, *,
                  denoise_final: bool) -> int:
    """Evaluations of a corrected run: the solver's declared cost plus the corrector's at
    each of the ``steps`` finite nodes after the start."""
    return solver.nfe(steps, denoise_final=denoise_final) + corrector.evaluations * steps


def corrected_steps_for_nfe(solver: Solver, corrector: Corrector, budget: int, *,
                            to_zero: bool = True) -> int:
    """The largest grid (intervals; with ``to_zero`` the last is the denoising step) whose
    corrected run costs at most ``budget`` evaluations."""
    finite = 0
    while corrected_nfe(solver, corrector, finite + 1, denoise_final=to_zero) <= budget:
        finite += 1
    if finite == 0:
        need = corrected_nfe(solver, corrector, 1, denoise_final=to_zero)
        raise SolverOptionError(f"{solver.name} with a corrector needs at least {need} NFE, "
                                f"got {budget}")
    return finite + (1 if to_zero else 0)


def corrected_solve(model: Denoiser, x: Tensor, grid: Grid, solver: str | Solver = "euler",
                    corrector: str | Corrector = "langevin", *,
                    noise: NoiseSource | int | str | None = None, seed: int = 0,
                    offset: int = 0, corrector_noise_source: NoiseSource | None = None,
                    corrector_options: dict[str, Any] | None = None,
                    **solver_options: Any) -> SampleResult:
    """Integrate from ``x`` at ``grid``'s first node with ``solver``, running ``corrector``
    after every step (module docstring). ``noise``/``seed``/``offset`` as in
    :func:`diffsolve.solve`; the corrector's noise comes from :func:`corrector_noise` unless
    ``corrector_noise_source`` is given (e.g. ``ZeroNoise()`` in tests)."""
    solver_obj = get_solver(solver, **solver_options)
    corr = make_corrector(corrector, **(corrector_options or {}))
    grid.check_range(model.schedule)
    finite = grid.finite_lams()
    final_denoise = grid.to_zero
    plan = solver_obj.plan(model.schedule, finite, denoise_final=final_denoise)
    noise_src = make_noise(noise, x, seed=None if isinstance(noise, int) else seed,
                           offset=offset, lam_range=(float(finite[0]), float(finite[-1])))
    c_noise = corrector_noise_source or corrector_noise(seed, x.shape[0], offset)
    nfe0 = model.nfe
    c_state = [corr.init_state(x)]

    def correct(i: int, x_i: Tensor) -> Tensor:  # at node i + 1, after predictor step i
        x_i, c_state[0] = corr.correct(i + 1, x_i, plan.points[i + 1], model, c_noise,
                                       c_state[0])
        return x_i

    x = integrate(solver_obj, plan, model, noise_src, x, final_denoise=final_denoise,
                  between_steps=correct)
    return SampleResult(x=x, nfe=model.nfe - nfe0, grid=grid)


def corrected_sample(model: Denoiser, shape: Sequence[int], *, solver: str | Solver = "euler",
                     corrector: str | Corrector = "langevin", nfe: int | None = None,
                     steps: int | None = None, grid: str = "karras", seed: int = 0,
                     offset: int = 0, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu",
                     grid_options: dict[str, Any] | None = None,
                     corrector_options: dict[str, Any] | None = None,
                     **solver_options: Any) -> SampleResult:
    """Draw samples with ``solver`` + ``corrector`` (predictor-corrector sampling).

    Give exactly one of ``nfe`` (total budget, the corrector's evaluations included) and
    ``steps`` (grid intervals). Initial noise of sample b is keyed by (seed, offset + b), as
    in :func:`diffsolve.sample`.

    Example::

        res = corrected_sample(model, (1000, 2), solver="dpmpp_2m", corrector="langevin",
                               corrector_options={"snr": 0.16}, nfe=30)
    """
    solver_obj = get_solver(solver, **solver_options)
    corr = make_corrector(corrector, **(corrector_options or {}))
    if (nfe is None) == (steps is None):
        raise SolverOptionError("give exactly one of `steps` and `nfe`")
    options = dict(grid_options or {})
    if nfe is not None:
        steps = corrected_steps_for_nfe(solver_obj, corr, nfe,
                                        to_zero=bool(options.get("to_zero", True)))
    the_grid = resolve_grid(grid, model, steps, **options)
    n = initial_noise(shape, seed=seed, offset=offset, dtype=dtype, device=device)
    x = model.schedule.point(float(the_grid.lams[0])).sigma * n
    return corrected_solve(model, x, the_grid, solver_obj, corr, seed=seed, offset=offset)


def langevin_chain(model: Denoiser, x: Tensor, point: EvalPoint, corrector: Corrector, *,
                   rounds: int = 1, seed: int = 0, offset: int = 0,
                   noise: NoiseSource | None = None) -> Tensor:
    """Run ``corrector`` for ``rounds`` x ``corrector.evaluations`` steps at one fixed noise
    level ``point`` (the known-answer experiments: its stationary law should be p_sigma)."""
    src = noise or corrector_noise(seed, x.shape[0], offset)
    state = corrector.init_state(x)
    for r in range(rounds):
        x, state = corrector.correct(r, x, point, model, src, state)
    return x


__all__ = ["CORRECTORS", "CORRECTOR_DOMAIN", "Corrector", "LMLCorrector", "LangevinCorrector",
           "corrected_nfe", "corrected_sample", "corrected_solve", "corrected_steps_for_nfe",
           "corrector_noise", "langevin_chain", "make_corrector"]
