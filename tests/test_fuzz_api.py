"""Property-based test of the public API's arguments (hypothesis, derandomized).

Property: :func:`diffsolve.sample`, :func:`diffsolve.generate.generate` and
:func:`diffsolve.zoo.pretrained.load_model` either return what was asked (the batch shape, the
exact step count for ``steps``, the grid's own steps for an explicit grid, and for ``nfe`` the
budget :func:`diffsolve.steps_for_nfe` promises: at most ``nfe``), or raise a
:class:`diffsolve.DiffsolveError` whose message is one line. Any other exception (a TypeError
from deep inside, a torch error) fails the test.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffsolve
from diffsolve.generate import generate
from diffsolve.schedules import EDM
from diffsolve.zoo import GaussianMixture
from diffsolve.zoo.pretrained import load_model

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
MODEL = GaussianMixture.default_2d().denoiser(EDM(sigma_min=0.002, sigma_max=20.0))
STATS = {"cases": 0, "success": 0}

WEIRD = st.sampled_from(["10", "", None, 3.5, 2.0, float("nan"), True, [], {}, -1, 0, 10**9,
                         torch.tensor(4), torch.tensor(2.5), b"4"])
VALID = {
    "shape": st.tuples(st.integers(1, 5), st.just(2)),
    "nfe": st.integers(2, 10),
    "steps": st.integers(1, 8),
    "grid": st.sampled_from(["karras", "uniform_lambda", "polyexponential"]),
    "explicit_grid": st.sampled_from([[20.0, 5.0, 1.0, 0.0], [10.0, 1.0, 0.1], (5.0, 0.0)]),
    "solver": st.sampled_from(["dpmpp_2m", "euler", "heun", "dpmpp_2m_sde", "seeds_2",
                               "dpmpp_3m", "ddim"]),
    "seed": st.integers(0, 2**64 - 1),
    "device": st.sampled_from([None, "cpu"]),
    "dtype": st.sampled_from([torch.float32, torch.float64]),
}
INVALID = {
    "shape": st.one_of(st.tuples(st.integers(-3, 0), st.just(2)),
                       st.sampled_from([(), "4,2", 4, (2.0, 2), (10**13, 2), (2, 3), None,
                                        (2, -1)])),
    "nfe": st.one_of(WEIRD, st.just(1), st.integers(10**5 + 1, 10**12)),
    "steps": st.one_of(WEIRD, st.integers(-5, 0)),
    "grid": st.one_of(st.sampled_from(["bogus", "", None, 3, "KARRAS"]),
                      st.lists(st.one_of(st.floats(-1, 25), st.just(float("nan"))),
                               min_size=0, max_size=4)),
    "solver": st.sampled_from(["nope", "", None, 3, "dpmpp_2n"]),
    "options": st.sampled_from([{"eta": "x"}, {"eta": -1.0}, {"nope": 1},
                                {"s_noise": float("inf")}, {"eta": None}]),
    "seed": st.one_of(WEIRD, st.just(2**64), st.integers(-10, -1)),
    "device": st.sampled_from(["cuda:99", "tpu", 5, "cpu:x"]),
    "dtype": st.sampled_from([torch.int32, "float32", None]),
}


def _single_line(e: BaseException) -> None:
    assert isinstance(e, diffsolve.DiffsolveError), repr(e)
    msg = str(e)
    assert msg and "\n" not in msg, msg


@settings(max_examples=250, **SETTINGS)
@given(data=st.data())
def test_fuzz_sample(data: st.DataObject) -> None:
    """A valid call with zero or one argument replaced by an invalid or odd value (weird
    values are sometimes valid, e.g. ``nfe=torch.tensor(4)``: then the call must succeed)."""
    STATS["cases"] += 1
    draw = data.draw
    args = {k: draw(v) for k, v in VALID.items()}
    budget = draw(st.sampled_from(["nfe", "steps", "explicit", "explicit+nfe"]))
    options = {"eta": 0.5} if args["solver"] == "dpmpp_2m_sde" and draw(st.booleans()) else {}
    bad = draw(st.sampled_from([None, None, *INVALID]))
    if bad == "options":
        options = draw(INVALID["options"])
    elif bad is not None:
        args[bad] = draw(INVALID[bad])
    grid = args["explicit_grid"] if budget.startswith("explicit") else args["grid"]
    if bad == "grid":
        grid = args["grid"]
    nfe = args["nfe"] if budget in ("nfe", "explicit+nfe") or bad == "nfe" else None
    steps = args["steps"] if budget == "steps" or bad == "steps" else None
    try:
        res = diffsolve.sample(MODEL, args["shape"], nfe=nfe, steps=steps, grid=grid,
                               solver=args["solver"], seed=args["seed"], device=args["device"],
                               dtype=args["dtype"], progress=False, **options)
    except Exception as e:  # the property: only one-line library errors
        _single_line(e)
        return
    STATS["success"] += 1
    assert tuple(res.x.shape) == tuple(args["shape"])
    solver_obj = diffsolve.get_solver(args["solver"], **options)
    if not isinstance(grid, str):
        assert res.grid.steps == len(grid) - 1  # the grid decides ...
        if nfe is not None:  # ... and an nfe that disagrees would have raised
            assert diffsolve.steps_for_nfe(solver_obj, int(nfe),
                                           to_zero=res.grid.to_zero) == res.grid.steps
    elif steps is not None:
        assert res.grid.steps == int(steps)
    else:
        assert res.grid.steps == diffsolve.steps_for_nfe(solver_obj, int(nfe))
        assert res.nfe <= int(nfe)


@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_fuzz_generate(data: st.DataObject) -> None:
    STATS["cases"] += 1
    draw = data.draw
    args: dict[str, Any] = {"n": draw(st.integers(1, 12)), "shard_size": draw(st.integers(4, 12)),
                            "nfe": draw(st.integers(2, 8)), "solver": draw(VALID["solver"]),
                            "grid": draw(VALID["grid"]), "solver_options": {},
                            "image_format": "safetensors", "seed": draw(VALID["seed"])}
    bad = draw(st.sampled_from([None, "n", "shard_size", "nfe", "solver", "grid",
                                "solver_options", "image_format", "seed"]))
    if bad in ("n", "shard_size"):
        args[bad] = draw(st.one_of(WEIRD, st.integers(-3, 0)))
    elif bad == "image_format":
        args[bad] = draw(st.sampled_from(["png", "jpg", "", None]))
    elif bad == "solver_options":
        args[bad] = draw(st.one_of(INVALID["options"], st.just("eta=1")))
    elif bad is not None:
        args[bad] = draw(INVALID[bad])
    out = Path(tempfile.mkdtemp(prefix="fuzz_gen_")) / "run"
    try:
        res = generate("gmm", out=out, **args)
    except Exception as e:  # the property: only one-line library errors
        _single_line(e)
        return
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    STATS["success"] += 1
    assert res.manifest["status"] == "complete" and res.manifest["n_done"] == args["n"]


@settings(max_examples=40, **SETTINGS)
@given(name=st.one_of(st.text(max_size=12), st.sampled_from(
    ["digits", "moons", "nope", "x.pt", "x.safetensors", "x.json", "/", ".", "..", "digits/",
     "/dev/null", "digits.safetensors"])),
    device=st.sampled_from([None, "cpu", "cuda", "bogus"]))
def test_fuzz_load_model(name: str, device: Any) -> None:
    STATS["cases"] += 1
    try:
        model = load_model(name, device=device)
    except Exception as e:  # the property: only one-line library errors
        _single_line(e)
        return
    STATS["success"] += 1
    assert hasattr(model, "shape") and hasattr(model, "card")


def test_fuzz_report() -> None:
    print(f"\nAPI fuzz: {STATS['cases']} cases, {STATS['success']} successful calls")


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
