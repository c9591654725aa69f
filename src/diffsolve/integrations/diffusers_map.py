r"""Which diffsolve solver reproduces which diffusers scheduler, and on which grid.

``DiffsolveScheduler.from_config(X.config)`` keeps X's class name and config
(``source_config``). This module turns them into

* the solver (and options) whose update equals X's update, read from X's config keys
  (:func:`default_solver`): DDIM's step is the first-order exponential integrator in data
  prediction (``ddim``; Lu et al. 2022b, eq. 5 with k = 1 -- Euler's step in sigma~ = sigma/alpha
  is the same map), DDIM with ``eta`` is ``ddim_eta`` (Song et al. 2021, eq. 12/16), DDPM's
  posterior step ``ddpm`` (Ho et al. 2020, eq. 6-7), DPMSolverMultistep's
  ``dpmsolver++`` orders 1-3 are ``ddim`` / ``dpmpp_2m`` / ``dpmpp_3m`` and ``sde-dpmsolver++``
  is ``dpmpp_2m_sde`` (Lu et al. 2022b, Sec. 4 and App. ...), UniPC is ``unipc`` with the
  config's order and B(h) variant (Zhao et al. 2023), Heun ``heun`` and Euler ancestral
  ``euler_ancestral`` (Karras et al. 2022, Alg. 1; k-diffusion's ancestral split of
  sigma_{i+1} into sigma_down and sigma_up), flow-matching Euler ``ddim`` on the rectified flow;
* the grid: X itself computes its timesteps and sigmas (X's ``set_timesteps``), so every grid
  key (``timestep_spacing``, ``steps_offset``, Karras / exponential / beta sigmas, flow shift,
  ``final_sigmas_type``, deduplication at 1000 steps ...) is honoured by construction, and a
  solver chosen by the user keeps X's grid (:func:`peer_grid`);
* the keys this mapping does not reproduce, which are warned about by name
  (:func:`unsupported_keys`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.errors import IncompatibleModelError
from ..core.schedules import EDM, DiscreteVP, NoiseSchedule, RectifiedFlow
from .diffusers_config import FLOW_T_MIN

# Schedulers whose pipeline latents are x / alpha (k-diffusion's sigma~ scaling): the pipeline
# multiplies its noise by init_noise_sigma and divides the network input by sqrt(sigma~^2 + 1).
VE_STATE = frozenset({
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DPMSolverSDEScheduler",
})

# schedulers whose add_noise reads the training table at the (integer) timestep, even where
# their grid's sigma at that node is another (Karras / exponential grids, rounded timesteps)
TABLE_NOISING = frozenset({"SASolverScheduler"})

FEW_STEPS = 15  # diffusers' multistep schedulers lower their final orders below this many steps
EDM_PRECONDITIONED = frozenset({"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler",
                                "CosineDPMSolverMultistepScheduler"})
# EDM-preconditioned schedulers the adapter reproduces: alpha = 1, the network gets
# c_in(sigma) x and c_noise = log(sigma)/4, and D = c_skip x + c_out F (Karras et al. 2022,
# Table 1; v_prediction: c_out negated, as diffusers has it). Cosine's c_noise differs.
EDM_REPRODUCED = frozenset({"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"})

# config keys whose only effect is the training table or the grid (computed by X itself)
_GRID_KEYS = frozenset({
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "rescale_betas_zero_snr", "timestep_spacing", "steps_offset", "use_karras_sigmas",
    "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "final_sigmas_type",
    "interpolation_type", "timestep_type", "sigma_min", "sigma_max", "lambda_min_clipped",
    "set_alpha_to_one", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
    "base_image_seq_len", "max_image_seq_len", "shift_terminal", "time_shift_type",
    "invert_sigmas", "prediction_type", "sigma_schedule", "rho",
})
# keys whose value is honoured only when it equals the given (inactive) value
_INACTIVE = {
    "thresholding": False, "clip_sample": False, "variance_type": (None, "fixed_small"),
    "use_flow_sigmas": False, "stochastic_sampling": False, "predict_x0": True,
    "solver_p": None,
}
# keys with no effect on the result whatever their value (they parameterise inactive options)
_NEUTRAL = frozenset({"clip_sample_range", "sample_max_value", "dynamic_thresholding_ratio",
                      "flow_shift", "time_shift_type"})


@dataclass(frozen=True)
class SolverChoice:
    """The solver reproducing a scheduler class, and the keys it reads beyond the grid."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    keys: frozenset[str] = frozenset()


