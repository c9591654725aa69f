r"""Read a diffusers scheduler config: the noise schedule, the prediction type and the grid.

Pure arithmetic, no diffusers import, so it is usable (and tested) without diffusers.

Schedules (diffusers' ``beta_schedule``):

* ``linear``: beta_n = linspace(beta_start, beta_end, N)                  (Ho et al. 2020)
* ``scaled_linear``: beta_n = linspace(sqrt(beta_start), sqrt(beta_end), N)^2 (Stable Diffusion)
* ``squaredcos_cap_v2``: beta_n = min(1 - abar(n+1)/abar(n), 0.999) with
  abar(t) = cos^2(((t/N) + 0.008)/1.008 * pi/2)             (Nichol & Dhariwal 2021, eq. 17)
* ``trained_betas``: the given table.
* ``rescale_betas_zero_snr``: sqrt(abar) shifted and scaled so that its last entry is 0 and its
  first unchanged (Lin et al. 2024, Alg. 1); the last abar is then set to 2^-24 as diffusers
  does (or half the one before, if that is smaller), since lambda = -inf cannot be a node.

Flow matching configs (``FlowMatchEulerDiscreteScheduler``: keys ``shift``,
``use_dynamic_shifting``) map to :class:`~diffsolve.schedules.RectifiedFlow` with model time
t * num_train_timesteps and diffusers' sigma shifting sigma' = s sigma / (1 + (s - 1) sigma),
or with ``mu``: exponential e^mu / (e^mu + (1/sigma - 1)) or linear mu / (mu + (1/sigma - 1)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core.errors import IncompatibleModelError
from ..core.schedules import DiscreteVP, NoiseSchedule, RectifiedFlow

FLOW_T_MAX = 1.0 - 1e-5  # t = 1 is lambda = -inf; the first node is moved this close to it
FLOW_T_MIN = 1e-6
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "flow"}


def as_config(config: Any) -> dict[str, Any]:
    """A plain dict from a diffusers config, a scheduler (its ``.config``) or a mapping."""
    cfg = getattr(config, "config", config)
    if not isinstance(cfg, Mapping):
        raise IncompatibleModelError(
            f"expected a scheduler config (a mapping or an object with .config), got {type(cfg)}")
    return dict(cfg)


def is_flow_config(cfg: Mapping[str, Any]) -> bool:
    """Whether the config describes a flow-matching (rectified flow) model."""
    if cfg.get("schedule_type") in ("flow", "discrete"):
        return cfg["schedule_type"] == "flow"
    name = str(cfg.get("_class_name", ""))
    return ("FlowMatch" in name or cfg.get("prediction_type") == "flow_prediction"
            or ("shift" in cfg and "beta_schedule" not in cfg))


def betas_from_config(cfg: Mapping[str, Any]) -> torch.Tensor:
    """The training beta table a discrete VP config describes (float64)."""
    n = int(cfg.get("num_train_timesteps", 1000))
    trained = cfg.get("trained_betas")
    if trained is not None:
        return torch.as_tensor(np.asarray(trained, dtype=np.float64))
    kind = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(b0, b1, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        def abar(t: float) -> float:  # Nichol & Dhariwal 2021, eq. 17 (s = 0.008)
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)],
                            dtype=torch.float64)
    raise IncompatibleModelError(
        f"beta_schedule {kind!r} is not supported; use linear, scaled_linear, "
        "squaredcos_cap_v2 or trained_betas")


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Alg. 1: make the last sqrt(abar) zero, keep the first."""
    s = alphas_cumprod.sqrt()
    s0, s_last = s[0].clone(), s[-1].clone()
    s = (s - s_last) * s0 / (s0 - s_last)
    out = s**2
    # diffusers puts 2^-24 there (lambda must stay finite); keep the table decreasing
    out[-1] = min(2.0**-24, 0.5 * float(out[-2]))
    return out


