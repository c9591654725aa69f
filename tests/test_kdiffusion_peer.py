"""diffsolve's k-diffusion functions against k-diffusion's own samplers (its sampling.py,
loaded alone: tests/peers.py), on the same denoiser, sigmas and injected noise.

Pinned deliberate differences of k-diffusion's ``sample_dpmpp_3m_sde`` (docs/kdiffusion.md):
its second (warm-up) step uses the phi_2 ("heun") weight of the first difference where our
3M uses DPM-Solver++(2M)'s midpoint rule, and its third-order steps weight the second divided
difference by half the Taylor coefficient (docs/solvers.md); ours uses exact exponential
Adams weights. The first (first-order) step agrees.
"""

from __future__ import annotations

import pytest
import torch

from diffsolve import kdiffusion as ds
from diffsolve.zoo import GaussianMixture
from peers import load_kdiffusion_sampling

K = load_kdiffusion_sampling()


@pytest.fixture(scope="module")
def setup():
    gmm = GaussianMixture.random(d=4, k=3, seed=1)
    model = gmm.kdiffusion_denoiser()
    sigmas = K.get_sigmas_karras(12, 0.02, 40.0, device="cpu").to(torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return model, sigmas, x * sigmas[0]


def table_noise(sigmas: torch.Tensor, shape: tuple[int, ...]):
    """The same N(0, I) draw for the interval starting at each sigma, for both libraries."""
    gen = torch.Generator().manual_seed(123)
    keys = [float(s) for s in sigmas]
    draws = [torch.randn(shape, dtype=torch.float64, generator=gen) for _ in keys]

    def sampler(sigma, sigma_next):  # our sigmas come back from lambda: match the nearest
        k = min(range(len(keys)), key=lambda j: abs(keys[j] - float(sigma)))
        assert abs(keys[k] - float(sigma)) < 1e-9 * keys[k]
        return draws[k]

    return sampler


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
def test_ode_samplers_match_kdiffusion(setup, name):
    model, sigmas, x = setup
    ref = getattr(K, f"sample_{name}")(model, x.clone(), sigmas, disable=True)
    ours = getattr(ds, f"sample_{name}")(model, x.clone(), sigmas, disable=True)
    rel = float((ours - ref).abs().max() / ref.abs().max())
    assert rel < 1e-10, f"{name}: {rel}"


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_dpmpp_2m_sde_matches_kdiffusion_with_the_same_noise(setup, solver_type, eta):
    model, sigmas, x = setup
    kwargs = {"eta": eta, "s_noise": 1.0, "solver_type": solver_type}
    ref = K.sample_dpmpp_2m_sde(model, x.clone(), sigmas, disable=True,
                                noise_sampler=table_noise(sigmas, x.shape), **kwargs)
    ours = ds.sample_dpmpp_2m_sde(model, x.clone(), sigmas, disable=True,
                                  noise_sampler=table_noise(sigmas, x.shape), **kwargs)
    rel = float((ours - ref).abs().max() / ref.abs().max())
    assert rel < 1e-10, rel


def test_euler_ancestral_matches_kdiffusion_with_the_same_noise(setup):
    model, sigmas, x = setup
    ref = K.sample_euler_ancestral(model, x.clone(), sigmas, disable=True,
                                   noise_sampler=table_noise(sigmas, x.shape))
    ours = ds.sample_euler_ancestral(model, x.clone(), sigmas, disable=True,
                                     noise_sampler=table_noise(sigmas, x.shape))
    rel = float((ours - ref).abs().max() / ref.abs().max())
    assert rel < 1e-10, rel


def test_callbacks_carry_kdiffusion_keys(setup):
    model, sigmas, x = setup
    seen_ref, seen_ours = [], []
    K.sample_dpmpp_2m(model, x.clone(), sigmas, disable=True, callback=seen_ref.append)
    ds.sample_dpmpp_2m(model, x.clone(), sigmas, disable=True, callback=seen_ours.append)
    assert len(seen_ref) == len(seen_ours) == len(sigmas) - 1
    for a, b in zip(seen_ref, seen_ours, strict=True):
        assert {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(b)
        assert a["i"] == b["i"] and float(a["sigma"]) == pytest.approx(float(b["sigma"]))
        torch.testing.assert_close(a["denoised"], b["denoised"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a["x"], b["x"], rtol=1e-10, atol=1e-10)  # pre-step state


def test_3m_sde_difference_is_pinned(setup):
    """Same first step; different from the second on (see the module docstring)."""
    model, sigmas, x = setup
    traj_ref, traj_ours = [], []
    K.sample_dpmpp_3m_sde(model, x.clone(), sigmas, eta=0.0, disable=True,
                          callback=lambda d: traj_ref.append(d["x"]))
    ds.sample_dpmpp_3m_sde(model, x.clone(), sigmas, eta=0.0, disable=True,
                           callback=lambda d: traj_ours.append(d["x"]))
    # callbacks report the state before step k: [1] is after the first step
    torch.testing.assert_close(traj_ours[1], traj_ref[1], rtol=1e-10, atol=1e-10)
    for k in (2, 3, 6):
        diff = float((traj_ours[k] - traj_ref[k]).abs().max() / traj_ref[k].abs().max())
        assert diff > 1e-6, (k, diff)
    # the second step is exactly our 2M SDE step with the phi_2 ("heun") weight
    two = []
    ds.sample_dpmpp_2m_sde(model, x.clone(), sigmas, eta=0.0, solver_type="heun",
                           disable=True, callback=lambda d: two.append(d["x"]))
    torch.testing.assert_close(two[2], traj_ref[2], rtol=1e-10, atol=1e-10)