def _dpm_multistep(cfg: Mapping[str, Any]) -> SolverChoice:
    """DPMSolverMultistep: DPM-Solver++(2M) (the common case, ``dpmpp_2m``) or
    ``dpm_multistep`` with the scheduler's options (every other algorithm type and order)."""
    algo = cfg.get("algorithm_type", "dpmsolver++")
    order = int(cfg.get("solver_order", 2))
    low = bool(cfg.get("lower_order_final", True))
    kind = cfg.get("solver_type", "midpoint")
    keys = frozenset({"algorithm_type", "solver_order", "lower_order_final", "solver_type",
                      "euler_at_final"})
    if algo == "dpmsolver++" and order == 2:
        return SolverChoice("dpmpp_2m", {"lower_order_final": low, "solver_type": kind}, keys)
    if algo not in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"):
        raise IncompatibleModelError(
            f"DPMSolverMultistepScheduler with algorithm_type={algo!r} has no diffsolve "
            "equivalent; pass solver=... (e.g. 'dpmpp_2m') to choose one")
    return SolverChoice("dpm_multistep", {
        "algorithm_type": algo, "solver_order": order, "solver_type": kind,
        "lower_order_final": low, "euler_at_final": bool(cfg.get("euler_at_final", False))},
        keys)


def _dpm_singlestep(cfg: Mapping[str, Any]) -> SolverChoice:
    """DPMSolverSinglestep: ``dpm_singlestep`` with the scheduler's options."""
    algo = cfg.get("algorithm_type", "dpmsolver++")
    if algo not in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"):
        raise IncompatibleModelError(
            f"DPMSolverSinglestepScheduler with algorithm_type={algo!r} has no diffsolve "
            "equivalent; pass solver=... to choose one")
    return SolverChoice("dpm_singlestep", {
        "algorithm_type": algo, "solver_order": int(cfg.get("solver_order", 2)),
        "solver_type": cfg.get("solver_type", "midpoint"),
        "lower_order_final": bool(cfg.get("lower_order_final", False))},
        frozenset({"algorithm_type", "solver_order", "solver_type", "lower_order_final"}))


def _sa_solver(cfg: Mapping[str, Any]) -> SolverChoice:
    """SASolverScheduler: ``sa_solver`` PEC with diffusers' choices: the order-2 rescaling
    trick (``simple_order_2``, diffusers' "modification ... similar to UniPC"), tau at each
    interval's start timestep (the adapter sets tau from X's ``tau_func`` once the grid is
    known), final orders lowered on every grid. Data prediction only."""
    keys = {"predictor_order", "corrector_order", "lower_order_final", "tau_func"}
    if cfg.get("algorithm_type", "data_prediction") == "data_prediction":
        keys.add("algorithm_type")
    return SolverChoice("sa_solver", {
        "predictor_order": int(cfg.get("predictor_order", 2)),
        "corrector_order": int(cfg.get("corrector_order", 2)),
        "simple_order_2": True, "tau_point": "start",
        "lower_order_final": bool(cfg.get("lower_order_final", True)),
        "lower_order_final_always": True, "noise_every_step": True},
        frozenset(keys))


def _edm_dpm(cfg: Mapping[str, Any]) -> SolverChoice:
    """EDMDPMSolverMultistep: DPMSolverMultistep's update on the EDM schedule."""
    choice = _dpm_multistep(cfg)
    return SolverChoice(choice.name, choice.options, choice.keys | {"sigma_data"})


