"""Argument checks at the public API's boundary (:func:`diffsolve.sample`, :func:`solve`,
:func:`diffsolve.generate.generate`, the zoo loaders and the command line).

Every check raises a :class:`~diffsolve.errors.DiffsolveError` subclass whose one-line message
names the argument, what was received and what is accepted, *before* anything is allocated:
a wrong type never reaches arithmetic deep inside a solver, and an absurd budget never reaches
the allocator.

Stated limits:

* ``nfe`` and ``steps`` are at most :data:`MAX_NFE` (100 000). The grid, the solver plan and the
  progress bookkeeping are O(steps); 10^5 model evaluations is beyond any published sampling
  budget by two orders of magnitude, and larger values are almost always typos (the issue
  that prompted this check asked for 10^8 and 10^9).
* The solver state of one sampling call must fit in memory: the estimate is
  ``STATE_COPIES x numel x itemsize`` (the state, the denoised output, a multistep history and
  an injected noise draw are live at once) and it must not exceed the device's total memory
  (physical RAM on CPU, :func:`torch.cuda.mem_get_info`'s total on CUDA).
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import DiffsolveError, GridError, IncompatibleModelError, SolverOptionError

MAX_NFE = 100_000
"""Largest ``nfe`` / ``steps`` accepted (see the module docstring)."""
MAX_SEED = 2**64
"""Seeds are 64-bit: 0 <= seed < 2**64 (larger or negative values would alias others)."""
STATE_COPIES = 4
"""Live copies of the solver state assumed by the memory estimate (a lower bound)."""


class ArgumentError(DiffsolveError):
    """An argument of a public function has the wrong type or a value outside its domain."""


def _type_name(value: object) -> str:
    return type(value).__name__


def as_int(name: str, value: object, *, minimum: int | None = None,
           maximum: int | None = None, error: type[DiffsolveError] = ArgumentError) -> int:
    """``value`` as an int (Python, numpy or torch integer; never bool, str or float), inside
    [minimum, maximum]; otherwise ``error`` naming the argument and the accepted range."""
    lo = "" if minimum is None else f" >= {minimum}"
    hi = "" if maximum is None else f" and <= {maximum}" if lo else f" <= {maximum}"
    want = f"an integer{lo}{hi}"
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise error(f"{name} must be {want}, got {value!r} ({_type_name(value)})")
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise error(f"{name} must be {want}, got {value!r} ({_type_name(value)})") from None
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise error(f"{name} must be {want}, got {v}")
    return v


def check_seed(seed: object, name: str = "seed") -> int:
    return as_int(name, seed, minimum=0, maximum=MAX_SEED - 1)


# --------------------------------------------------------------------------------------------
# devices and memory

def check_device(device: object, name: str = "device") -> torch.device | None:
    """A usable ``torch.device`` (None passes through); refuses CUDA/MPS when unavailable."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ArgumentError(f"{name}={device!r} is not a device; accepted: 'cpu', 'cuda', "
                                "'cuda:N', 'mps'") from None
    else:
        raise ArgumentError(f"{name} must be a str or torch.device, got {device!r} "
                            f"({_type_name(device)})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "built without CUDA" if torch.version.cuda is None else "no GPU visible"
            raise ArgumentError(
                f"{name}={str(dev)!r} requested but CUDA is not available (torch "
                f"{torch.__version__}, {why}); use device='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ArgumentError(f"{name}={str(dev)!r} but only {count} CUDA device(s) exist "
                                f"(cuda:0 .. cuda:{count - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ArgumentError(f"{name}={str(dev)!r} requested but MPS is not available; "
                                "use device='cpu'")
    elif dev.type not in ("cpu", "meta"):
        raise ArgumentError(f"{name}={str(dev)!r} is not supported; accepted: 'cpu', 'cuda', "
                            "'cuda:N', 'mps'")
    return dev


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (None if unknown)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[1])
        except Exception:  # a broken driver: do not block on the estimate
            return None
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _gb(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"


def check_memory(shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                 what: str = "shape") -> None:
    """Refuse a batch whose solver state cannot fit in the device's memory (estimate:
    :data:`STATE_COPIES` copies of the state)."""
    numel = math.prod(int(s) for s in shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = STATE_COPIES * numel * itemsize
    total = device_memory_bytes(device)
    if total is not None and need > total:
        raise ArgumentError(
            f"{what} {tuple(int(s) for s in shape)} needs about {_gb(need)} for the solver "
            f"state ({STATE_COPIES} copies of {_gb(numel * itemsize)} "
            f"{str(dtype).replace('torch.', '')}) but {device.type} has {_gb(total)}; use a "
            "smaller batch (diffsolve generate splits a large run into shards)")


# --------------------------------------------------------------------------------------------
# shapes

def check_shape(shape: object, name: str = "shape") -> tuple[int, ...]:
    """A batch shape (B, ...) of positive integers."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
        raise ArgumentError(f"{name} must be a sequence of positive integers such as "
                            f"(16, 1, 8, 8), or a noise tensor; got {shape!r}")
    if len(shape) < 1:
        raise ArgumentError(f"{name} must have at least one dimension (the batch), got ()")
    return tuple(as_int(f"{name}[{i}]", s, minimum=1) for i, s in enumerate(shape))


def check_model_shape(model: object, sample_shape: Sequence[int], what: str) -> None:
    """A model that declares one sample's shape (zoo models: ``model.shape``) refuses others,
    e.g. 3-channel input to the 1-channel digits model."""
    want = getattr(model, "shape", None)
    if want is None:
        return
    want = tuple(int(s) for s in want)
    got = tuple(int(s) for s in sample_shape)
    if got != want:
        card = getattr(model, "card", None)
        label = f"the model ({card.get('dataset', 'zoo')})" if isinstance(card, dict) else (
            "the model")
        channels = (f"; it has {want[0]} channel(s), got {got[0]}"
                    if len(got) == len(want) == 3 and got[0] != want[0] else "")
        raise IncompatibleModelError(
            f"{what}: {label} takes samples of shape {want} (batch first: (B, "
            f"{', '.join(map(str, want))})), got {got}{channels}")


def parse_option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["eta=0.5", "order=3"]`` -> {"eta": 0.5, "order": 3}; values are JSON (numbers, true/
    false, null) or else plain strings."""
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ArgumentError(f"solver option {p!r} must look like NAME=VALUE, e.g. eta=0.5")
        try:
            val = json.loads(raw)
        except ValueError:
            val = raw
        if isinstance(val, float) and not math.isfinite(val):
            raise ArgumentError(f"solver option {key}={raw!r} must be finite")
        out[key] = val
    return out


def parse_options_json(text: str, name: str = "--solver-options") -> dict[str, Any]:
    """A JSON object of options, e.g. '{"eta": 0.5}'."""
    try:
        val = json.loads(text)
    except ValueError as e:
        raise ArgumentError(f"{name} must be a JSON object such as '{{\"eta\": 0.5}}' "
                            f"({e.msg} at char {e.pos})") from None
    if not isinstance(val, dict):
        raise ArgumentError(f"{name} must be a JSON object such as '{{\"eta\": 0.5}}', got "
                            f"{_type_name(val)}")
    return val


# --------------------------------------------------------------------------------------------
# budgets and grids

def check_budget(nfe: object, steps: object) -> tuple[int | None, int | None]:
    """``nfe`` and ``steps`` as ints in [1, MAX_NFE] (or None)."""
    n = None if nfe is None else as_int("nfe", nfe, minimum=1, maximum=MAX_NFE,
                                        error=SolverOptionError)
    s = None if steps is None else as_int("steps", steps, minimum=1, maximum=MAX_NFE,
                                          error=SolverOptionError)
    return n, s


def _explicit_grid_steps(grid: object) -> tuple[int, bool] | None:
    """(steps, ends at sigma = 0) of an explicit grid (a Grid or a sigma sequence)."""
    from .grids import Grid

    if isinstance(grid, Grid):
        return grid.steps, grid.to_zero
    if isinstance(grid, str):
        return None
    try:
        t = torch.as_tensor(grid, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise GridError(f"grid must be a name, a Grid or a decreasing sequence of sigmas, got "
                        f"{grid!r}") from None
    if t.ndim != 1 or t.numel() < 2:
        return None  # Grid.from_sigmas raises its own, precise error
    return t.numel() - 1, bool(t[-1] == 0)


# --------------------------------------------------------------------------------------------
# conditioning

def check_cond_batch(model: Any, batch: int) -> None:
    """Tensor keyword arguments (``cond``/``uncond``/``extra_args``) are batch-first: their
    first dimension must equal the state's batch (or be 1 to broadcast, except for batched
    guidance, which concatenates cond and uncond along the batch)."""
    batched = model.guidance_scale is not None and model.batched_guidance
    for label, kwargs in (("cond", model.cond), ("uncond", model.uncond),
                          ("extra_args", model.extra_args)):
        for k, v in kwargs.items():
            if not isinstance(v, Tensor) or v.ndim < 1 or v.shape[0] == batch:
                continue
            if v.shape[0] == 1 and not batched:
                continue
            raise IncompatibleModelError(
                f"{label}[{k!r}] has batch {v.shape[0]} (shape {tuple(v.shape)}) but the state "
                f"x has {batch} samples; tensor keyword arguments are batch-first and must have "
                f"{batch} rows" + ("" if batched else " (or 1, to broadcast)"))