def schedule_from_config(cfg: Mapping[str, Any]) -> NoiseSchedule:
    """The diffsolve noise schedule of a diffusers scheduler config."""
    if is_flow_config(cfg):
        return RectifiedFlow(t_min=FLOW_T_MIN, t_max=FLOW_T_MAX)
    betas = betas_from_config(cfg)
    ac = torch.cumprod(1.0 - betas, dim=0)
    if cfg.get("rescale_betas_zero_snr", False):
        ac = rescale_zero_terminal_snr(ac)
    return DiscreteVP(ac)


def prediction_from_config(cfg: Mapping[str, Any]) -> str:
    """diffsolve's name of the config's ``prediction_type``."""
    kind = cfg.get("prediction_type")
    if kind is None:
        kind = "flow_prediction" if is_flow_config(cfg) else "epsilon"
    try:
        return _PREDICTIONS[kind]
    except KeyError:
        raise IncompatibleModelError(
            f"prediction_type {kind!r} is not supported; use {', '.join(_PREDICTIONS)}") from None


def model_time_scale(cfg: Mapping[str, Any]) -> float:
    """Factor from the schedule's t to the network's timestep (flow: num_train_timesteps)."""
    return float(cfg.get("num_train_timesteps", 1000)) if is_flow_config(cfg) else 1.0


def spaced_timesteps(cfg: Mapping[str, Any], steps: int) -> np.ndarray:
    """Integer timesteps for ``steps`` steps, decreasing, by ``timestep_spacing`` with the
    conventions of diffusers' DPMSolverMultistepScheduler (Lin et al. 2024, Table 2): the
    ``steps`` nodes carry sigma > 0 and the grid then ends at sigma = 0."""
    n = int(cfg.get("num_train_timesteps", 1000))
    if not 1 <= steps <= n:
        raise IncompatibleModelError(f"num_inference_steps must be in [1, {n}], got {steps}")
    spacing = cfg.get("timestep_spacing", "linspace")
    if spacing == "linspace":
        t = np.linspace(0, n - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        t = (np.arange(0, steps + 1) * (n // (steps + 1))).round()[::-1][:-1]
        t = t + int(cfg.get("steps_offset", 0))
    elif spacing == "trailing":
        t = np.arange(n, 0, -n / steps).round() - 1
    else:
        raise IncompatibleModelError(
            f"timestep_spacing {spacing!r} is not supported; use linspace, leading or trailing")
    return t.astype(np.int64)


def shift_flow_sigmas(cfg: Mapping[str, Any], sigmas: np.ndarray, mu: float | None) -> np.ndarray:
    """diffusers' static or resolution-dependent shift of flow-matching sigmas."""
    if cfg.get("use_dynamic_shifting", False):
        if mu is None:
            raise IncompatibleModelError("this flow config uses dynamic shifting: pass `mu`")
        if cfg.get("time_shift_type", "exponential") == "linear":
            return mu / (mu + (1.0 / sigmas - 1.0))
        return math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
    shift = float(cfg.get("shift", 1.0))
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def flow_sigmas(cfg: Mapping[str, Any], steps: int, sigmas: Sequence[float] | None = None,
                mu: float | None = None) -> np.ndarray:
    """Flow-matching sigmas (= t) of FlowMatchEulerDiscreteScheduler, decreasing, no final 0."""
    n = float(cfg.get("num_train_timesteps", 1000))
    if sigmas is None:
        # as FlowMatchEulerDiscreteScheduler: the range ends at the training table's smallest
        # sigma, which is itself shifted when the shift is static (so it is shifted twice)
        lo = 1.0 / n
        if not cfg.get("use_dynamic_shifting", False):
            lo = float(shift_flow_sigmas(cfg, np.array([lo]), None)[0])
        sig = np.linspace(1.0, lo, steps)
    else:
        sig = np.asarray(sigmas, dtype=np.float64)
    return shift_flow_sigmas(cfg, sig, mu)
