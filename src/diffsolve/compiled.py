r"""The whole sampling loop as one compiled program: ``torch.compile`` or a CUDA graph.

:func:`compiled_sampler` fixes everything a run depends on except the initial state (model,
grid, solver and its plan, batch shape, dtype, device, and the stochastic noise) and returns a
:class:`CompiledSampler` whose call ``sampler(x)`` equals ``solve(model, x, grid, solver,
seed=seed, offset=offset).x`` (bitwise for the eager backends; to float rounding for inductor
and CUDA graphs).

Why it works: :meth:`Solver.step` does only tensor arithmetic with Python floats from the plan
(no host synchronisation, tested in tests/test_no_host_sync.py), so the loop unrolls into a
static graph. The noise of stochastic solvers is keyed by (seed, sample, step, draw) and does
not depend on the state, so it is drawn once, up front, by a dry run of the loop with an
identity network (no real model call), and replayed from device buffers
(:class:`diffsolve.noise.GivenNoise`): the compiled program then contains no host-side noise
bookkeeping either.

Modes:

* ``"compile"``: ``torch.compile(loop, backend=backend, dynamic=False)``; any backend
  ("inductor" for speed; "eager"/"aot_eager" to check tracing), CPU or CUDA.
* ``"cuda_graph"``: capture the loop in one ``torch.cuda.CUDAGraph`` (after warm-up on a side
  stream) and replay it: one launch per sample batch instead of (steps x ops) launches. The
  network must be capturable (no host syncs, no data-dependent control flow, static shapes).
  ``model.nfe`` is advanced by the run's NFE per replay.
* ``"eager"``: the same loop, uncompiled (reference).

No NaN checks, callbacks or progress bars run inside the compiled loop (they would need host
syncs); check the output with ``torch.isfinite`` if needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import SolverOptionError
from .grids import Grid
from .models import Denoiser
from .noise import GivenNoise, NoiseSource, RecordingNoise, make_noise
from .solvers import Solver, get_solver
from .solvers.base import GridPlan

Mode = Literal["compile", "cuda_graph", "eager"]


def _loop(solver: Solver, plan: GridPlan, model: Denoiser, noise: NoiseSource | None,
          x: Tensor, final_denoise: bool) -> Tensor:
    """The bare sampling loop of :func:`diffsolve.solve` (no checks, no callbacks)."""
    state = solver.init_state(x, plan)
    for i in range(plan.steps):
        out = solver.step(i, x, state, plan, model, noise)  # type: ignore[arg-type]
        x, state = out.x, out.state
    if final_denoise:
        d = model.data(x, plan.points[-1])
        final = getattr(solver, "final_data", None)  # a solver's own last step (pndm)
        x = final(x, state, plan, d) if final is not None else d
    return x


class CompiledSampler:
    """A fixed sampling run compiled once; call it with the state at the grid's first node.

    Attributes:
        grid, solver, plan: what runs.
        nfe: model evaluations per call.
        mode: "compile", "cuda_graph" or "eager".
    """

    def __init__(self, model: Denoiser, grid: Grid, solver: Solver, plan: GridPlan,
                 noise: NoiseSource | None, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device, final_denoise: bool, mode: Mode,
                 backend: str | Callable[..., Any]) -> None:
        self.model, self.grid, self.solver, self.plan = model, grid, solver, plan
        self.shape, self.dtype, self.device, self.mode = shape, dtype, device, mode
        self.nfe = solver.nfe(plan.steps) + (1 if final_denoise else 0)
        self._noise = noise
        self._final = final_denoise

        def loop(x: Tensor) -> Tensor:
            return _loop(solver, plan, model, noise, x, final_denoise)

        self._graph: Any = None
        if mode == "eager":
            self._fn = loop
        elif mode == "compile":
            self._fn = torch.compile(loop, backend=backend, dynamic=False)
        elif mode == "cuda_graph":
            self._fn = loop
            self._capture()
        else:
            raise SolverOptionError(f"mode must be 'compile', 'cuda_graph' or 'eager', "
                                    f"got {mode!r}")

    def _capture(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise SolverOptionError("mode='cuda_graph' needs a CUDA device; use mode='compile' "
                                    "on other devices")
        self._static_x = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        nfe0 = self.model.nfe
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # warm-up: allocator, cuDNN/cuBLAS autotuning, lazy init
                self._fn(self._static_x)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.no_grad():
            self._static_out = self._fn(self._static_x)
        self.model.nfe = nfe0  # capture is not a real run

    def __call__(self, x: Tensor) -> Tensor:
        """The final state for the initial state ``x`` (shape, dtype, device as built)."""
        if tuple(x.shape) != self.shape or x.dtype != self.dtype or x.device != self.device:
            raise SolverOptionError(
                f"this sampler was built for {self.shape} {self.dtype} on {self.device}; got "
                f"{tuple(x.shape)} {x.dtype} on {x.device}")
        if self._graph is not None:
            self._static_x.copy_(x)
            self._graph.replay()
            self.model.nfe += self.nfe
            return self._static_out.clone()
        return self._fn(x)


def compiled_sampler(
    model: Denoiser,
    shape: Sequence[int],
    grid: Grid,
    solver: str | Solver = "dpmpp_2m",
    *,
    mode: Mode = "compile",
    backend: str | Callable[..., Any] = "inductor",
    seed: int = 0,
    offset: int = 0,
    noise: NoiseSource | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    denoise_final: bool | None = None,
    **solver_options: Any,
) -> CompiledSampler:
    """Compile the sampling loop for a fixed batch shape (see the module docstring).

    Args:
        model: the :class:`Denoiser`.
        shape: the batch shape (B, ...).
        grid: the :class:`Grid` (build named grids with :func:`diffsolve.make_grid`).
        solver, solver_options: as :func:`diffsolve.solve`.
        mode: "compile" (torch.compile), "cuda_graph" (CUDA only) or "eager".
        backend: torch.compile backend for mode="compile".
        seed, offset: stochastic solvers' per-sample streams (as :func:`diffsolve.solve`);
            the noise is drawn now and replayed by every call.
        noise: another noise source for stochastic solvers (drawn now, as above).
        dtype, device: of the state.
        denoise_final: as :func:`diffsolve.solve`.
    """
    solver_obj = get_solver(solver, **solver_options)
    shape_t = tuple(int(s) for s in shape)
    dev = torch.device(device)
    grid.check_range(model.schedule)
    finite = grid.finite_lams()
    final = grid.to_zero or bool(denoise_final)
    plan = solver_obj.plan(model.schedule, finite, denoise_final=final)
    given: NoiseSource | None = None
    if solver_obj.stochastic or noise is not None:
        like = torch.zeros(shape_t, dtype=dtype, device=dev)
        src = noise if noise is not None else make_noise(
            None, like, seed=seed, offset=offset,
            lam_range=(float(finite[0]), float(finite[-1])))
        rec = RecordingNoise(src)
        dry = Denoiser(lambda x, t: x, model.schedule, prediction="x0")
        with torch.no_grad():
            _loop(solver_obj, plan, dry, rec, like, final)
        given = rec.replay()
        if isinstance(given, GivenNoise):  # keep the buffers on the device
            given = GivenNoise({k: t.to(device=dev, dtype=dtype)
                                for k, t in given._tensors.items()})
    return CompiledSampler(model, grid, solver_obj, plan, given, shape_t, dtype, dev, final,
                           mode, backend)
