r"""Model wrapper: turn any network into the data prediction D(x, lambda) that solvers call.

A diffusion network may predict the noise (eps), the data (x0), the velocity v, the score, a
flow velocity, or the raw output F of an EDM-preconditioned network. All are affine in the
output, so one call gives D, and the noise prediction follows as eps = (x - alpha D)/sigma
(:func:`eps_from_data`) without another evaluation.

Conversions (x = alpha x0 + sigma eps throughout):

* eps:   D = (x - sigma eps_hat) / alpha                         (Ho et al. 2020, eq. 4)
* x0:    D = x0_hat
* v:     v = alpha eps - sigma x0  =>  D = (alpha x - sigma v) / (alpha^2 + sigma^2)
  (Salimans & Ho 2022, Sec. 4; equals alpha x - sigma v for VP schedules)
* score: score = -eps/sigma  =>  D = (x + sigma^2 score) / alpha
* flow:  v = alpha' x0 + sigma' eps (time derivative of the forward path)
  =>  D = (sigma' x - sigma v) / (sigma' alpha - sigma alpha')  (Lipman et al. 2023; for
  rectified flow alpha = 1 - t, sigma = t this is D = x - t v)
* edm:   D = c_skip x~ + c_out F(c_in x~, c_noise) with x~ = x/alpha, s = sigma/alpha,
  c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2),
  c_noise = log(s)/4   (Karras et al. 2022, Table 1)

Classifier-free guidance (Ho & Salimans 2022, eq. 6) combines the conditional and
unconditional predictions as D = D_u + w (D_c - D_u); both come from one batched network call
by default and count as one NFE, the convention of the sampling literature.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import IncompatibleModelError
from .schedules import EDM, EvalPoint, NoiseSchedule
from .validation import check_cond_batch

Prediction = Literal["eps", "x0", "v", "score", "flow", "edm"]
TimeInput = Literal["t", "sigma", "lambda", "edm"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score", "flow", "edm")
_DTYPE_ERROR = re.compile(r"dtype|scalar type|Double|Half|BFloat16|Float\b")


def data_from_output(out: Tensor, x: Tensor, point: EvalPoint, prediction: str,
                     schedule: NoiseSchedule | None = None) -> Tensor:
    """Convert a network output of the given parameterization into the data prediction D.

    ``x`` is the state in the schedule's own scaling. For ``prediction="edm"`` pass the
    already-combined D (see :class:`Denoiser`); it is returned unchanged.
    """
    a, s = point.alpha, point.sigma
    if prediction == "eps":
        return (x - s * out) / a
    if prediction in ("x0", "edm"):
        return out
    if prediction == "v":
        return (a * x - s * out) / (a * a + s * s)
    if prediction == "score":
        return (x + s * s * out) / a
    if prediction == "flow":
        if schedule is None:
            raise IncompatibleModelError("the flow parameterization needs the schedule")
        da, ds = schedule.d_alpha_dt(point.t), schedule.d_sigma_dt(point.t)
        return (ds * x - s * out) / (ds * a - s * da)
    raise IncompatibleModelError(
        f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def edm_preconditioning(sigma: float, sigma_data: float) -> tuple[float, float, float]:
    """(c_skip, c_out, c_in) of EDM preconditioning at sigma~ = ``sigma`` (Karras et al. 2022,
    Table 1): c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2)."""
    var = sigma * sigma + sigma_data * sigma_data
    return sigma_data * sigma_data / var, sigma * sigma_data / var**0.5, 1.0 / var**0.5


def eps_from_data(x: Tensor, d: Tensor, point: EvalPoint) -> Tensor:
    """Noise prediction implied by a data prediction: eps = (x - alpha D) / sigma."""
    return (x - point.alpha * d) / point.sigma


class Denoiser:
    """The data prediction D(x, lambda) of a network, with an NFE counter.

    Args:
        net: callable ``net(x_in, time_in, **kwargs) -> Tensor`` of x's shape.
        schedule: the noise schedule the network was trained with.
        prediction: what the network outputs: "eps", "x0", "v", "score", "flow" or "edm"
            (raw output F of an EDM-preconditioned network).
        time_input: what the network receives as its time argument: "t" (the schedule's time;
            for :class:`DiscreteVP` the fractional training index), "sigma" (sigma/alpha, the
            k-diffusion convention), "lambda", "edm" (c_noise = log(sigma/alpha)/4) or a
            callable ``f(point) -> float``. Default: "edm" for prediction="edm", else "t".
        input_scaling: "none" feeds x as is; "ve" feeds x/alpha (k-diffusion denoisers take
            variance-exploding inputs). EDM preconditioning always scales by c_in/alpha.
        sigma_data: the data standard deviation of EDM preconditioning (default 0.5).
        guidance_scale: classifier-free guidance weight w (None: no guidance; w = 1 is the
            conditional model alone).
        cond, uncond: keyword arguments of the conditional and unconditional calls.
        batched_guidance: run both guidance branches as one batched call (tensor kwargs are
            concatenated along dim 0).
        model_dtype: dtype the network runs in (e.g. torch.float16); inputs are cast to it and
            outputs back to the solver state's dtype. None: leave inputs as they are.
        extra_args: keyword arguments passed to every call (merged under ``cond``/``uncond``).
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        schedule: NoiseSchedule,
        *,
        prediction: Prediction = "eps",
        time_input: TimeInput | Callable[[EvalPoint], float] | None = None,
        input_scaling: Literal["none", "ve"] = "none",
        sigma_data: float = 0.5,
        guidance_scale: float | None = None,
        cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
        batched_guidance: bool = True,
        model_dtype: torch.dtype | None = None,
        extra_args: Mapping[str, Any] | None = None,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise IncompatibleModelError(
                f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if input_scaling not in ("none", "ve"):
            raise IncompatibleModelError(
                f"input_scaling must be 'none' or 've', got {input_scaling!r}")
        if time_input is None:
            time_input = "edm" if prediction == "edm" else "t"
        if not callable(time_input) and time_input not in ("t", "sigma", "lambda", "edm"):
            raise IncompatibleModelError(
                "time_input must be 't', 'sigma', 'lambda', 'edm' or a callable, "
                f"got {time_input!r}")
        if guidance_scale is not None and uncond is None:
            raise IncompatibleModelError(
                "classifier-free guidance needs `uncond` (the unconditional call's kwargs)")
        if prediction == "flow" and input_scaling == "ve":
            raise IncompatibleModelError(
                "prediction='flow' is defined in the schedule's own scaling; use "
                "input_scaling='none'")
        if sigma_data <= 0:
            raise IncompatibleModelError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.time_input = time_input
        self.input_scaling = input_scaling
        self.sigma_data = float(sigma_data)
        self.guidance_scale = guidance_scale
        self.cond = dict(cond or {})
        self.uncond = dict(uncond or {})
        self.batched_guidance = batched_guidance
        self.model_dtype = model_dtype
        self.extra_args = dict(extra_args or {})
        self.nfe = 0

    # construction helpers ---------------------------------------------------------------
    @classmethod
    def from_kdiffusion(cls, model: Callable[..., Tensor], *, sigma_min: float = 0.002,
                        sigma_max: float = 80.0, extra_args: Mapping[str, Any] | None = None,
                        ) -> Denoiser:
        """Wrap a k-diffusion style denoiser ``model(x, sigma_vector, **extra) -> x0``."""
        return cls(model, EDM(sigma_min, sigma_max), prediction="x0", time_input="sigma",
                   extra_args=extra_args)

    def reset_nfe(self) -> None:
        self.nfe = 0

    # evaluation ---------------------------------------------------------------------------
    def _time_value(self, point: EvalPoint) -> float:
        ti = self.time_input
        if callable(ti):
            return float(ti(point))
        if ti == "t":
            return point.t
        if ti == "sigma":
            return point.sigma_edm
        if ti == "lambda":
            return point.lam
        return 0.25 * math.log(point.sigma_edm)

    def _call_net(self, x_in: Tensor, time_value: float, kwargs: Mapping[str, Any]) -> Tensor:
        dtype = self.model_dtype or x_in.dtype
        # the time input stays in float32 (float64 for float64 models): half precision would
        # round e.g. the discrete timestep 999 to 1000
        t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        t_vec = torch.full((x_in.shape[0],), time_value, dtype=t_dtype, device=x_in.device)
        try:
            out = self.net(x_in.to(dtype), t_vec, **kwargs)
        except RuntimeError as e:
            if not _DTYPE_ERROR.search(str(e)):
                raise
            raise IncompatibleModelError(
                f"the network failed on a {str(dtype).replace('torch.', '')} input of shape "
                f"{tuple(x_in.shape)} ({e}); its weights probably have another dtype: pass "
                "model_dtype=<the network's dtype> to Denoiser (the solver state keeps its own "
                "dtype) or cast the network") from e
        if not isinstance(out, Tensor) or out.shape != x_in.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise IncompatibleModelError(
                f"the network returned {got} for an input of shape {tuple(x_in.shape)}; it must "
                "return a tensor of the input's shape (drop learned-variance channels first)")
        if not out.is_floating_point():
            raise IncompatibleModelError(
                f"the network returned a {str(out.dtype).replace('torch.', '')} tensor; it "
                "must return floating-point values (eps, x0, v, ... predictions)")
        return out

    def _raw(self, x_in: Tensor, time_value: float) -> Tensor:
        """The network output, with classifier-free guidance applied to it (affine, so
        guiding the raw output equals guiding D for every parameterization)."""
        check_cond_batch(self, x_in.shape[0])
        base = self.extra_args
        if self.guidance_scale is None:
            return self._call_net(x_in, time_value, {**base, **self.cond})
        w = self.guidance_scale
        cond, uncond = {**base, **self.cond}, {**base, **self.uncond}
        if self.batched_guidance:
            kwargs = _concat_kwargs(cond, uncond)
            both = self._call_net(torch.cat([x_in, x_in]), time_value, kwargs)
            out_c, out_u = both.chunk(2)
        else:
            out_c = self._call_net(x_in, time_value, cond)
            out_u = self._call_net(x_in, time_value, uncond)
        return out_u + w * (out_c - out_u)

    def data(self, x: Tensor, point: EvalPoint) -> Tensor:
        """D(x, lambda): the model's estimate of E[x0 | x_t = x]; counts one NFE."""
        self.nfe += 1
        state_dtype = x.dtype
        if self.prediction == "edm":
            c_skip, c_out, c_in = edm_preconditioning(point.sigma_edm, self.sigma_data)
            x_ve = x / point.alpha
            f = self._raw(x_ve * c_in, self._time_value(point)).to(state_dtype)
            return c_skip * x_ve + c_out * f
        x_in = x / point.alpha if self.input_scaling == "ve" else x
        out = self._raw(x_in, self._time_value(point)).to(state_dtype)
        if self.input_scaling == "ve" and self.prediction != "x0":
            # a VE-input network predicting eps/v/score sees alpha = 1, sigma = sigma/alpha
            ve_point = EvalPoint(point.lam, point.t, 1.0, point.sigma_edm)
            return data_from_output(out, x_in, ve_point, self.prediction, self.schedule)
        return data_from_output(out, x, point, self.prediction, self.schedule)

    __call__ = data


def _concat_kwargs(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    if cond.keys() != uncond.keys():
        missing = sorted(set(cond) ^ set(uncond))
        raise IncompatibleModelError(
            f"batched guidance needs the same keyword names in cond and uncond; differ: {missing}")
    merged: dict[str, Any] = {}
    for k, vc in cond.items():
        vu = uncond[k]
        if isinstance(vc, Tensor) and isinstance(vu, Tensor):
            merged[k] = torch.cat([vc, vu])
        elif vc is vu or vc == vu:
            merged[k] = vc
        else:
            raise IncompatibleModelError(
                f"cond[{k!r}] and uncond[{k!r}] differ and are not tensors; pass "
                "batched_guidance=False")
    return merged
