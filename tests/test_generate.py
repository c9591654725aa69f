"""Sharded generation (diffsolve.generate): world-size independence, crash/resume, NaN shards.

Model: the exact 2-D Gaussian-mixture denoiser (cheap); a stochastic solver (dpmpp_2m_sde) so
that every per-sample noise stream matters, not only the initial noise.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffsolve import sample
from diffsolve.core.integrity import IntegrityError
from diffsolve.generate import (
    CRASH_ENV,
    GATE_ENV,
    GenerateConfigError,
    generate,
    load_samples,
    shard_path,
)
from diffsolve.models import Denoiser
from diffsolve.schedules import EDM
from diffsolve.zoo import GaussianMixture

N, SHARD = 100, 30  # 4 shards, the last one short
ARGS = ["--model", "gmm", "--solver", "dpmpp_2m_sde", "--nfe", "12", "--seed", "7",
        "--shard-size", str(SHARD), "--quiet"]
KW = dict(solver="dpmpp_2m_sde", nfe=12, seed=7, shard_size=SHARD)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # same thread count in every process: bitwise CPU results
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", CRASH_ENV, GATE_ENV):
        env.pop(k, None)
    return env


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard_*"))}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p))["x"] for p in sorted(folder.glob("shard_*.safetensors"))}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted single-process run (in this process)."""
    out = tmp_path_factory.mktemp("ref")
    torch.set_num_threads(1)
    res = generate("gmm", N, out, **KW)
    assert res.computed == [0, 1, 2, 3] and res.manifest["status"] == "complete"
    return out


def test_two_gloo_processes_bitwise_equal_one(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "ws2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "diffsolve", "generate", "--num-samples", str(N), "--out", str(out),
           *ARGS]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["computed_by_rank0"] == 2  # 0 and 2
    ref, got = _files(reference), _files(out)
    assert list(got) == list(ref) == [f"shard_{k:06d}.safetensors" for k in range(4)]
    for name in ref:
        assert got[name] == ref[name], name  # byte-identical files
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


def test_shards_match_plain_sample_and_load_order(reference: Path) -> None:
    x, index = load_samples(reference)
    assert index.tolist() == list(range(N))
    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM(sigma_min=0.002, sigma_max=20.0))
    with torch.no_grad():
        direct = sample(model, (N, 2), solver="dpmpp_2m_sde", nfe=12, seed=7).x
    # other batch composition: equal up to float rounding of the batched arithmetic
    torch.testing.assert_close(x, direct.float(), rtol=1e-5, atol=1e-5)


