r"""Error bars over seeds: mean and 95 % confidence interval, and when two cells differ.

For values v_1..v_m of one cell over m independent seeds the interval is Student's t
    mean +- t_{0.975, m-1} s / sqrt(m),   s the sample standard deviation,
(exact when the per-seed values are normal; m >= 3 in the benchmark). Two cells are told
apart ("a win") only when their intervals do not overlap -- a conservative rule (two
non-overlapping 95 % intervals imply a difference at well below the 5 % level).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from scipy.stats import t as student_t


def mean_ci(values: Sequence[float | None]) -> dict[str, Any] | None:
    """{"mean", "ci95" (half-width), "lo", "hi", "sd", "n", "values"} of the finite values, or
    None if there are none. One value gives an infinite interval."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    m = len(vals)
    mean = sum(vals) / m
    if m == 1:
        sd, half = math.nan, math.inf
    else:
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (m - 1))
        half = float(student_t.ppf(0.975, m - 1)) * sd / math.sqrt(m)
    return {"mean": mean, "ci95": half, "lo": mean - half, "hi": mean + half, "sd": sd,
            "n": m, "values": vals}


def separated(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether the 95 % intervals of two :func:`mean_ci` results do not overlap."""
    if a is None or b is None:
        return False
    return a["hi"] < b["lo"] or b["hi"] < a["lo"]


def better(a: dict[str, Any] | None, b: dict[str, Any] | None, lower_is_better: bool) -> bool:
    """a beats b: the intervals separate and a's mean is on the better side."""
    if not separated(a, b):
        return False
    assert a is not None and b is not None
    return (a["mean"] < b["mean"]) == lower_is_better
