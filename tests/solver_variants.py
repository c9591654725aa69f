"""Every registered solver with each of its order, warm-up, corrector and form options.

The variants are enumerated from the solvers' own option fields (no hand-kept table): each
option with a finite set of values (``Literal`` choices, booleans, integer ``*order*``
options) is varied one at a time around the defaults, and every order-like option is also
crossed with the warm-up choices. Values a solver refuses (``SolverOptionError``) are skipped.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import MISSING, fields

from diffsolve import SolverOptionError
from diffsolve.solvers import get_solver, list_solvers, solver_class

ORDER_RANGE = range(0, 6)
SKIP = {"statistics", "tau", "step_order_caps", "noise_scale"}  # not order/cost options


def _choices(cls: type, name: str, hint: object) -> list[object]:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return list(typing.get_args(hint))
    if hint is bool:
        return [False, True]
    if hint is int and "order" in name:
        return list(ORDER_RANGE)
    return []


def _try(name: str, options: dict[str, object]) -> bool:
    try:
        get_solver(name, **options)
    except SolverOptionError:
        return False
    return True


def option_variants(name: str) -> list[dict[str, object]]:
    """Option dicts for ``name``: the defaults first, then single and crossed variations."""
    cls = solver_class(name)
    hints = typing.get_type_hints(cls)
    axes: dict[str, list[object]] = {}
    for f in fields(cls):
        if f.name in SKIP or f.default is MISSING:
            continue
        values = [v for v in _choices(cls, f.name, hints.get(f.name)) if v != f.default]
        if values:
            axes[f.name] = values
    out: list[dict[str, object]] = [{}]
    for key, values in axes.items():
        out += [{key: v} for v in values if _try(name, {key: v})]
    order_keys = [k for k in axes if "order" in k and k != "lower_order_final"]
    if "warmup" in axes:
        for key in order_keys:
            for v, w in itertools.product(axes[key], axes["warmup"]):
                if _try(name, {key: v, "warmup": w}):
                    out.append({key: v, "warmup": w})
    if len(order_keys) >= 2:  # e.g. SA-Solver's predictor x corrector orders
        a, b = order_keys[:2]
        for u, v in itertools.product(axes[a], axes[b]):
            if _try(name, {a: u, b: v}):
                out.append({a: u, b: v})
    unique = []
    for o in out:
        if o not in unique:
            unique.append(o)
    return unique


def all_variants() -> list[tuple[str, dict[str, object]]]:
    return [(n, o) for n in list_solvers() for o in option_variants(n)]


def variant_id(name: str, options: dict[str, object]) -> str:
    return name + "".join(f"-{k}={v}" for k, v in options.items())
