"""k-diffusion / ComfyUI calling convention for every diffsolve solver.

``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)``

* ``model(x, sigma_vector, **extra_args)`` returns the denoised x0 (k-diffusion's
  ``Denoiser`` convention: VE scaling, x = x0 + sigma n);
* ``x`` is already scaled by ``sigmas[0]``;
* ``sigmas`` is a 1-D decreasing tensor, usually ending in 0 (then the last interval is the
  denoising step x <- D(x), as in k-diffusion);
* ``callback`` receives k-diffusion's dict (x, i, sigma, sigma_hat, denoised; x is the state
  at sigma before step i, after any churn, as in k-diffusion) plus lam, sigma_next and x_next
  (the state after the step); ``disable`` turns the progress bar off.

Two kinds of functions:

* **k-diffusion's and ComfyUI's own samplers** (the table :data:`SAMPLERS`): every
  ``sample_*`` of k-diffusion 0.1.1.post1's ``sampling.py`` and ComfyUI's ``sample_seeds_2``,
  ``sample_seeds_3``, ``sample_sa_solver``, ``sample_er_sde`` and ``sample_lcm``, with exactly
  their keyword names, order and defaults (``inspect.signature``), computing k-diffusion's update
  (tests/test_kdiffusion_peer.py: equal to k-diffusion's own functions to < 1e-10 in float64
  with the same noise). Extra diffsolve keywords go after them: ``seed`` (per-sample noise
  streams), ``noise_sampler`` where k-diffusion has none, and the solver's own options.
* **every other registered solver** as ``sample_<solver name>(..., **options)`` with the
  solver's options (``diffsolve.get_solver(name).options()``), ``seed`` and
  ``noise_sampler``. Multistep solvers default to ``lower_order_final=False`` here, which is
  k-diffusion's behaviour (only the final step into sigma = 0 is first order).

Default noise, when neither ``noise_sampler`` nor ``seed`` is given: k-diffusion's. Samplers
whose k-diffusion default is ``torch.randn_like`` draw from the global RNG (so
``torch.manual_seed(s)`` reproduces k-diffusion's result; Euler / Heun / DPM-2 with churn
draw one tensor per step up front, as k-diffusion does inside its loop); those whose default is
a Brownian tree seeded from the global RNG (``dpmpp_sde``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``)
use diffsolve's Brownian path seeded the same way; ComfyUI's ``extra_args["seed"]`` is used
as ``seed`` when present. The other solvers default to per-sample streams with seed 0.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.grids import Grid
from ..core.models import Denoiser
from ..core.noise import GivenNoise, KDiffusionNoiseSampler, NoiseSource, make_noise
from ..drivers.loop import solve
from ..drivers.tuned import kdiffusion_sigmas as tuned_sigmas  # noqa: F401 - tuned sigmas
from ..solvers import get_solver, list_solvers, solver_class
from ..solvers.engines.renoise import MAX_GAMMA, churn_gamma, churn_std
from .kdiffusion_dpm import check_sigma_range, dpm_adaptive, dpm_fast

KDenoiser = Callable[..., Tensor]
Callback = Callable[[dict[str, Any]], None]
REQUIRED = inspect.Parameter.empty
HEAD = (("model", REQUIRED), ("x", REQUIRED), ("sigmas", REQUIRED))
SIGMA_HEAD = (("model", REQUIRED), ("x", REQUIRED), ("sigma_min", REQUIRED),
              ("sigma_max", REQUIRED))
COMMON = (("extra_args", None), ("callback", None), ("disable", None))
CHURN = (("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", math.inf), ("s_noise", 1.0))
ANCESTRAL = (("eta", 1.0), ("s_noise", 1.0), ("noise_sampler", None))


@dataclass(frozen=True)
class KSampler:
    """One k-diffusion / ComfyUI sampler function.

    Attributes:
        name: the function is ``sample_<name>``.
        params: its parameters in order, (name, default), REQUIRED for none.
        solver: the diffsolve solver computing it (for ``run="grid"``/``"churn"``/``"lms"``).
        rename: keyword -> solver option, where the names differ.
        fixed: solver options always set (e.g. k-diffusion's 3M SDE weights).
        run: "grid" (one solve over ``sigmas``), "churn" (Karras churn: deterministic solver
            without churn, ``churn_solver`` with it), "lms" (LMS with k-diffusion's multistep
            step into sigma = 0), "fast" / "adaptive" (:mod:`diffsolve.kdiffusion_dpm`).
        default_noise: "global" (k-diffusion's ``torch.randn_like``), "brownian" (a Brownian
            path seeded from the global RNG, as k-diffusion's Brownian tree) or "streams".
        source: where the signature comes from.
    """

    name: str
    params: tuple[tuple[str, Any], ...]
    solver: str = ""
    rename: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    run: str = "grid"
    churn_solver: str = ""
    default_noise: str = "global"
    source: str = "k-diffusion 0.1.1.post1"


_KD = "k-diffusion 0.1.1.post1"
_COMFY = "ComfyUI comfy/k_diffusion/sampling.py"

#: Every k-diffusion 0.1.1.post1 ``sample_*`` and ComfyUI's names for the extra samplers.
SAMPLERS: tuple[KSampler, ...] = (
    KSampler("euler", HEAD + COMMON + CHURN, "euler", run="churn", churn_solver="euler_churn"),
    KSampler("euler_ancestral", HEAD + COMMON + ANCESTRAL, "euler_ancestral"),
    KSampler("heun", HEAD + COMMON + CHURN, "heun", run="churn", churn_solver="edm_stochastic"),
    KSampler("dpm_2", HEAD + COMMON + CHURN, "dpm_2", run="churn", churn_solver="dpm_2"),
    KSampler("dpm_2_ancestral", HEAD + COMMON + ANCESTRAL, "dpm_2_ancestral"),
    KSampler("lms", HEAD + COMMON + (("order", 4),), "lms", rename={"order": "solver_order"},
             run="lms"),
    KSampler("dpm_fast", (*SIGMA_HEAD, ("n", REQUIRED), *COMMON, ("eta", 0.0), ("s_noise", 1.0),
                          ("noise_sampler", None)), run="fast"),
    KSampler("dpm_adaptive", SIGMA_HEAD + COMMON
             + (("order", 3), ("rtol", 0.05), ("atol", 0.0078), ("h_init", 0.05),
                ("pcoeff", 0.0), ("icoeff", 1.0), ("dcoeff", 0.0), ("accept_safety", 0.81),
                ("eta", 0.0), ("s_noise", 1.0), ("noise_sampler", None),
                ("return_info", False)), run="adaptive"),
    KSampler("dpmpp_2s_ancestral", HEAD + COMMON + ANCESTRAL, "dpmpp_2s_ancestral"),
    KSampler("dpmpp_sde", HEAD + COMMON + ANCESTRAL + (("r", 0.5),), "dpmpp_sde",
             default_noise="brownian"),
    KSampler("dpmpp_2m", HEAD + COMMON, "dpmpp_2m"),
    KSampler("dpmpp_2m_sde", HEAD + COMMON + ANCESTRAL + (("solver_type", "midpoint"),),
             "dpmpp_2m_sde", default_noise="brownian"),
    KSampler("dpmpp_3m_sde", HEAD + COMMON + ANCESTRAL, "dpmpp_3m_sde",
             fixed={"variant": "kdiffusion"}, default_noise="brownian"),
    KSampler("seeds_2", HEAD + COMMON + ANCESTRAL + (("r", 0.5), ("solver_type", "phi_1")),
             "seeds_2", source=_COMFY),
    KSampler("seeds_3", HEAD + COMMON + ANCESTRAL + (("r_1", 1.0 / 3.0), ("r_2", 2.0 / 3.0)),
             "seeds_3", rename={"r_1": "r1", "r_2": "r2"}, source=_COMFY),
    KSampler("sa_solver", (*HEAD, ("extra_args", None), ("callback", None), ("disable", False),
                           ("tau_func", None), ("s_noise", 1.0), ("noise_sampler", None),
                           ("predictor_order", 3), ("corrector_order", 4), ("use_pece", False),
                           ("simple_order_2", False)),
             "sa_solver", rename={"tau_func": "tau", "use_pece": "pece"}, source=_COMFY),
    KSampler("er_sde", HEAD + COMMON + (("s_noise", 1.0), ("noise_sampler", None),
                                        ("noise_scaler", None), ("max_stage", 3)),
             "er_sde", rename={"max_stage": "solver_order"}, source=_COMFY),
    KSampler("lcm", (*HEAD, *COMMON, ("noise_sampler", None)), "lcm", source=_COMFY),
)

_BY_NAME = {s.name: s for s in SAMPLERS}
_NOT_OPTIONS = {"model", "x", "sigmas", "sigma_min", "sigma_max", "n", "extra_args",
                "callback", "disable", "noise_sampler", "return_info"}


# ------------------------------------------------------------------------------ noise


class GlobalRNGNoise:
    """k-diffusion's ``default_noise_sampler``: ``torch.randn_like`` from the global RNG, drawn
    when a solver asks (so the draws follow k-diffusion's order)."""

    def normal(self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float,
               ) -> Tensor:
        return torch.randn_like(like)


class _KeepLastStep:
    """Passes draws through and keeps those of the latest step (to report churned states)."""

    def __init__(self, inner: NoiseSource) -> None:
        self.inner = inner
        self.kept: dict[tuple[int, int], Tensor] = {}

    def normal(self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float,
               ) -> Tensor:
        if any(k[0] != step for k in self.kept):
            self.kept.clear()
        xi = self.inner.normal(like, step=step, draw=draw, lam_from=lam_from, lam_to=lam_to)
        self.kept[(step, draw)] = xi
        return xi


def _noise(spec: KSampler | None, x: Tensor, sigmas: Tensor, noise_sampler: Any, seed: Any,
           extra_args: dict[str, Any] | None) -> NoiseSource:
    if noise_sampler is not None and seed is not None:
        raise SolverOptionError("pass either noise_sampler or seed, not both")
    if noise_sampler is not None:
        return KDiffusionNoiseSampler(noise_sampler)
    if seed is None and extra_args and isinstance(extra_args.get("seed"), int):
        seed = extra_args["seed"]  # ComfyUI's convention
    positive = sigmas[sigmas > 0]
    lam_range = (-math.log(float(positive.max())), -math.log(float(positive.min())))
    if seed is not None:
        return make_noise(int(seed), x, lam_range=lam_range)
    kind = "streams" if spec is None else spec.default_noise
    if kind == "global":
        return GlobalRNGNoise()
    if kind == "brownian" and lam_range[0] < lam_range[1]:
        tree_seed = int(torch.randint(0, 2**63 - 1, []).item())  # as k-diffusion's default
        return make_noise("brownian", x, seed=tree_seed, lam_range=lam_range)
    return make_noise(None, x)


# ------------------------------------------------------------------------------ runners


def _as_sigmas(sigmas: Any) -> Tensor:
    return torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)


def _denoiser(model: KDenoiser, sigmas: Tensor, extra_args: dict[str, Any] | None,
              headroom: float = 1.0) -> Denoiser:
    positive = sigmas[sigmas > 0]
    return Denoiser.from_kdiffusion(model, sigma_min=float(positive.min()),
                                    sigma_max=float(positive.max()) * headroom,
                                    extra_args=extra_args)


def _translate(callback: Callback | None, x0: Tensor,
               adjust: Callable[[dict[str, Any]], None] | None = None) -> Callback | None:
    """k-diffusion passes the state *before* step i as ``x`` (with that step's ``denoised``);
    :func:`diffsolve.solve` reports the state after it. Translate, keeping ours as x_next."""
    if callback is None:
        return None
    previous = [x0]

    def translated(info: dict[str, Any]) -> None:
        x_next = info["x"]
        out = {**info, "x": previous[0], "x_next": x_next}
        if adjust is not None:
            adjust(out)
        callback(out)
        previous[0] = x_next

    return translated


def _solve(model: Denoiser, x: Tensor, sigmas: Tensor, solver: str, options: dict[str, Any],
           noise: NoiseSource, callback: Callback | None, disable: bool | None,
           open_end: bool = False) -> Tensor:
    """One :func:`diffsolve.solve` over ``sigmas`` (``open_end``: without a final denoise)."""
    if len(sigmas) < 2:
        return x
    progress = None if disable is None else not disable
    return solve(model, x, Grid.from_sigmas(sigmas), solver, noise=noise, callback=callback,
                 progress=progress, denoise_final=False if open_end else None, **options).x


def _run_grid(spec: KSampler | None, solver: str, model: KDenoiser, x: Tensor, sigmas: Any,
              extra_args: dict[str, Any] | None, callback: Callback | None,
              disable: bool | None, options: dict[str, Any]) -> Tensor:
    sig = _as_sigmas(sigmas)
    noise = _noise(spec, x, sig, options.pop("noise_sampler", None), options.pop("seed", None),
                   extra_args)
    cls = solver_class(solver)
    if "lower_order_final" in {f.name for f in fields(cls)}:
        options.setdefault("lower_order_final", False)
    den = _denoiser(model, sig, extra_args)
    return _solve(den, x, sig, solver, options, noise, _translate(callback, x), disable)


def _run_churn(spec: KSampler, model: KDenoiser, x: Tensor, sigmas: Any,
               extra_args: dict[str, Any] | None, callback: Callback | None,
               disable: bool | None, options: dict[str, Any]) -> Tensor:
    """Euler / Heun / DPM-2 with Karras churn (k-diffusion's ``s_churn`` family).

    Without churn the deterministic solver runs. With churn k-diffusion draws one N(0, I)
    tensor per step from the global RNG (used or not) and also churns the final step into
    sigma = 0 (x <- D(x_hat, sigma_hat)); both are reproduced here. The solver is run over the
    finite nodes with S_churn scaled by (N - 1)/N so that its gamma = S_churn/N uses k-diffusion's
    N (every interval, the final one included), and the final step is taken here.
    """
    sig = _as_sigmas(sigmas)
    churn = {k: float(options.pop(k)) for k in ("s_churn", "s_tmin", "s_tmax", "s_noise")}
    get_solver(spec.churn_solver, **churn)  # validates the churn keywords
    noise_sampler, seed = options.pop("noise_sampler", None), options.pop("seed", None)
    if churn["s_churn"] <= 0.0:
        return _run_grid(spec, spec.solver, model, x, sig, extra_args, callback, disable,
                         options)
    steps = len(sig) - 1
    if noise_sampler is None and seed is None and "seed" not in (extra_args or {}):
        noise: NoiseSource = GivenNoise([torch.randn_like(x) for _ in range(steps)])
    else:
        noise = _noise(spec, x, sig, noise_sampler, seed, extra_args)
    noise = _KeepLastStep(noise)
    den = _denoiser(model, sig, extra_args, headroom=1.0 + MAX_GAMMA)
    to_zero = bool(sig[-1] == 0)
    finite = sig[:-1] if to_zero else sig
    options.update(churn)
    if to_zero:
        options["s_churn"] = churn["s_churn"] * (steps - 1) / steps

    def adjust(info: dict[str, Any]) -> None:  # k-diffusion reports the churned state
        s = info["sigma"]
        g = churn_gamma(s, steps, churn["s_churn"], churn["s_tmin"], churn["s_tmax"])
        if g > 0.0:
            s_hat = s * (1.0 + g)
            info["sigma_hat"] = s_hat
            xi = noise.kept.get((info["i"], 0))
            if xi is not None:
                info["x"] = info["x"] + (churn_std(s, s_hat) * churn["s_noise"]) * xi

    x_out = _solve(den, x, finite, spec.churn_solver, options, noise,
                   _translate(callback, x, adjust), disable, open_end=to_zero)
    if not to_zero:
        return x_out
    # the final step into 0, with churn as k-diffusion: x <- D(x_hat, sigma_hat)
    s = float(finite[-1])
    g = churn_gamma(s, steps, churn["s_churn"], churn["s_tmin"], churn["s_tmax"])
    s_hat = s * (1.0 + g)
    x_hat = x_out
    if g > 0.0:
        xi = noise.normal(x_out, step=steps - 1, draw=0, lam_from=-math.log(s),
                          lam_to=math.inf)
        x_hat = x_out + (churn_std(s, s_hat) * churn["s_noise"]) * xi
    d = den.data(x_hat, den.schedule.point(-math.log(s_hat)))
    if callback is not None:
        callback({"x": x_hat, "i": steps - 1, "sigma": s, "sigma_hat": s_hat, "denoised": d,
                  "sigma_next": 0.0, "lam": -math.log(s), "x_next": d})
    return d


def _run_lms(spec: KSampler, model: KDenoiser, x: Tensor, sigmas: Any,
             extra_args: dict[str, Any] | None, callback: Callback | None,
             disable: bool | None, options: dict[str, Any]) -> Tensor:
    """k-diffusion's LMS, whose step into sigma = 0 is a multistep step too: diffsolve's
    ``lms`` with ``final_step="multistep"`` (lower_order_final off)."""
    options.setdefault("final_step", "multistep")
    return _run_grid(spec, "lms", model, x, sigmas, extra_args, callback, disable, options)


def _run_fast(spec: KSampler, model: KDenoiser, x: Tensor, args: dict[str, Any],
              options: dict[str, Any]) -> Tensor:
    check_sigma_range(args["sigma_min"], args["sigma_max"])
    sig = torch.tensor([float(args["sigma_max"]), float(args["sigma_min"])],
                       dtype=torch.float64)
    den = _denoiser(model, sig, args["extra_args"])
    noise = _noise(spec, x, sig, args["noise_sampler"], options.pop("seed", None),
                   args["extra_args"])
    _no_more_options(spec, options)
    return dpm_fast(den, x, float(args["sigma_min"]), float(args["sigma_max"]), int(args["n"]),
                    callback=args["callback"], eta=float(args["eta"]),
                    s_noise=float(args["s_noise"]), noise=noise)


def _run_adaptive(spec: KSampler, model: KDenoiser, x: Tensor, args: dict[str, Any],
                  options: dict[str, Any]) -> Tensor | tuple[Tensor, dict[str, int]]:
    check_sigma_range(args["sigma_min"], args["sigma_max"])
    sig = torch.tensor([float(args["sigma_max"]), float(args["sigma_min"])],
                       dtype=torch.float64).sort(descending=True).values
    den = _denoiser(model, sig, args["extra_args"])
    noise = _noise(spec, x, sig, args["noise_sampler"], options.pop("seed", None),
                   args["extra_args"])
    _no_more_options(spec, options)
    names = ("order", "rtol", "atol", "h_init", "pcoeff", "icoeff", "dcoeff", "accept_safety",
             "eta", "s_noise")
    kw = {k: (int(args[k]) if k == "order" else float(args[k])) for k in names}
    out, info = dpm_adaptive(den, x, float(args["sigma_min"]), float(args["sigma_max"]),
                             callback=args["callback"], noise=noise, **kw)
    return (out, info) if args["return_info"] else out


def _no_more_options(spec: KSampler, options: dict[str, Any]) -> None:
    if options:
        raise SolverOptionError(f"sample_{spec.name} has no option(s) {sorted(options)}")


# ------------------------------------------------------------------------------ factories


def _run_grid_of(spec: KSampler) -> Callable[..., Tensor]:
    def run(spec: KSampler, model: KDenoiser, x: Tensor, sigmas: Any,
            extra_args: dict[str, Any] | None, callback: Callback | None, disable: bool | None,
            options: dict[str, Any]) -> Tensor:
        return _run_grid(spec, spec.solver, model, x, sigmas, extra_args, callback, disable,
                         options)

    return run


def _signature(spec: KSampler) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind, default=d) for n, d in spec.params]
    params.append(inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def make_kdiffusion_sampler(spec: KSampler) -> Callable[..., Any]:
    """The function ``sample_<spec.name>`` with the signature of :data:`SAMPLERS`' entry."""
    sig = _signature(spec)

    @torch.no_grad()
    def sampler(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        extras = dict(a.pop("options"))
        model, x = a["model"], a["x"]
        if spec.run == "fast":
            return _run_fast(spec, model, x, a, extras)
        if spec.run == "adaptive":
            return _run_adaptive(spec, model, x, a, extras)
        if spec.name == "er_sde" and a["noise_scaler"] is not None:
            raise SolverOptionError(
                "sample_er_sde: a custom noise_scaler is not supported; diffsolve's er_sde "
                "offers noise_scale='er_sde' (ComfyUI's default scaler) or 'power' (with eta)")
        options: dict[str, Any] = {}
        for name, _ in spec.params:
            if name in _NOT_OPTIONS or name == "noise_scaler":
                continue
            options[spec.rename.get(name, name)] = a[name]
        clash = sorted(set(extras) & set(options))
        if clash:
            raise SolverOptionError(f"sample_{spec.name}: option(s) {clash} given twice")
        options.update(spec.fixed)
        options.update(extras)
        if "noise_sampler" in a:
            options["noise_sampler"] = a["noise_sampler"]
        runner = {"churn": _run_churn, "lms": _run_lms}.get(spec.run, _run_grid_of(spec))
        try:
            return runner(spec, model, x, a["sigmas"], a["extra_args"], a["callback"],
                          a["disable"], options)
        except SolverOptionError as e:  # name the keyword as the caller wrote it
            renamed = [k for k, v in spec.rename.items() if re.search(rf"\b{v}\b", str(e))]
            if not renamed:
                raise
            raise SolverOptionError(f"sample_{spec.name}: keyword {renamed[0]!r}: {e}") from e

    sampler.__signature__ = sig  # type: ignore[attr-defined]
    sampler.__name__ = sampler.__qualname__ = f"sample_{spec.name}"
    sampler.__doc__ = _doc(spec)
    return sampler


def _doc(spec: KSampler) -> str:
    what = (f"diffsolve's {spec.solver!r} solver" if spec.solver
            else "diffsolve's DPM-Solver steps (diffsolve.kdiffusion_dpm)")
    head = f"{spec.source}'s ``sample_{spec.name}`` computed by {what}."
    body = (solver_class(spec.solver).__doc__ or "").strip() if spec.solver else ""
    return f"{head}\n\n{body}" if body else head


def make_sampler(name: str) -> Callable[..., Tensor]:
    """The k-diffusion-style function of the registered solver ``name`` (any solver)."""
    solver_class(name)  # raises a helpful error for unknown names

    @torch.no_grad()
    def sampler(model: KDenoiser, x: Tensor, sigmas: Tensor,
                extra_args: dict[str, Any] | None = None,
                callback: Callable[[dict[str, Any]], None] | None = None,
                disable: bool | None = None, **options: Any) -> Tensor:
        return _run_grid(None, name, model, x, sigmas, extra_args, callback, disable,
                         dict(options))

    sampler.__name__ = f"sample_{name}"
    sampler.__qualname__ = sampler.__name__
    cls = solver_class(name)
    sampler.__doc__ = (f"k-diffusion-style sampler for diffsolve's {name!r} solver.\n\n"
                       f"{(cls.__doc__ or '').strip()}")
    return sampler


#: k-diffusion / ComfyUI names first; then every other registered solver under its own name.
_FUNCTIONS: dict[str, Callable[..., Any]] = {f"sample_{s.name}": make_kdiffusion_sampler(s)
                                             for s in SAMPLERS}
_FUNCTIONS.update({f"sample_{n}": make_sampler(n) for n in list_solvers()
                   if f"sample_{n}" not in _FUNCTIONS})
globals().update(_FUNCTIONS)
__all__ = ["SAMPLERS", "KSampler", "make_kdiffusion_sampler", "make_sampler", *_FUNCTIONS]


def __getattr__(attr: str) -> Callable[..., Tensor]:
    if attr.startswith("sample_") and attr[len("sample_"):] in list_solvers():
        fn = make_sampler(attr[len("sample_"):])
        globals()[attr] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {f"sample_{n}" for n in list_solvers()})
