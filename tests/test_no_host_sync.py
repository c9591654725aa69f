"""The step loop never synchronises with the host, for every registered solver.

Two independent checks: (1) the whole loop runs on the 'meta' device (tensors without data,
so any read-back -- ``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()`` of a value -- raises);
(2) on CPU, a TorchFunctionMode counts the read-back methods called inside every
``Solver.step`` (model call included; ``plan()`` works on host float64 data by design).
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from diffsolve import Denoiser, solve
from diffsolve.grids import karras
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver, list_solvers

SCHED = EDM(sigma_min=0.002, sigma_max=80.0)
SYNCING = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu",
           "nonzero", "any", "all"}


def _model() -> Denoiser:
    return Denoiser(lambda x, s: x * 0.5, SCHED, prediction="x0", time_input="sigma")


def _grid(steps: int = 8):
    return karras(steps, SCHED)


@pytest.mark.parametrize("name", list_solvers())
def test_loop_runs_on_meta_device(name: str) -> None:
    x = torch.empty(2, 3, 4, 4, device="meta")
    try:
        out = solve(_model(), x, _grid(), name, check_finite="off", progress=False)
    except NotImplementedError as e:  # an op with no meta kernel is not a sync
        pytest.skip(f"meta kernel missing: {e}")
    assert out.x.device.type == "meta" and out.x.shape == x.shape


class _CountSyncs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen += 1
        name = getattr(func, "__name__", "")
        if name in SYNCING:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list_solvers())
def test_no_readback_calls_in_the_loop(name: str) -> None:
    x = torch.randn(2, 3, 4, 4) * 80.0
    model = _model()
    mode = _CountSyncs()
    steps_seen: list[int] = []

    def callback(info: dict) -> None:  # runs inside the loop; must not add syncs itself
        steps_seen.append(info["i"])

    solver = get_solver(name)
    step = solver.step

    def counted_step(*args, **kwargs):
        with mode:  # count inside every step (plan() may read its host-side grid freely)
            return step(*args, **kwargs)

    object.__setattr__(solver, "step", counted_step)  # instance attribute on a frozen dataclass
    out = solve(model, x, _grid(), solver, check_finite="off", progress=False,
                callback=callback)
    assert torch.isfinite(out.x).all()
    assert steps_seen, "the loop did not run"
    assert mode.seen > 0, "the counting mode saw no tensor operation"
    assert mode.calls == [], f"{name}: host syncs in the loop: {sorted(set(mode.calls))}"


def test_counter_detects_a_sync() -> None:
    """The counting mode itself works (the test above can fail)."""
    mode = _CountSyncs()
    with mode:
        t = torch.ones(3)
        bool(t.sum() > 0)
        t.max().item()
    assert "__bool__" in mode.calls and "item" in mode.calls
