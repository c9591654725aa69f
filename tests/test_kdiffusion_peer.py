"""diffsolve.kdiffusion against k-diffusion 0.1.1.post1's own samplers (its sampling.py, loaded
alone: tests/peers.py), on the same denoiser, sigmas and injected noise, in float64.

Every ``sample_*`` of that sampling.py is covered (checked against the module itself), with
k-diffusion's signature (names, order, defaults) and its output to 1e-10 relative, callbacks
included. Noise is injected identically: through a shared ``noise_sampler`` keyed by the
(sigma, sigma_next) it is called with, or, for the churn samplers (k-diffusion has no
noise_sampler there), by seeding the global RNG before each call. ComfyUI's extra names are
checked against ComfyUI's signatures (read from comfy/k_diffusion/sampling.py; ComfyUI is not
installed here).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from diffsolve import Grid, SolverOptionError, solve
from diffsolve import kdiffusion as ds
from diffsolve.models import Denoiser
from diffsolve.zoo import GaussianMixture
from peers import load_kdiffusion_sampling

K = load_kdiffusion_sampling()
TOL = 1e-10


@pytest.fixture(autouse=True)
def float64_default():
    """k-diffusion's dpm_fast / dpm_adaptive build their lambda grid with torch.tensor(float),
    i.e. in the default dtype: float64 makes the comparison a float64 one."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def setup():
    gmm = GaussianMixture.random(d=4, k=3, seed=1)
    model = gmm.kdiffusion_denoiser()
    sigmas = K.get_sigmas_karras(12, 0.02, 40.0, device="cpu").to(torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return model, sigmas, x * sigmas[0]


class KeyedNoise:
    """A k-diffusion noise_sampler returning one fixed N(0, I) draw per (sigma, sigma_next)
    pair (matched to 1e-9 relative), shared by both libraries' runs."""

    def __init__(self, shape: tuple[int, ...], seed: int = 123) -> None:
        self.shape = shape
        self.gen = torch.Generator().manual_seed(seed)
        self.draws: list[tuple[float, float, torch.Tensor]] = []

    def __call__(self, sigma, sigma_next):
        s, sn = float(sigma), float(sigma_next)
        for a, b, t in self.draws:
            if abs(a - s) <= 1e-9 * a and abs(b - sn) <= 1e-9 * b:
                return t
        t = torch.randn(self.shape, dtype=torch.float64, generator=self.gen)
        self.draws.append((s, sn, t))
        return t


# (name, keywords, noise): noise "sampler" = a shared KeyedNoise, "global" = seeded global RNG
CASES = [
    ("euler", {}, None),
    ("euler", {"s_churn": 2.0}, "global"),  # gamma = 2/12, below the sqrt(2) - 1 cap
    ("euler", {"s_churn": 5.0, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 1.01}, "global"),
    ("euler_ancestral", {}, "sampler"),
    ("euler_ancestral", {"eta": 0.5, "s_noise": 0.9}, "sampler"),
    ("heun", {}, None),
    ("heun", {"s_churn": 2.0, "s_noise": 1.003}, "global"),
    ("dpm_2", {}, None),
    ("dpm_2", {"s_churn": 3.0, "s_tmin": 0.05}, "global"),
    ("dpm_2_ancestral", {}, "sampler"),
    ("dpm_2_ancestral", {"eta": 0.5, "s_noise": 0.9}, "sampler"),
    ("lms", {}, None),
    ("lms", {"order": 2}, None),
    ("lms", {"order": 3}, None),
    ("dpm_fast", {"n": 10}, "sampler"),
    ("dpm_fast", {"n": 11, "eta": 0.5}, "sampler"),
    ("dpm_fast", {"n": 8, "eta": 1.0, "s_noise": 0.9}, "sampler"),
    ("dpm_adaptive", {}, None),
    ("dpm_adaptive", {"order": 2, "rtol": 0.01}, None),
    ("dpm_adaptive", {"eta": 0.5, "pcoeff": 0.1, "dcoeff": 0.05}, "sampler"),
    ("dpmpp_2s_ancestral", {}, "sampler"),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, None),
    ("dpmpp_sde", {}, "sampler"),
    ("dpmpp_sde", {"eta": 0.5, "s_noise": 0.9, "r": 0.3}, "sampler"),
    ("dpmpp_2m", {}, None),
    ("dpmpp_2m_sde", {}, "sampler"),
    ("dpmpp_2m_sde", {"eta": 0.5, "solver_type": "heun"}, "sampler"),
    ("dpmpp_3m_sde", {}, "sampler"),
    ("dpmpp_3m_sde", {"eta": 0.0}, "sampler"),
    ("dpmpp_3m_sde", {"eta": 0.5, "s_noise": 0.9}, "sampler"),
]
SIGMA_RANGE = {"dpm_fast", "dpm_adaptive"}  # (sigma_min, sigma_max[, n]) instead of sigmas


