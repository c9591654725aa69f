"""Tests of diffsolve.models: every parameterization recovers x0 from an exact fake network."""

from __future__ import annotations

import math

import pytest
import torch

from diffsolve.errors import IncompatibleModelError
from diffsolve.models import PREDICTIONS, Denoiser, data_from_output, eps_from_data
from diffsolve.schedules import EDM, DiscreteVP, EvalPoint, NoiseSchedule, RectifiedFlow, VPLinear

SCHEDULES = {
    "discrete": DiscreteVP.linear(),
    "vp_linear": VPLinear(),
    "edm": EDM(),
    "rf": RectifiedFlow(),
}
FRACTIONS = (0.02, 0.5, 0.97)  # positions inside [lam_min, lam_max]


def _data(seed: int = 0, shape=(3, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    n = torch.randn(shape, generator=g, dtype=torch.float64)
    return x0, n


def _point(s: NoiseSchedule, frac: float) -> EvalPoint:
    return s.point(s.lam_min + frac * (s.lam_max - s.lam_min))


def _derivs(name: str, s: NoiseSchedule, t: float) -> tuple[float, float]:
    """(alpha', sigma') written independently where a closed form exists."""
    if name == "vp_linear":
        a = math.exp(-0.25 * t * t * (s.beta_max - s.beta_min) - 0.5 * t * s.beta_min)
        da = a * (-0.5 * t * (s.beta_max - s.beta_min) - 0.5 * s.beta_min)
        return da, -a * da / math.sqrt(1 - a * a)
    if name == "edm":
        return 0.0, 1.0
    if name == "rf":
        return -1.0, 1.0
    return s.d_alpha_dt(t), s.d_sigma_dt(t)  # piecewise table: the schedule's own


def _target(pred: str, name: str, s: NoiseSchedule, p: EvalPoint, x0, n, sigma_data=0.5):
    """The exact output a perfect network of the given parameterization returns."""
    a, sg = p.alpha, p.sigma
    if pred == "eps":
        return n
    if pred == "x0":
        return x0
    if pred == "v":
        return a * n - sg * x0
    if pred == "score":
        return -n / sg
    if pred == "flow":
        da, ds = _derivs(name, s, p.t)
        return da * x0 + ds * n
    if pred == "edm":
        x = a * x0 + sg * n
        sv = sg / a
        c_skip = sigma_data**2 / (sv**2 + sigma_data**2)
        c_out = sv * sigma_data / math.sqrt(sv**2 + sigma_data**2)
        return (x0 - c_skip * x / a) / c_out
    raise AssertionError(pred)


class Recorder:
    """Fake network: returns a fixed tensor and records what it was called with."""

    def __init__(self, out_fn) -> None:
        self.out_fn = out_fn
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict]] = []

    def __call__(self, x_in, t_in, **kwargs):
        self.calls.append((x_in, t_in, kwargs))
        return self.out_fn(x_in, t_in, **kwargs)


@pytest.mark.parametrize("frac", FRACTIONS)
@pytest.mark.parametrize("pred", PREDICTIONS)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_prediction_recovers_x0(name: str, pred: str, frac: float) -> None:
    s = SCHEDULES[name]
    p = _point(s, frac)
    x0, n = _data(10 * PREDICTIONS.index(pred) + list(SCHEDULES).index(name))
    x = p.alpha * x0 + p.sigma * n
    out = _target(pred, name, s, p, x0, n)
    net = Recorder(lambda xi, ti: out.clone())
    den = Denoiser(net, s, prediction=pred)
    d = den.data(x, p)
    assert d.dtype == torch.float64 and d.shape == x0.shape
    torch.testing.assert_close(d, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(eps_from_data(x, d, p), n, rtol=0, atol=1e-8)
    assert den.nfe == 1 and len(net.calls) == 1
    x_in, t_in, _ = net.calls[0]
    if pred == "edm":  # EDM preconditioning: c_in x / alpha and c_noise = log(sigma~)/4
        sv = p.sigma_edm
        torch.testing.assert_close(x_in, x / p.alpha / math.sqrt(sv**2 + 0.25), rtol=1e-15,
                                   atol=0)
        assert torch.allclose(t_in, torch.full((3,), 0.25 * math.log(sv), dtype=torch.float64),
                              rtol=1e-15, atol=0)
    else:
        assert torch.equal(x_in, x)
        assert torch.equal(t_in, torch.full((3,), p.t, dtype=torch.float64))


@pytest.mark.parametrize("pred", ["eps", "x0", "v", "score", "flow"])
def test_data_from_output_directly(pred: str) -> None:
    s = SCHEDULES["vp_linear"]
    p = _point(s, 0.3)
    x0, n = _data(7)
    x = p.alpha * x0 + p.sigma * n
    d = data_from_output(_target(pred, "vp_linear", s, p, x0, n), x, p, pred, s)
    torch.testing.assert_close(d, x0, rtol=0, atol=1e-12)


def test_data_from_output_errors() -> None:
    p = _point(SCHEDULES["rf"], 0.5)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(IncompatibleModelError, match="needs the schedule"):
        data_from_output(x, x, p, "flow")
    with pytest.raises(IncompatibleModelError, match=r"unknown prediction 'noise'.*eps, x0, v"):
        data_from_output(x, x, p, "noise")


def test_v_prediction_is_alpha_x_minus_sigma_v_for_vp() -> None:
    s = SCHEDULES["discrete"]
    p = _point(s, 0.4)
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)
    v = torch.linspace(2, 0, 6, dtype=torch.float64)
    torch.testing.assert_close(data_from_output(v, x, p, "v"), p.alpha * x - p.sigma * v,
                               rtol=1e-14, atol=1e-15)


