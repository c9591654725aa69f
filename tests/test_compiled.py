"""compiled_sampler: the whole loop under torch.compile equals solve() (CUDA graphs: GPU only)."""

from __future__ import annotations

import pytest
import torch

from diffsolve import Denoiser, solve
from diffsolve.compiled import compiled_sampler
from diffsolve.errors import SolverOptionError
from diffsolve.grids import karras
from diffsolve.schedules import EDM
from diffsolve.zoo import GaussianMixture

SCHED = EDM(sigma_min=0.002, sigma_max=20.0)


def _tiny_net_model() -> Denoiser:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))

    def f(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x / (1 + sigma[:, None] ** 2) + 0.1 * net(
            torch.cat([x, sigma[:, None].log()], dim=1))

    return Denoiser(f, SCHED, prediction="x0", time_input="sigma")


@pytest.mark.parametrize("backend, solver", [
    ("eager", "euler"), ("eager", "heun"), ("eager", "dpmpp_2m"), ("eager", "dpmpp_2m_sde"),
    ("aot_eager", "dpmpp_3m"), ("aot_eager", "dpmpp_2m_sde")])
def test_compiled_loop_matches_solve(backend: str, solver: str) -> None:
    torch._dynamo.reset()
    model = _tiny_net_model()
    grid = karras(6, SCHED)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1)) * 20.0
    with torch.no_grad():
        ref = solve(model, x, grid, solver, seed=3, offset=10, progress=False).x
        sampler = compiled_sampler(model, (5, 2), grid, solver, mode="compile",
                                   backend=backend, seed=3, offset=10)
        nfe0 = model.nfe
        got = sampler(x)
    assert model.nfe - nfe0 == sampler.nfe
    if backend == "eager":
        assert torch.equal(got, ref)
    else:
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, x)


def test_eager_mode_and_noise_replay_match_solve() -> None:
    model = GaussianMixture.default_2d().denoiser(SCHED)
    grid = karras(8, SCHED)
    x = torch.randn(4, 2, dtype=torch.float64) * 20.0
    sampler = compiled_sampler(model, (4, 2), grid, "euler_ancestral", mode="eager", seed=5,
                               dtype=torch.float64)
    ref = solve(model, x, grid, "euler_ancestral", seed=5).x
    assert torch.equal(sampler(x), ref)
    assert torch.equal(sampler(x), ref)  # the same noise on every call


def test_wrong_input_and_mode_rejected() -> None:
    model = _tiny_net_model()
    grid = karras(4, SCHED)
    sampler = compiled_sampler(model, (3, 2), grid, "euler", mode="eager")
    with pytest.raises(SolverOptionError, match=r"built for \(3, 2\)"):
        sampler(torch.zeros(4, 2))
    with pytest.raises(SolverOptionError, match="mode"):
        compiled_sampler(model, (3, 2), grid, "euler", mode="jit")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(SolverOptionError, match="CUDA"):
            compiled_sampler(model, (3, 2), grid, "euler", mode="cuda_graph")


@pytest.mark.slow
def test_inductor_compiled_loop_matches_solve() -> None:
    torch._dynamo.reset()
    model = _tiny_net_model()
    grid = karras(6, SCHED)
    x = torch.randn(5, 2) * 20.0
    with torch.no_grad():
        ref = solve(model, x, grid, "dpmpp_2m_sde", seed=3, progress=False).x
        got = compiled_sampler(model, (5, 2), grid, "dpmpp_2m_sde", seed=3)(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_matches_solve() -> None:
    model = _tiny_net_model()
    model_net_device = "cuda"
    grid = karras(6, SCHED)
    x = (torch.randn(5, 2) * 20.0).to(model_net_device)
    for p in model.net.__closure__ or ():  # move the tiny net's weights
        obj = p.cell_contents
        if isinstance(obj, torch.nn.Module):
            obj.to(model_net_device)
    with torch.no_grad():
        ref = solve(model, x, grid, "dpmpp_2m_sde", seed=3, progress=False).x
        sampler = compiled_sampler(model, (5, 2), grid, "dpmpp_2m_sde", mode="cuda_graph",
                                   seed=3, device="cuda")
        got = sampler(x)
        got2 = sampler(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, got2)
