"""Bad input gets a clear, named error (a DiffsolveError saying what was wrong) and loses
nothing: grids, non-finite inputs/outputs, shapes/dtypes, solver names and options of every
registered solver (hypothesis-generated, introspected from the dataclass fields), and
pickle-refusing weight loading."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffsolve import Denoiser, Grid, sample, solve
from diffsolve.errors import (
    DiffsolveError,
    GridError,
    IncompatibleModelError,
    NonFiniteError,
    SolverOptionError,
)
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver, list_solvers, solver_class
from diffsolve.zoo import GaussianMixture

SCHED = EDM(sigma_min=0.002, sigma_max=20.0)
GMM = GaussianMixture.default_2d()


def _gmm() -> Denoiser:
    return GMM.denoiser(SCHED)


def _net_model(net) -> Denoiser:
    return Denoiser(net, SCHED, prediction="x0", time_input="sigma")


# grids -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigmas, match", [
    ([1.0, 2.0, 0.5], "strictly decreasing"),          # wrong order
    ([2.0, 1.0, 1.0, 0.0], "strictly decreasing"),     # repeated node
    ([5.0], "at least 2"),                              # too short
    ([], "at least 2"),
    ([[5.0, 1.0]], "one-dimensional"),
    ([5.0, math.nan, 0.0], "finite"),
    ([5.0, math.inf, 0.0], "finite"),
    ([5.0, -1.0, 0.0], "positive"),
])
def test_bad_sigma_grids(sigmas: list, match: str) -> None:
    with pytest.raises(GridError, match=match):
        Grid.from_sigmas(sigmas)
    with pytest.raises(GridError, match=match):
        sample(_gmm(), (3, 2), grid=sigmas)


def test_grid_outside_schedule_and_bad_step_counts() -> None:
    with pytest.raises(GridError, match="schedule covers only"):
        sample(_gmm(), (3, 2), grid=[500.0, 1.0, 0.0])
    with pytest.raises(DiffsolveError, match="steps"):
        sample(_gmm(), (3, 2), steps=0)
    with pytest.raises(DiffsolveError, match="NFE"):
        sample(_gmm(), (3, 2), solver="heun", nfe=2)
    with pytest.raises(DiffsolveError, match="exactly one"):
        sample(_gmm(), (3, 2), steps=4, nfe=4)
    with pytest.raises(DiffsolveError, match="grid"):
        sample(_gmm(), (3, 2), grid="karas", steps=4)


# non-finite values --------------------------------------------------------------------------

@pytest.mark.parametrize("check", ["step", "end"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_input_is_named(check: str, bad: float) -> None:
    x = torch.randn(3, 2)
    x[1, 0] = bad
    with pytest.raises(NonFiniteError, match="input") as info:
        solve(_gmm(), x, Grid.from_sigmas([10.0, 1.0, 0.0]), "euler", check_finite=check)
    assert info.value.step == 0


@pytest.mark.parametrize("check", ["step", "end"])
@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_2m_sde"])
def test_nonfinite_model_output_names_step_and_sigma(check: str, solver: str) -> None:
    calls = []

    def net(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x * math.nan if len(calls) == 3 else x / (1 + sigma.view(-1, 1) ** 2)

    sigmas = [10.0, 5.0, 2.0, 1.0, 0.5, 0.0]
    with pytest.raises(NonFiniteError, match=r"step \d+ \(sigma=[0-9.]+\)") as info:
        sample(_net_model(net), (2, 2), grid=sigmas, solver=solver, check_finite=check)
    nfe_per_step = get_solver(solver).steady_evaluations
    expect_step = 2 // nfe_per_step  # the 3rd call belongs to this step
    assert info.value.step == expect_step
    assert info.value.sigma == pytest.approx(sigmas[expect_step], rel=1e-6)


def test_check_finite_option_validated() -> None:
    with pytest.raises(SolverOptionError, match="check_finite"):
        sample(_gmm(), (2, 2), steps=3, check_finite="always")


# shapes and dtypes --------------------------------------------------------------------------

def test_model_returning_wrong_shape_names_both_shapes() -> None:
    model = _net_model(lambda x, s: x[:, :1])
    with pytest.raises(IncompatibleModelError, match=r"\(4, 1\).*\(4, 2\)"):
        sample(model, (4, 2), steps=3)


def test_model_returning_a_non_tensor() -> None:
    model = _net_model(lambda x, s: (x,))
    with pytest.raises(IncompatibleModelError, match="tuple"):
        sample(model, (4, 2), steps=3)


def test_model_returning_integers_is_refused() -> None:
    model = _net_model(lambda x, s: x.round().long())
    with pytest.raises(IncompatibleModelError, match=r"int64 tensor.*floating-point"):
        sample(model, (4, 2), steps=3)


def test_dtype_mismatch_between_state_and_network_is_explained() -> None:
    lin = torch.nn.Linear(2, 2)  # float32 weights

    def net(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return lin(x)

    with pytest.raises(IncompatibleModelError, match=r"float64.*model_dtype"):
        sample(_net_model(net), (4, 2), steps=3, dtype=torch.float64)
    # the fix the message suggests works
    ok = Denoiser(net, SCHED, prediction="x0", time_input="sigma", model_dtype=torch.float32)
    with torch.no_grad():
        out = sample(ok, (4, 2), steps=3, dtype=torch.float64).x
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("x", [torch.zeros(3, 2, dtype=torch.long), torch.zeros(0, 2),
                               torch.tensor(1.0)])
def test_bad_state_tensor(x: torch.Tensor) -> None:
    with pytest.raises(SolverOptionError, match="x must"):
        solve(_gmm(), x, Grid.from_sigmas([10.0, 1.0, 0.0]), "euler")


def test_stochastic_noise_batch_mismatch_is_named() -> None:
    from diffsolve.noise import PerSampleStreams

    noise = PerSampleStreams.from_seed(0, 5)
    with pytest.raises(ValueError, match=r"5 per-sample seeds.*3 samples"):
        solve(_gmm(), torch.randn(3, 2), Grid.from_sigmas([10.0, 1.0, 0.0]), "euler_ancestral",
              noise=noise)


# solver names and options ------------------------------------------------------------------

@pytest.mark.parametrize("typo, suggestion", [("dpmpp2m", "dpmpp_2m"), ("eular", "euler"),
                                              ("Heun", "heun"), ("dpmpp_2m_sd", "dpmpp_2m_sde")])
def test_unknown_solver_suggests_closest(typo: str, suggestion: str) -> None:
    with pytest.raises(SolverOptionError, match=f"Did you mean '{suggestion}'"):
        get_solver(typo)
    with pytest.raises(SolverOptionError, match="Available"):
        sample(_gmm(), (2, 2), steps=3, solver=typo)


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(SolverOptionError, match=r"no option\(s\) \['etaa'\].*valid options"):
        get_solver("dpmpp_2m_sde", etaa=0.5)
    with pytest.raises(SolverOptionError, match="no option"):
        sample(_gmm(), (2, 2), steps=3, solver="euler", eta=0.5)


def _hints(cls: type) -> dict[str, typing.Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: treat as unknown
        return {}


def _kinds(tp: typing.Any) -> set[str]:
    """Which generators apply to an annotation: float/int/bool/choice/tuple."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return {"choice"}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        out: set[str] = set()
        for a in typing.get_args(tp):
            out |= _kinds(a)
        return out
    if origin is tuple:
        return {"tuple"}
    if tp is bool:
        return {"bool"}
    if tp is int:
        return {"int"}
    if tp is float:
        return {"float"}
    return set()


