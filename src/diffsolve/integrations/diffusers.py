r"""diffusers integration: any diffsolve solver as a diffusers scheduler, and diffusers
networks as diffsolve models.

* :class:`DiffsolveScheduler` is a ``SchedulerMixin`` + ``ConfigMixin``::

      pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="seeds_2")

  It reads the pipeline's schedule (``linear`` / ``scaled_linear`` / ``squaredcos_cap_v2`` /
  ``trained_betas`` VP tables, or flow matching) and prediction type (``epsilon``,
  ``v_prediction``, ``sample``, ``flow_prediction``) from the config. Multi-stage solvers list
  their internal evaluation points in ``timesteps`` (as diffusers' Heun and DPMSolverSDE do):
  every ``step()`` call consumes one model output, and ``prev_sample`` is the state at which
  the pipeline must evaluate the network next. Any registered solver works, through
  :class:`diffsolve.stepper.Stepper`.
* :func:`wrap` turns a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` / transformer plus
  its scheduler config into a :class:`diffsolve.Denoiser` (discrete VP with fractional
  timesteps, or flow matching), with classifier-free guidance for conditional networks.

``from_config(X.config)`` of a diffusers scheduler X reproduces X (X's grid, X's table, the
solver whose update is X's; :mod:`diffsolve.integrations.diffusers_map`); the remaining
differences and their reasons are listed in docs/diffusers.md and pinned by
tests/test_diffusers_conformance.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:
    from diffusers import ConfigMixin, SchedulerMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
    from diffusers.utils import BaseOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as exc:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "diffsolve.integrations.diffusers needs diffusers: pip install 'diffsolve[diffusers]'"
    ) from exc

from ..core.errors import IncompatibleModelError, SolverOptionError
from ..core.grids import Grid, karras, uniform_lambda
from ..core.models import Denoiser, data_from_output, edm_preconditioning
from ..core.noise import PerSampleStreams
from ..core.schedules import DiscreteVP, EvalPoint, NoiseSchedule
from ..drivers.stepper import Stepper, evaluation_plan
from ..drivers.tuned import load_tuned, scheduler_settings
from ..solvers import get_solver
from .diffusers_config import (
    as_config,
    flow_sigmas,
    is_flow_config,
    model_time_scale,
    prediction_from_config,
    schedule_from_config,
    spaced_timesteps,
)
from .diffusers_map import (
    EDM_PRECONDITIONED,
    EDM_REPRODUCED,
    FEW_STEPS,
    TABLE_NOISING,
    VE_STATE,
    as_int_if_integral,
    default_solver,
    flow_edm_sigmas,
    infer_class,
    peer_class,
    peer_grid,
    peer_schedule,
    peer_scheduler,
    source_class,
    unsupported_keys,
)

__all__ = ["DiffsolveScheduler", "DiffsolveSchedulerOutput", "wrap"]

TAIL_H = 1e-9  # lambda length standing in for a multistep X's zero-length last step


@dataclass
class DiffsolveSchedulerOutput(BaseOutput):
    """``prev_sample``: where the network is evaluated next (the final sample after the last
    call); ``pred_original_sample``: the latest data prediction D."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class _GeneratorNoise:
    """Noise drawn with diffusers' ``randn_tensor`` (a generator or one per sample)."""

    def __init__(self) -> None:
        self.generator: torch.Generator | list[torch.Generator] | None = None
        self.override: Tensor | None = None  # step(variance_noise=...)

    def normal(self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float,
               ) -> Tensor:
        if self.override is not None:
            return self.override.to(like.device, like.dtype)
        return randn_tensor(like.shape, generator=self.generator, device=like.device,
                            dtype=like.dtype)


class DiffsolveScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler running any diffsolve solver.

    Args (config; the diffusers ones keep their diffusers meaning):
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
            rescale_betas_zero_snr: the training noise schedule.
        prediction_type: "epsilon", "v_prediction", "sample" or "flow_prediction" (None:
            "flow_prediction" for flow-matching configs, else "epsilon").
        timestep_spacing, steps_offset: integer timesteps ("linspace", "leading", "trailing")
            when no sigma grid is asked for.
        use_karras_sigmas, use_exponential_sigmas, use_lu_lambdas: Karras (rho = 7), log-sigma
            or uniform-lambda grids over the schedule's range instead of spaced timesteps.
        final_sigmas_type: "zero" (end with x <- D(x)) or "sigma_min" (end at the smallest
            training sigma).
        shift, use_dynamic_shifting, time_shift_type, schedule_type: flow matching ("flow") or
            discrete VP ("discrete"); None detects it from the config.
        solver: any registered diffsolve solver name (``diffsolve solvers`` lists them); None
            picks the solver reproducing ``source_config``'s scheduler (see
            :mod:`diffsolve.integrations.diffusers_map`), else ``dpmpp_2m``.
        solver_options: the solver's options, e.g. {"eta": 0.5}.
        seed: None draws solver noise from the ``generator`` passed to ``step`` (diffusers'
            convention); an int uses diffsolve's per-sample streams keyed by (seed, index),
            independent of batch size.
        source_config: the config of the diffusers scheduler this one replaces (set by
            :meth:`from_config`); that scheduler's own ``set_timesteps`` then gives the grid,
            its ``alphas_cumprod`` the schedule and its class the default solver.
        tuned: path of a ``diffsolve tune`` artefact (:mod:`diffsolve.tools.tune`): then
            ``set_timesteps(n)`` takes n as an NFE budget of the artefact and uses its solver,
            options and sigmas (EDM sigmas sigma/alpha) for that budget.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]  # noqa: RUF012 - diffusers API

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        final_sigmas_type: str = "zero",
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        schedule_type: str | None = None,
        solver: str | None = None,
        solver_options: dict[str, Any] | None = None,
        seed: int | None = None,
        source_config: dict[str, Any] | None = None,
        tuned: str | None = None,
    ) -> None:
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise SolverOptionError(
                f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")
        if sum(map(bool, (use_karras_sigmas, use_exponential_sigmas, use_lu_lambdas))) > 1:
            raise SolverOptionError("choose at most one of use_karras_sigmas, "
                                    "use_exponential_sigmas and use_lu_lambdas")
        cfg = dict(self.config)
        src = dict(source_config) if source_config else None
        self._source = source_class(src)
        self._peer = peer_scheduler(src) if src else None
        if src is not None and schedule_type is None:
            cfg["schedule_type"] = "flow" if is_flow_config(src) else "discrete"
        choice = default_solver(src) if (src is not None and solver is None) else None
        name = solver or (choice.name if choice is not None else "dpmpp_2m")
        options = {**(choice.options if choice is not None else {}), **(solver_options or {})}
        self.solver = get_solver(name, **options)
        self._default_solver = choice is not None
        self._tuned = load_tuned(tuned) if tuned else None  # a diffsolve tune artefact
        self.flow = is_flow_config(cfg)
        self.schedule: NoiseSchedule = peer_schedule(self._peer, self.flow) or \
            schedule_from_config(cfg)
        self.prediction = prediction_from_config(src if src is not None else cfg)
        self._time_scale = model_time_scale(cfg)
        self._ve = self._source in VE_STATE
        # EDM-preconditioned X: the network sees c_in x and returns F, D = c_skip x + c_out F
        self._edm = self._source in EDM_REPRODUCED
        self._sigma_data = float((src or {}).get("sigma_data", 0.5))
        self.init_noise_sigma = 1.0
        if isinstance(self.schedule, DiscreteVP):
            ac = self.schedule.alphas_cumprod
            self.alphas_cumprod = ac.to(torch.float32)
            prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
            self.alphas = (ac / prev).to(torch.float32)
            self.betas = 1.0 - self.alphas
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self.grid: Grid | None = None
        self._points: list[EvalPoint] = []
        self._node_eval_index: list[int] = []
        self._segments: list[tuple[float, float]] | None = None
        self._stepper: Stepper | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._last_returned: Tensor | None = None
        self._x: Tensor | None = None
        self._generator_noise = _GeneratorNoise()
        self._warned: set[str] = set()
        self._use_clipped_output = False
        self._noop_tail = False

    # diffusers surface ------------------------------------------------------------------------
    @property
    def order(self) -> int:
        """Model evaluations of a solver step past the warm-up (diffusers uses it for its
        progress bar), from the solver's declared cost."""
        return self.solver.steady_evaluations

    @property
    def compatibles(self) -> list[type]:
        """Scheduler classes that can take this config: the EDM schedulers for an EDM
        source (the others would read a VP table), else diffusers' Karras list."""
        if self._edm:
            import diffusers

            return [getattr(diffusers, n) for n in sorted(EDM_REPRODUCED)] + [type(self)]
        return super().compatibles

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at entry ``begin_index`` of ``timesteps`` (img2img); it must begin a step."""
        self._begin_index = begin_index

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """diffusers' ``from_config``. A config of another scheduler X is kept as
        ``source_config``: X's grid, table and (unless ``solver`` is given) the solver
        reproducing X are used; every key of X this does not reproduce is warned about once,
        by name."""
        cfg = as_config(config) if config is not None else {}
        if "_class_name" not in cfg and cfg:
            owner = type(config).__name__ if isinstance(config, SchedulerMixin) else None
            name = owner or infer_class(cfg)
            if name is None:
                warnings.warn("the config names no scheduler class (no _class_name) and its keys "
                              "fit several: pass the scheduler itself to from_config to "
                              "reproduce it", stacklevel=2)
            else:
                cfg["_class_name"] = name
        src_name = source_class(cfg)
        if src_name is not None and "source_config" not in kwargs:
            src = {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}
            kwargs["source_config"] = src
            known = peer_class(src) is not None
            choice = None
            if known:
                try:
                    choice = default_solver(src)
                except IncompatibleModelError:
                    if kwargs.get("solver") is None:
                        raise
            if src_name in EDM_PRECONDITIONED - EDM_REPRODUCED:
                raise IncompatibleModelError(
                    f"{src_name} preconditions the network with its own c_noise; "
                    "DiffsolveScheduler does not reproduce it: use diffsolve.solve with "
                    "diffsolve.schedules.EDM and a Denoiser(prediction='edm', time_input=...) "
                    "instead")
            if known and choice is None and kwargs.get("solver") is None:
                warnings.warn(f"no diffsolve solver reproduces {src_name}'s update; using "
                              "dpmpp_2m on its grid (pass solver=... to choose)", stacklevel=2)
            if known:
                ignored = unsupported_keys(src, choice)
            else:
                own = set(inspect.signature(cls.__init__).parameters)
                ignored = [k for k in src if not k.startswith("_") and k not in own]
            for key in ignored:
                warnings.warn(f"DiffsolveScheduler does not reproduce {src_name}'s "
                              f"{key}={src[key]!r}; it is ignored", stacklevel=2)
            # X's values, defaults included, are this scheduler's (diffusers would otherwise
            # drop the keys X left at X's defaults)
            x_defaults = set(cfg.pop("_use_default_values", None) or ())
        else:
            x_defaults = set()
        out = super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)
        hidden = x_defaults - set(inspect.signature(cls.__init__).parameters)
        if hidden:
            # X's keys this class does not take, left at X's defaults: a compatible class
            # taking this config drops them, as it does when taking X's (e.g. SA-Solver's
            # algorithm_type in DPMSolverSinglestep)
            model = out[0] if isinstance(out, tuple) else out
            own = set(model.config.get("_use_default_values", ()))
            model.register_to_config(_use_default_values=sorted(own | hidden))
        return out

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None, *,
                      timesteps: Sequence[float] | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None) -> None:
        """Build the grid and list every model evaluation point in ``timesteps``.

        ``num_inference_steps`` counts the grid nodes with sigma > 0 (as in diffusers); a
        solver with k evaluations per step lists about k times as many ``timesteps``.
        ``timesteps`` (training timesteps, decreasing) or ``sigmas`` (flow sigmas, or EDM
        sigmas sigma/alpha for VP) give a custom grid. With a ``source_config`` the replaced
        scheduler computes the grid (with these arguments where it takes them).
        """
        self._segments = None
        self._noop_tail = False
        node_t: list[float] | None = None
        peer_t: Tensor | None = None
        use_peer = False
        self._sync_peer()
        if self._tuned is not None and timesteps is None and sigmas is None:
            # tuned=...: num_inference_steps is the NFE budget of one of the artefact's entries
            solver, options, sigmas = scheduler_settings(self._tuned, int(num_inference_steps))
            self.solver = get_solver(solver, **options)
        if self._peer is not None and self._tuned is None:
            kw = {k: v for k, v in (("timesteps", timesteps), ("sigmas", sigmas), ("mu", mu))
                  if v is not None}
            accepted = inspect.signature(self._peer.set_timesteps).parameters
            use_peer = all(k in accepted for k in kw)
        if self._peer is not None and use_peer:
            pg = peer_grid(self._peer, self._source or "", num_inference_steps, **kw)
            sig = (flow_edm_sigmas(pg.sigmas, self.schedule.t_max) if self.flow
                   else pg.sigmas)
            self.grid = Grid.from_sigmas(sig, self.schedule)
            node_t, peer_t = pg.node_timesteps, pg.timesteps
            self.init_noise_sigma = pg.init_noise_sigma
            if pg.segments is not None and self.solver.name in ("ddim", "ddim_eta"):
                self._segments = pg.segments
            self._apply_euler_at_final()
            self._apply_peer_tau(sig, node_t)
        else:
            self.grid = self._make_grid(num_inference_steps, timesteps, sigmas, mu)
        plan = evaluation_plan(self.solver, self.schedule, self.grid)
        self._points = [p for _, p in plan]
        self._node_eval_index = [k for k, (i, _) in enumerate(plan)
                                 if k == 0 or plan[k - 1][0] != i]
        self.num_inference_steps = len(self.grid.finite_lams())
        node_lams = [float(v) for v in self.grid.finite_lams()]
        if self._segments is not None:
            assert peer_t is not None
            self._points = [self.schedule.point(-math.log(a)) for a, _ in self._segments]
            self._node_eval_index = list(range(len(self._segments)))
            self.timesteps = peer_t.to(device)
        elif peer_t is not None and node_t is not None:
            self.timesteps = self._peer_timesteps(node_lams, node_t, peer_t).to(device)
            if (peer_t.numel() == len(self._points) + 1 and self._default_solver
                    and not self.grid.to_zero and float(peer_t[-1]) == node_t[-1]):
                # X ends with a zero-length step at its last node (sigma_min = that node's
                # sigma); it evaluates the network there once more and leaves x unchanged for
                # one-step updates: list it and return x as it is
                self.timesteps = peer_t.clone().to(device)
                if "lower_order_final" in self.solver.options():
                    # a multistep X counts that step when it lowers its final orders: make
                    # it a step of the grid too, of length TAIL_H in lambda (x moves by
                    # ~TAIL_H |x - D|, where X's moves by 0)
                    lams = [*node_lams, node_lams[-1] + TAIL_H]
                    self.grid = Grid.from_lambdas(torch.tensor(lams, dtype=torch.float64),
                                                  self.schedule)
                    self._apply_euler_at_final()
                    plan = evaluation_plan(self.solver, self.schedule, self.grid)
                    self._points = [p for _, p in plan]
                    self._node_eval_index = [k for k, (i, _) in enumerate(plan)
                                             if k == 0 or plan[k - 1][0] != i]
                else:
                    self._points.append(self.schedule.point(node_lams[-1]))
                    self._noop_tail = True
        else:
            t = torch.tensor([p.t * self._time_scale for p in self._points], dtype=torch.float64)
            rounded = t.round()
            t = torch.where((t - rounded).abs() < 1e-6, rounded, t)
            self.timesteps = t.to(device=device, dtype=torch.float32)
        node_sig = [self._report_sigma(self.schedule.point(v)) for v in node_lams]
        if self.grid.to_zero:
            node_sig.append(0.0)
        self.sigmas = torch.tensor(node_sig, dtype=torch.float32)
        self._stepper = None
        self._step_index = None
        self._begin_index = None
        self._last_returned = None
        self._x = None

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The network's input: the state itself, or, for schedulers whose latents are
        x / alpha (Euler, Heun, LMS, ...), alpha x = x / sqrt(sigma~^2 + 1), or for EDM
        schedulers c_in x = x / sqrt(sigma^2 + sigma_data^2)."""
        if not (self._ve or self._edm) or not self._points:
            return sample
        k = self._step_index if self._step_index is not None else self._lookup(timestep)
        if self._edm:
            return sample * edm_preconditioning(self._points[k].sigma_edm, self._sigma_data)[2]
        return sample * self._points[k].alpha

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True, **kwargs: Any) -> DiffsolveSchedulerOutput | tuple:
        """Consume the network output at the current evaluation point and return the state at
        which the network is evaluated next (the final sample after the last evaluation).

        Keywords of diffusers' schedulers: ``eta`` (DDIM's stochasticity: selects
        ``ddim_eta`` when the solver is DDIM's), ``variance_noise`` (the noise of this step),
        ``order`` (LMS's order); ``s_churn``/``s_tmin``/``s_tmax``/``s_noise`` at their
        defaults and ``use_clipped_model_output`` are accepted; anything else is warned about
        once."""
        if self.grid is None:
            raise SolverOptionError("call set_timesteps() before step()")
        self._read_step_keywords(kwargs)
        self._use_clipped_output = bool(kwargs.get("use_clipped_model_output", False))
        self._generator_noise.generator = generator
        self._generator_noise.override = kwargs.get("variance_noise")
        if model_output.shape[1] == 2 * sample.shape[1]:
            model_output = model_output[:, : sample.shape[1]]  # learned variance: the mean part
        if self._segments is not None:
            prev, denoised = self._segment_step(model_output, timestep, sample)
        else:
            prev, denoised = self._grid_step(model_output, timestep, sample)
        self._last_returned = prev
        if not return_dict:
            return (prev, denoised)
        return DiffsolveSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise at the network timesteps ``timesteps``
        (x0 + sigma~(t) noise for schedulers whose latents are x / alpha); a timestep listed
        in ``timesteps`` uses that evaluation point's exact noise level."""
        ts = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).reshape(-1)
        alphas, sigmas = [], []
        table = self._source in TABLE_NOISING and isinstance(self.schedule, DiscreteVP)
        for t in ts.tolist():
            k = self._find(t)
            if table:  # X's add_noise: sqrt(abar[t]) x0 + sqrt(1 - abar[t]) noise
                abar = float(self.alphas_cumprod[int(t)])
                a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
            elif k is not None:
                p = self._points[k]
                a, s = p.alpha, p.sigma
            elif self._edm:  # an unlisted EDM timestep c_noise = log(sigma)/4
                a, s = 1.0, math.exp(4.0 * t)
            else:
                u = t / self._time_scale
                a, s = float(self.schedule.alpha(u)), float(self.schedule.sigma(u))
            if self._ve:
                a, s = 1.0, s / a
            alphas.append(a)
            sigmas.append(s)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        a = torch.tensor(alphas, dtype=torch.float64).to(original_samples.device,
                                                          original_samples.dtype).reshape(shape)
        s = torch.tensor(sigmas, dtype=torch.float64).to(original_samples.device,
                                                          original_samples.dtype).reshape(shape)
        return a * original_samples + s * noise

    def scale_noise(self, sample: Tensor, timestep: Tensor, noise: Tensor) -> Tensor:
        """Flow-matching pipelines' name for :meth:`add_noise`."""
        return self.add_noise(sample, noise, timestep)

    def index_for_timestep(self, timestep: Any) -> int:
        """Entry of ``timesteps`` a run starting at ``timestep`` begins with (the first one
        that starts a solver step)."""
        return self._lookup(timestep)

    # internals ------------------------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _sync_peer(self) -> None:
        """Rebuild the replaced scheduler when a pipeline edited a shared config key (e.g.
        StableDiffusionPipeline sets ``steps_offset=1`` on old configs)."""
        src = self.config.source_config
        if self._peer is None or not src:
            return
        changed = {k: self.config[k] for k in src
                   if not k.startswith("_") and k in self.config and self.config[k] != src[k]}
        if not changed:
            return
        src = {**src, **changed}
        self.register_to_config(source_config=src)
        self._peer = peer_scheduler(src)

    def _apply_euler_at_final(self) -> None:
        """DPMSolverMultistep's ``euler_at_final``: a first-order last step (on grids that do
        not end with the denoising step, which is first order anyway)."""
        src = self.config.source_config or {}
        assert self.grid is not None
        if not (src.get("euler_at_final") and self._default_solver and not self.grid.to_zero
                and "step_order_caps" in self.solver.options()):
            return
        steps = len(self.grid.finite_lams()) - 1
        caps = (self.solver.history_order,) * (steps - 1) + (1,)
        self.solver = dataclasses.replace(self.solver, step_order_caps=caps)

    def _apply_peer_tau(self, node_sigmas: list[float], node_t: list[float]) -> None:
        """SASolverScheduler: tau of an interval is X's ``tau_func`` of the interval's start
        timestep; give the solver that as a function of sigma~ on this grid's nodes."""
        tau_func = getattr(self._peer, "tau_func", None)
        if (tau_func is None or not self._default_solver
                or "tau_point" not in self.solver.options()):
            return
        dtype = self._peer.timesteps.dtype
        table = list(zip(node_sigmas, node_t, strict=False))

        def tau(sigma: float) -> float:
            t = min(table, key=lambda st: abs(math.log(st[0] / sigma)))[1]
            return float(tau_func(torch.tensor(t, dtype=dtype)))

        self.solver = dataclasses.replace(self.solver, tau=tau)

    def _data(self, out: Tensor, x: Tensor, point: EvalPoint) -> Tensor:
        """The data prediction D from the network output at ``point``: the config's
        parameterization, or for EDM schedulers D = c_skip x + c_out F (Karras et al. 2022,
        Table 1) with c_out negated for ``v_prediction`` (diffusers' EDM convention)."""
        if not self._edm:
            return data_from_output(out, x, point, self.prediction, self.schedule)
        if self.prediction not in ("eps", "v"):
            raise IncompatibleModelError(
                f"{self._source} supports prediction_type epsilon and v_prediction only")
        c_skip, c_out, _ = edm_preconditioning(point.sigma_edm, self._sigma_data)
        return c_skip * x + (c_out if self.prediction == "eps" else -c_out) * out

    def _clip(self, d: Tensor) -> Tensor:
        """The replaced scheduler's treatment of the data prediction: dynamic thresholding
        (Saharia et al. 2022, Sec. 2.3: s = the ``dynamic_thresholding_ratio`` quantile of
        |D| per sample, clamped to [1, ``sample_max_value``]; D <- clamp(D, -s, s)/s) or
        clipping to [-``clip_sample_range``, ``clip_sample_range``]."""
        src = self.config.source_config or {}
        if src.get("thresholding"):
            flat = d.reshape(d.shape[0], -1)
            q = torch.quantile(flat.abs().float(), float(src.get("dynamic_thresholding_ratio",
                                                                  0.995)), dim=1)
            q = q.clamp(min=1.0, max=float(src.get("sample_max_value", 1.0))).to(d.dtype)
            q = q.reshape((-1,) + (1,) * (d.ndim - 1))
            return torch.maximum(torch.minimum(d, q), -q) / q
        if src.get("clip_sample"):
            r = float(src.get("clip_sample_range", 1.0))
            return d.clamp(-r, r)
        return d

    def _read_step_keywords(self, kwargs: Mapping[str, Any]) -> None:
        defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
        for key, value in kwargs.items():
            if key in ("eta", "variance_noise", "order", "use_clipped_model_output"):
                continue
            if key in defaults and (value is None or value == defaults[key]):
                continue
            self._warn_once(key, f"DiffsolveScheduler.step ignores {key}={value!r}")
        eta = kwargs.get("eta")
        if eta is not None and self._stepper is None and self._step_index is None:
            if self.solver.name in ("ddim", "ddim_eta") and self._default_solver:
                self.solver = (get_solver("ddim") if float(eta) == 0.0
                               else get_solver("ddim_eta", eta=float(eta)))
            elif float(eta) != 0.0:
                self._warn_once("eta", f"DiffsolveScheduler.step ignores eta={eta!r}: it "
                                f"selects DDIM's stochasticity, the solver is {self.solver.name}")
        order = kwargs.get("order")
        if order is not None and self._stepper is None and self._step_index is None:
            if self.solver.name == "lms" and self._default_solver:
                if int(order) != self.solver.solver_order:
                    self.solver = dataclasses.replace(self.solver, solver_order=int(order))
            else:
                self._warn_once("order", f"DiffsolveScheduler.step ignores order={order!r} "
                                f"(the solver is {self.solver.name})")

    def _scale(self, k: int) -> float:
        """Factor from the pipeline's latents to the state at evaluation entry k."""
        return self._points[k].alpha if self._ve else 1.0

    def _to_internal(self, sample: Tensor, k: int) -> Tensor:
        state = sample.to(torch.float64 if sample.dtype == torch.float64 else torch.float32)
        return state * self._scale(k) if self._ve else state

    def _noise(self, shape_like: Tensor) -> Any:
        seed = self.config.seed
        return (PerSampleStreams.from_seed(seed, shape_like.shape[0]) if seed is not None
                else self._generator_noise)

    def _segment_step(self, model_output: Tensor, timestep: Any, sample: Tensor,
                      ) -> tuple[Tensor, Tensor]:
        """One step of a DDIM-type scheduler: from the noise level of this timestep to its own
        end level (which need not be the next listed timestep)."""
        assert self._segments is not None
        k = self._step_index
        if k is None:
            k = self._begin_index if self._begin_index is not None else self._lookup(timestep)
        if k >= len(self._segments):
            raise SolverOptionError("all timesteps are done; call set_timesteps() again")
        if self._x is None or sample is not self._last_returned:
            self._x = self._to_internal(sample, k)
        a, b = self._segments[k]
        point = self._points[k]
        x = self._x
        raw = self._data(model_output.to(x.dtype), x, point)
        denoised = self._clip(raw)
        if b < a:
            grid = Grid.from_sigmas([a, b], self.schedule)
            stepper = Stepper(self.solver, self.schedule, grid, x, noise=self._noise(x))
            fed = denoised
            if denoised is not raw and not self._use_clipped_output:
                # DDIM clips x0 but keeps the network's eps: x' = a x + alpha' D_c -
                # c2 alpha/sigma D_raw (c2 = coefficient of eps), i.e. b D_eff with
                # D_eff = D_raw + (alpha'/b) (D_c - D_raw), b = alpha' - c2 alpha/sigma
                q = stepper.plan.points[1] if stepper.plan.steps else None
                eta = float(getattr(self.solver, "eta", 0.0))
                if q is None:
                    c2, alpha_next = 0.0, 1.0
                else:
                    one_minus = -math.expm1(-2.0 * (q.lam - point.lam))
                    c2 = q.sigma * math.sqrt(max(0.0, 1.0 - eta**2 * one_minus))
                    alpha_next = q.alpha
                b_coef = alpha_next - c2 * point.alpha / point.sigma
                # in float64: alpha'/b is large on early steps
                fed = (raw.double() + (alpha_next / b_coef) * (denoised.double() - raw.double())
                       ).to(raw.dtype)
            stepper.feed(fed)
            x = stepper.x
        elif denoised is not raw and not self._use_clipped_output:
            # a zero-length final DDIM step (set_alpha_to_one=False ending at t = 0):
            # x' = alpha D_c + sigma eps_raw = x + alpha (D_c - D_raw)
            x = x + point.alpha * (denoised - raw)
        self._x = x
        self._step_index = k + 1
        return x.to(sample.dtype), denoised

    def _grid_step(self, model_output: Tensor, timestep: Any, sample: Tensor,
                   ) -> tuple[Tensor, Tensor]:
        if self._stepper is None:
            self._start(timestep, sample)
        elif self._stepper.done:
            if self._noop_tail and self._step_index == len(self._points) - 1:
                self._step_index += 1  # X's zero-length last step
                x = self._stepper.x
                out = model_output.to(x.dtype)
                point = self._points[-1]
                d = self._clip(self._data(out, x, point))
                prev = x / point.alpha if self._ve else x
                return prev.to(sample.dtype), d
            raise SolverOptionError("all timesteps are done; call set_timesteps() again")
        elif sample is not self._last_returned and self._at_step_start():
            # the pipeline replaced its latents between steps (e.g. inpainting): adopt them
            assert self._step_index is not None
            self._stepper.replace_state(self._to_internal(sample, self._step_index))
        stepper = self._stepper
        assert stepper is not None
        x_query, point = stepper.query
        out = model_output.to(x_query.dtype)
        denoised = self._clip(self._data(out, x_query, point))
        stepper.feed(denoised)
        self._step_index = (self._step_index or 0) + 1
        if stepper.done:
            nxt = stepper.x
            if self._ve and not self.grid.to_zero:  # type: ignore[union-attr]
                nxt = nxt / self.schedule.point(float(self.grid.finite_lams()[-1])).alpha
        else:
            nxt = stepper.query[0]
            if self._ve:
                nxt = nxt / self._scale(self._step_index)
        return nxt.to(sample.dtype), denoised

    def _peer_timesteps(self, node_lams: list[float], node_t: list[float], peer_t: Tensor,
                        ) -> Tensor:
        """The replaced scheduler's own timesteps when our evaluations are its evaluations (its
        own solver); otherwise its node timesteps at the nodes and t(lambda) at internal
        stages (another solver's stages sit elsewhere even when their count is the same)."""
        if len(self._points) == peer_t.numel() and self._default_solver:
            return peer_t.clone()
        by_node = dict(zip(node_lams, node_t, strict=False))
        vals = []
        for p in self._points:
            hit = next((t for lam, t in by_node.items() if abs(lam - p.lam) < 1e-9), None)
            vals.append(hit if hit is not None else p.t * self._time_scale)
        return as_int_if_integral(vals, peer_t.dtype)

    def _find(self, t: float) -> int | None:
        if self.timesteps.numel() == 0:
            return None
        ts = self.timesteps.detach().to("cpu", torch.float64)
        idx = torch.nonzero((ts - t).abs() < 1e-3 * max(1.0, abs(t))).reshape(-1).tolist()
        if not idx:
            return None
        starts = [k for k in idx if k in self._node_eval_index]
        return starts[0] if starts else idx[0]

    def _lookup(self, timestep: Any) -> int:
        if self._begin_index is not None:
            return self._begin_index
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        k = self._find(t)
        if k is None:
            raise SolverOptionError(f"timestep {t} is not in this scheduler's timesteps")
        return k

    def _report_sigma(self, p: EvalPoint) -> float:
        return p.t if self.flow else p.sigma_edm

    def _make_grid(self, steps: int | None, timesteps: Sequence[float] | None,
                   sigmas: Sequence[float] | None, mu: float | None) -> Grid:
        cfg, sched = dict(self.config), self.schedule
        if timesteps is not None and sigmas is not None:
            raise SolverOptionError("give at most one of `timesteps` and `sigmas`")
        to_zero = cfg["final_sigmas_type"] == "zero"
        if self.flow:
            if timesteps is not None:
                sig = np.asarray(timesteps, dtype=np.float64) / self._time_scale
            else:
                if steps is None and sigmas is None:
                    raise SolverOptionError("give num_inference_steps, timesteps or sigmas")
                sig = flow_sigmas(cfg, steps or len(sigmas), sigmas, mu)
            t = np.clip(sig, None, sched.t_max)
            return self._grid_from_t(t, to_zero)
        if timesteps is not None:
            return self._grid_from_t(np.asarray(timesteps, dtype=np.float64), to_zero)
        if sigmas is not None:
            sig = [float(s) for s in sigmas if float(s) > 0]
            return Grid.from_sigmas(sig + ([0.0] if to_zero else []), sched)
        if steps is None:
            raise SolverOptionError("give num_inference_steps, timesteps or sigmas")
        if cfg["use_karras_sigmas"] or cfg["use_exponential_sigmas"] or cfg["use_lu_lambdas"]:
            return self._sigma_grid(cfg, steps, to_zero)
        return self._grid_from_t(spaced_timesteps(cfg, steps).astype(np.float64), to_zero)

    def _grid_from_t(self, t: np.ndarray, to_zero: bool) -> Grid:
        if t.ndim != 1 or t.size < 1:
            raise SolverOptionError("timesteps must be a non-empty, decreasing list")
        t = t[np.concatenate([[True], np.diff(t) < 0])]  # drop repeats, as diffusers does
        if np.any(np.diff(t) >= 0):
            raise SolverOptionError("timesteps must be a non-empty, decreasing list")
        lams = [float(self.schedule.lam(float(v))) for v in t]
        if to_zero:
            lams.append(math.inf)
        elif len(lams) < 2:
            lams.append(float(self.schedule.lam(float(self.schedule.t_min))))
        return Grid.from_lambdas(torch.tensor(lams, dtype=torch.float64), self.schedule)

    def _sigma_grid(self, cfg: Mapping[str, Any], steps: int, to_zero: bool) -> Grid:
        sched = self.schedule
        if cfg["use_karras_sigmas"]:
            base = karras(steps, sched, to_zero=False) if steps > 1 else None
        else:  # exponential sigmas and Lu's lambdas are both uniform in log sigma here
            base = uniform_lambda(steps, sched, to_zero=False) if steps > 1 else None
        lams = ([float(sched.lam_min)] if base is None
                else [float(v) for v in base.lams])
        if to_zero:
            lams.append(math.inf)
        return Grid.from_lambdas(torch.tensor(lams, dtype=torch.float64), sched)

    def _at_step_start(self) -> bool:
        return self._step_index is not None and self._step_index in self._node_eval_index

    def _start(self, timestep: Any, sample: Tensor) -> None:
        begin = self._lookup(timestep)
        if begin not in self._node_eval_index:
            raise SolverOptionError(
                f"sampling can only begin at the start of a solver step; entry {begin} of "
                f"timesteps is an internal stage of {self.solver.name}")
        node = self._node_eval_index.index(begin)
        assert self.grid is not None
        grid = self.grid if node == 0 else Grid.from_lambdas(self.grid.lams[node:], self.schedule)
        state = self._to_internal(sample, begin)
        solver = self.solver
        caps = getattr(solver, "step_order_caps", None)
        if node > 0 and caps is not None:  # per-step caps of the full grid: keep the tail
            solver = dataclasses.replace(solver, step_order_caps=tuple(caps[node:]))
        full = len(self.grid.finite_lams()) - 1 + (1 if self.grid.to_zero else 0)
        if node > 0 and "prior_sigmas" in solver.options() and self._default_solver:
            # diffusers' LMS takes its order from the absolute step index and its Lagrange
            # basis from the nodes before the start (LMS.prior_sigmas)
            prior = [float(self.schedule.point(float(v)).sigma_edm)
                     for v in self.grid.lams[:node]]
            solver = dataclasses.replace(solver, prior_sigmas=tuple(prior))
        if node > 0 and "step_orders" in solver.options() and self._default_solver:
            # X's order list is the whole grid's (groups counted from its first step)
            orders = solver.orders(len(self.grid.finite_lams()) - 1, self.grid.to_zero)
            solver = dataclasses.replace(solver, step_orders=tuple(orders[node:]))
        if node > 0 and "full_steps" in solver.options():
            solver = dataclasses.replace(solver, full_steps=full)
        elif (node > 0 and self._default_solver and full >= FEW_STEPS
              and getattr(solver, "lower_order_final", False)
              and not getattr(solver, "lower_order_final_always", False)):
            # diffusers decides "fewer than 15 steps" on the whole schedule, not on the part
            # an img2img run samples
            solver = dataclasses.replace(solver, lower_order_final=False)
        self._stepper = Stepper(solver, self.schedule, grid, state, noise=self._noise(state))
        self._step_index = begin
        self._last_returned = sample