def test_rectified_flow_velocity_formula() -> None:
    s = SCHEDULES["rf"]
    p = _point(s, 0.6)
    x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    v = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(data_from_output(v, x, p, "flow", s), x - p.t * v, rtol=1e-13,
                               atol=1e-14)


# ---------------------------------------------------------------- time inputs and scaling
@pytest.mark.parametrize(
    ("time_input", "expected"),
    [
        ("t", lambda p: p.t),
        ("sigma", lambda p: p.sigma / p.alpha),
        ("lambda", lambda p: p.lam),
        ("edm", lambda p: 0.25 * math.log(p.sigma / p.alpha)),
        (lambda p: 1000.0 * p.t + 3.0, lambda p: 1000.0 * p.t + 3.0),
    ],
)
def test_time_input_variants(time_input, expected) -> None:
    s = SCHEDULES["discrete"]
    p = _point(s, 0.37)
    x0, n = _data(11)
    net = Recorder(lambda xi, ti: n.clone())
    d = Denoiser(net, s, prediction="eps", time_input=time_input)(p.alpha * x0 + p.sigma * n, p)
    torch.testing.assert_close(d, x0, rtol=0, atol=1e-10)
    t_in = net.calls[0][1]
    assert t_in.shape == (3,) and t_in.dtype == torch.float64
    assert torch.allclose(t_in, torch.full((3,), expected(p), dtype=torch.float64), rtol=1e-14,
                          atol=0)


def test_default_time_input_depends_on_prediction() -> None:
    s = SCHEDULES["vp_linear"]
    assert Denoiser(lambda x, t: x, s).time_input == "t"
    assert Denoiser(lambda x, t: x, s, prediction="edm").time_input == "edm"
    assert Denoiser(lambda x, t: x, s, prediction="edm", time_input="sigma").time_input == "sigma"


