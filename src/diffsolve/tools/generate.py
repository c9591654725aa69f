r"""Sharded, resumable, verified, world-size-independent sample generation (``diffsolve generate``).

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
* ``manifest.json``: the run's configuration (and its hash), the finished shards with the
  SHA-256 of each file, and the failed ones. A shard's digest is computed from the bytes the
  writer has just serialised and is recorded right after the file is in place; the manifest
  never takes a digest by reading back a file it did not write.
* ``shard_{k:06d}.failed.json``: a shard whose sampling produced NaN/inf (the error names the
  step and sigma); the shard is skipped, the run continues.
* ``.claims.lock``: inter-process claims (:class:`diffsolve.core.integrity.Claims`).
* ``png/{i:06d}.png`` with ``image_format="png"``: one image per sample.

Integrity: resuming verifies every reused shard file against the SHA-256 in the manifest; a
file that differs (corrupted, truncated, replaced), a recorded file that is missing, and a file
without a record (written by an interrupted run just before its record) are recomputed and
reported (stderr, :attr:`GenerateResult.repaired`). :func:`load_samples` verifies every file
by default.

Concurrency: a process claims a shard (an exclusive POSIX record lock, dropped by the kernel
when the process dies) before looking at it. Two runs of the same command into one folder
therefore split the work: each computes the shards the other has not claimed, then waits for
the shards the other is computing and verifies them, so both end with a complete, verified
folder. A run with another configuration is refused while the folder holds any shard or any
live claim; a folder whose run failed before writing a shard is taken over by the next run.
Multi-process runs use ``torch.distributed`` (NCCL on CUDA, gloo on CPU), initialised only
when ``WORLD_SIZE > 1`` (e.g. under ``torchrun``).
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
from ..core.integrity import Claims, IntegrityError, sha256_bytes, sha256_file
from ..core.models import Denoiser
from ..core.noise import NOISE_STREAM_VERSION

MANIFEST = "manifest.json"
LOCK_FILE = ".claims.lock"
PNG_DIR = "png"
FORMAT_VERSION = 1
MAX_SHARDS = 1_000_000
"""Largest number of shards of one run (n / shard_size); the manifest lists every shard."""
IMAGE_FORMATS = ("safetensors", "png")
CRASH_ENV = "DIFFSOLVE_GENERATE_CRASH_AFTER"
"""Fault injection for tests: a rank exits abruptly (``os._exit(75)``) after finishing this
many shards in the current process."""
GATE_ENV = "DIFFSOLVE_GENERATE_GATE"
"""For tests of concurrent runs: after computing each shard, and still holding its claim, wait
(up to 300 s) until the file named by this variable exists."""


class GenerateConfigError(DiffsolveError):
    """The output folder holds a run with a different configuration, or options are invalid."""


@dataclass
class GenerateResult:
    """Summary of a :func:`generate` call (on every rank).

    Attributes:
        out: the output folder.
        n_shards: shards of the run.
        computed: shard ids this rank computed in this call.
        reused: shard ids this rank found already finished (verified) or failed.
        repaired: shard id -> why the existing file was not reused (digest mismatch, missing
            file, no record); those shards were recomputed and are also in ``computed``.
        waited: shard ids another process was computing when this rank reached them; this
            rank waited for them and verified them (or computed them if the other died).
        failed: shard id -> reason, over all ranks (known after the final barrier).
        nfe: model evaluations per sample of one shard (the actual budget; it can be below
            the requested ``nfe`` when the solver's steps do not divide it), None if this rank
            computed nothing.
        manifest: the final manifest (rank 0 writes it; others read it back).
    """

    out: Path
    n_shards: int
    computed: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    repaired: dict[int, str] = field(default_factory=dict)
    waited: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    nfe: int | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# distributed helpers

def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process if unset)."""
    from ..core.validation import as_int

    world = as_int("WORLD_SIZE", _env_int("WORLD_SIZE", "1"), minimum=1)
    rank = as_int("RANK", _env_int("RANK", "0"), minimum=0, maximum=world - 1)
    local = as_int("LOCAL_RANK", _env_int("LOCAL_RANK", str(rank)), minimum=0)
    return rank, world, local


def _env_int(name: str, default: str) -> int:
    raw = os.environ.get(name, default)
    try:
        return int(raw)
    except ValueError:
        raise GenerateConfigError(f"environment variable {name}={raw!r} is not an integer "
                                  "(set by torchrun)") from None


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


def png_path(out: Path, i: int) -> Path:
    return out / PNG_DIR / f"{i:06d}.png"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _shard_bytes(x: Tensor, start: int, config_hash: str) -> bytes:
    from safetensors.torch import save

    index = torch.arange(start, start + x.shape[0], dtype=torch.int64)
    return save({"x": x.detach().to("cpu", torch.float32).contiguous(), "index": index},
                # one metadata key: safetensors does not keep the key order of several,
                # and byte-identical files (same SHA-256 at any world size) are worth having
                metadata={"diffsolve": json.dumps({"config_hash": config_hash, "start": start},
                                                  sort_keys=True)})


def _clean_tmp(folder: Path, name: str) -> None:
    """Delete temporary files of ``name`` left by an interrupted write. Call it only while
    holding the claim that guards ``name`` (no other process is writing it then)."""
    for tmp in folder.glob(f".{name}.tmp.*"):
        tmp.unlink(missing_ok=True)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise GenerateConfigError(f"{str(path)!r} is missing (deleted during the run?)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{str(path)!r} is not valid JSON ({e}); it is corrupted, so the "
                             "shards cannot be verified: use a new output folder") from None
    if not isinstance(m, dict):
        raise IntegrityError(f"{str(path)!r} is not a diffsolve manifest")
    return m


def _entries(m: dict[str, Any], key: str) -> dict[int, dict[str, Any]]:
    return {int(e["shard"]): e for e in m.get(key) or []}


def _update_manifest(claims: Claims, folder: Path, config_hash: str,
                     change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read-modify-write the manifest under its lock (other processes may update it too)."""
    with claims.manifest():
        _clean_tmp(folder, MANIFEST)
        m = _read_manifest(folder)
        if m.get("config_hash") != config_hash:
            raise GenerateConfigError(
                f"the manifest in {str(folder)!r} was replaced by a run with another "
                "configuration while this run was writing; use separate output folders")
        change(m)
        for key in ("done", "failed"):
            m[key] = sorted(m.get(key) or [], key=lambda e: int(e["shard"]))
        _atomic_write_json(folder / MANIFEST, m)
        return m


def _to_png(x: Tensor) -> Any:
    """One sample (C, H, W) or (H, W) in [-1, 1] as a PIL image (v = round(255 (x+1)/2))."""
    from PIL import Image

    img = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3:
        return Image.fromarray(img.permute(1, 2, 0).numpy(), mode="RGB")
    return Image.fromarray(img.numpy(), mode="L")


def _export_png(folder: Path, x: Tensor, start: int, only_missing: bool) -> None:
    import io

    (folder / PNG_DIR).mkdir(exist_ok=True)
    for j in range(x.shape[0]):
        p = png_path(folder, start + j)
        if only_missing and p.exists():
            continue
        buf = io.BytesIO()
        _to_png(x[j]).save(buf, format="PNG")
        _atomic_write_bytes(p, buf.getvalue())


def load_samples(out: str | os.PathLike[str], *, verify: bool = True) -> tuple[Tensor, Tensor]:
    """All finished samples of a run, ordered by global index: (x, index).

    With ``verify`` (default) only the shards recorded in ``manifest.json`` are read, and each
    file's SHA-256 must equal the recorded one; a mismatch, a recorded file that is missing
    and a shard file without a record raise :class:`~diffsolve.core.integrity.IntegrityError`
    naming the file (rerun the same ``generate`` command to recompute it).
    ``verify=False`` reads every ``shard_*.safetensors`` file as it is.
    Failed shards are absent (see ``manifest.json``); ``index`` says which samples are there.
    """
    from safetensors.torch import load, load_file

    folder = Path(out)
    if not folder.is_dir():
        raise GenerateConfigError(f"{str(folder)!r} is not a folder")
    files = sorted(folder.glob("shard_*.safetensors"))
    if not verify:
        if not files:
            raise GenerateConfigError(f"no shard files in {str(folder)!r}")
        parts = []
        for f in files:
            try:
                parts.append(load_file(str(f)))
            except Exception as e:  # safetensors' own error type: truncated or garbled
                raise IntegrityError(f"{str(f)!r} is not a readable shard ({e}); rerun the "
                                     "same generate command to recompute it") from None
    else:
        if not (folder / MANIFEST).exists():
            raise IntegrityError(f"no {MANIFEST} in {str(folder)!r}: the shards cannot be "
                                 "verified (pass verify=False to read them anyway)")
        done = _entries(_read_manifest(folder), "done")
        extra = sorted({f.name for f in files} - {e["file"] for e in done.values()})
        if extra:
            raise IntegrityError(
                f"{str(folder / extra[0])!r} (and {len(extra) - 1} more) has no record in the "
                "manifest (an interrupted run?); rerun the same generate command to finish and "
                "verify it, or pass verify=False")
        if not done:
            raise GenerateConfigError(f"no finished shards in {str(folder)!r}")
        parts = []
        for k in sorted(done):
            p = folder / done[k]["file"]
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                raise IntegrityError(f"{str(p)!r} is recorded in the manifest but missing; "
                                     "rerun the same generate command to recompute it") from None
            if sha256_bytes(data) != done[k]["sha256"]:
                raise IntegrityError(
                    f"{str(p)!r} does not match the SHA-256 recorded in the manifest (corrupted "
                    "or modified); rerun the same generate command to recompute it")
            parts.append(load(data))
    x = torch.cat([p["x"] for p in parts])
    index = torch.cat([p["index"] for p in parts])
    order = torch.argsort(index)
    return x[order], index[order]


# --------------------------------------------------------------------------------------------
# model resolution and checks

def _resolve_model(model: Denoiser | str, shape: Sequence[int] | None,
                   device: torch.device) -> tuple[Denoiser, tuple[int, ...], str]:
    from ..core.validation import check_shape

    if isinstance(model, Denoiser):
        shp = shape if shape is not None else getattr(model, "shape", None)
        if shp is None:
            raise GenerateConfigError(
                "give `shape` (one sample's shape, e.g. (1, 8, 8)) for a Denoiser without a "
                "`.shape` attribute")
        return model, check_shape(shp, "shape"), type(getattr(model, "net", model)).__name__
    if not isinstance(model, (str, os.PathLike)):
        raise GenerateConfigError(f"model must be a Denoiser, a model name or a path, got "
                                  f"{type(model).__name__}")
    if model == "gmm":
        from ..core.schedules import EDM
        from ..zoo import GaussianMixture

        gmm = GaussianMixture.default_2d()
        return gmm.denoiser(EDM(sigma_min=0.002, sigma_max=20.0)), (2,), "gmm"
    from ..zoo.pretrained import load_model

    den = load_model(model, device=device)
    return den, tuple(den.shape), os.fspath(model)  # type: ignore[attr-defined]


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


def _preflight(den: Denoiser, sample_shape: tuple[int, ...], batch: int, *, solver: str,
               nfe: int | None, steps: int | None, grid: str, grid_options: dict[str, Any],
               solver_options: dict[str, Any], dtype: torch.dtype, device: torch.device,
               image_format: str) -> None:
    """Every check a shard's sampling call would fail on, done before the folder is touched,
    so that a bad configuration leaves nothing behind."""
    from ..core.validation import check_memory, check_model_shape
    from ..drivers.arguments import check_solver_options
    from ..drivers.loop import resolve_grid, steps_for_nfe
    from ..solvers import get_solver

    if not isinstance(grid, str):
        raise GenerateConfigError(f"grid must be a grid name, got {type(grid).__name__}")
    check_solver_options(solver, solver_options)
    if nfe is not None and steps is not None:
        raise GenerateConfigError("give one of `nfe` and `steps`, not both")
    if grid != "tuned":  # a tuned entry's grid and solver were checked by resolve_tuned
        solver_obj = get_solver(solver, **solver_options)
        to_zero = bool(grid_options.get("to_zero", True))
        n_steps = steps if steps is not None else steps_for_nfe(solver_obj, int(nfe or 0),
                                                                to_zero=to_zero)
        resolve_grid(grid, den, n_steps, **grid_options)
    check_model_shape(den, sample_shape, "generate")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise GenerateConfigError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    check_memory((batch, *sample_shape), dtype, device, what="a shard of shape")
    if image_format == "png" and not (
            len(sample_shape) == 2 or (len(sample_shape) == 3 and sample_shape[0] in (1, 3))):
        raise GenerateConfigError(
            f"image_format='png' needs image samples (C, H, W) with 1 or 3 channels, or (H, W); "
            f"this model's samples have shape {sample_shape}")


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
    tuned: str | os.PathLike[str] | None = None,
    seed: int = 0,
    shard_size: int = 500,
    shape: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid_options: dict[str, Any] | None = None,
    solver_options: dict[str, Any] | None = None,
    retry_failed: bool = False,
    image_format: str = "safetensors",
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
        tuned: a tuned artefact (``diffsolve tune``; path or shipped model name): the solver,
            its options and the grid of its entry at ``nfe`` (``solver`` picks that solver's
            own entry if it has one) replace ``solver`` and ``grid``; the manifest records
            the entry.
        seed: run seed; sample i is keyed by (seed, i).
        shard_size: samples per shard (also the batch size of one sampling call).
        shape: one sample's shape (only needed for a Denoiser without ``.shape``).
        device: sampling device; default cuda:LOCAL_RANK if CUDA is available, else CPU.
        dtype: dtype of the solver state (files always store float32).
        retry_failed: recompute shards recorded as failed (NaN/inf) by an earlier call.
        image_format: "safetensors" (shards only) or "png" (the shards, plus one PNG per
            sample in ``out/png/``, values in [-1, 1] mapped to 0..255).
        progress: an overall progress bar (samples, rate, ETA) on stderr.
        on_shard_done: called with the shard id after each shard this rank writes (hook).
    """
    from tqdm.auto import tqdm

    from ..core.validation import as_int, check_budget, check_device, check_seed
    from ..drivers.loop import sample

    n = as_int("n", n, minimum=1, error=GenerateConfigError)
    shard_size = as_int("shard_size", shard_size, minimum=1, error=GenerateConfigError)
    if math.ceil(n / shard_size) > MAX_SHARDS:
        raise GenerateConfigError(f"n={n} with shard_size={shard_size} makes "
                                  f"{math.ceil(n / shard_size)} shards; at most {MAX_SHARDS} "
                                  "(raise shard_size)")
    seed = check_seed(seed)
    nfe, steps = check_budget(nfe, steps)
    if image_format not in IMAGE_FORMATS:
        raise GenerateConfigError(f"image_format must be one of {list(IMAGE_FORMATS)}, got "
                                  f"{image_format!r}")
    for name, opts in (("grid_options", grid_options), ("solver_options", solver_options)):
        if opts is not None and not isinstance(opts, dict):
            raise GenerateConfigError(f"{name} must be a dict, got {type(opts).__name__}")
    grid_options, solver_options = dict(grid_options or {}), dict(solver_options or {})
    if nfe is None and steps is None:
        nfe = 20
    rank, world, local = _dist_env()
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = check_device(device)
    assert dev is not None
    if dev.type == "cuda" and dev.index is None:
        dev = check_device(torch.device("cuda", local))
        assert dev is not None
    den, sample_shape, model_name = _resolve_model(model, shape, dev)
    tuned_art: Any = None
    tuned_record: dict[str, Any] | None = None
    if tuned is not None:
        from ..drivers.tuned import load_tuned, resolve_tuned

        if steps is not None:
            raise GenerateConfigError("a tuned artefact is chosen by NFE budget: give nfe, "
                                      "not steps")
        tuned_art = load_tuned(tuned)
        solver, _, _, entry = resolve_tuned(tuned_art, den, solver, nfe, None)  # type: ignore[misc]
        grid = "tuned"
        tuned_record = {"nfe": entry.nfe, "solver": entry.solver,
                        "solver_options": entry.solver_options,
                        "statistics": bool(entry.statistics), "sigmas": list(entry.sigmas),
                        "weights_sha256": tuned_art.model.get("weights_sha256")}
    _preflight(den, sample_shape, min(shard_size, n), solver=solver, nfe=nfe, steps=steps,
               grid=grid, grid_options=grid_options, solver_options=solver_options,
               dtype=dtype, device=dev, image_format=image_format)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns_group = _init_dist(dev)
    claims: Claims | None = None
    try:
        config = _canonical({
            "format": FORMAT_VERSION, "noise_stream_version": NOISE_STREAM_VERSION,
            "model": model_name, "shape": list(sample_shape), "n": n,
            "shard_size": shard_size, "solver": solver, "nfe": nfe, "steps": steps,
            "grid": grid, "grid_options": grid_options, "seed": seed,
            "solver_options": solver_options, "dtype": str(dtype).replace("torch.", ""),
            **({"tuned": tuned_record} if tuned_record is not None else {}),
        })
        config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        folder = Path(out)
        ranges = shard_ranges(n, shard_size)
        result = GenerateResult(out=folder, n_shards=len(ranges))
        error = ""
        if rank == 0:
            try:
                _prepare_folder(folder, config, config_hash)
            except (DiffsolveError, OSError) as e:
                error = f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
        error = _broadcast_str(error, world)  # every rank raises, none waits in a barrier
        if error:
            raise GenerateConfigError(error)
        claims = Claims(folder / LOCK_FILE)
        if _read_manifest(folder).get("config_hash") != config_hash:
            raise GenerateConfigError("ranks disagree on the configuration (same arguments on "
                                      "every rank?)")
        crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        gate = os.environ.get(GATE_ENV, "")
        mine = list(range(rank, len(ranges), world))
        bar = tqdm(total=sum(ranges[k][1] - ranges[k][0] for k in mine), unit="sample",
                   desc="generate" if world == 1 else f"generate rank {rank}",
                   disable=not progress, dynamic_ncols=True, smoothing=0.1)

        def say(msg: str) -> None:  # through tqdm when the bar is shown (no garbled lines)
            if progress:
                tqdm.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr, flush=True)

        written = 0

        def one(k: int) -> None:
            nonlocal written
            did = _do_shard(k, ranges[k], folder=folder, claims=claims, config_hash=config_hash,
                            result=result, retry_failed=retry_failed, say=say,
                            image_format=image_format,
                            run=lambda start, stop: sample(
                                den, (stop - start, *sample_shape), solver=solver, nfe=nfe,
                                steps=steps, grid=grid if tuned_art is None else tuned_art,
                                seed=seed, offset=start, dtype=dtype,
                                device=dev, grid_options=grid_options, progress=False,
                                check_finite="end", **solver_options))
            bar.update(ranges[k][1] - ranges[k][0])
            if did:
                written += 1
                if gate:
                    _wait_for(Path(gate), 300.0)
                if on_shard_done is not None:
                    on_shard_done(k)
                if crash_after and written >= crash_after:
                    os._exit(75)  # fault injection: die without cleanup, like a killed job

        busy = []
        try:
            for k in mine:
                if claims.try_claim(k):
                    try:
                        one(k)
                    finally:
                        claims.release(k)
                else:  # another process is on it: come back when it is done
                    busy.append(k)
            for k in busy:
                claims.wait_claim(k)
                try:
                    result.waited.append(k)
                    one(k)
                finally:
                    claims.release(k)
        finally:
            bar.close()
        _barrier(world)
        if rank == 0:
            result.manifest = _finish_manifest(claims, folder, config_hash, ranges)
        _barrier(world)
        if rank != 0:
            result.manifest = _read_manifest(folder)
        result.failed = {int(f["shard"]): f["error"] for f in result.manifest["failed"]}
        return result
    finally:
        if claims is not None:
            claims.close()
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _do_shard(k: int, span: tuple[int, int], *, folder: Path, claims: Claims,
              config_hash: str, result: GenerateResult, retry_failed: bool,
              say: Callable[[str], None], image_format: str,
              run: Callable[[int, int], Any]) -> bool:
    """Verify or compute shard ``k`` (its claim is held). True if it was computed now."""
    start, stop = span
    path, fpath = shard_path(folder, k), failed_path(folder, k)
    _clean_tmp(folder, path.name)
    _clean_tmp(folder, fpath.name)
    m = _read_manifest(folder)
    if m.get("config_hash") != config_hash:
        raise GenerateConfigError(
            f"the manifest in {str(folder)!r} was replaced by a run with another "
            "configuration while this run was writing; use separate output folders")
    entry = _entries(m, "done").get(k)
    reason = ""
    if path.exists():
        if entry is None:
            reason = ("the file has no record in the manifest (a run was interrupted between "
                      "writing it and recording its SHA-256)")
        else:
            digest = sha256_file(path)
            if digest == entry.get("sha256"):
                result.reused.append(k)
                if image_format == "png":
                    from safetensors.torch import load_file

                    _export_png(folder, load_file(str(path))["x"], start, only_missing=True)
                return False
            reason = (f"its SHA-256 {digest[:16]}... differs from the manifest's "
                      f"{str(entry.get('sha256'))[:16]}... (corrupted or modified)")
    elif entry is not None:
        reason = "the file recorded in the manifest is missing"
    if reason:
        result.repaired[k] = reason
        say(f"diffsolve generate: shard {k} ({path.name}): {reason}; recomputing it")
    elif k in _entries(m, "failed") and fpath.exists() and not retry_failed:
        result.reused.append(k)
        return False
    try:
        with torch.no_grad():
            res = run(start, stop)
        x = res.x
        if not bool(torch.isfinite(x).all()):  # e.g. check_finite bypassed by a solver
            raise NonFiniteError("the final sample is non-finite", step=-1, sigma=0.0)
    except NonFiniteError as e:
        err = str(e)
        _atomic_write_json(fpath, {"shard": k, "start": start, "stop": stop,
                                   "config_hash": config_hash, "error": err,
                                   "step": e.step, "sigma": e.sigma})
        record = {"shard": k, "start": start, "stop": stop, "error": err, "step": e.step,
                  "sigma": e.sigma}

        def mark_failed(m: dict[str, Any]) -> None:
            m["done"] = [d for d in m.get("done") or [] if int(d["shard"]) != k]
            m["failed"] = [f for f in m.get("failed") or [] if int(f["shard"]) != k] + [record]

        _update_manifest(claims, folder, config_hash, mark_failed)
        path.unlink(missing_ok=True)
        say(f"diffsolve generate: shard {k} (samples {start}..{stop - 1}) skipped: {err}")
        return False
    data = _shard_bytes(x, start, config_hash)
    record = {"shard": k, "start": start, "stop": stop, "file": path.name,
              "sha256": sha256_bytes(data)}  # the digest of the bytes written, not re-read
    _atomic_write_bytes(path, data)

    def mark_done(m: dict[str, Any]) -> None:
        m["done"] = [d for d in m.get("done") or [] if int(d["shard"]) != k] + [record]
        m["failed"] = [f for f in m.get("failed") or [] if int(f["shard"]) != k]

    _update_manifest(claims, folder, config_hash, mark_done)
    fpath.unlink(missing_ok=True)
    if image_format == "png":
        _export_png(folder, x, start, only_missing=False)
    result.computed.append(k)
    result.nfe = int(res.nfe)
    return True


def _wait_for(path: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.02)


def _has_work(folder: Path, old: dict[str, Any] | None, claims: Claims) -> bool:
    """True if the folder holds anything of a run worth protecting: a recorded or present
    shard (finished or failed) or a live claim of another process."""
    if old is not None and (old.get("done") or old.get("failed")):
        return True
    if any(folder.glob("shard_*.safetensors")) or any(folder.glob("shard_*.failed.json")):
        return True
    return claims.any_held_by_others()


def _prepare_folder(folder: Path, config: dict[str, Any], config_hash: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GenerateConfigError(f"cannot create the output folder {str(folder)!r}: a file "
                                  "is in the way") from None
    with Claims(folder / LOCK_FILE) as claims, claims.manifest():
        _clean_tmp(folder, MANIFEST)
        mpath = folder / MANIFEST
        fresh = {"config": config, "config_hash": config_hash, "status": "running",
                 "done": [], "failed": []}
        if not mpath.exists():
            _atomic_write_json(mpath, fresh)
            return
        try:
            old: dict[str, Any] | None = json.loads(mpath.read_text())
            if not isinstance(old, dict):
                old = None
        except (ValueError, UnicodeDecodeError):
            old = None
        if old is not None and old.get("config_hash") == config_hash:
            if old.get("status") != "running":
                old["status"] = "running"
                _atomic_write_json(mpath, old)
            return
        if _has_work(folder, old, claims):
            if old is None:
                raise IntegrityError(
                    f"{str(mpath)!r} is corrupted (not a JSON manifest) and the folder holds "
                    "shards that can no longer be verified; use a new output folder")
            raise GenerateConfigError(
                f"{str(folder)!r} holds a run with another configuration "
                f"({json.dumps(old.get('config'), sort_keys=True)}); use a new output folder "
                "or delete it")
        # the previous run stopped before writing any shard: nothing to protect
        _atomic_write_json(mpath, fresh)


def _finish_manifest(claims: Claims, folder: Path, config_hash: str,
                     ranges: list[tuple[int, int]]) -> dict[str, Any]:
    """Final status from the records (each shard was verified or written in this call by
    some rank; no digest is taken from a file here)."""
    out: dict[str, Any] = {}

    def finish(m: dict[str, Any]) -> None:
        done_e, failed_e = _entries(m, "done"), _entries(m, "failed")
        done, failed, missing = [], [], []
        for k in range(len(ranges)):
            if k in done_e and shard_path(folder, k).exists():
                done.append(done_e[k])
            elif k in failed_e:
                failed.append(failed_e[k])
            else:
                missing.append(k)
        m["status"] = "complete" if not failed and not missing else (
            "incomplete" if missing else "complete_with_failures")
        m["n_done"] = sum(d["stop"] - d["start"] for d in done)
        m["done"], m["failed"], m["missing"] = done, failed, missing
        out.update(m)

    _update_manifest(claims, folder, config_hash, finish)
    return out
