"""The shipped learned known-density models: hash-checked weights, a network that is close to
(but not exactly) the exact mixture denoiser, registered as benchmark models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffsolve.errors import IncompatibleModelError
from diffsolve.zoo import gmm_learned, pretrained


@pytest.mark.parametrize("name", sorted(gmm_learned.LEARNED))
def test_card_hash_size_and_loading(name):
    w = pretrained.WEIGHTS_DIR / f"{name}.safetensors"
    card = json.loads((pretrained.WEIGHTS_DIR / f"{name}.json").read_text())
    assert gmm_learned.sha256_of(w) == card["weights_sha256"]
    assert w.stat().st_size < 400_000  # a few hundred KB at most
    assert name in pretrained.list_models()
    gmm, den = gmm_learned.load_learned(name)
    assert den.shape == (gmm.dim,) and card["net"]["in_dim"] == gmm.dim


@pytest.mark.parametrize("name", sorted(gmm_learned.LEARNED))
def test_learned_denoiser_is_close_to_the_exact_one(name):
    """On noisy data x = x0 + sigma n the network's D is within a modest RMS of the exact
    posterior mean (it learned the mixture), yet not equal to it (its own error remains).
    Measured RMS / (exact denoiser's own RMS error): 0.02-0.06 (2-D), 0.05-0.10 (16-D) at
    sigma = 0.05, 0.5, 5; the bound is 0.5 (+0.02)."""
    gmm, den = gmm_learned.load_learned(name)
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample(2000, g)
    for sigma in (0.05, 0.5, 5.0):
        x = (x0 + sigma * torch.randn(x0.shape, dtype=torch.float64, generator=g)).float()
        import math

        point = den.schedule.point(-math.log(sigma))
        d_net = den(x, point).double()
        d_exact = gmm.denoise(x.double(), 1.0, sigma)
        rms = float((d_net - d_exact).pow(2).mean().sqrt())
        scale = float((x0 - d_exact).pow(2).mean().sqrt())  # the exact denoiser's own error
        assert 1e-4 < rms < 0.5 * scale + 0.02, (sigma, rms, scale)


def test_hash_mismatch_is_refused(tmp_path, monkeypatch):
    name = "gmm_learned_2d"
    for suffix in (".safetensors", ".json"):
        shutil.copy(pretrained.WEIGHTS_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    card = json.loads((tmp_path / f"{name}.json").read_text())
    card["weights_sha256"] = "0" * 64
    (tmp_path / f"{name}.json").write_text(json.dumps(card))
    monkeypatch.setattr(gmm_learned, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(IncompatibleModelError, match="SHA-256"):
        gmm_learned.load_learned(name)
    with pytest.raises(IncompatibleModelError, match="unknown learned"):
        gmm_learned.mixture("gmm_learned_3d")


def test_training_is_short_and_reproducible(tmp_path):
    a = gmm_learned.train_learned("gmm_learned_2d", out_dir=tmp_path / "a", steps=20)
    b = gmm_learned.train_learned("gmm_learned_2d", out_dir=tmp_path / "b", steps=20)
    assert a["weights_sha256"] == b["weights_sha256"] and a["steps"] == 20