def _unipc(cfg: Mapping[str, Any]) -> SolverChoice:
    disabled = list(cfg.get("disable_corrector") or [])
    return SolverChoice("unipc", {
        "solver_order": int(cfg.get("solver_order", 2)),
        "variant": cfg.get("solver_type", "bh2"),
        "lower_order_final": bool(cfg.get("lower_order_final", True)),
        "lower_order_final_always": True,  # X lowers its last orders on every grid
        "use_corrector": not disabled,
    }, frozenset({"solver_order", "solver_type", "lower_order_final"}
                 | ({"disable_corrector"} if not disabled else set())))


def _deis(cfg: Mapping[str, Any]) -> SolverChoice:
    return SolverChoice("deis", {"solver_order": int(cfg.get("solver_order", 2)),
                                 "basis": "log_rho",
                                 "lower_order_final": bool(cfg.get("lower_order_final", True))},
                        # "deis" / "logrho" are the only values diffusers' DEIS accepts
                        frozenset({"solver_order", "lower_order_final", "algorithm_type",
                                   "solver_type"}))


_CHOICES: dict[str, Any] = {
    "DDIMScheduler": lambda cfg: SolverChoice("ddim"),
    "DDPMScheduler": lambda cfg: SolverChoice("ddpm"),
    "EulerDiscreteScheduler": lambda cfg: SolverChoice("ddim"),
    "EulerAncestralDiscreteScheduler": lambda cfg: SolverChoice("euler_ancestral"),
    "HeunDiscreteScheduler": lambda cfg: SolverChoice("heun"),
    # LMS: k-diffusion's LMS with its multistep last step into sigma = 0 (diffusers' step)
    "LMSDiscreteScheduler": lambda cfg: SolverChoice(
        "lms", {"lower_order_final": False, "final_step": "multistep"}),
    # KDPM2: DPM-Solver-2 in sigma~ with the log-midpoint stage (k-diffusion's sample_dpm_2)
    "KDPM2DiscreteScheduler": lambda cfg: SolverChoice("dpm_2"),
    "KDPM2AncestralDiscreteScheduler": lambda cfg: SolverChoice("dpm_2_ancestral"),
    "DPMSolverMultistepScheduler": _dpm_multistep,
    "DPMSolverSinglestepScheduler": _dpm_singlestep,
    "SASolverScheduler": _sa_solver,
    "UniPCMultistepScheduler": _unipc,
    "DEISMultistepScheduler": _deis,
    "FlowMatchEulerDiscreteScheduler": lambda cfg: SolverChoice("ddim"),
    # EDM Euler: Euler in sigma (alpha = 1) is the DDIM map on the EDM schedule
    "EDMEulerScheduler": lambda cfg: SolverChoice("ddim", keys=frozenset({"sigma_data"})),
    "EDMDPMSolverMultistepScheduler": _edm_dpm,
    "PNDMScheduler": lambda cfg: SolverChoice(
        "pndm", {"warmup": "plms" if cfg.get("skip_prk_steps") else "prk"},
        frozenset({"skip_prk_steps"})),
}


def source_class(cfg: Mapping[str, Any] | None) -> str | None:
    """The diffusers scheduler class a config came from (None for diffsolve's own)."""
    if not cfg:
        return None
    name = cfg.get("_class_name")
    return None if name in (None, "DiffsolveScheduler") else str(name)


def infer_class(cfg: Mapping[str, Any]) -> str | None:
    """The scheduler class whose ``__init__`` takes exactly the config's keys, when one class
    does (a scheduler built directly has no ``_class_name`` in its config); None otherwise."""
    import inspect

    import diffusers
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    keys = {k for k in cfg if not k.startswith("_")}
    hits = []
    names = {e.name for e in KarrasDiffusionSchedulers} | set(_CHOICES) | {
        "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler", "SASolverScheduler",
        "PNDMScheduler", "FlowMatchEulerDiscreteScheduler", "LCMScheduler", "TCDScheduler"}
    for name in sorted(names):
        cls = getattr(diffusers, name, None)
        init = getattr(cls, "__init__", None)
        if init is None or not hasattr(cls, "config_name"):
            continue
        try:
            params = set(inspect.signature(init).parameters) - {"self"}
        except (TypeError, ValueError):  # pragma: no cover - dummy objects
            continue
        if params == keys:
            hits.append(name)
    return hits[0] if len(hits) == 1 else None


