"""The command line and the k-diffusion-style API."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import diffsolve
from diffsolve import kdiffusion
from diffsolve.cli import main
from diffsolve.schedules import EDM
from diffsolve.zoo import GaussianMixture


def test_cli_sample_writes_png(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "--model", "gmm", "--n", "300", "--nfe", "8", "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["nfe"] == 8 and summary["solver"] == "dpmpp_2m"
    with Image.open(out) as im:
        assert im.size[0] > 300 and im.size[1] > 300


def test_cli_default_samples_recognisable_digits(tmp_path, capsys):
    """The main job: the shipped digits model, default solver and budget; the shipped
    classifier must recognise most samples confidently."""
    out = tmp_path / "digits.png"
    assert main(["sample", "--n", "64", "--out", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "digits" and summary["nfe"] == 20
    assert summary["confident_fraction"] >= 0.85
    assert sum(summary["class_histogram"]) == 64 and min(summary["class_histogram"]) >= 1
    with Image.open(out) as im:
        assert im.size[0] > 500


def test_cli_rejects_unknown_solver(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--solver", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_lists_solvers(capsys):
    assert main(["solvers"]) == 0
    text = capsys.readouterr().out
    for name in diffsolve.list_solvers():
        assert name in text


@pytest.mark.parametrize("name", diffsolve.list_solvers())
def test_every_solver_has_a_kdiffusion_function(name):
    fn = getattr(kdiffusion, f"sample_{name}")
    assert fn.__name__ == f"sample_{name}"
    assert f"sample_{name}" in dir(kdiffusion)


def test_kdiffusion_function_matches_solve():
    gmm = GaussianMixture.random(d=2, k=3, seed=1)
    sigmas = diffsolve.grids.karras(8, EDM(0.01, 30.0)).sigmas
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x * sigmas[0]
    seen = []
    out = kdiffusion.sample_dpm_solver_3(gmm.kdiffusion_denoiser(), x, sigmas,
                                         callback=seen.append, disable=True, prediction="data")
    ref = diffsolve.solve(gmm.denoiser(EDM(0.01, 30.0)), x, diffsolve.Grid.from_sigmas(sigmas),
                          "dpmpp_3s", progress=False).x
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert len(seen) == 8 and {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(seen[0])


def test_kdiffusion_extra_args_reach_the_model():
    received = {}

    def model(x, sigma, cond=None):
        received["cond"] = cond
        return torch.zeros_like(x)

    sigmas = torch.tensor([5.0, 1.0, 0.0])
    kdiffusion.sample_euler(model, torch.randn(2, 3) * 5, sigmas, extra_args={"cond": "c"},
                            disable=True)
    assert received["cond"] == "c"


def test_kdiffusion_unknown_name():
    with pytest.raises(AttributeError):
        kdiffusion.sample_not_a_solver  # noqa: B018