def test_killed_then_resumed_run(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "crash"
    env = _env()
    env[CRASH_ENV] = "1"  # the process dies (os._exit) right after its first shard
    cmd = [sys.executable, "-m", "diffsolve", "generate", "--num-samples", str(N),
           "--out", str(out), *ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 75, proc.stderr[-3000:]
    first = shard_path(out, 0)
    assert first.exists() and not shard_path(out, 1).exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    stamp, digest = first.stat().st_mtime_ns, _sha(first)
    (out / ".shard_000001.safetensors.tmp.999").write_bytes(b"half a file")  # torn write
    res = generate("gmm", N, out, **KW)
    assert res.reused == [0] and res.computed == [1, 2, 3]
    assert first.stat().st_mtime_ns == stamp and _sha(first) == digest  # untouched
    assert not list(out.glob(".*.tmp.*"))
    assert _files(out) == _files(reference)
    assert res.manifest == json.loads((reference / "manifest.json").read_text())
    again = generate("gmm", N, out, **KW)  # nothing left to do
    assert again.computed == [] and again.reused == [0, 1, 2, 3]


def test_other_config_in_same_folder_refused(reference: Path) -> None:
    before = _files(reference)
    with pytest.raises(GenerateConfigError, match="another configuration"):
        generate("gmm", N, reference, **{**KW, "seed": 8})
    assert _files(reference) == before


class _PoisonNet:
    """Wraps the mixture network; returns NaN on calls first < call <= last."""

    def __init__(self, inner, first: int, last: int) -> None:
        self.inner, self.first, self.last, self.calls = inner, first, last, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x, t)
        return out * math.nan if self.first < self.calls <= self.last else out


def _poisoned_model(first: int, last: int) -> Denoiser:
    inner = GaussianMixture.default_2d().denoiser(EDM(sigma_min=0.002, sigma_max=20.0)).net
    den = Denoiser(_PoisonNet(inner, first, last), EDM(sigma_min=0.002, sigma_max=20.0),
                   prediction="x0", time_input=inner.set_point)
    den.shape = (2,)  # type: ignore[attr-defined]
    return den


def test_nan_shard_skipped_and_reported(reference: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nan"
    # 12 NFE per shard: calls 13..24 are shard 1's; poison a call in its middle
    model = _poisoned_model(17, 18)  # only call 18 = the 6th of shard 1 = its step 5
    kw = dict(KW)
    res = generate(model, N, out, **kw)
    assert res.failed.keys() == {1} and res.computed == [0, 2, 3]
    err = capsys.readouterr().err
    assert "shard 1 (samples 30..59) skipped" in err and "non-finite" in err
    failed = res.manifest["failed"]
    assert res.manifest["status"] == "complete_with_failures"
    assert len(failed) == 1 and failed[0]["shard"] == 1 and failed[0]["start"] == 30
    assert failed[0]["step"] == 5 and failed[0]["sigma"] > 0
    ref = _tensors(reference)  # (file bytes differ: the model name is in the config hash)
    got = _tensors(out)
    assert "shard_000001.safetensors" not in got
    for k in (0, 2, 3):  # the other shards are complete and exact
        assert torch.equal(got[f"shard_{k:06d}.safetensors"], ref[f"shard_{k:06d}.safetensors"])
    # a plain resume keeps the failure; retry_failed recomputes it (healthy model now)
    again = generate(model, N, out, **kw)
    assert again.computed == [] and again.failed.keys() == {1}
    healed = generate(_poisoned_model(0, 0), N, out, **kw, retry_failed=True)
    assert healed.computed == [1] and healed.manifest["status"] == "complete"
    assert torch.equal(_tensors(out)["shard_000001.safetensors"], ref["shard_000001.safetensors"])


def test_bad_arguments() -> None:
    with pytest.raises(GenerateConfigError, match="shard_size"):
        generate("gmm", 10, "/nonexistent-dir-not-created", shard_size=0)
    den = Denoiser(lambda x, t: x, EDM())
    with pytest.raises(GenerateConfigError, match="shape"):
        generate(den, 10, "/nonexistent-dir-not-created")


def _flip(path: Path, n: int = 64) -> None:
    """Invert ``n`` bytes in the middle of the file (same size: only a digest notices)."""
    raw = bytearray(path.read_bytes())
    at = len(raw) // 2
    raw[at:at + n] = bytes(b ^ 0xFF for b in raw[at:at + n])
    path.write_bytes(bytes(raw))


def test_corrupted_truncated_deleted_shards_are_recomputed(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The report's case: 64 bytes overwritten inside a shard (same size), a shard truncated,
    a shard deleted. Resume must verify, recompute and report all three, and the manifest must
    keep the digests of the files that were written, never take the corrupt file's."""
    out = tmp_path / "corrupt"
    shutil.copytree(reference, out)
    _flip(shard_path(out, 1))
    p2 = shard_path(out, 2)
    p2.write_bytes(p2.read_bytes()[: p2.stat().st_size // 2])
    shard_path(out, 3).unlink()
    with pytest.raises(IntegrityError, match=r"shard_000001\.safetensors.*does not match"):
        load_samples(out)  # verifies by default
    with pytest.raises(IntegrityError, match=r"shard_000002\.safetensors.*not a readable"):
        load_samples(out, verify=False)  # the opt-out still refuses an unreadable file
    res = generate("gmm", N, out, **KW)
    assert res.reused == [0] and res.computed == [1, 2, 3] and set(res.repaired) == {1, 2, 3}
    assert "differs from the manifest" in res.repaired[1] and "missing" in res.repaired[3]
    err = capsys.readouterr().err
    for k in (1, 2, 3):
        assert f"shard {k} (shard_{k:06d}.safetensors)" in err
    assert _files(out) == _files(reference)  # byte-identical to the uninterrupted run
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    _, index = load_samples(out)
    assert index.tolist() == list(range(N))
    # a valid safetensors file with other content (shard 0's bytes as shard 3): same verdict
    shutil.copy(shard_path(out, 0), shard_path(out, 3))
    again = generate("gmm", N, out, **KW)
    assert again.computed == [3] and set(again.repaired) == {3}
    assert _files(out) == _files(reference)
    # a file without a record (a crash between writing it and recording its digest)
    m = json.loads((out / "manifest.json").read_text())
    m["done"] = [d for d in m["done"] if d["shard"] != 2]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match=r"shard_000002\.safetensors.*no record"):
        load_samples(out)
    third = generate("gmm", N, out, **KW)
    assert third.computed == [2] and "no record" in third.repaired[2]
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


class _BrokenNet:
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("simulated crash inside the network")


def test_failed_run_does_not_block_a_corrected_one(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "fail"
    # a bad budget is refused before the folder is touched
    with pytest.raises(Exception, match="needs at least 2 NFE"):
        generate("gmm", N, out, **{**KW, "nfe": 1})
    assert not out.exists()
    # a run that fails while sampling, before its first shard, leaves a manifest only
    den = Denoiser(_BrokenNet(), EDM(sigma_min=0.002, sigma_max=20.0), prediction="x0")
    den.shape = (2,)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(den, N, out, **KW)
    assert (out / "manifest.json").exists() and not list(out.glob("shard_*"))
    res = generate("gmm", N, out, **KW)  # another configuration: accepted, nothing to protect
    assert res.manifest["status"] == "complete" and res.computed == [0, 1, 2, 3]
    assert _files(out) == _files(reference)
    with pytest.raises(GenerateConfigError, match="another configuration"):
        generate("gmm", N, out, **{**KW, "nfe": 10})  # now there are shards to protect


def test_two_concurrent_runs_split_the_work(tmp_path: Path) -> None:
    """Two real processes run the same command into one folder: they claim shards (POSIX
    record locks), so every shard is computed exactly once, each waits for the other's
    shards and verifies them, and both end with a complete folder equal to a one-process
    run. A third process with another configuration is refused with one line, exit code 2.
    The first run is held (test hook DIFFSOLVE_GENERATE_GATE) after its first shard, with the
    shard still claimed, until the second run has computed a shard: the overlap is certain,
    whatever the start-up times."""
    ref = tmp_path / "ref"
    torch.set_num_threads(1)
    generate("gmm", N, ref, **{**KW, "shard_size": 10})
    out = tmp_path / "shared"
    env = _env()
    gate = tmp_path / "gate"
    env[GATE_ENV] = str(gate)  # the first run holds its first shard's claim until the gate opens
    base = [sys.executable, "-m", "diffsolve", "generate", "--num-samples", str(N), "--out",
            str(out), *ARGS[:-2], "10", "--quiet"]
    assert ARGS[-3] == "--shard-size"
    first = subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)

    def wait_for(path: Path) -> None:
        deadline = time.monotonic() + 120
        while not path.exists():
            assert time.monotonic() < deadline and first.poll() is None, path
            time.sleep(0.02)

    wait_for(shard_path(out, 0))  # the first run computed shard 0 and still claims it
    env.pop(GATE_ENV)
    second = subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    wait_for(shard_path(out, 1))  # the second run skipped claimed shard 0 and computed 1
    other = subprocess.run([*base[:-1], "--seed", "8", "--quiet"], env=env,
                           capture_output=True, text=True, timeout=120)
    gate.touch()  # let the first run go on
    outs = [p.communicate(timeout=180) for p in (first, second)]
    for p, (_, e) in zip((first, second), outs, strict=True):
        assert p.returncode == 0, e[-2000:]
    s1, s2 = (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)
    assert s1["status"] == s2["status"] == "complete"
    assert not set(s1["computed"]) & set(s2["computed"])  # no shard computed twice
    assert sorted(s1["computed"] + s2["computed"]) == list(range(10))
    assert 0 in s1["computed"] and 1 in s2["computed"], (s1, s2)  # the work was split
    assert 0 in s2["waited"]  # the second run waited for shard 0 and then verified it
    assert _files(out) == _files(ref)
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    assert other.returncode == 2 and "another configuration" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and "Traceback" not in other.stderr


def test_png_export(tmp_path: Path) -> None:
    from PIL import Image

    from diffsolve.zoo.pretrained import load_model

    out = tmp_path / "png"
    res = generate(load_model("digits"), 5, out, nfe=4, shard_size=3, image_format="png")
    assert res.manifest["status"] == "complete"
    files = sorted((out / "png").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    x, _ = load_samples(out)
    with Image.open(files[4]) as im:
        assert im.size == (8, 8) and im.mode == "L"
        pix = torch.from_numpy(__import__("numpy").array(im)).float()
    want = ((x[4, 0].clamp(-1, 1) + 1) * 127.5).round()
    assert torch.equal(pix, want)
    files[0].unlink()  # a resume restores a missing image without recomputing the shard
    again = generate(load_model("digits"), 5, out, nfe=4, shard_size=3, image_format="png")
    assert again.computed == [] and files[0].exists()
    with pytest.raises(GenerateConfigError, match="needs image samples"):
        generate("gmm", 5, tmp_path / "g", nfe=4, image_format="png")


def test_docs_snippet_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    page = Path(__file__).resolve().parents[1] / "docs" / "generate.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(page), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "complete [0, 1, 2, 3]" and out[1] == "[] [0, 1, 2, 3]"