def run_pair(setup, name: str, kwargs: dict, noise: str | None):
    """(k-diffusion's result, ours, k-diffusion's callbacks, ours)."""
    model, sigmas, x = setup
    kwargs = dict(kwargs)
    if name in SIGMA_RANGE:
        args = (model, x.clone(), 0.02, 40.0)
    else:
        args = (model, x.clone(), sigmas)
    if noise == "sampler":
        kwargs["noise_sampler"] = KeyedNoise(tuple(x.shape))
    results, calls = [], []
    for lib in (K, ds):
        seen: list[dict] = []
        if noise == "global":
            torch.manual_seed(7)
        fn = getattr(lib, f"sample_{name}")
        out = fn(*args, disable=True, callback=seen.append, **kwargs)
        results.append(out)
        calls.append(seen)
    return results[0], results[1], calls[0], calls[1]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(("name", "kwargs", "noise"), CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
def test_matches_kdiffusion(setup, name, kwargs, noise):
    ref, ours, seen_ref, seen_ours = run_pair(setup, name, kwargs, noise)
    assert rel_diff(ours, ref) < TOL, f"{name} {kwargs}: {rel_diff(ours, ref)}"
    assert len(seen_ref) == len(seen_ours) > 0
    for a, b in zip(seen_ref, seen_ours, strict=True):
        assert a["i"] == b["i"]
        for key in ("sigma", "sigma_hat"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=TOL), key
        torch.testing.assert_close(b["denoised"], a["denoised"], rtol=TOL, atol=TOL)
        torch.testing.assert_close(b["x"], a["x"], rtol=TOL, atol=TOL)


def test_every_kdiffusion_sampler_is_covered():
    theirs = {n[len("sample_"):] for n, f in vars(K).items()
              if n.startswith("sample_") and callable(f)}
    table = {s.name for s in ds.SAMPLERS if s.source.startswith("k-diffusion")}
    assert theirs == table
    assert theirs == {name for name, _, _ in CASES}


@pytest.mark.parametrize("name", sorted(s.name for s in ds.SAMPLERS
                                        if s.source.startswith("k-diffusion")))
def test_signature_equals_kdiffusion(name):
    theirs = inspect.signature(getattr(K, f"sample_{name}")).parameters
    ours = inspect.signature(getattr(ds, f"sample_{name}")).parameters
    named = [p for p in ours.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    assert [p.name for p in named] == list(theirs)
    for p in named:
        assert p.default == theirs[p.name].default, p.name
        assert p.kind == theirs[p.name].kind, p.name


# ComfyUI comfy/k_diffusion/sampling.py (read at commit 02159d8; ComfyUI is not installed)
COMFYUI = {
    "seeds_2": "(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, "
               "s_noise=1.0, noise_sampler=None, r=0.5, solver_type='phi_1', **options)",
    "seeds_3": "(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, "
               "s_noise=1.0, noise_sampler=None, r_1=0.3333333333333333, "
               "r_2=0.6666666666666666, **options)",
    "sa_solver": "(model, x, sigmas, extra_args=None, callback=None, disable=False, "
                 "tau_func=None, s_noise=1.0, noise_sampler=None, predictor_order=3, "
                 "corrector_order=4, use_pece=False, simple_order_2=False, **options)",
    "er_sde": "(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, "
              "noise_sampler=None, noise_scaler=None, max_stage=3, **options)",
    "lcm": "(model, x, sigmas, extra_args=None, callback=None, disable=None, "
           "noise_sampler=None, **options)",
}


@pytest.mark.parametrize("name", sorted(COMFYUI))
def test_comfyui_names_and_keywords(name, setup):
    fn = getattr(ds, f"sample_{name}")
    assert str(inspect.signature(fn)) == COMFYUI[name]
    model, sigmas, x = setup
    out = fn(model, x.clone(), sigmas, disable=True, noise_sampler=KeyedNoise(tuple(x.shape)))
    assert torch.isfinite(out).all()


def test_comfyui_keywords_reach_the_solver(setup):
    """Renamed keywords mean the same as the solver's own options."""
    model, sigmas, x = setup
    pairs = [("seeds_3", {"r_1": 0.25, "r_2": 0.75}, {"r1": 0.25, "r2": 0.75}),
             ("er_sde", {"max_stage": 2}, {"order": 2}),
             ("sa_solver", {"use_pece": True, "tau_func": lambda s: 0.5},
              {"pece": True, "tau": lambda s: 0.5})]
    for name, comfy, own in pairs:
        noise = KeyedNoise(tuple(x.shape))
        a = getattr(ds, f"sample_{name}")(model, x.clone(), sigmas, disable=True,
                                          noise_sampler=noise, **comfy)
        b = ds.make_sampler(name)(model, x.clone(), sigmas, disable=True, noise_sampler=noise,
                                  **own)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        c = getattr(ds, f"sample_{name}")(model, x.clone(), sigmas, disable=True,
                                          noise_sampler=noise)
        assert rel_diff(c, a) > 1e-6, name  # the keyword changed something


def test_positional_call_like_kdiffusion(setup):
    model, sigmas, x = setup
    ref = K.sample_euler(model, x.clone(), sigmas, None, None, True, 0.0)
    ours = ds.sample_euler(model, x.clone(), sigmas, None, None, True, 0.0)
    assert rel_diff(ours, ref) < TOL


def test_churn_consumes_the_global_rng_as_kdiffusion(setup):
    model, sigmas, x = setup
    states = []
    for lib in (K, ds):
        torch.manual_seed(3)
        lib.sample_heun(model, x.clone(), sigmas, disable=True, s_churn=2.0)
        states.append(torch.random.get_rng_state())
    assert torch.equal(states[0], states[1])


def test_dpm_adaptive_info_matches(setup):
    model, _, x = setup
    _, info_ref = K.sample_dpm_adaptive(model, x.clone(), 0.02, 40.0, disable=True,
                                        return_info=True)
    _, info = ds.sample_dpm_adaptive(model, x.clone(), 0.02, 40.0, disable=True,
                                     return_info=True)
    assert info == info_ref
    assert info["n_reject"] >= 1  # the PID controller's rejection path is exercised


def test_lms_last_step_is_a_multistep_step(setup):
    """k-diffusion's LMS steps into sigma = 0 with its multistep formula; diffsolve's ``lms``
    solver (as every solver through :func:`diffsolve.solve`) ends with x <- D(x). The
    function follows k-diffusion; the solver alone would be far off (so the check can fail)."""
    model, sigmas, x = setup
    ref = K.sample_lms(model, x.clone(), sigmas, disable=True)
    den = Denoiser.from_kdiffusion(model, sigma_min=0.02, sigma_max=40.0)
    plain = solve(den, x.clone(), Grid.from_sigmas(sigmas), "lms", lower_order_final=False,
                  progress=False).x
    assert rel_diff(plain, ref) > 1e-3
    assert rel_diff(ds.sample_lms(model, x.clone(), sigmas, disable=True), ref) < TOL


def test_3m_sde_adams_option_differs_from_the_second_step(setup):
    """``variant="adams"`` (exact exponential Adams weights, diffsolve's solver default) agrees
    with k-diffusion on the first step only; the k-diffusion function's default is
    k-diffusion's update (test_matches_kdiffusion)."""
    model, sigmas, x = setup
    traj_ref, traj_ours = [], []
    K.sample_dpmpp_3m_sde(model, x.clone(), sigmas, eta=0.0, disable=True,
                          callback=lambda d: traj_ref.append(d["x"]))
    ds.sample_dpmpp_3m_sde(model, x.clone(), sigmas, eta=0.0, disable=True, variant="adams",
                           callback=lambda d: traj_ours.append(d["x"]))
    torch.testing.assert_close(traj_ours[1], traj_ref[1], rtol=TOL, atol=TOL)
    for k in (2, 3, 6):
        assert rel_diff(traj_ours[k], traj_ref[k]) > 1e-6, k


def test_seed_and_comfyui_seed(setup):
    """``seed=`` (or ComfyUI's extra_args["seed"]) gives per-sample streams: reproducible and
    independent of the global RNG."""
    model, sigmas, x = setup

    def kmodel(x, sigma, seed=None):
        return model(x, sigma)

    torch.manual_seed(0)
    a = ds.sample_dpmpp_2s_ancestral(model, x.clone(), sigmas, disable=True, seed=4)
    torch.manual_seed(1)
    b = ds.sample_dpmpp_2s_ancestral(kmodel, x.clone(), sigmas, disable=True,
                                     extra_args={"seed": 4})
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = ds.sample_dpmpp_2s_ancestral(model, x.clone(), sigmas, disable=True, seed=5)
    assert rel_diff(c, a) > 1e-3


@pytest.mark.parametrize(("call", "match"), [
    (lambda m, s, x: ds.sample_euler(m, x, s, bogus=1), "bogus"),
    (lambda m, s, x: ds.sample_dpm_2(m, x, s, s_churn=-1.0), "s_churn"),
    (lambda m, s, x: ds.sample_dpmpp_sde(m, x, s, r=0.0), "r"),
    (lambda m, s, x: ds.sample_dpm_fast(m, x, 0.0, 40.0, 5), "sigma_min"),
    (lambda m, s, x: ds.sample_dpm_adaptive(m, x, 0.02, 40.0, order=4), "order"),
    (lambda m, s, x: ds.sample_er_sde(m, x, s, noise_scaler=lambda v: v), "noise_scaler"),
    (lambda m, s, x: ds.sample_lms(m, x, s, order=5), "keyword 'order'"),
    (lambda m, s, x: ds.sample_er_sde(m, x, s, max_stage=4), "keyword 'max_stage'"),
    (lambda m, s, x: ds.sample_dpmpp_3m_sde(m, x, s, variant="x"), "variant"),
    (lambda m, s, x: ds.sample_seeds_2(m, x, s, eta=-1.0), "eta"),
    (lambda m, s, x: ds.sample_euler_ancestral(m, x, s, seed=1, noise_sampler=print), "either"),
])
def test_bad_keywords_raise_one_clear_error(setup, call, match):
    model, sigmas, x = setup
    with pytest.raises(SolverOptionError, match=match):
        call(model, sigmas, x.clone())


def test_churn_with_a_sigma_range_past_the_models(setup):
    """Churn raises sigma by up to sqrt(2) above sigmas[0]: k-diffusion evaluates the model
    there, and so does this function (the wrapper's sigma range has that headroom)."""
    model, sigmas, x = setup
    seen = []
    ds.sample_euler(model, x.clone(), sigmas, disable=True, s_churn=100.0,
                    callback=seen.append)
    assert float(seen[0]["sigma_hat"]) == pytest.approx(float(sigmas[0]) * math.sqrt(2.0))


def test_lcm_is_denoise_then_renoise(setup):
    """ComfyUI's LCM step written out: x <- D(x, sigma_i) + sigma_{i+1} xi (xi from the noise
    sampler), and the final step into 0 is x <- D."""
    model, sigmas, x = setup
    noise = KeyedNoise(tuple(x.shape))
    expected = x.clone()
    for i in range(len(sigmas) - 1):
        d = model(expected, sigmas[i] * torch.ones(x.shape[0]))
        expected = d + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1]) if sigmas[i + 1] > 0 else d
    ours = ds.sample_lcm(model, x.clone(), sigmas, disable=True, noise_sampler=noise)
    assert rel_diff(ours, expected) < TOL


@pytest.mark.parametrize("n", [5, 6, 10])
def test_dpm_fast_and_adaptive_spend_the_stated_evaluations(setup, n):
    """dpm_fast uses exactly n model calls; dpm_adaptive's embedded pair shares evaluations,
    so its real call count equals its reported nfe (order per trial step)."""
    model, _, x = setup
    calls = []

    def counted(x, sigma, **kw):
        calls.append(1)
        return model(x, sigma, **kw)

    ds.sample_dpm_fast(counted, x.clone(), 0.02, 40.0, n, disable=True)
    assert len(calls) == n
    calls.clear()
    _, info = ds.sample_dpm_adaptive(counted, x.clone(), 0.02, 40.0, disable=True,
                                     order=2 if n % 2 else 3, return_info=True)
    assert len(calls) == info["nfe"] == info["steps"] * (2 if n % 2 else 3)
