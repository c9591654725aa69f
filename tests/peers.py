"""Load peer libraries for cross-checks without their heavy optional dependencies.

k-diffusion's package ``__init__`` imports torchvision, scikit-image, clean-fid, ... (none of
which has a CPU build here). Its ``sampling.py`` needs only ``utils.append_dims`` from the
package, so we register a stub ``k_diffusion`` package whose ``utils`` defines just that, and
load the installed ``sampling.py`` by file path (research note ecosystem.md, Sec. 1.1).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _append_dims(x, target_dims: int):
    """Append trailing singleton dimensions until ``x`` has ``target_dims`` dimensions."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
    return x[(...,) + (None,) * missing]


def load_kdiffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module, or skip the calling test if it is not installed."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    pytest.importorskip("torchsde")
    pytest.importorskip("torchdiffeq")
    path = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    package = types.ModuleType("k_diffusion")
    package.__path__ = []  # a namespace-like stub: only the modules registered below exist
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.setdefault("k_diffusion", package)
    sys.modules.setdefault("k_diffusion.utils", utils)
    mod_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules["k_diffusion.sampling"] = module
    mod_spec.loader.exec_module(module)
    return module
