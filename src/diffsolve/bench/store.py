"""The results file: cell keys, atomic JSON writes, loading, and the run's environment."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import DiffsolveError

FORMAT = "diffsolve-bench-v2"


def cell_key(model: str, solver: str, nfe: int, samples: int, seed: int) -> str:
    """The results.json key of one cell run (one seed)."""
    return f"{model}|{solver}|nfe={nfe}|n={samples}|seed={seed}"


def finite_or_none(v: Any) -> Any:
    """v with every non-finite float replaced by None (JSON has no NaN/inf)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite_or_none(x) for x in v]
    return v


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(finite_or_none(data), f, indent=1, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_results(path: Path) -> dict[str, Any]:
    """The results in ``path``, or an empty dict if it does not exist. A file of an older
    format is refused (its cells lack the per-seed structure)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise DiffsolveError(f"{str(path)!r} is not valid JSON ({e}); move it away to start "
                             "afresh") from e
    if data.get("format") != FORMAT:
        raise DiffsolveError(f"{str(path)!r} is not a {FORMAT} results file; move it away "
                             "to start afresh")
    return data


def environment() -> tuple[dict[str, Any], dict[str, Any]]:
    """(versions, hardware) of this process."""
    import numpy as np

    from ..core import VERSION as __version__
    from ..core.noise import NOISE_STREAM_VERSION

    versions = {"diffsolve": __version__, "torch": torch.__version__,
                "numpy": np.__version__, "python": platform.python_version(),
                "noise_stream_version": NOISE_STREAM_VERSION}
    cuda: dict[str, Any] = {"available": torch.cuda.is_available()}
    if cuda["available"]:
        cuda.update(device=torch.cuda.get_device_name(0), version=torch.version.cuda)
    hardware = {"platform": platform.platform(), "machine": platform.machine(),
                "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "cuda": cuda}
    return versions, hardware


def now() -> str:
    """UTC time stamp, seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
