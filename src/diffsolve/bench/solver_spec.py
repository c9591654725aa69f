"""Solver specs of the benchmark: a registered name, optionally with options in brackets,
e.g. ``seeds_3[prediction=noise]`` or ``seeds_2[r=0.7;solver_type=phi_2]`` (``;`` separates
options because ``,`` separates solvers on the command line). The spec string is the
solver's label in results, tables and plots."""

from __future__ import annotations

import re
from typing import Any

from ..core.errors import SolverOptionError
from ..solvers import Solver, get_solver, solver_class

_SPEC = re.compile(r"^([A-Za-z0-9_]+)(?:\[(.*)\])?$")


def _value(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """(name, options) of a spec; raises SolverOptionError on malformed text."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise SolverOptionError(f"malformed solver spec {spec!r}; write name or "
                                "name[key=value;key=value]")
    opts: dict[str, Any] = {}
    for part in filter(None, (m.group(2) or "").split(";")):
        if "=" not in part:
            raise SolverOptionError(f"malformed option {part!r} in solver spec {spec!r}")
        k, v = part.split("=", 1)
        opts[k.strip()] = _value(v.strip())
    return m.group(1), opts


def build(spec: str) -> Solver:
    """The solver instance of a spec (unknown names and options raise)."""
    name, opts = parse(spec)
    return get_solver(name, **opts)


def spec_class(spec: str) -> type[Solver]:
    """The registered class of a spec's solver."""
    return solver_class(parse(spec)[0])
