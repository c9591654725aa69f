r"""Diffusion inversion (DDIM, EDICT, BDIA): data -> noise along a grid, and back.

Notation: the grid's finite nodes lambda_0 < ... < lambda_N (noisiest first); generation
goes 0 -> N with DDIM steps x_{i+1} = lin_i x_i + w0_i F(x_i, lambda_i) (F = eps in the noise
form, D in the data form; :func:`diffsolve.expint.stage_coefficients`). The clean input x0 is
taken as the state at the last finite node (alpha_N x0 + sigma_N n with sigma_N small; a grid
ending at sigma = 0 uses its last finite node, as the final x <- D(x) is not invertible).

* DDIM inversion (Song et al. 2021 Sec. 4.3; Dhariwal & Nichol 2021): run DDIM backwards,
  x_i = DDIM step from lambda_{i+1} to lambda_i with the model evaluated at (x_{i+1},
  lambda_{i+1}), the point the step starts from. Generation evaluates at (x_i, lambda_i), so
  the round trip is only approximate (error O(h) per unit lambda; 1 NFE per step).
* EDICT (Wallace, Gokul, Naik 2023, arXiv 2211.12446, eq. 14-15): two coupled sequences with
  alternating affine updates and mixing layers, p in (0, 1] (paper: 0.93),

      x^inter = lin x_i + w0 F(y_i, lambda_i)
      y^inter = lin y_i + w0 F(x^inter, lambda_i)
      x_{i+1} = p x^inter + (1 - p) y^inter
      y_{i+1} = p y^inter + (1 - p) x_{i+1}

  and its exact inverse (eq. 15)

      y^inter = (y_{i+1} - (1 - p) x_{i+1})/p
      x^inter = (x_{i+1} - (1 - p) y^inter)/p
      y_i = (y^inter - w0 F(x^inter, lambda_i))/lin
      x_i = (x^inter - w0 F(y_i, lambda_i))/lin

  The model is evaluated at the same (input, lambda) pairs in both directions, so inversion is
  exact up to floating-point rounding (2 NFE per step). Both sequences start at x0; the
  inverted noise is the pair (x_0, y_0) and the reconstruction returns x_N.
* BDIA (Zhang, Lewis, Kleijn 2023, arXiv 2307.10829; research note
  methods_pndm_bdia_dcsolver_dualfast.md Sec. B.2, read from the authors' README and code, the
  paper body was not reachable): with Phi(x_k; k -> j) = lin x_k + w0 F(x_k, lambda_k) the
  DDIM step from node k to node j (either direction) and ONE evaluation F_k per node,
  generation is the two-step recursion (code convention: gamma = 0 is DDIM)

      x_1     = Phi(x_0; 0 -> 1)                                     (plain DDIM first step)
      x_{k+1} = gamma (x_{k-1} - Phi(x_k; k -> k-1)) + Phi(x_k; k -> k+1),   k >= 1

  and its exact inverse, derived by solving the line above for x_{k-1} (note Sec. B.2 [I]),

      x_{k-1} = (x_{k+1} - Phi(x_k; k -> k+1))/gamma + Phi(x_k; k -> k-1).

  Inversion starts from x_N alone, so its first step x_{N-1} is a DDIM inversion step (the
  authors' editing code does the same); every later step is the exact inverse. The inverted
  latent is the pair (x_0, x_1) and reconstruction runs the recursion from it, so the round trip
  is exact up to rounding for gamma in (0, 1] (1 NFE per step: N to invert, N - 1 to
  reconstruct, as x_1 is given). The inverse divides by gamma at every step, so rounding grows
  as gamma -> 0 (the note measured 2e-3 at gamma = 0.1 over 10 steps); gamma = 1 is the
  time-symmetric form and the default.

Why not the sampling loop (:func:`diffsolve.drivers.loop.integrate`): inversion runs the grid
backwards (lambda decreasing, model evaluated at the step's end), EDICT carries two coupled
states with mixing layers and BDIA is a two-step recursion; none is a registered solver's
forward step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..core.errors import GridError, SolverOptionError
from ..core.expint import StageCoefficients, stage_coefficients
from ..core.grids import Grid, make_grid
from ..core.models import Denoiser, eps_from_data
from ..core.schedules import EvalPoint

Method = Literal["ddim", "edict", "bdia"]
Form = Literal["data", "noise"]


@dataclass(frozen=True)
class Inversion:
    """An inverted latent.

    Attributes:
        noise: the state at the grid's first (noisiest) node.
        aux: EDICT's second sequence y at that node, BDIA's state x_1 at the second node
            (None for DDIM).
        grid: the grid (finite nodes only).
        method, p, form, gamma: the settings used (reconstruct with the same ones).
        nfe: model evaluations the inversion used.
    """

    noise: Tensor
    aux: Tensor | None
    grid: Grid
    method: Method
    p: float
    form: Form
    nfe: int
    gamma: float = 1.0


def _finite_grid(model: Denoiser, grid: Grid | str | Sequence[float] | None,
                 steps: int | None) -> Grid:
    if grid is None or isinstance(grid, str):
        if steps is None:
            raise GridError("give `steps` with a named grid (default 'uniform_lambda')")
        grid = make_grid(grid or "uniform_lambda", steps, model.schedule, to_zero=False)
    elif not isinstance(grid, Grid):
        grid = Grid.from_sigmas(grid, model.schedule)
    grid.check_range(model.schedule)
    lams = grid.finite_lams()
    if lams.numel() < 2:
        raise GridError("inversion needs at least two finite grid nodes")
    return Grid.from_lambdas(lams, model.schedule)


def _points(model: Denoiser, grid: Grid) -> list[EvalPoint]:
    return [model.schedule.point(float(v)) for v in grid.finite_lams()]


def _f(model: Denoiser, x: Tensor, point: EvalPoint, form: Form) -> Tensor:
    d = model.data(x, point)
    return d if form == "data" else eps_from_data(x, d, point)


def _check(method: str, p: float, form: str, gamma: float) -> None:
    if method not in ("ddim", "edict", "bdia"):
        raise SolverOptionError(f"method must be 'ddim', 'edict' or 'bdia', got {method!r}")
    if form not in ("data", "noise"):
        raise SolverOptionError(f"form must be 'data' or 'noise', got {form!r}")
    if not (0.0 < p <= 1.0):
        raise SolverOptionError(f"EDICT mixing p must be in (0, 1], got {p}")
    if not (0.0 < gamma <= 1.0):
        raise SolverOptionError(f"BDIA gamma must be in (0, 1] to be invertible, got {gamma}")


def _ddim(x: Tensor, f: Tensor, p_from: EvalPoint, p_to: EvalPoint,
          form: Form) -> Tensor:
    """Phi(x; from -> to): the DDIM step with the frozen model output f = F(x, from)."""
    c = stage_coefficients(p_from, p_to, form=form)
    return c.lin * x + c.w0 * f


def _bdia_invert(model: Denoiser, x: Tensor, pts: list[EvalPoint], gamma: float,
                 form: Form) -> tuple[Tensor, Tensor]:
    """(x_0, x_1) from x_N: a DDIM inversion step, then the exact inverse (module docstring)."""
    n = len(pts) - 1
    x_next = x                                                        # x_{k+1}
    x = _ddim(x, _f(model, x, pts[n], form), pts[n], pts[n - 1], form)   # x_{N-1}
    for k in range(n - 1, 0, -1):
        f = _f(model, x, pts[k], form)
        # BDIA inverse (note Sec. B.2): x_{k-1} = (x_{k+1} - Phi(k->k+1))/gamma + Phi(k->k-1)
        x_prev = ((x_next - _ddim(x, f, pts[k], pts[k + 1], form)) / gamma
                  + _ddim(x, f, pts[k], pts[k - 1], form))
        x_next, x = x, x_prev
    return x, x_next


def _bdia_generate(model: Denoiser, x0: Tensor, x1: Tensor, pts: list[EvalPoint], gamma: float,
                   form: Form) -> Tensor:
    """x_N from the pair (x_0, x_1) by the BDIA recursion (module docstring)."""
    x_prev, x = x0, x1
    for k in range(1, len(pts) - 1):
        f = _f(model, x, pts[k], form)
        # BDIA-DDIM (README / note Sec. B.2): x_{k+1} = gamma (x_{k-1} - Phi(k->k-1)) + Phi(k->k+1)
        x_new = (gamma * (x_prev - _ddim(x, f, pts[k], pts[k - 1], form))
                 + _ddim(x, f, pts[k], pts[k + 1], form))
        x_prev, x = x, x_new
    return x


def invert(model: Denoiser, x0: Tensor, grid: Grid | str | Sequence[float] | None = None, *,
           steps: int | None = None, method: Method = "ddim", p: float = 0.93,
           form: Form = "noise", gamma: float = 1.0) -> Inversion:
    """Map clean data x0 to noise at the grid's first node (module docstring).

    Args:
        model: the denoiser.
        x0: clean data (batch first), in data scaling; it is multiplied by alpha at the last
            finite node to become the state there.
        grid: a Grid, EDM sigmas, a grid name (with ``steps``), or None ("uniform_lambda"
            over the schedule's range, ``steps`` intervals). A final sigma = 0 is dropped.
        steps: number of intervals for a named grid.
        method: "ddim" (approximate), "edict" (exact, 2 NFE per step) or "bdia" (exact,
            1 NFE per step).
        p: EDICT's mixing weight (the paper's 0.93).
        form: "noise" (eps, as the papers) or "data" (D) for the affine updates.
        gamma: BDIA's weight in (0, 1] (1: time-symmetric; the authors use 0.5 to 1).
    """
    _check(method, p, form, gamma)
    g = _finite_grid(model, grid, steps)
    pts = _points(model, g)
    nfe0 = model.nfe
    x = pts[-1].alpha * x0
    if method == "bdia":
        x, x1 = _bdia_invert(model, x, pts, gamma, form)
        return Inversion(noise=x, aux=x1, grid=g, method=method, p=p, form=form,
                         nfe=model.nfe - nfe0, gamma=gamma)
    y = x
    for i in range(len(pts) - 2, -1, -1):
        if method == "ddim":
            # DDIM run backwards: the step from lambda_{i+1} to lambda_i, model at the start
            c = stage_coefficients(pts[i + 1], pts[i], form=form)
            x = c.lin * x + c.w0 * _f(model, x, pts[i + 1], form)
        else:
            c = stage_coefficients(pts[i], pts[i + 1], form=form)
            y_inter = (y - (1.0 - p) * x) / p                       # EDICT eq. 15, line 1
            x_inter = (x - (1.0 - p) * y_inter) / p                 # eq. 15, line 2
            y = (y_inter - c.w0 * _f(model, x_inter, pts[i], form)) / c.lin
            x = (x_inter - c.w0 * _f(model, y, pts[i], form)) / c.lin
    return Inversion(noise=x, aux=y if method == "edict" else None, grid=g, method=method, p=p,
                     form=form, nfe=model.nfe - nfe0)


def _edict_step(model: Denoiser, x: Tensor, y: Tensor, c: StageCoefficients, point: EvalPoint,
                p: float, form: Form) -> tuple[Tensor, Tensor]:
    x_inter = c.lin * x + c.w0 * _f(model, y, point, form)        # EDICT eq. 14
    y_inter = c.lin * y + c.w0 * _f(model, x_inter, point, form)
    x_new = p * x_inter + (1.0 - p) * y_inter
    y_new = p * y_inter + (1.0 - p) * x_new
    return x_new, y_new


def bdia_sample(model: Denoiser, x: Tensor, grid: Grid | str | Sequence[float] | None = None, *,
                steps: int | None = None, gamma: float = 1.0, form: Form = "noise") -> Tensor:
    """BDIA-DDIM generation from noise ``x`` at the grid's first node (module docstring: a DDIM
    first step, then the bi-directional recursion; 1 NFE per step, gamma = 0 is DDIM). Returns
    the clean estimate x_N / alpha_N at the last finite node, like :func:`reconstruct`."""
    if not (0.0 <= gamma <= 1.0):
        raise SolverOptionError(f"BDIA gamma must be in [0, 1], got {gamma}")
    pts = _points(model, _finite_grid(model, grid, steps))
    x1 = _ddim(x, _f(model, x, pts[0], form), pts[0], pts[1], form)
    return _bdia_generate(model, x, x1, pts, gamma, form) / pts[-1].alpha


def reconstruct(model: Denoiser, inversion: Inversion) -> Tensor:
    """Generate from an inverted latent with the same method, grid and settings; returns the
    clean estimate x_N / alpha_N at the last finite node (data scaling, like ``x0``)."""
    pts = _points(model, inversion.grid)
    form, p = inversion.form, inversion.p
    x = inversion.noise
    y = inversion.aux
    if inversion.method == "bdia":
        assert y is not None
        return _bdia_generate(model, x, y, pts, inversion.gamma, form) / pts[-1].alpha
    for i in range(len(pts) - 1):
        c = stage_coefficients(pts[i], pts[i + 1], form=form)
        if inversion.method == "ddim":
            x = c.lin * x + c.w0 * _f(model, x, pts[i], form)
        else:
            assert y is not None
            x, y = _edict_step(model, x, y, c, pts[i], p, form)
    return x / pts[-1].alpha