def _value_strategy(tp: typing.Any) -> st.SearchStrategy | None:
    kinds = _kinds(tp)
    parts: list[st.SearchStrategy] = []
    if "float" in kinds:
        parts.append(st.floats(allow_nan=True, allow_infinity=True, width=64))
        parts.append(st.floats(-3.0, 3.0))
        parts.append(st.sampled_from([0.0, -0.0, 1e-300, -1.0, 1e300, 0.5, 1.0]))
    if "int" in kinds:
        parts.append(st.integers(-10, 20))
    if "bool" in kinds:
        parts.append(st.booleans())
    if "choice" in kinds:
        choices = list(typing.get_args(tp))
        parts.append(st.sampled_from(choices))
        parts.append(st.text(max_size=6))
        parts.append(st.sampled_from([None, 3, "", "DATA", "midpoint ", "noise_"]))
    if "tuple" in kinds:
        parts.append(st.tuples(st.floats(-5, 50) | st.just(math.nan), st.floats(-5, 50)))
    return st.one_of(parts) if parts else None


def _option_strategy(name: str) -> st.SearchStrategy | None:
    cls = solver_class(name)
    hints = _hints(cls)
    per_field = {}
    for f in dataclasses.fields(cls):
        s = _value_strategy(hints.get(f.name, f.type))
        if s is not None:
            per_field[f.name] = s
    if not per_field:
        return None
    # one to all options at once
    return st.dictionaries(st.sampled_from(sorted(per_field)), st.none(), min_size=1).flatmap(
        lambda keys: st.fixed_dictionaries({k: per_field[k] for k in keys}))


