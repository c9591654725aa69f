r"""Sharded, resumable, world-size-independent sample generation (``diffsolve generate``).

The N samples of a run are cut into fixed shards of ``shard_size`` consecutive global indices,
shard k = [k S, min((k+1) S, N)), and shard k is processed by rank ``k mod world_size``
(round-robin). Sample i's initial noise and every later stochastic draw come from the
per-sample stream keyed by (seed, i) (:class:`diffsolve.noise.PerSampleStreams`), and a shard's
batch composition does not depend on the world size, so the content of every shard file is the
same whatever the number of processes (bitwise on CPU with a fixed thread count; on GPUs the
same kernels run on the same batches, see docs/generate.md for the caveat).

Files in the output folder:

* ``shard_{k:06d}.safetensors``: tensor ``x`` (the shard's samples, float32) and ``index``
  (their global indices), metadata ``config_hash``. Written to a temporary file in the same
  folder and moved into place with :func:`os.replace`, so a shard file is either complete
  or absent.
* ``shard_{k:06d}.failed.json``: a shard whose sampling produced NaN/inf (the error names the
  step and sigma); the shard is skipped, the run continues.
* ``manifest.json``: the run's configuration (and its hash), then, when the run ends, the list
  of finished and failed shards with each file's SHA-256.

Resuming: running the same command again skips every shard whose file exists (and was written
by the same configuration), and recomputes only the missing ones; a different configuration in
an existing folder is refused. Multi-process runs use ``torch.distributed`` (NCCL on CUDA,
gloo on CPU), initialised only when ``WORLD_SIZE > 1`` (e.g. under ``torchrun``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import DiffsolveError, NonFiniteError
from ..core.models import Denoiser

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
CRASH_ENV = "DIFFSOLVE_GENERATE_CRASH_AFTER"
"""Fault injection for tests: a rank exits abruptly (``os._exit(75)``) after finishing this
many shards in the current process."""


class GenerateConfigError(DiffsolveError):
    """The output folder holds a run with a different configuration, or options are invalid."""


@dataclass
class GenerateResult:
    """Summary of a :func:`generate` call (on every rank).

    Attributes:
        out: the output folder.
        n_shards: shards of the run.
        computed: shard ids this rank computed in this call.
        reused: shard ids this rank found already finished.
        failed: shard id -> reason, over all ranks (known after the final barrier).
        manifest: the final manifest (rank 0 writes it; others read it back).
    """

    out: Path
    n_shards: int
    computed: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# distributed helpers

def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process if unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def _init_dist(device: torch.device) -> bool:
    """Initialise the default process group when WORLD_SIZE > 1; True if we did it."""
    import torch.distributed as dist

    _, world, _ = _dist_env()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def _broadcast_str(text: str, world: int) -> str:
    """Rank 0's string on every rank (a collective: also acts as a barrier)."""
    if world <= 1:
        return text
    import torch.distributed as dist

    box = [text]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


# --------------------------------------------------------------------------------------------
# files

