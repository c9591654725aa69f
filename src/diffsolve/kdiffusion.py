"""k-diffusion / ComfyUI calling convention for every diffsolve solver.

``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``

* ``model(x, sigma_vector, **extra_args)`` returns the denoised x0 (k-diffusion's
  ``Denoiser`` convention: VE scaling, x = x0 + sigma n);
* ``x`` is already scaled by ``sigmas[0]``;
* ``sigmas`` is a 1-D decreasing tensor, usually ending in 0 (then the last interval is the
  denoising step x <- D(x), as in k-diffusion);
* ``callback`` receives k-diffusion's dict (x, i, sigma, sigma_hat, denoised; x is the state
  at sigma before step i, as in k-diffusion) plus lam, sigma_next and x_next (the state after
  the step); ``disable`` turns the progress bar off;
* ``options`` are the solver's options (see ``diffsolve.get_solver(name).options()``), plus
  ``seed`` (per-sample noise streams keyed by seed and batch index) and ``noise_sampler`` (a
  k-diffusion ``noise_sampler(sigma, sigma_next)``) for stochastic solvers.

Every registered solver is served as ``sample_<name>`` through the module ``__getattr__``;
the names below are also real attributes so that ComfyUI/A1111 lookups and IDEs find them.
Multistep solvers default to ``lower_order_final=False`` here, which is k-diffusion's
behaviour (only the final step into sigma = 0 is first order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from .grids import Grid
from .models import Denoiser
from .sample import solve
from .solvers import list_solvers, solver_class
from .tune import kdiffusion_sigmas as tuned_sigmas  # noqa: F401 - sigmas of a tuned artefact

KDenoiser = Callable[..., Tensor]


def _run(name: str, model: KDenoiser, x: Tensor, sigmas: Tensor,
         extra_args: dict[str, Any] | None, callback: Callable[[dict[str, Any]], None] | None,
         disable: bool | None, options: dict[str, Any]) -> Tensor:
    grid = Grid.from_sigmas(torch.as_tensor(sigmas).detach().to("cpu", torch.float64))
    positive = grid.sigmas[grid.sigmas > 0]
    den = Denoiser.from_kdiffusion(model, sigma_min=float(positive.min()),
                                   sigma_max=float(positive.max()), extra_args=extra_args)
    cls = solver_class(name)
    if "lower_order_final" in {f.name for f in fields(cls)}:
        options.setdefault("lower_order_final", False)
    noise: Any = options.pop("seed", None)
    sampler = options.pop("noise_sampler", None)
    if sampler is not None:
        from .noise import KDiffusionNoiseSampler

        noise = KDiffusionNoiseSampler(sampler)
    progress = None if disable is None else not disable
    result = solve(den, x, grid, name, noise=noise, callback=_pre_step_callback(callback, x),
                   progress=progress, **options)
    return result.x


def _pre_step_callback(callback: Callable[[dict[str, Any]], None] | None, x0: Tensor,
                       ) -> Callable[[dict[str, Any]], None] | None:
    """k-diffusion passes the state *before* step i as ``x`` (with that step's ``denoised``);
    :func:`diffsolve.solve` reports the state after it. Translate, keeping ours as x_next."""
    if callback is None:
        return None
    previous = [x0]

    def translated(info: dict[str, Any]) -> None:
        x_next = info["x"]
        callback({**info, "x": previous[0], "x_next": x_next})
        previous[0] = x_next

    return translated


def make_sampler(name: str) -> Callable[..., Tensor]:
    """The k-diffusion-style function of the registered solver ``name``."""
    solver_class(name)  # raises a helpful error for unknown names

    @torch.no_grad()
    def sampler(model: KDenoiser, x: Tensor, sigmas: Tensor,
                extra_args: dict[str, Any] | None = None,
                callback: Callable[[dict[str, Any]], None] | None = None,
                disable: bool | None = None, **options: Any) -> Tensor:
        return _run(name, model, x, sigmas, extra_args, callback, disable, dict(options))

    sampler.__name__ = f"sample_{name}"
    sampler.__qualname__ = sampler.__name__
    cls = solver_class(name)
    sampler.__doc__ = (f"k-diffusion-style sampler for diffsolve's {name!r} solver.\n\n"
                       f"{(cls.__doc__ or '').strip()}")
    return sampler


sample_euler = make_sampler("euler")
sample_heun = make_sampler("heun")
sample_ddim = make_sampler("ddim")
sample_dpm_solver_1 = make_sampler("dpm_solver_1")
sample_dpm_solver_2 = make_sampler("dpm_solver_2")
sample_dpm_solver_3 = make_sampler("dpm_solver_3")
sample_dpmpp_2s = make_sampler("dpmpp_2s")
sample_dpmpp_3s = make_sampler("dpmpp_3s")
sample_dpmpp_2m = make_sampler("dpmpp_2m")
sample_dpmpp_3m = make_sampler("dpmpp_3m")
sample_dpmpp_2m_sde = make_sampler("dpmpp_2m_sde")
sample_dpmpp_3m_sde = make_sampler("dpmpp_3m_sde")
sample_seeds_1 = make_sampler("seeds_1")
sample_seeds_2 = make_sampler("seeds_2")
sample_seeds_3 = make_sampler("seeds_3")
sample_sa_solver = make_sampler("sa_solver")
sample_euler_maruyama = make_sampler("euler_maruyama")
sample_ddpm = make_sampler("ddpm")
sample_ddim_eta = make_sampler("ddim_eta")
sample_euler_ancestral = make_sampler("euler_ancestral")
sample_edm_stochastic = make_sampler("edm_stochastic")
sample_er_sde = make_sampler("er_sde")
sample_unipc = make_sampler("unipc")
sample_deis = make_sampler("deis")
sample_ipndm = make_sampler("ipndm")
sample_lms = make_sampler("lms")
sample_dpmpp_2m_hb = make_sampler("dpmpp_2m_hb")
sample_plms_hb = make_sampler("plms_hb")
sample_ghvb = make_sampler("ghvb")
sample_forward_value = make_sampler("forward_value")
sample_dpm_solver_v3 = make_sampler("dpm_solver_v3")


def __getattr__(attr: str) -> Callable[..., Tensor]:
    if attr.startswith("sample_") and attr[len("sample_"):] in list_solvers():
        fn = make_sampler(attr[len("sample_"):])
        globals()[attr] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {f"sample_{n}" for n in list_solvers()})