def _is_plausible(cls: type, options: dict[str, typing.Any]) -> bool:
    """Values that must be refused whatever the solver: NaN, and a negative eta/s_noise."""
    for k, v in options.items():
        if isinstance(v, float) and math.isnan(v):
            return False
        if k in ("eta", "s_noise", "s_churn") and isinstance(v, (int, float)) and v < 0:
            return False
        if k in ("order", "predictor_order") and isinstance(v, int) and not 1 <= v <= 10:
            return False
        if k == "corrector_order" and isinstance(v, int) and not 0 <= v <= 10:  # 0: none
            return False
    hints = _hints(cls)
    for k, v in options.items():
        tp = hints.get(k)
        if tp is not None and typing.get_origin(tp) is typing.Literal and (
                v not in typing.get_args(tp)):
            return False
    return True


def _check_options(name: str, options: dict[str, typing.Any]) -> None:
    cls = solver_class(name)
    try:
        solver = get_solver(name, **options)
    except DiffsolveError as e:
        assert name in str(e), f"error does not name the solver: {e}"
        return
    except Exception as e:
        pytest.fail(f"{name}{options}: {type(e).__name__}: {e} (not a DiffsolveError)")
    assert _is_plausible(cls, options), f"{name} accepted invalid options {options}"
    model = _gmm()
    try:
        with torch.no_grad():
            out = sample(model, (3, 2), solver=solver, steps=6, seed=1, progress=False)
    except NonFiniteError:
        return  # accepted values that are extreme (e.g. eta = 1e300): named, not silent
    except DiffsolveError as e:
        assert name in str(e) or "NFE" in str(e), str(e)
        return
    except Exception as e:
        pytest.fail(f"{name}{options} was accepted but sampling failed with "
                    f"{type(e).__name__}: {e}")
    assert torch.isfinite(out.x).all()


SOLVERS_WITH_OPTIONS = [n for n in list_solvers() if _option_strategy(n) is not None]


@pytest.mark.parametrize("name", SOLVERS_WITH_OPTIONS)
def test_every_solver_rejects_invalid_options_clearly(name: str) -> None:
    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_option_strategy(name))
    def check(options: dict[str, typing.Any]) -> None:
        _check_options(name, options)

    check()


@pytest.mark.parametrize("name", list_solvers())
def test_every_solver_refuses_nan_and_negative_noise_options(name: str) -> None:
    cls = solver_class(name)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if "float" in _kinds(hints.get(f.name, f.type)):
            with pytest.raises(SolverOptionError, match=f.name):
                get_solver(name, **{f.name: math.nan})
        if f.name in ("eta", "s_noise", "s_churn"):
            with pytest.raises(SolverOptionError, match=f.name):
                get_solver(name, **{f.name: -0.5})


# weight loading -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin", ".pkl"])
def test_pickle_weights_refused_before_opening(tmp_path: Path, suffix: str) -> None:
    from diffsolve.zoo.pretrained import load_model

    p = tmp_path / f"model{suffix}"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"x": Evil()}, p)
    with pytest.raises(IncompatibleModelError, match="pickle"):
        load_model(p)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_refused(tmp_path: Path) -> None:
    import shutil

    from diffsolve.zoo.pretrained import WEIGHTS_DIR, load_model

    p = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, p)
    shutil.copy(WEIGHTS_DIR / "digits.json", tmp_path / "model.json")
    with pytest.raises(IncompatibleModelError, match="safetensors"):
        load_model(p)
