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
    with pytest.raises(SystemExit) as e:
        main(["sample", "--solver", "dpmpp_2n"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice" in err and len(err.splitlines()) == 1


# every bad input of the report (issue 15), each: exit code 2, one line on stderr, no traceback
BAD = [
    ["sample", "--nfe", "0"], ["sample", "--nfe", "-1"], ["sample", "--model", "gmm", "--nfe", "1"],
    ["sample", "--n", "0"], ["sample", "--n", "-5"], ["sample", "--grid", "bogus"],
    ["sample", "--grid", "{missing}.json"], ["sample", "--grid", "{bad_json}"],
    ["sample", "--out", "{file}/x.png"], ["sample", "--device", "cuda:99"],
    ["sample", "--nfe", "100000000"], ["sample", "--model", "nope"],
    ["sample", "--out", "x.xyz"], ["sample", "--option", "eta"],
    ["sample", "--solver", "dpmpp_2m_sde", "--option", "eta=-1"],
    ["sample", "--solver", "dpmpp_2m_sde", "--option", "eta=abc"],
    ["sample", "--option", "nope=1"], ["sample", "--solver-options", "{bad"],
    ["sample", "--seed", "-1"], ["sample", "--model", "{card_bad}"],
    ["generate", "--model", "gmm", "--n", "10", "--nfe", "1", "--out", "{tmp}/g"],
    ["generate", "--model", "gmm", "--n", "10", "--device", "cuda:99", "--out", "{tmp}/g"],
    ["generate", "--model", "gmm", "--n", "10", "--format", "png", "--out", "{tmp}/g"],
    ["generate", "--model", "gmm", "--n", "10", "--out", "{file}"],
    ["generate", "--model", "gmm", "--n", "0", "--out", "{tmp}/g"],
    ["bench", "--nfe", "5,x"], ["bench", "--nfe", "0"], ["bench", "--model", "cifar"],
    ["gamma", "--reference", "nope"], ["gamma", "--family", "cifar"],
    ["train", "--steps", "0", "--out", "{tmp}/t"], ["train", "--lr", "nan", "--out", "{tmp}/t"],
    ["train", "--dataset", "cifar", "--out", "{tmp}/t"], ["solvers", "--bogus"], ["nope"], [],
]


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) or "empty" for a in BAD])
def test_cli_bad_input_is_one_line_exit_2(argv, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "card.safetensors").write_bytes(b"")
    (tmp_path / "card.json").write_text("{")
    sub = {"{tmp}": str(tmp_path), "{file}": str(tmp_path / "file"),
           "{missing}": str(tmp_path / "missing"), "{bad_json}": str(tmp_path / "bad.json"),
           "{card_bad}": str(tmp_path / "card.safetensors")}
    args = []
    for a in argv:
        for k, v in sub.items():
            a = a.replace(k, v)
        args.append(a)
    with pytest.raises(SystemExit) as e:
        main([*args, "--quiet"] if args[:1] in (["sample"], ["generate"]) else args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err


def test_cli_reports_real_path_nfe_used_and_options(tmp_path, capsys):
    out = tmp_path / "noext"
    assert main(["sample", "--model", "gmm", "--n", "200", "--nfe", "30", "--solver",
                 "seeds_2", "--out", str(out), "--quiet"]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["image"] == str(out) + ".png" and (tmp_path / "noext.png").exists()
    assert summary["nfe"] == 29 and summary["nfe_requested"] == 30
    assert "seeds_2 used 29 NFE, not the 30 asked" in cap.err
    assert main(["sample", "--model", "gmm", "--n", "100", "--nfe", "8", "--solver",
                 "dpmpp_2m_sde", "--option", "eta=0.5", "--solver-options", '{"s_noise": 0.9}',
                 "--out", str(tmp_path / "e.png"), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["solver_options"] == {"eta": 0.5, "s_noise": 0.9}


def test_cli_sample_model_path_and_device(tmp_path, capsys):
    from diffsolve.zoo.pretrained import WEIGHTS_DIR

    out = tmp_path / "m.png"
    assert main(["sample", "--model", str(WEIGHTS_DIR / "moons.safetensors"), "--n", "100",
                 "--nfe", "6", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert out.exists()


def test_cli_help_is_plain_and_complete(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("sample", "solvers", "generate", "bench", "gamma", "train"):
        assert f"  {cmd} " in text
    assert "``" not in text and ":func:" not in text
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 20;" in text and "(default: None)" not in text
    assert "(default: dpmpp_2m)" in text and "(default: 0)" in text  # solver, seed
    assert text.count("dpmpp_3m_sde") == 0  # the 31 names are not dumped (diffsolve solvers)


def _gmm_model():
    return GaussianMixture.default_2d().denoiser(EDM(sigma_min=0.002, sigma_max=20.0))


@pytest.mark.parametrize("kwargs, match", [
    ({"nfe": "10"}, r"nfe must be an integer >= 1 and <= 100000, got '10' \(str\)"),
    ({"nfe": 10.5}, r"nfe must be an integer.*got 10.5 \(float\)"),
    ({"nfe": True}, r"nfe must be an integer.*got True \(bool\)"),
    ({"nfe": 10**9}, r"nfe must be an integer >= 1 and <= 100000, got 1000000000"),
    ({"steps": 0}, r"steps must be an integer >= 1"),
    ({"nfe": 50, "grid": [80.0, 10.0, 1.0, 0.0]}, r"nfe=50 disagrees with the given grid"),
    ({"steps": 5, "grid": [80.0, 10.0, 1.0, 0.0]}, r"steps=5 disagrees with the given grid"),
    ({"nfe": 10, "seed": -1}, r"seed must be an integer >= 0"),
    ({"nfe": 10, "device": "cuda:99"}, r"device='cuda:99'"),
    ({"nfe": 10, "dtype": torch.int64}, r"dtype must be a floating torch.dtype"),
    ({"nfe": 10, "solver": "dpmpp_2m_sde", "eta": "x"}, r"option eta must be a float"),
])
def test_api_errors_name_the_argument(kwargs, match):
    with pytest.raises(diffsolve.DiffsolveError, match=match) as e:
        diffsolve.sample(_gmm_model(), (4, 2), **kwargs)
    assert "\n" not in str(e.value)


def test_api_shape_and_budget_checks_before_allocating():
    model = _gmm_model()
    with pytest.raises(diffsolve.DiffsolveError, match=r"shape\[0\] must be an integer >= 1"):
        diffsolve.sample(model, (-3, 2), nfe=4)
    with pytest.raises(diffsolve.DiffsolveError, match=r"needs about .* GiB .* but cpu has"):
        diffsolve.sample(model, (10**12, 2), nfe=4)  # ~16 TB: refused, not allocated
    ok = diffsolve.sample(model, (4, 2), nfe=3, grid=[20.0, 10.0, 1.0, 0.0])  # agrees: fine
    assert ok.nfe == 3


def test_api_cond_batch_mismatch_is_named():
    def net(x, t, y):
        return x * 0 + y[:, None]

    den = diffsolve.Denoiser(net, EDM(), prediction="x0", cond={"y": torch.zeros(3)})
    with pytest.raises(diffsolve.IncompatibleModelError,
                       match=r"cond\['y'\] has batch 3 .* x has 4 samples"):
        diffsolve.sample(den, (4, 2), nfe=4)
    den = diffsolve.Denoiser(net, EDM(), prediction="x0", cond={"y": torch.zeros(4)})
    assert diffsolve.sample(den, (4, 2), nfe=4).x.shape == (4, 2)


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
