"""Half-precision models with a float32 solver state.

The shipped digits U-Net (0.92 M parameters, EDM preconditioning) runs in bfloat16 or float16
through ``Denoiser(model_dtype=...)``: inputs are cast to the network's dtype, outputs back to
the state's float32, so every solver update (the exponential-integrator weights, the
multistep history, the injected noise) stays in float32. The samples must agree with the
all-float32 run to 1e-2 relative (Frobenius norm over the batch) for euler and float16, and
to 2.5e-2 for the other bfloat16 ODE runs.

Measured on CPU (8 samples, NFE 10, seed 3, noise streams v2; relative error to float32):
bfloat16: euler 0.0038, dpmpp_2m 0.0095, heun 0.0125, dpmpp_3m 0.0112, dpmpp_2m_sde 0.0138;
float16: dpmpp_2m 0.00062, dpmpp_2m_sde 0.0006. With the version-1 noise streams the
bfloat16 ODE errors were 0.0059-0.0089: they depend on the draw, and bfloat16's unit
roundoff (2^-8 = 0.0039) accumulated over 10 evaluations puts them at about 1e-2, so their
bound is 2.5e-2 (2x the largest measured). The SDE run at bfloat16 can amplify the network's
rounding differences (eta = 1 doubles the drift's data term; 0.026 with v1 noise), so its
bound is 5e-2.
"""

from __future__ import annotations

import pytest
import torch

from diffsolve import sample
from diffsolve.models import Denoiser
from diffsolve.zoo.pretrained import load_model

SHAPE = (8, 1, 8, 8)


@pytest.fixture(scope="module")
def reference() -> Denoiser:
    return load_model("digits")


def _half(dtype: torch.dtype) -> tuple[Denoiser, list[torch.dtype]]:
    model = load_model("digits")
    model.net = model.net.to(dtype)
    model.model_dtype = dtype
    seen: list[torch.dtype] = []
    inner = model.net

    def net(x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        seen.append(x.dtype)
        return inner(x, c_noise)

    model.net = net
    return model, seen


def _run(model: Denoiser, solver: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return sample(model, SHAPE, solver=solver, nfe=10, seed=3, dtype=dtype).x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


CASES = [
    (torch.bfloat16, "euler", 1e-2),
    (torch.bfloat16, "dpmpp_2m", 2.5e-2),
    (torch.bfloat16, "heun", 2.5e-2),
    (torch.bfloat16, "dpmpp_3m", 2.5e-2),
    (torch.bfloat16, "dpmpp_2m_sde", 5e-2),
    (torch.float16, "dpmpp_2m", 1e-2),
    (torch.float16, "dpmpp_2m_sde", 1e-2),
]


@pytest.mark.parametrize("dtype, solver, tol", CASES)
def test_half_network_float32_state(reference: Denoiser, dtype: torch.dtype, solver: str,
                                    tol: float) -> None:
    model, seen = _half(dtype)
    ref = _run(reference, solver)
    got = _run(model, solver)
    assert got.dtype == torch.float32  # the state stays float32
    assert seen and set(seen) == {dtype}  # the network really ran in half precision
    assert torch.isfinite(got).all()
    err = _rel(got, ref)
    assert err < tol, f"{dtype} {solver}: relative error {err:.4g}"
    assert err > 0  # it is a real half-precision run, not a float32 one


def test_float32_state_beats_half_state(reference: Denoiser) -> None:
    """Keeping the solver state in float32 matters: the same bfloat16 network with a bfloat16
    state (every update rounded to 8 mantissa bits) is further from float32."""
    ref = _run(reference, "dpmpp_2m")
    model, _ = _half(torch.bfloat16)
    mixed = _rel(_run(model, "dpmpp_2m"), ref)
    model_b, _ = _half(torch.bfloat16)
    all_half = _rel(_run(model_b, "dpmpp_2m", dtype=torch.bfloat16).float(), ref)
    assert mixed < all_half, (mixed, all_half)
