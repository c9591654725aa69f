"""Model zoo: networks, datasets, EDM training (determinism, resumption), loaders, classifier."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

from diffsolve.errors import IncompatibleModelError
from diffsolve.models import Denoiser
from diffsolve.schedules import EDM
from diffsolve.zoo import classifier as zcls
from diffsolve.zoo import data as zdata
from diffsolve.zoo import pretrained
from diffsolve.zoo import train as ztrain
from diffsolve.zoo.nets import MLP, UNet, build_net, count_parameters
from diffsolve.zoo.train import edm_loss, edm_precond, main, train

TINY_UNET = {"channels": [8, 16], "emb_dim": 16, "fourier_dim": 8, "groups": 4}
TINY_MLP = {"hidden": 32, "depth": 2, "emb_dim": 16, "fourier_dim": 8}


def _equal_states(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# networks -----------------------------------------------------------------------------------
def test_net_shapes_and_config_roundtrip() -> None:
    torch.manual_seed(0)
    unet = UNet()
    x = torch.randn(3, 1, 8, 8)
    assert unet(x, torch.randn(3)).shape == x.shape
    assert unet(x, 0.3).shape == x.shape
    assert 300_000 <= count_parameters(unet) <= 1_000_000
    mlp = MLP()
    p = torch.randn(5, 2)
    assert mlp(p, torch.randn(5)).shape == p.shape
    for net in (unet, mlp):
        cfg = json.loads(json.dumps(net.config))
        rebuilt = build_net(cfg)
        rebuilt.load_state_dict(net.state_dict())
        c = torch.randn(x.shape[0] if net is unet else 5)
        inp = x if net is unet else p
        # zero-initialised output layer: F = 0 at initialisation
        assert torch.equal(net(inp, c), rebuilt(inp, c))
    with pytest.raises(IncompatibleModelError):
        build_net({"arch": "resnet"})
    with pytest.raises(IncompatibleModelError):
        UNet({"chanels": [8]})


def test_precond_matches_denoiser() -> None:
    torch.manual_seed(1)
    net = UNet(TINY_UNET)
    for prm in net.parameters():  # make F non-zero
        prm.data.normal_(0, 0.1)
    den = Denoiser(net, EDM(), prediction="edm", sigma_data=0.7)
    x = torch.randn(4, 1, 8, 8)
    for s in (0.01, 0.8, 30.0):
        ref = den(x, EDM().point(-math.log(s)))
        got = edm_precond(net, x, torch.full((4,), s), 0.7)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


# data ---------------------------------------------------------------------------------------
def test_datasets() -> None:
    x, y = zdata.load_digits_split("train")
    xt, _ = zdata.load_digits_split("test")
    assert x.shape == (1500, 1, 8, 8) and xt.shape == (297, 1, 8, 8)
    assert y.shape == (1500,) and set(y.tolist()) == set(range(10))
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
    xa, _ = zdata.load_digits_split("all")
    assert xa.shape[0] == 1797
    # the split is a partition of the whole set
    assert sorted(map(bytes, torch.cat([x, xt]).flatten(1).numpy())) == sorted(
        map(bytes, xa.flatten(1).numpy()))
    for name in zdata.TOY_DATASETS:
        a, b = zdata.toy2d(name, 500, seed=3), zdata.toy2d(name, 500, seed=3)
        assert a.shape == (500, 2) and torch.equal(a, b) and torch.isfinite(a).all()
        assert not torch.equal(a, zdata.toy2d(name, 500, seed=4))


# training -----------------------------------------------------------------------------------
def test_tiny_training_reduces_loss() -> None:
    res = train({"dataset": "moons", "net": TINY_MLP, "steps": 300, "batch": 256, "lr": 3e-3,
                 "warmup": 20, "progress": False})
    first, last = sum(res.losses[:30]) / 30, sum(res.losses[-30:]) / 30
    # F = 0 at initialisation gives an expected weighted loss of 1
    assert last < 0.9 * first, (first, last)
    # the EMA network beats the initial one on a fixed evaluation batch
    x0 = zdata.toy2d("moons", 4096, seed=123)
    torch.manual_seed(0)
    init = MLP(TINY_MLP)
    with torch.no_grad():
        l_init = edm_loss(init, x0, res.sigma_data, torch.Generator().manual_seed(9))
        l_ema = edm_loss(res.net, x0, res.sigma_data, torch.Generator().manual_seed(9))
    assert l_ema < 0.85 * l_init, (float(l_init), float(l_ema))
    assert math.isfinite(res.final_loss) and res.step == 300


def test_training_deterministic_with_seed() -> None:
    cfg = {"dataset": "digits", "net": TINY_UNET, "steps": 4, "batch": 8, "progress": False}
    a, b = train(cfg), train(cfg)
    assert a.losses == b.losses and _equal_states(a.net, b.net)
    c = train({**cfg, "seed": 1})
    assert c.losses != a.losses


def test_interrupt_resume_is_bitwise(tmp_path: Path) -> None:
    cfg = {"dataset": "digits", "net": TINY_UNET, "steps": 7, "batch": 8, "warmup": 3,
           "ckpt_every": 2, "progress": False}
    full = train({**cfg, "out": str(tmp_path / "full")})
    part = train({**cfg, "out": str(tmp_path / "part")}, stop_at=3)
    assert part.step == 3 and (tmp_path / "part" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "part" / "model.safetensors").exists()
    rest = train({**cfg, "out": str(tmp_path / "part")}, resume=True)
    assert rest.step == 7 and full.losses[3:] == rest.losses
    assert _equal_states(full.net, rest.net)
    assert rest.final_loss == full.final_loss
    w_full = (tmp_path / "full" / "model.safetensors").read_bytes()
    assert w_full == (tmp_path / "part" / "model.safetensors").read_bytes()
    # a different training config cannot resume the checkpoint
    with pytest.raises(ValueError, match="config differs"):
        train({**cfg, "lr": 5e-4, "out": str(tmp_path / "part")}, resume=True)
    # the trained directory loads as a Denoiser
    den = pretrained.load_model(tmp_path / "full")
    x = torch.randn(2, 1, 8, 8) * 3
    d = den(x, den.schedule.point(-math.log(3.0)))
    assert d.shape == x.shape and torch.isfinite(d).all()
    card = json.loads((tmp_path / "full" / "model.json").read_text())
    for key in ("command", "dataset", "net", "sigma_data", "steps", "final_loss", "n_params",
                "wall_time_s", "torch_version", "shape"):
        assert key in card


def test_signal_stops_at_step_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal (the CLI sets ``_STOP``) inside step 2 stops after step 2 with a checkpoint;
    resuming reproduces the uninterrupted run bitwise."""
    cfg = {"dataset": "moons", "net": TINY_MLP, "steps": 5, "batch": 16, "warmup": 2,
           "ckpt_every": 100, "progress": False}
    full = train({**cfg, "out": str(tmp_path / "full")})
    calls = {"n": 0}
    real_loss = ztrain.edm_loss

    def loss_then_signal(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            ztrain._STOP.set()
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(ztrain, "edm_loss", loss_then_signal)
    try:
        with pytest.raises(KeyboardInterrupt):
            train({**cfg, "out": str(tmp_path / "part")})
    finally:
        ztrain._STOP.clear()
    monkeypatch.setattr(ztrain, "edm_loss", real_loss)
    state = json.loads((tmp_path / "part" / "checkpoint.json").read_text())
    assert state["step"] == 2
    rest = train({**cfg, "out": str(tmp_path / "part")}, resume=True)
    assert rest.losses == full.losses[2:] and _equal_states(rest.net, full.net)


def test_cli_main(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["--dataset", "moons", "--steps", "3", "--batch", "8", "--out", str(out),
                 "--no-progress", "--threads", "1"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["dataset"] == "moons" and card["steps"] == 3 and card["shape"] == [2]
    assert card["command"].startswith("diffsolve train")
    assert main(["--out", str(out), "--resume", "--steps", "5", "--no-progress",
                 "--threads", "1"]) == 0
    assert json.loads((out / "model.json").read_text())["steps"] == 5


# loaders ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["weights.pt", "model.pkl", "m.pth", "x.ckpt", "y.pickle"])
def test_loaders_refuse_pickle(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(IncompatibleModelError, match="pickle"):
        pretrained.load_model(p)
    with pytest.raises(IncompatibleModelError, match="pickle"):
        zcls.load_classifier(p)


def test_unknown_model_name() -> None:
    with pytest.raises(IncompatibleModelError, match="available"):
        pretrained.load_model("no_such_model")


def test_shipped_weights_load() -> None:
    names = pretrained.list_models()
    assert "digits" in names
    for name in names:
        w = pretrained.WEIGHTS_DIR / f"{name}.safetensors"
        assert w.stat().st_size < 4.5e6
        den = pretrained.load_model(name)
        shape = (4, *den.shape)
        assert den.card["sigma_data"] == den.sigma_data > 0
        for sigma in (0.002, 0.5, 80.0):
            x = torch.randn(shape) * math.sqrt(sigma**2 + den.sigma_data**2)
            d = den(x, den.schedule.point(-math.log(sigma)))
            assert d.shape == x.shape and torch.isfinite(d).all()
            assert not d.requires_grad


def test_shipped_classifier_heldout_accuracy() -> None:
    model = zcls.load_classifier()
    xt, yt = zdata.load_digits_split("test")
    acc = zcls.accuracy(model, xt, yt)
    assert acc >= 0.95
    assert acc == pytest.approx(model.card["heldout_accuracy"], abs=1e-9)
    f = model.features(xt[:5])
    assert f.shape == (5, model.feature_dim) and 64 <= model.feature_dim <= 128
    p = model.predict_proba(xt[:5])
    torch.testing.assert_close(p.sum(1), torch.ones(5))
