"""Old import paths of modules that moved when the package was arranged in layers.

``import diffsolve.schedules`` still works and gives the very module object
:mod:`diffsolve.core.schedules` (same classes, same state), so code written against the flat
layout keeps running. New code should import from the new places (``docs/architecture.md``).
The aliases resolve lazily: nothing is imported until an old name is used.

The old module ``diffsolve.sample`` has no alias: its name is the function
:func:`diffsolve.sample`, which an aliased submodule would overwrite on the package; its
public names (``sample``, ``solve``, ``initial_noise``, ``steps_for_nfe``, ``SampleResult``)
are all importable from ``diffsolve`` itself, and the module is :mod:`diffsolve.drivers.loop`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: old module path -> its new home
MOVED: dict[str, str] = {
    "diffsolve.errors": "diffsolve.core.errors",
    "diffsolve.schedules": "diffsolve.core.schedules",
    "diffsolve.expint": "diffsolve.core.expint",
    "diffsolve.grids": "diffsolve.core.grids",
    "diffsolve.models": "diffsolve.core.models",
    "diffsolve.noise": "diffsolve.core.noise",
    "diffsolve.noise.base": "diffsolve.core.noise.base",
    "diffsolve.noise.streams": "diffsolve.core.noise.streams",
    "diffsolve.noise.brownian": "diffsolve.core.noise.brownian",
    "diffsolve.compiled": "diffsolve.drivers.compiled",
    "diffsolve.stepper": "diffsolve.drivers.stepper",
    "diffsolve.adaptive": "diffsolve.drivers.adaptive",
    "diffsolve.inversion": "diffsolve.drivers.inversion",
    "diffsolve.mlem": "diffsolve.drivers.mlem",
    "diffsolve.kdiffusion": "diffsolve.integrations.kdiffusion",
    "diffsolve.generate": "diffsolve.tools.generate",
    "diffsolve.grid_search": "diffsolve.tools.grid_search",
    "diffsolve.v3_statistics": "diffsolve.tools.v3_calibration",
}


class _AliasLoader(importlib.abc.Loader):
    """Serves the already-existing new module under its old name."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._spec = module.__spec__  # the import system overwrites __spec__ next
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the new module already ran); restore its own ``__spec__``."""
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds old module paths (and only those) and hands them to :class:`_AliasLoader`."""

    def find_spec(self, fullname: str, path: object = None, target: object = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader())


def install() -> None:
    """Register the finder once (idempotent)."""
    # first in line, so that an old dotted path below a moved package (diffsolve.noise.base)
    # never loads a second copy of a module through the normal path finder
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


install()
