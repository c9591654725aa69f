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

Differences from diffusers' own schedulers, on purpose (pinned by tests/test_diffusers.py):
Karras/exponential/Lu grids keep fractional timesteps t(sigma) (diffusers rounds the network's
timestep to an integer but keeps the unrounded sigma, so its model sees a slightly different
noise level than the solver assumes); the flow grid starts at t = 1 - 1e-5 instead of t = 1
(lambda = -inf is not a finite grid node); ``thresholding`` and ``clip_sample`` are not applied.
"""

from __future__ import annotations

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

from ..errors import IncompatibleModelError, SolverOptionError
from ..grids import Grid, karras, uniform_lambda
from ..models import Denoiser, data_from_output
from ..noise import PerSampleStreams
from ..schedules import EvalPoint, NoiseSchedule
from ..solvers import get_solver
from ..stepper import Stepper, evaluation_plan
from ..tune import load_tuned, scheduler_settings
from .diffusers_config import (
    as_config,
    flow_sigmas,
    is_flow_config,
    model_time_scale,
    prediction_from_config,
    schedule_from_config,
    spaced_timesteps,
)

__all__ = ["DiffsolveScheduler", "DiffsolveSchedulerOutput", "wrap"]


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

    def normal(self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float,
               ) -> Tensor:
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
        solver: any registered diffsolve solver name (``diffsolve solvers`` lists them).
        solver_options: the solver's options, e.g. {"eta": 0.5}.
        seed: None draws solver noise from the ``generator`` passed to ``step`` (diffusers'
            convention); an int uses diffsolve's per-sample streams keyed by (seed, index),
            independent of batch size.
        tuned: path of a ``diffsolve tune`` artefact (:mod:`diffsolve.tune`): then
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
        solver: str = "dpmpp_2m",
        solver_options: dict[str, Any] | None = None,
        seed: int | None = None,
        tuned: str | None = None,
    ) -> None:
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise SolverOptionError(
                f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")
        if sum(map(bool, (use_karras_sigmas, use_exponential_sigmas, use_lu_lambdas))) > 1:
            raise SolverOptionError("choose at most one of use_karras_sigmas, "
                                    "use_exponential_sigmas and use_lu_lambdas")
        cfg = dict(self.config)
        self.solver = get_solver(solver, **(solver_options or {}))
        self._tuned = load_tuned(tuned) if tuned else None  # a diffsolve.tune artefact
        self.schedule: NoiseSchedule = schedule_from_config(cfg)
        self.prediction = prediction_from_config(cfg)
        self.flow = is_flow_config(cfg)
        self._time_scale = model_time_scale(cfg)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self.grid: Grid | None = None
        self._points: list[EvalPoint] = []
        self._node_eval_index: list[int] = []
        self._stepper: Stepper | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._last_returned: Tensor | None = None
        self._generator_noise = _GeneratorNoise()

    # diffusers surface ------------------------------------------------------------------------
    @property
    def order(self) -> int:
        """Model evaluations per solver step (diffusers uses it for its progress bar)."""
        return self.solver.nfe_per_step

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
        """diffusers' ``from_config``; also warns about config options diffsolve ignores and
        keeps a flow-matching config recognisable after the swap."""
        cfg = as_config(config) if config is not None else {}
        for key in ("thresholding", "clip_sample"):
            if cfg.get(key):
                warnings.warn(f"DiffsolveScheduler ignores {key}=True (the solver uses the "
                              "model's prediction unclipped)", stacklevel=2)
        if "schedule_type" not in kwargs and cfg.get("schedule_type") is None:
            kwargs["schedule_type"] = "flow" if is_flow_config(cfg) else "discrete"
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None, *,
                      timesteps: Sequence[float] | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None) -> None:
        """Build the grid and list every model evaluation point in ``timesteps``.

        ``num_inference_steps`` counts the grid nodes with sigma > 0 (as in diffusers); a
        solver with k evaluations per step lists about k times as many ``timesteps``.
        ``timesteps`` (training timesteps, decreasing) or ``sigmas`` (flow sigmas, or EDM
        sigmas sigma/alpha for VP) give a custom grid.
        """
        if self._tuned is not None and timesteps is None and sigmas is None:
            # tuned=...: num_inference_steps is the NFE budget of one of the artefact's entries
            solver, options, sigmas = scheduler_settings(self._tuned, int(num_inference_steps))
            self.solver = get_solver(solver, **options)
        self.grid = self._make_grid(num_inference_steps, timesteps, sigmas, mu)
        plan = evaluation_plan(self.solver, self.schedule, self.grid)
        self._points = [p for _, p in plan]
        self._node_eval_index = [k for k, (i, _) in enumerate(plan)
                                 if k == 0 or plan[k - 1][0] != i]
        self.num_inference_steps = len(self.grid.finite_lams())
        node_lams = [float(v) for v in self.grid.finite_lams()]
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

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """Identity: the state already has the scaling the network was trained on."""
        return sample

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True, **unused: Any) -> DiffsolveSchedulerOutput | tuple:
        """Consume the network output at the current evaluation point and return the state at
        which the network is evaluated next (the final sample after the last evaluation)."""
        if self.grid is None:
            raise SolverOptionError("call set_timesteps() before step()")
        if self._stepper is None:
            self._start(timestep, sample)
        elif self._stepper.done:
            raise SolverOptionError("all timesteps are done; call set_timesteps() again")
        elif sample is not self._last_returned and self._at_step_start():
            # the pipeline replaced its latents between steps (e.g. inpainting): adopt them
            self._stepper.replace_state(sample.to(self._stepper.x.dtype))
        stepper = self._stepper
        assert stepper is not None
        self._generator_noise.generator = generator
        x_query, point = stepper.query
        out = model_output.to(x_query.dtype)
        denoised = data_from_output(out, x_query, point, self.prediction, self.schedule)
        stepper.feed(denoised)
        self._step_index = (self._step_index or 0) + 1
        nxt = stepper.x if stepper.done else stepper.query[0]
        prev = nxt.to(sample.dtype)
        self._last_returned = prev
        if not return_dict:
            return (prev, denoised)
        return DiffsolveSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise at the network timesteps ``timesteps``."""
        t = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).reshape(-1)
        t = t / self._time_scale
        alpha = torch.as_tensor(self.schedule.alpha(t), dtype=torch.float64)
        sigma = torch.as_tensor(self.schedule.sigma(t), dtype=torch.float64)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        a = alpha.to(original_samples.device, original_samples.dtype).reshape(shape)
        s = sigma.to(original_samples.device, original_samples.dtype).reshape(shape)
        return a * original_samples + s * noise

    def scale_noise(self, sample: Tensor, timestep: Tensor, noise: Tensor) -> Tensor:
        """Flow-matching pipelines' name for :meth:`add_noise`."""
        return self.add_noise(sample, noise, timestep)

    # internals ------------------------------------------------------------------------------
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
        if t.ndim != 1 or t.size < 1 or np.any(np.diff(t) >= 0):
            raise SolverOptionError("timesteps must be a non-empty, strictly decreasing list")
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
        begin = self._begin_index
        if begin is None:
            t = float(torch.as_tensor(timestep).reshape(-1)[0])
            matches = (self.timesteps - t).abs() < 1e-3 * max(1.0, abs(t))
            idx = torch.nonzero(matches).reshape(-1)
            if idx.numel() == 0:
                raise SolverOptionError(f"timestep {t} is not in this scheduler's timesteps")
            begin = int(idx[0])
        if begin not in self._node_eval_index:
            raise SolverOptionError(
                f"sampling can only begin at the start of a solver step; entry {begin} of "
                f"timesteps is an internal stage of {self.solver.name}")
        node = self._node_eval_index.index(begin)
        assert self.grid is not None
        grid = self.grid if node == 0 else Grid.from_lambdas(self.grid.lams[node:], self.schedule)
        state = sample.to(torch.float64 if sample.dtype == torch.float64 else torch.float32)
        seed = self.config.seed
        noise = (PerSampleStreams.from_seed(seed, state.shape[0]) if seed is not None
                 else self._generator_noise)
        self._stepper = Stepper(self.solver, self.schedule, grid, state, noise=noise)
        self._step_index = begin
        self._last_returned = sample


class _DiffusersNet:
    """``net(x, t, **kw)`` over a diffusers model returning ``.sample`` or a tuple; drops the
    learned-variance half of a 2C-channel output."""

    def __init__(self, module: Callable[..., Any]) -> None:
        self.module = module

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        out = self.module(x, t, **kwargs)
        out = getattr(out, "sample", out)
        if isinstance(out, tuple):
            out = out[0]
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out


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
    schedule = schedule_from_config(cfg)
    scale = model_time_scale(cfg)
    time_input: Any = (lambda p: p.t * scale) if scale != 1.0 else "t"
    if guidance_scale is not None and cond is None:
        raise IncompatibleModelError("classifier-free guidance needs `cond` and `uncond`")
    return Denoiser(_DiffusersNet(model), schedule, prediction=prediction_from_config(cfg),
                    time_input=time_input, guidance_scale=guidance_scale, cond=cond,
                    uncond=uncond, batched_guidance=batched_guidance, model_dtype=model_dtype,
                    extra_args=extra_args)
