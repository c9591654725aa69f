"""Property-based test of the command line: every subcommand, every option, valid and invalid
values (hypothesis, derandomized: the same examples on every run).

Property: a command either succeeds and did what was asked (the summary echoes the requested
model, solver, n and seed; the NFE used is the one asked, or a lower one announced on stderr),
or ends with exit code 2 and exactly one line on stderr, ``diffsolve <cmd>: error: ...``.
Never a traceback, never another exit code.

Cheap commands (sample, generate, solvers) draw every option freely. Commands whose successful
run takes seconds to minutes (bench, gamma, train) get at least one invalid option per example,
so the test exercises their checks without running them (their successful runs have their own
tests).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffsolve.cli import main

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

JUNK = st.sampled_from(["", " ", "x", "-", "--", "1e3", "nan", "inf", "-inf", "0x10", "3.5",
                        "1,2", "\u00e9", "None", "null", "{}", "[]", "../..", "/dev/null"])
NEG_OR_ZERO = st.integers(-10**20, 0).map(str)
HUGE = st.integers(10**8, 10**30).map(str)


def _ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(str)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _check_failure(code: int, err: str, argv: list[str]) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err[-2000:])
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, (argv, err)


def _argv(draw: Any, command: list[str], options: dict[str, tuple[Any, Any]],
          force_invalid: bool) -> tuple[list[str], set[str]]:
    """Draw a subset of options, each with a valid or an invalid value."""
    names = sorted(options)
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    for name in REQUIRED.get(command[0], ()):
        if name not in chosen:
            chosen.append(name)  # the defaults (digits; 50000 samples) are long runs
    invalid = set()
    if force_invalid:
        bad = draw(st.sampled_from(names))
        if bad not in chosen:
            chosen.append(bad)
        invalid.add(bad)
    argv = list(command)
    for name in chosen:
        valid, wrong = options[name]
        use_bad = name in invalid or (wrong is not None and draw(st.integers(0, 4)) == 0)
        strategy = wrong if use_bad and wrong is not None else valid
        if use_bad and wrong is not None:
            invalid.add(name)
        if strategy is None:  # a flag
            argv.append(name)
        else:
            argv += [name, draw(strategy)]
    return argv, invalid


SAMPLE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "--model": (st.sampled_from(["gmm", "moons"]),
                st.one_of(JUNK, st.sampled_from(["nope", "x.pt", "digits.pkl", "/nonexistent"]))),
    "--solver": (st.sampled_from(["dpmpp_2m", "euler", "heun", "seeds_2", "dpmpp_2m_sde",
                                  "dpmpp_3m"]),
                 st.one_of(JUNK, st.sampled_from(["dpmpp_2n", "EULER", "euler "]))),
    "--nfe": (_ints(2, 12), st.one_of(NEG_OR_ZERO, HUGE, JUNK)),
    "--n": (_ints(1, 40), st.one_of(NEG_OR_ZERO, st.just(str(10**13)), JUNK)),
    "--seed": (st.integers(0, 2**64 - 1).map(str),
               st.one_of(st.integers(-10**6, -1).map(str), st.just(str(2**64)), JUNK)),
    "--grid": (st.sampled_from(["karras", "uniform_lambda", "polyexponential"]),
               st.one_of(JUNK, st.sampled_from(["bogus", "missing.json", "{file}"]))),
    "--device": (st.just("cpu"), st.sampled_from(["cuda:99", "tpu", "gpu", "", "cpu:x"])),
    "--option": (st.sampled_from(["lower_order_final=true"]),
                 st.one_of(JUNK, st.sampled_from(["eta", "eta=", "=1", "nope=1", "eta=-1",
                                                  "eta=abc", "eta=1e999"]))),
    "--solver-options": (st.just("{}"), st.one_of(JUNK, st.sampled_from(
        ['{"eta": "x"}', '{"nope": 1}', "[1]", '{"eta": -1}']))),
    "--out": (st.sampled_from(["{tmp}/a.png", "{tmp}/noext", "{tmp}/sub/b.png"]),
              st.sampled_from(["{file}/x.png", "{tmp}/", "{tmp}/x.xyz", "{tmp}"])),
    "--quiet": (None, None),
}

GENERATE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "--model": (st.just("gmm"), SAMPLE_OPTIONS["--model"][1]),
    "--solver": SAMPLE_OPTIONS["--solver"],
    "--nfe": SAMPLE_OPTIONS["--nfe"],
    "--n": (_ints(1, 30), st.one_of(NEG_OR_ZERO, JUNK)),
    "--shard-size": (_ints(10, 40), st.one_of(NEG_OR_ZERO, JUNK)),  # <= 3 shards of <= 30
    "--seed": SAMPLE_OPTIONS["--seed"],
    "--grid": (SAMPLE_OPTIONS["--grid"][0], st.one_of(JUNK, st.just("bogus"))),
    "--device": SAMPLE_OPTIONS["--device"],
    "--option": SAMPLE_OPTIONS["--option"],
    "--format": (st.just("safetensors"), st.sampled_from(["png", "jpg", ""])),
    "--out": (st.sampled_from(["{tmp}/run"]), st.sampled_from(["{file}", "{file}/sub"])),
    "--retry-failed": (None, None),
    "--quiet": (None, None),
}

BENCH_OPTIONS: dict[str, tuple[Any, Any]] = {
    "--model": (st.just("gmm"), st.one_of(JUNK, st.just("cifar"))),
    "--solvers": (st.sampled_from(["euler", "dpmpp_2m,euler"]),
                  st.sampled_from(["dpmpp_2n", "euler,,nope", ","])),
    "--nfe": (st.sampled_from(["3", "2,4"]), st.sampled_from(["5,x", "0", "-3", "", "1e9",
                                                              "100000000"])),
    "--samples": (_ints(2, 20), st.one_of(NEG_OR_ZERO, JUNK)),
    "--seed": SAMPLE_OPTIONS["--seed"],
    "--grid": (st.just("karras"), st.one_of(st.just("bogus"))),
    "--device": (st.just("cpu"), st.sampled_from(["cuda:99", "tpu", "gpu"])),
    "--out": (st.just("{tmp}/bench"), st.sampled_from(["{file}", "{file}/sub"])),
    "--quiet": (None, None),
}

GAMMA_OPTIONS: dict[str, tuple[Any, Any]] = {
    "--family": (st.sampled_from(["digits", "moons"]), st.one_of(JUNK, st.just("cifar"))),
    "--reference": (st.just("hier_moons_w128"),
                    st.one_of(JUNK, st.sampled_from(["nope", "x.pt", "/nonexistent"]))),
    "--seed": SAMPLE_OPTIONS["--seed"],
    "--out": (st.just("{tmp}/gamma"), st.sampled_from(["{file}", "{file}/sub"])),
}

TRAIN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "--dataset": (st.sampled_from(["moons", "digits"]), st.one_of(JUNK, st.just("cifar"))),
    "--arch": (st.sampled_from(["mlp", "unet"]), st.one_of(JUNK, st.just("resnet"))),
    "--steps": (_ints(1, 5), st.one_of(NEG_OR_ZERO, HUGE, JUNK)),
    "--batch": (_ints(1, 64), st.one_of(NEG_OR_ZERO, HUGE, JUNK)),
    "--lr": (st.sampled_from(["1e-3", "0.01"]),
             st.sampled_from(["0", "-1", "nan", "inf", "x", "1e9"])),
    "--seed": (_ints(0, 100), st.one_of(st.integers(-10**6, -1).map(str), JUNK)),
    "--ckpt-every": (_ints(1, 100), st.one_of(NEG_OR_ZERO, JUNK)),
    "--threads": (_ints(1, 2), st.one_of(NEG_OR_ZERO, HUGE, JUNK)),
    "--out": (st.just("{tmp}/train"), st.sampled_from(["{file}", "{file}/sub"])),
}


def _fill(argv: list[str], tmp: Path) -> list[str]:
    (tmp / "file").write_text("not a folder")
    return [a.replace("{tmp}", str(tmp)).replace("{file}", str(tmp / "file")) for a in argv]


def _explore(draw: Any, command: str, options: dict[str, tuple[Any, Any]],
             force_invalid: bool, capsys: pytest.CaptureFixture[str]) -> None:
    argv, invalid = _argv(draw, [command], options, force_invalid)
    tmp = Path(tempfile.mkdtemp(prefix="fuzz_cli_"))
    try:
        args = _fill(argv, tmp)
        code, out, err = _run(args, capsys)
        if code != 0:
            _check_failure(code, err, args)
            return
        assert not invalid, ("accepted an invalid value", args, err)
        assert "Traceback" not in err
        summary = json.loads(out.strip().splitlines()[-1])
        _check_success(command, args, summary, err)
        STATS["success"] += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        STATS["cases"] += 1


def _value(args: list[str], name: str, default: str | None) -> str | None:
    return args[len(args) - 1 - args[::-1].index(name) + 1] if name in args else default


def _check_success(command: str, args: list[str], summary: dict[str, Any], err: str) -> None:
    """Nothing silently changed: the run did what was asked."""
    if command == "sample":
        assert summary["model"] == _value(args, "--model", "digits")
        assert summary["solver"] == _value(args, "--solver", "dpmpp_2m")
        assert summary["n"] == int(_value(args, "--n", "64") or 64)
        assert summary["seed"] == int(_value(args, "--seed", "0") or 0)
        asked = int(_value(args, "--nfe", "20") or 20)
        assert summary["nfe_requested"] == asked and summary["nfe"] <= asked
        if summary["nfe"] != asked:
            assert f"used {summary['nfe']} NFE, not the {asked} asked" in err
        out = _value(args, "--out", "samples.png") or ""
        assert Path(summary["image"]).exists()
        assert summary["image"] in (out, out + ".png")
    elif command == "generate":
        assert summary["status"] == "complete"
        assert summary["n_done"] == int(_value(args, "--n", "50000") or 0)


STATS = {"cases": 0, "success": 0}
REQUIRED = {"sample": ("--model",), "generate": ("--n", "--model")}


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # a default --out lands in a temporary folder
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")


@settings(max_examples=50, **SETTINGS)
@given(data=st.data())
def test_fuzz_sample(data: st.DataObject, capsys: pytest.CaptureFixture[str]) -> None:
    _explore(data.draw, "sample", SAMPLE_OPTIONS, False, capsys)


@settings(max_examples=50, **SETTINGS)
@given(data=st.data())
def test_fuzz_generate(data: st.DataObject, capsys: pytest.CaptureFixture[str]) -> None:
    _explore(data.draw, "generate", GENERATE_OPTIONS, False, capsys)


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_fuzz_bench_gamma_train(data: st.DataObject,
                                capsys: pytest.CaptureFixture[str]) -> None:
    command, options = data.draw(st.sampled_from([("bench", BENCH_OPTIONS),
                                                  ("gamma", GAMMA_OPTIONS),
                                                  ("train", TRAIN_OPTIONS)]))
    _explore(data.draw, command, options, True, capsys)


@settings(max_examples=40, **SETTINGS)
@given(argv=st.lists(st.one_of(JUNK, st.sampled_from(
    ["sample", "solvers", "generate", "bench", "gamma", "train", "--help", "-h", "--n",
     "--nfe", "--bogus"])), max_size=4))
def test_fuzz_anything(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Arbitrary words: help (exit 0), the solver list (exit 0) or one error line (exit 2)."""
    if argv[:1] in (["sample"], ["generate"], ["bench"], ["gamma"], ["train"]) and not (
            {"--help", "-h"} & set(argv)):
        argv = [*argv, "--bogus"]  # keep it an error, not a long run with defaults
    code, out, err = _run(argv, capsys)
    STATS["cases"] += 1
    if code == 0:
        assert out and "Traceback" not in err
    else:
        _check_failure(code, err, argv)


def test_fuzz_report() -> None:
    """Prints the counts (run with -s); the fuzz tests above must have run first."""
    print(f"\nCLI fuzz: {STATS['cases']} cases, {STATS['success']} successful runs "
          f"(pid {os.getpid()})")