class _DiffusersNet:
    """``net(x, t, **kw)`` over a diffusers model returning ``.sample`` or a tuple; drops the
    learned-variance half of a 2C-channel output."""

    def __init__(self, module: Callable[..., Any], sign: float = 1.0) -> None:
        self.module = module
        self.sign = sign

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        out = self.module(x, t, **kwargs)
        out = getattr(out, "sample", out)
        if isinstance(out, tuple):
            out = out[0]
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out if self.sign == 1.0 else -out


def wrap(model: Callable[..., Any], scheduler_config: Any, *,
         guidance_scale: float | None = None, cond: Mapping[str, Any] | None = None,
         uncond: Mapping[str, Any] | None = None, batched_guidance: bool = True,
         model_dtype: torch.dtype | None = None, extra_args: Mapping[str, Any] | None = None,
         ) -> Denoiser:
    """A diffsolve :class:`~diffsolve.Denoiser` for a diffusers network.

    Args:
        model: ``UNet2DModel``, ``UNet2DConditionModel`` or any module called as
            ``model(x, timestep, **kwargs)`` returning ``.sample`` or a tuple.
        scheduler_config: the pipeline's scheduler config (or the scheduler itself): gives the
            schedule (discrete VP, the network getting the fractional training timestep, or
            flow matching, getting t * num_train_timesteps) and the prediction type.
        guidance_scale, cond, uncond: classifier-free guidance D_u + w (D_c - D_u), e.g.
            cond={"encoder_hidden_states": text_emb}, uncond={"encoder_hidden_states": empty_emb}.
        batched_guidance: evaluate both guidance branches as one batch (1 NFE).
        model_dtype: e.g. torch.float16: the network runs in it, the solver state stays float32.
        extra_args: keyword arguments for every call.
    """
    cfg = as_config(scheduler_config)
    if "_class_name" not in cfg:
        name = (type(scheduler_config).__name__ if isinstance(scheduler_config, SchedulerMixin)
                else infer_class(cfg))
        if name is not None:
            cfg["_class_name"] = name
    if cfg.get("_class_name") in EDM_REPRODUCED:
        # EDM preconditioning (Karras et al. 2022, Table 1); diffusers' v_prediction negates
        # c_out, i.e. the network output is -F
        kind = prediction_from_config(cfg)
        if kind not in ("eps", "v"):
            raise IncompatibleModelError(f"{cfg['_class_name']} supports prediction_type "
                                         "epsilon and v_prediction only")
        net = _DiffusersNet(model, sign=1.0 if kind == "eps" else -1.0)
        return Denoiser(net, peer_schedule(peer_scheduler(cfg), False), prediction="edm",
                        sigma_data=float(cfg.get("sigma_data", 0.5)), time_input="edm",
                        guidance_scale=guidance_scale, cond=cond, uncond=uncond,
                        batched_guidance=batched_guidance, model_dtype=model_dtype,
                        extra_args=extra_args)
    schedule = peer_schedule(peer_scheduler(cfg), is_flow_config(cfg)) or \
        schedule_from_config(cfg)
    scale = model_time_scale(cfg)
    time_input: Any = (lambda p: p.t * scale) if scale != 1.0 else "t"
    if guidance_scale is not None and cond is None:
        raise IncompatibleModelError("classifier-free guidance needs `cond` and `uncond`")
    return Denoiser(_DiffusersNet(model), schedule, prediction=prediction_from_config(cfg),
                    time_input=time_input, guidance_scale=guidance_scale, cond=cond,
                    uncond=uncond, batched_guidance=batched_guidance, model_dtype=model_dtype,
                    extra_args=extra_args)
