"""Finite checks of the sampling loop: catch NaN/inf and name the first failing step and sigma.

Modes (the ``check_finite=`` argument of :func:`diffsolve.solve` / :func:`diffsolve.sample`):

* ``"final"`` (what ``"auto"`` means whenever the run can be replayed): nothing inside the
  loop; one finiteness test of the result after it (one host sync per run). If the result is
  not finite, the run is replayed from its input with ``"step"`` checks to find the first
  failing step and its sigma (the replay is the error path only; the model's NFE counter is
  restored and callbacks are not called again). A run is replayable when the solver is
  deterministic or its noise is keyed (per-sample streams, Brownian path, zero or given
  noise): then the replay draws the same numbers. A model whose output depends on more than
  its inputs (a call counter, dropout) may not fail the same way in the replay; the error
  then says so and names only the final step.
* ``"end"`` (``"auto"`` for a run that cannot be replayed, e.g. noise from a k-diffusion
  ``noise_sampler``): a device-side running flag per step (``aminmax``, no host sync), read
  back once after the loop.
* ``"step"``: one host-side test per step (exact, one sync per step): stops at the first
  failing step.
* ``"off"``: no check.

Why "final" is exact for the usual failure: every solver update is x_{i+1} = a x_i + (terms
in model outputs) with a != 0 until the last denoising step, and NaN/inf propagate through
sums, products and the model, so a non-finite state at step i leaves the result non-finite.
A model that maps a non-finite input back to finite values (e.g. ``nan_to_num``) can hide an
intermediate failure from "final" and "end"-on-the-result alike; use "step" for such models.
Cost: "final" adds nothing per step and one reduction per run
(``benchmarks/finite_check.py`` measures it against the loop's per-step overhead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NoReturn

import torch
from torch import Tensor

from ..core.errors import NonFiniteError, SolverOptionError
from ..core.grids import Grid

__all__ = [
    "CheckFinite",
    "FiniteGuard",
    "all_finite",
    "first_nonfinite_step",
    "raise_nonfinite",
    "raise_nonfinite_input",
    "replayable",
]

CheckFinite = Literal["auto", "final", "step", "end", "off"]
MODES = ("auto", "final", "step", "end", "off")


def all_finite(x: Tensor) -> bool:
    """Exact host-side finiteness check (one sync). Fast path: a finite sum implies finite
    elements (NaN/inf propagate); only a non-finite sum, e.g. an overflow, pays for the
    element-wise test (about 80x cheaper than ``isfinite(x).all()`` at 64x3x64x64)."""
    x = x.detach()
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def first_nonfinite_step(flag: Tensor, x: Tensor, i: int) -> Tensor:
    """Device-side running flag: ``i`` if ``flag < 0`` and ``x`` has a NaN/inf, else ``flag``."""
    # min and max propagate NaN and reach +-inf: exact, one pass, no boolean temporary
    lo, hi = torch.aminmax(x.detach())
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    return torch.where((flag < 0) & bad, torch.full_like(flag, i), flag)


def raise_nonfinite(step: int, grid: Grid, what: str, note: str = "") -> NoReturn:
    sig = float(grid.sigmas[step])
    raise NonFiniteError(
        f"{what} became non-finite (NaN or inf) at step {step} (sigma={sig:.6g}). Likely causes: "
        "a model output that overflows (try model_dtype=torch.float32), too few steps for a "
        "high-order solver, or a grid outside the model's trained range" + note,
        step=step, sigma=sig)


def raise_nonfinite_input(grid: Grid) -> NoReturn:
    sig = float(grid.sigmas[0])
    raise NonFiniteError(
        f"the input state x contains NaN or inf before the first step (sigma={sig:.6g}); "
        "check the initial noise / the image being inverted or edited", step=0, sigma=sig)


def replayable(solver: Any, noise: Any) -> bool:
    """Whether re-running the loop reproduces it: a deterministic solver, or keyed noise."""
    if not getattr(solver, "stochastic", True):
        return True
    from ..core.noise import BrownianPath, GivenNoise, PerSampleStreams, ZeroNoise

    return isinstance(noise, PerSampleStreams | BrownianPath | ZeroNoise | GivenNoise)


class FiniteGuard:
    """The loop's finite check. ``per_step`` is None for the modes with nothing per step, so
    the loop pays one ``is None`` test per step for them::

        guard = FiniteGuard(check_finite, grid, x, can_replay=replayable(solver, noise))
        for i in ...:
            ...
            if guard.per_step is not None:
                guard.per_step(i, x)
        guard.finish(x, last_step, replay)  # replay(): the loop with check_finite="step"
    """

    def __init__(self, check_finite: str, grid: Grid, x: Tensor, *,
                 can_replay: bool = True) -> None:
        if check_finite not in MODES:
            raise SolverOptionError(
                f"check_finite must be one of {'/'.join(MODES)}, got {check_finite!r}")
        mode = check_finite
        if mode == "auto":
            mode = "final" if can_replay else "end"
        self.mode = mode
        self.grid = grid
        self.per_step: Callable[..., None] | None = None
        self._flag: Tensor | None = None
        self._bad_input: Tensor | None = None
        if mode == "step":
            if not all_finite(x):
                raise_nonfinite_input(grid)
            self.per_step = self._step
        elif mode == "end":
            self._flag = torch.full((), -1, dtype=torch.long, device=x.device)
            self._bad_input = ~torch.isfinite(x).all()  # read back once, at the end
            self.per_step = self._track

    def _step(self, i: int, x: Tensor, what: str = "the state") -> None:
        if not all_finite(x):
            raise_nonfinite(i, self.grid, what)

    def _track(self, i: int, x: Tensor, what: str = "the state") -> None:
        assert self._flag is not None
        self._flag = first_nonfinite_step(self._flag, x, i)

    def finish(self, x: Tensor, last_step: int, replay: Callable[[], Any] | None = None) -> None:
        """After the loop: read back the "end" flag, or test the result ("final") and, if it
        is not finite, call ``replay`` (which raises at the first failing step); ``last_step``
        is the index of the loop's last step (named when the replay does not fail)."""
        if self.mode == "end":
            assert self._flag is not None and self._bad_input is not None
            bad, bad_in = torch.stack([self._flag, self._bad_input.long()]).tolist()
            if bad_in:
                raise_nonfinite_input(self.grid)
            if bad >= 0:
                raise_nonfinite(bad, self.grid, "the state")
        elif self.mode == "final" and not all_finite(x):
            if replay is not None:
                try:
                    replay()
                except NonFiniteError as e:
                    raise NonFiniteError(
                        f"{e} [located by replaying the run with per-step checks]",
                        step=e.step, sigma=e.sigma) from None
            raise_nonfinite(
                last_step, self.grid, "the result",
                note=". The replay with per-step checks did not fail, so the model or noise is "
                "not deterministic; rerun with check_finite='step' to stop at the first failing "
                "step")
