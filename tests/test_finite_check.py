"""The default finite check: nothing inside the loop, and still the first failing step/sigma."""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from diffsolve import Denoiser, Grid, solve
from diffsolve.drivers.finite import FiniteGuard, replayable
from diffsolve.errors import NonFiniteError, SolverOptionError
from diffsolve.grids import karras
from diffsolve.noise import KDiffusionNoiseSampler, PerSampleStreams
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver

SCHED = EDM(sigma_min=0.002, sigma_max=80.0)
SYNCING = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu",
           "nonzero", "any", "all"}


def _model(bad_level: int | None = None) -> Denoiser:
    """x0 = x/2, except NaN at the ``bad_level``-th distinct noise level (deterministic)."""
    levels: list[float] = []

    def net(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if bad_level is not None:
            v = float(s.flatten()[0])
            if v not in levels:
                levels.append(v)
            if levels.index(v) == bad_level:
                return x * math.nan
        return x * 0.5

    return Denoiser(net, SCHED, prediction="x0", time_input="sigma")


class _CountSyncs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.paused and getattr(func, "__name__", "") in SYNCING:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _syncs(steps: int, check: str, solver: str = "dpmpp_2m") -> int:
    """Host read-backs of a whole ``solve()`` except ``plan()`` (host-side grid work, before
    the loop by design)."""
    x = torch.randn(1, 3, 8, 8) * 80.0
    mode = _CountSyncs()
    solver_obj = get_solver(solver)
    plan = solver_obj.plan

    def uncounted_plan(*args, **kwargs):
        mode.paused = True
        try:
            return plan(*args, **kwargs)
        finally:
            mode.paused = False

    object.__setattr__(solver_obj, "plan", uncounted_plan)  # frozen dataclass instance
    with mode:
        solve(_model(), x, karras(steps, SCHED), solver_obj, progress=False,
              check_finite=check)
    return mode.calls


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_2m_sde"])
def test_default_check_has_no_sync_inside_the_loop(solver: str) -> None:
    """The number of host read-backs of a whole default run does not grow with the steps;
    the per-step check (positive control) adds one or more per step."""
    assert _syncs(4, "auto", solver) == _syncs(16, "auto", solver)  # set-up reads only
    assert _syncs(16, "step", solver) >= _syncs(4, "step", solver) + 12


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m"])
@pytest.mark.parametrize("bad_level", [0, 2, 5])
def test_default_check_names_the_same_step_and_sigma_as_the_step_check(
        solver: str, bad_level: int) -> None:
    sigmas = [10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.0]
    grid = Grid.from_sigmas(sigmas, SCHED)
    x = torch.randn(2, 3) * 10.0
    got = {}
    for check in ("auto", "step", "end"):
        with pytest.raises(NonFiniteError, match=r"step \d+ \(sigma=") as info:
            solve(_model(bad_level), x, grid, solver, progress=False, check_finite=check)
        got[check] = (info.value.step, info.value.sigma)
        if check == "auto":
            assert "replaying" in str(info.value)
    assert got["auto"] == got["step"] == got["end"]


def test_replay_restores_the_nfe_counter_and_skips_callbacks() -> None:
    model = _model(bad_level=3)
    grid = Grid.from_sigmas([10.0, 5.0, 2.0, 1.0, 0.5, 0.0], SCHED)
    seen: list[int] = []
    with pytest.raises(NonFiniteError):
        solve(model, torch.randn(2, 3), grid, "euler", progress=False,
              callback=lambda d: seen.append(d["i"]))
    assert seen == [0, 1, 2, 3, 4]  # one pass of callbacks (the replay calls none)
    assert model.nfe == 5  # the replay's evaluations are not counted


def test_nonfinite_input_is_named_by_the_default_check() -> None:
    x = torch.randn(2, 3)
    x[0, 1] = math.inf
    with pytest.raises(NonFiniteError, match="input") as info:
        solve(_model(), x, karras(4, SCHED), "dpmpp_2m", progress=False)
    assert info.value.step == 0


def test_non_reproducible_failure_is_reported_honestly() -> None:
    """A model failing only on its 3rd call ever does not fail in the replay: the error names
    the final step and says how to locate the first one."""
    calls = []

    def net(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x * (math.nan if len(calls) == 3 else 0.5)

    model = Denoiser(net, SCHED, prediction="x0", time_input="sigma")
    with pytest.raises(NonFiniteError, match="check_finite='step'") as info:
        solve(model, torch.randn(2, 3), karras(5, SCHED), "euler", progress=False)
    assert info.value.step == 4  # the last of the 5 intervals (denoising from sigma_min)
    calls.clear()
    with pytest.raises(NonFiniteError) as info:
        solve(model, torch.randn(2, 3), karras(5, SCHED), "euler", progress=False,
              check_finite="step")
    assert info.value.step == 2


def test_auto_mode_falls_back_to_device_flag_for_unreplayable_noise() -> None:
    like = torch.empty(2, 3)
    kd = KDiffusionNoiseSampler(lambda s, sn: torch.randn_like(like))
    sde, ode = get_solver("dpmpp_2m_sde"), get_solver("dpmpp_2m")
    assert not replayable(sde, kd) and replayable(ode, kd)
    assert replayable(sde, PerSampleStreams([1, 2]))
    grid = karras(4, SCHED)
    assert FiniteGuard("auto", grid, like, can_replay=False).mode == "end"
    assert FiniteGuard("auto", grid, like, can_replay=True).mode == "final"
    assert FiniteGuard("auto", grid, like).per_step is None  # nothing inside the loop
    with pytest.raises(SolverOptionError, match="check_finite"):
        FiniteGuard("always", grid, like)
    # and the unreplayable run still names its step
    with pytest.raises(NonFiniteError) as info:
        solve(_model(bad_level=1), torch.randn(2, 3), Grid.from_sigmas(
            [10.0, 5.0, 2.0, 1.0, 0.0], SCHED), "dpmpp_2m_sde", noise=kd, progress=False)
    assert info.value.step == 1