@pytest.mark.parametrize("pred", ["eps", "x0", "v", "score"])
def test_input_scaling_ve(pred: str) -> None:
    """A VE-input network (k-diffusion convention) sees x/alpha, alpha = 1, sigma = sigma~."""
    s = SCHEDULES["vp_linear"]
    p = _point(s, 0.25)
    x0, n = _data(5)
    x = p.alpha * x0 + p.sigma * n
    sv = p.sigma_edm
    out = {"eps": n, "x0": x0, "v": n - sv * x0, "score": -n / sv}[pred]
    net = Recorder(lambda xi, ti: out.clone())
    d = Denoiser(net, s, prediction=pred, input_scaling="ve", time_input="sigma")(x, p)
    torch.testing.assert_close(d, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(net.calls[0][0], x / p.alpha, rtol=1e-15, atol=0)
    assert float(net.calls[0][1][0]) == pytest.approx(sv, rel=1e-15)


# ---------------------------------------------------------------- classifier-free guidance
def _cond_net():
    # output depends on the class label y (a tensor kwarg) and on a non-tensor kwarg
    def f(x_in, t_in, y, scale=1.0):
        return scale * (0.1 * x_in + y[:, None].to(x_in.dtype) * torch.arange(
            x_in.shape[1], dtype=x_in.dtype) + t_in[:, None])
    return Recorder(f)


@pytest.mark.parametrize("w", [0.0, 1.0, 4.5])
@pytest.mark.parametrize("pred", ["eps", "x0", "v", "edm"])
def test_cfg_combines_conditional_and_unconditional(pred: str, w: float) -> None:
    s = SCHEDULES["discrete"]
    p = _point(s, 0.6)
    x, _ = _data(9)
    y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    yu = torch.zeros(3, dtype=torch.float64)
    d_c = Denoiser(_cond_net(), s, prediction=pred, cond={"y": y}).data(x, p)
    d_u = Denoiser(_cond_net(), s, prediction=pred, cond={"y": yu}).data(x, p)
    assert not torch.allclose(d_c, d_u)
    results = {}
    for batched in (True, False):
        net = _cond_net()
        den = Denoiser(net, s, prediction=pred, guidance_scale=w, cond={"y": y},
                       uncond={"y": yu}, batched_guidance=batched, extra_args={"scale": 2.0})
        d = den.data(x, p)
        d_c2 = Denoiser(_cond_net(), s, prediction=pred, cond={"y": y, "scale": 2.0}).data(x, p)
        d_u2 = Denoiser(_cond_net(), s, prediction=pred, cond={"y": yu, "scale": 2.0}).data(x, p)
        torch.testing.assert_close(d, d_u2 + w * (d_c2 - d_u2), rtol=1e-12, atol=1e-12)
        den.data(x, p)
        den(x, p)
        assert den.nfe == 3
        if batched:
            assert len(net.calls) == 3
            x_in, t_in, kw = net.calls[0]
            assert x_in.shape == (6, 4) and t_in.shape == (6,)
            assert torch.equal(kw["y"], torch.cat([y, yu])) and kw["scale"] == 2.0
        else:
            assert len(net.calls) == 6
            assert torch.equal(net.calls[0][2]["y"], y) and torch.equal(net.calls[1][2]["y"], yu)
        results[batched] = d
        den.reset_nfe()
        assert den.nfe == 0
    torch.testing.assert_close(results[True], results[False], rtol=1e-15, atol=1e-15)


def test_cfg_scale_one_is_conditional_model() -> None:
    s = SCHEDULES["edm"]
    p = _point(s, 0.5)
    x, _ = _data(2)
    y = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    d1 = Denoiser(_cond_net(), s, guidance_scale=1.0, cond={"y": y},
                  uncond={"y": torch.zeros(3, dtype=torch.float64)}).data(x, p)
    d = Denoiser(_cond_net(), s, cond={"y": y}).data(x, p)
    torch.testing.assert_close(d1, d, rtol=1e-14, atol=1e-14)


def test_cfg_mismatched_kwargs() -> None:
    s = SCHEDULES["edm"]
    p = _point(s, 0.5)
    x, _ = _data(1)
    y = torch.ones(3)
    den = Denoiser(_cond_net(), s, guidance_scale=2.0, cond={"y": y}, uncond={"z": y})
    with pytest.raises(IncompatibleModelError, match=r"same keyword names.*\['y', 'z'\]"):
        den.data(x, p)
    den = Denoiser(_cond_net(), s, guidance_scale=2.0, cond={"y": y, "scale": 1.0},
                   uncond={"y": y, "scale": 3.0})
    with pytest.raises(IncompatibleModelError, match="differ and are not tensors"):
        den.data(x, p)
    # unbatched guidance accepts differing non-tensor kwargs
    den = Denoiser(_cond_net(), s, guidance_scale=2.0, cond={"y": y, "scale": 1.0},
                   uncond={"y": y, "scale": 3.0}, batched_guidance=False)
    assert den.data(x, p).shape == x.shape
    with pytest.raises(IncompatibleModelError, match="needs `uncond`"):
        Denoiser(_cond_net(), s, guidance_scale=2.0, cond={"y": y})


# ---------------------------------------------------------------- dtypes and shapes
@pytest.mark.parametrize("model_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pred", ["eps", "edm"])
def test_model_dtype_casts_input_and_returns_state_dtype(model_dtype, state_dtype, pred) -> None:
    s = SCHEDULES["discrete"]
    p = _point(s, 0.5)
    x0, n = _data(4)
    x = (p.alpha * x0 + p.sigma * n).to(state_dtype)
    out = _target(pred, "discrete", s, p, x0, n)

    def f(x_in, t_in):
        return out.to(x_in.dtype)

    net = Recorder(f)
    d = Denoiser(net, s, prediction=pred, model_dtype=model_dtype).data(x, p)
    x_in, t_in, _ = net.calls[0]
    assert x_in.dtype == model_dtype
    assert t_in.dtype.is_floating_point
    assert d.dtype == state_dtype
    tol = 0.05 if model_dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(d.double(), x0, rtol=0, atol=tol * 4)


def test_no_model_dtype_leaves_input_alone() -> None:
    s = SCHEDULES["edm"]
    p = _point(s, 0.5)
    x = torch.ones(2, 3, dtype=torch.float32)
    net = Recorder(lambda xi, ti: xi)
    d = Denoiser(net, s, prediction="x0").data(x, p)
    assert net.calls[0][0].dtype == torch.float32 and net.calls[0][1].dtype == torch.float32
    assert d.dtype == torch.float32


def test_wrong_output_shape_names_shapes() -> None:
    s = SCHEDULES["edm"]
    p = _point(s, 0.5)
    x = torch.zeros(2, 4, dtype=torch.float64)
    den = Denoiser(lambda xi, ti: torch.zeros(2, 8, dtype=xi.dtype), s)
    with pytest.raises(IncompatibleModelError, match=r"returned \(2, 8\).*input of shape \(2, 4\)"):
        den.data(x, p)
    den = Denoiser(lambda xi, ti: (xi, xi), s)
    with pytest.raises(IncompatibleModelError, match="returned tuple"):
        den.data(x, p)
    # with batched guidance the doubled batch is what must come back
    den = Denoiser(lambda xi, ti, **k: xi[: xi.shape[0] // 2], s, guidance_scale=3.0, uncond={})
    with pytest.raises(IncompatibleModelError, match=r"returned \(2, 4\).*shape \(4, 4\)"):
        den.data(x, p)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prediction": "noise"}, r"unknown prediction 'noise'; choose one of eps, x0, v"),
        ({"input_scaling": "vp"}, r"input_scaling must be 'none' or 've'"),
        ({"time_input": "timestep"}, "time_input must be"),
        ({"sigma_data": 0.0}, "sigma_data must be positive"),
    ],
)
def test_constructor_validation(kwargs, match: str) -> None:
    with pytest.raises(IncompatibleModelError, match=match):
        Denoiser(lambda x, t: x, SCHEDULES["edm"], **kwargs)


def test_edm_sigma_data_is_used() -> None:
    s = SCHEDULES["edm"]
    p = _point(s, 0.4)
    x0, n = _data(6)
    out = _target("edm", "edm", s, p, x0, n, sigma_data=1.3)
    d = Denoiser(lambda xi, ti: out.clone(), s, prediction="edm", sigma_data=1.3).data(
        p.alpha * x0 + p.sigma * n, p)
    torch.testing.assert_close(d, x0, rtol=0, atol=1e-10)
    d_wrong = Denoiser(lambda xi, ti: out.clone(), s, prediction="edm").data(
        p.alpha * x0 + p.sigma * n, p)
    assert not torch.allclose(d_wrong, x0, atol=1e-3)


def test_from_kdiffusion() -> None:
    x0, n = _data(8)
    seen = {}

    def kmodel(x, sigma, *, cond=None):
        seen["sigma"], seen["x"], seen["cond"] = sigma, x, cond
        return x0.clone()

    den = Denoiser.from_kdiffusion(kmodel, sigma_min=0.03, sigma_max=14.6,
                                   extra_args={"cond": "c"})
    assert isinstance(den.schedule, EDM)
    assert (den.schedule.sigma_min, den.schedule.sigma_max) == (0.03, 14.6)
    assert den.prediction == "x0" and den.time_input == "sigma"
    p = den.schedule.point(-math.log(2.5))
    x = x0 + 2.5 * n
    d = den(x, p)
    torch.testing.assert_close(d, x0, rtol=0, atol=0)
    assert torch.allclose(seen["sigma"], torch.full((3,), 2.5, dtype=torch.float64),
                          rtol=1e-15, atol=0)
    assert torch.equal(seen["x"], x) and seen["cond"] == "c"
    assert den.nfe == 1