def default_solver(cfg: Mapping[str, Any]) -> SolverChoice | None:
    """The solver reproducing the config's scheduler class, or None if there is none."""
    make = _CHOICES.get(source_class(cfg) or "")
    return make(cfg) if make is not None else None


# schedulers whose data prediction is thresholded / clipped (applied by the adapter)
_CLIPS = {"DDIMScheduler": {"thresholding", "clip_sample"},
          "DDPMScheduler": {"thresholding", "clip_sample"},
          "HeunDiscreteScheduler": {"clip_sample"},
          "DPMSolverMultistepScheduler": {"thresholding"},
          "DPMSolverSinglestepScheduler": {"thresholding"},
          "SASolverScheduler": {"thresholding"},
          "UniPCMultistepScheduler": {"thresholding"},
          "DEISMultistepScheduler": {"thresholding"},
          "EDMDPMSolverMultistepScheduler": {"thresholding"}}


def unsupported_keys(cfg: Mapping[str, Any], choice: SolverChoice | None) -> list[str]:
    """Config keys of the source scheduler whose value diffsolve does not reproduce."""
    out = []
    read = set(choice.keys) if choice is not None else set()
    read |= _CLIPS.get(source_class(cfg) or "", set())
    for key, value in cfg.items():
        if key.startswith("_") or key in _GRID_KEYS or key in _NEUTRAL or key in read:
            continue
        if key in _INACTIVE:
            ok = _INACTIVE[key]
            if value in (ok if isinstance(ok, tuple) else (ok,)):
                continue
        out.append(key)
    return out


def peer_class(cfg: Mapping[str, Any]) -> type | None:
    """The config's diffusers scheduler class (None if unknown)."""
    name = source_class(cfg)
    if name is None:
        return None
    import diffusers

    return getattr(diffusers, name, None)


def peer_scheduler(cfg: Mapping[str, Any]) -> Any | None:
    """A fresh instance of the config's diffusers scheduler class (None if unknown)."""
    cls = peer_class(cfg)
    return None if cls is None else cls.from_config(dict(cfg))


@dataclass
class PeerGrid:
    """X's grid in diffsolve terms.

    Attributes:
        sigmas: node noise levels sigma~ = sigma/alpha (flow: t), decreasing, the last one 0
            when X ends with the denoising step.
        node_timesteps: the network timestep X uses at each node with sigma~ > 0.
        timesteps: X's own ``timesteps`` (every network evaluation, X's dtype).
        segments: for DDIM-type schedulers, (from, to) node sigmas of each step when X's step
            does not end at the next listed timestep (``linspace`` spacing).
        init_noise_sigma: X's ``init_noise_sigma``.
    """

    sigmas: list[float]
    node_timesteps: list[float]
    timesteps: torch.Tensor
    segments: list[tuple[float, float]] | None = None
    init_noise_sigma: float = 1.0


PEER_FLOW_T_MAX = 1.0 - 1e-9  # flow grids of X start at t = 1 (lambda = -inf): this close


def peer_schedule(peer: Any | None, flow: bool) -> NoiseSchedule | None:
    """X's own schedule: its (float32) ``alphas_cumprod`` table, so that every sigma agrees
    with X's bit for bit, the rectified flow reaching t = 1 - 1e-9, or for EDM schedulers
    the EDM schedule (alpha = 1, sigma = t) over X's [sigma_min, sigma_max]. None when X has no
    table with 0 < abar < 1 (a zero terminal SNR keeps diffsolve's own table, see
    :func:`~diffsolve.integrations.diffusers_config.rescale_zero_terminal_snr`)."""
    if peer is None:
        return None
    if type(peer).__name__ in EDM_REPRODUCED:
        cfg = peer.config
        return EDM(sigma_min=float(cfg.sigma_min), sigma_max=float(cfg.sigma_max))
    if flow:
        return RectifiedFlow(t_min=FLOW_T_MIN, t_max=PEER_FLOW_T_MAX)
    table = getattr(peer, "alphas_cumprod", None)
    if table is None or not bool(((table > 0) & (table < 1)).all()
                                 and (table[1:] < table[:-1]).all()):
        return None
    return DiscreteVP(torch.as_tensor(table).to(torch.float64))