def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of every shard: fixed size, the last one possibly shorter."""
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def shard_path(out: Path, k: int) -> Path:
    return out / f"shard_{k:06d}.safetensors"


def failed_path(out: Path, k: int) -> Path:
    return out / f"shard_{k:06d}.failed.json"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _write_shard(path: Path, x: Tensor, start: int, config_hash: str) -> None:
    from safetensors.torch import save

    index = torch.arange(start, start + x.shape[0], dtype=torch.int64)
    data = save({"x": x.detach().to("cpu", torch.float32).contiguous(), "index": index},
                # one metadata key: safetensors does not keep the key order of several,
                # and byte-identical files (same SHA-256 at any world size) are worth having
                metadata={"diffsolve": json.dumps({"config_hash": config_hash, "start": start},
                                                  sort_keys=True)})
    _atomic_write_bytes(path, data)


def _shard_config_hash(path: Path) -> str | None:
    """The config hash stored in a shard file, or None if the file is unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("diffsolve", "{}"))
            return meta.get("config_hash")
    except Exception:  # a corrupt file counts as missing (it is recomputed)
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_samples(out: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """All finished samples of a run, ordered by global index: (x, index).

    Failed shards are absent (see ``manifest.json``); ``index`` says which samples are there.
    """
    from safetensors.torch import load_file

    folder = Path(out)
    files = sorted(folder.glob("shard_*.safetensors"))
    if not files:
        raise GenerateConfigError(f"no shard files in {str(folder)!r}")
    parts = [load_file(str(f)) for f in files]
    x = torch.cat([p["x"] for p in parts])
    index = torch.cat([p["index"] for p in parts])
    order = torch.argsort(index)
    return x[order], index[order]


# --------------------------------------------------------------------------------------------
# model resolution

def _resolve_model(model: Denoiser | str, shape: Sequence[int] | None,
                   device: torch.device) -> tuple[Denoiser, tuple[int, ...], str]:
    if isinstance(model, Denoiser):
        shp = shape if shape is not None else getattr(model, "shape", None)
        if shp is None:
            raise GenerateConfigError(
                "give `shape` (one sample's shape, e.g. (1, 8, 8)) for a Denoiser without a "
                "`.shape` attribute")
        return model, tuple(int(s) for s in shp), type(getattr(model, "net", model)).__name__
    if model == "gmm":
        from ..core.schedules import EDM
        from ..zoo import GaussianMixture

        gmm = GaussianMixture.default_2d()
        return gmm.denoiser(EDM(sigma_min=0.002, sigma_max=20.0)), (2,), "gmm"
    from ..zoo.pretrained import load_model

    den = load_model(model, device=device)
    return den, tuple(den.shape), str(model)  # type: ignore[attr-defined]


def _canonical(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_canonical(u) for u in v]
    if isinstance(v, dict):
        return {str(k): _canonical(u) for k, u in sorted(v.items())}
    return repr(v)


# --------------------------------------------------------------------------------------------
# the run

def generate(
    model: Denoiser | str,
    n: int,
    out: str | os.PathLike[str],
    *,
    solver: str = "dpmpp_2m",
    nfe: int | None = None,
    steps: int | None = None,
    grid: str = "karras",
    seed: int = 0,
    shard_size: int = 500,
    shape: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid_options: dict[str, Any] | None = None,
    solver_options: dict[str, Any] | None = None,
    retry_failed: bool = False,
    progress: bool = False,
    on_shard_done: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Generate ``n`` samples into shard files under ``out`` (see the module docstring).

    Run it in every process of a ``torchrun`` job (or once, alone): rank r computes the shards
    k with k mod world_size == r.

    Args:
        model: a :class:`Denoiser` or a model name ("gmm", a shipped zoo model such as
            "digits", or a zoo safetensors path/directory).
        n: number of samples (global indices 0..n-1).
        out: output folder (created; an existing run there is resumed).
        solver, nfe, steps, grid, grid_options, solver_options: as :func:`diffsolve.sample`
            (default ``nfe=20`` if neither nfe nor steps is given).
        seed: run seed; sample i is keyed by (seed, i).
        shard_size: samples per shard (also the batch size of one sampling call).
        shape: one sample's shape (only needed for a Denoiser without ``.shape``).
        device: sampling device; default cuda:LOCAL_RANK if CUDA is available, else CPU.
        dtype: dtype of the solver state (files always store float32).
        retry_failed: recompute shards recorded as failed (NaN/inf) by an earlier call.
        progress: one line per shard on stderr.
        on_shard_done: called with the shard id after each shard this rank writes (hook).
    """
    from ..drivers.loop import sample

    if n < 1 or shard_size < 1:
        raise GenerateConfigError(f"n and shard_size must be >= 1, got n={n}, "
                                  f"shard_size={shard_size}")
    if nfe is None and steps is None:
        nfe = 20
    rank, world, local = _dist_env()
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns_group = _init_dist(dev)
    try:
        den, sample_shape, model_name = _resolve_model(model, shape, dev)
        config = _canonical({
            "format": FORMAT_VERSION, "model": model_name, "shape": list(sample_shape), "n": n,
            "shard_size": shard_size, "solver": solver, "nfe": nfe, "steps": steps,
            "grid": grid, "grid_options": grid_options or {}, "seed": seed,
            "solver_options": solver_options or {}, "dtype": str(dtype).replace("torch.", ""),
        })
        config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        folder = Path(out)
        ranges = shard_ranges(n, shard_size)
        result = GenerateResult(out=folder, n_shards=len(ranges))
        error = ""
        if rank == 0:
            try:
                _prepare_folder(folder, config, config_hash)
            except GenerateConfigError as e:
                error = str(e)
        error = _broadcast_str(error, world)  # every rank raises, none waits in a barrier
        if error:
            raise GenerateConfigError(error)
        _check_manifest(folder, config_hash)
        crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        written = 0
        for k in range(rank, len(ranges), world):
            path, fpath = shard_path(folder, k), failed_path(folder, k)
            if path.exists():
                stored = _shard_config_hash(path)
                if stored == config_hash:
                    result.reused.append(k)
                    continue
                if stored is not None:
                    raise GenerateConfigError(f"{str(path)!r} was written by another "
                                              "configuration; use a new output folder")
            if fpath.exists() and not retry_failed:
                result.reused.append(k)
                continue
            start, stop = ranges[k]
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    res = sample(den, (stop - start, *sample_shape), solver=solver, nfe=nfe,
                                 steps=steps, grid=grid, seed=seed, offset=start, dtype=dtype,
                                 device=dev, grid_options=grid_options, progress=False,
                                 check_finite="end", **(solver_options or {}))
                x = res.x
                if not bool(torch.isfinite(x).all()):  # e.g. check_finite bypassed by a solver
                    raise NonFiniteError("the final sample is non-finite", step=-1,
                                         sigma=0.0)
            except NonFiniteError as e:
                reason = str(e)
                _atomic_write_json(fpath, {"shard": k, "start": start, "stop": stop,
                                           "config_hash": config_hash, "error": reason,
                                           "step": e.step, "sigma": e.sigma})
                print(f"diffsolve generate: shard {k} (samples {start}..{stop - 1}) skipped: "
                      f"{reason}", file=sys.stderr, flush=True)
                continue
            _write_shard(path, x, start, config_hash)
            if fpath.exists():
                fpath.unlink()
            result.computed.append(k)
            written += 1
            if progress:
                print(f"[rank {rank}/{world}] shard {k + 1}/{len(ranges)} "
                      f"({stop - start} samples) in {time.perf_counter() - t0:.2f} s",
                      file=sys.stderr, flush=True)
            if on_shard_done is not None:
                on_shard_done(k)
            if crash_after and written >= crash_after:
                os._exit(75)  # fault injection: die without cleanup, like a killed job
        _barrier(world)
        if rank == 0:
            result.manifest = _finish_manifest(folder, config, config_hash, ranges)
        _barrier(world)
        if rank != 0:
            result.manifest = json.loads((folder / MANIFEST).read_text())
        result.failed = {int(f["shard"]): f["error"] for f in result.manifest["failed"]}
        return result
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _prepare_folder(folder: Path, config: dict[str, Any], config_hash: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".*.tmp.*"):  # leftovers of a write interrupted by a crash
        tmp.unlink(missing_ok=True)
    mpath = folder / MANIFEST
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old.get("config_hash") != config_hash:
            raise GenerateConfigError(
                f"{str(folder)!r} holds a run with another configuration "
                f"({json.dumps(old.get('config'), sort_keys=True)}); use a new output folder "
                "or delete it")
        if old.get("status") == "running":
            return
    _atomic_write_json(mpath, {"config": config, "config_hash": config_hash,
                               "status": "running", "done": [], "failed": []})


def _check_manifest(folder: Path, config_hash: str) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    if m.get("config_hash") != config_hash:
        raise GenerateConfigError("ranks disagree on the configuration (same arguments on "
                                  "every rank?)")


def _finish_manifest(folder: Path, config: dict[str, Any], config_hash: str,
                     ranges: list[tuple[int, int]]) -> dict[str, Any]:
    done, failed, missing = [], [], []
    for k, (start, stop) in enumerate(ranges):
        p, fp = shard_path(folder, k), failed_path(folder, k)
        if p.exists():
            done.append({"shard": k, "start": start, "stop": stop, "file": p.name,
                         "sha256": _sha256(p)})
        elif fp.exists():
            info = json.loads(fp.read_text())
            failed.append({"shard": k, "start": start, "stop": stop, "error": info["error"],
                           "step": info.get("step"), "sigma": info.get("sigma")})
        else:
            missing.append(k)
    status = "complete" if not failed and not missing else (
        "incomplete" if missing else "complete_with_failures")
    manifest = {"config": config, "config_hash": config_hash, "status": status,
                "n_done": sum(d["stop"] - d["start"] for d in done), "done": done,
                "failed": failed, "missing": missing}
    _atomic_write_json(folder / MANIFEST, manifest)
    return manifest