def _sigma_of_abar(abar: float) -> float:
    return math.sqrt((1.0 - abar) / abar) if abar < 1.0 else 0.0


def _dedupe(sig: list[float], ts: list[float]) -> tuple[list[float], list[float]]:
    out_s: list[float] = []
    out_t: list[float] = []
    for k, s in enumerate(sig):
        if out_s and not s < out_s[-1]:
            continue  # repeated node (Heun's interleaving, a zero-length last step)
        out_s.append(s)
        if k < len(ts):
            out_t.append(ts[k])
    return out_s, out_t


def peer_grid(peer: Any, name: str, steps: int | None, **kwargs: Any) -> PeerGrid:
    """Run X's ``set_timesteps`` and read its grid."""
    peer.set_timesteps(steps, **kwargs)
    ts = peer.timesteps.detach().cpu()
    tl = [float(v) for v in ts.to(torch.float64)]
    init = float(getattr(peer, "init_noise_sigma", 1.0))
    if name == "PNDMScheduler":
        # the step starts (PNDM's own list, ascending); its Runge-Kutta midpoints and repeated
        # entries are evaluation points of the ``pndm`` solver, not grid nodes
        abar = peer.alphas_cumprod.to(torch.float64)
        base = [float(v) for v in np.asarray(peer._timesteps)[::-1]]
        sig = [_sigma_of_abar(float(abar[int(t)])) for t in base]
        sig.append(_sigma_of_abar(float(peer.final_alpha_cumprod)))
        s, t = _dedupe(sig, base)
        return PeerGrid(s, t, ts, None, init)
    if name in ("DDIMScheduler", "DDPMScheduler"):
        abar = peer.alphas_cumprod.to(torch.float64)
        sig = [_sigma_of_abar(float(abar[int(t)])) for t in tl]
        segments = None
        if name == "DDIMScheduler":
            # DDIM steps from t to t - N // n (Song et al. 2021 as implemented by diffusers),
            # which is not the next listed timestep for every spacing
            ratio = peer.config.num_train_timesteps // peer.num_inference_steps
            final = float(peer.final_alpha_cumprod)
            ends = [_sigma_of_abar(float(abar[int(t) - ratio]) if int(t) - ratio >= 0 else final)
                    for t in tl]
            segments = list(zip(sig, ends, strict=True))
            sig = [*sig, ends[-1]]
        else:
            sig = [*sig, 0.0]
        s, t = _dedupe(sig, tl)
        return PeerGrid(s, t, ts, segments, init)
    sig_all = [float(v) for v in peer.sigmas.detach().cpu().to(torch.float64)]
    if name in ("KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
        # timesteps interleave each step's start with its midpoint stage: [t0, m0, t1, m1, ...]
        s, _ = _dedupe(sig_all, [])
        return PeerGrid(s, tl[0::2], ts, None, init)
    s, t = _dedupe(sig_all, tl)
    return PeerGrid(s, t, ts, None, init)


def flow_edm_sigmas(t: list[float], t_max: float) -> list[float]:
    """Flow times t -> sigma~ = t / (1 - t), the first clipped to ``t_max`` (t = 1 has
    lambda = -inf)."""
    return [min(v, t_max) / (1.0 - min(v, t_max)) if v > 0 else 0.0 for v in t]


def as_int_if_integral(values: list[float], dtype: torch.dtype) -> torch.Tensor:
    """Timesteps in X's dtype when they are integral, float32 otherwise."""
    arr = np.asarray(values, dtype=np.float64)
    if dtype in (torch.int64, torch.int32) and np.all(arr == np.round(arr)):
        return torch.tensor(arr.astype(np.int64), dtype=dtype)
    return torch.tensor(arr, dtype=torch.float32)
