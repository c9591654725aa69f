"""Aggregating a cell's seeds (mean +- 95 % CI) and the per-budget comparison of solvers.

A solver is the *best* at a budget when its mean is best; the win is *clear* only when its
95 % interval separates from every other solver's there (:func:`diffsolve.bench.stats.better`),
otherwise the solvers it overlaps are listed as ``tied_with``. The best SDE solver *beats*
the best ODE solver at a budget only when their intervals separate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .stats import mean_ci, separated
from .tasks import TARGET, badness

STATUS_RANK = {"ok": 0, "skipped": 1, "failed": 2, "error": 3}


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell over its seeds: status (the worst of the runs), per-metric mean_ci,
    NFE used (the counter; the maximum over seeds), seconds (mean_ci), reasons."""
    first = runs[0]
    status = max((r.get("status", "error") for r in runs), key=lambda s: STATUS_RANK.get(s, 3))
    out: dict[str, Any] = {k: first[k] for k in ("model", "solver", "nfe", "samples",
                                                  "stochastic", "order", "nfe_per_step")}
    out.update(status=status, seeds=[r["seed"] for r in runs],
               reasons=sorted({r["reason"] for r in runs if r.get("reason")}))
    ok = [r for r in runs if r.get("status") == "ok"]
    if ok:
        out["nfe_used"] = max(int(r["nfe_used"]) for r in ok)
        out["over_budget"] = any(r.get("over_budget") for r in ok)
        out["seconds"] = mean_ci([r["seconds"] for r in ok])
        names = [k for k, v in ok[0]["metrics"].items()
                 if v is None or isinstance(v, (int, float))]
        out["metrics"] = {m: mean_ci([r["metrics"].get(m) for r in ok]) for m in names}
    return out


def value(cell: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The mean_ci of ``metric`` in an aggregated cell (None unless status ok)."""
    if cell.get("status") != "ok":
        return None
    return cell.get("metrics", {}).get(metric)


def _better(a: dict[str, Any], b: dict[str, Any], metric: str) -> bool:
    return separated(a, b) and badness(metric, a["mean"]) < badness(metric, b["mean"])


def best_of(cells: Sequence[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Best solver of ``cells`` by mean, with ``clear`` (its interval separates from every
    other's) and ``tied_with`` (solvers whose intervals overlap it)."""
    scored = [(badness(metric, v["mean"]), c["solver"], v) for c in cells
              if (v := value(c, metric)) is not None]
    if not scored:
        return None
    _, solver, v = min(scored, key=lambda t: t[0])
    ties = [s for _, s, w in scored if s != solver and not _better(v, w, metric)]
    return {"solver": solver, "value": v["mean"], "ci95": v["ci95"], "clear": not ties,
            "tied_with": ties}


def summarize(cells: Sequence[dict[str, Any]], metric: str, solvers: Sequence[str],
              budgets: Sequence[int]) -> dict[str, Any]:
    """Primary-metric table (mean, ci95), best solver overall / ODE / SDE per budget, and the
    budgets at which the best SDE solver beats the best ODE solver with separated intervals."""
    by = {(c["solver"], c["nfe"]): c for c in cells}
    table = {s: {str(n): value(by[(s, n)], metric) for n in budgets} for s in solvers}
    best: dict[str, Any] = {}
    sde_wins, ode_wins = [], []
    for n in budgets:
        col = [by[(s, n)] for s in solvers]
        b_ode = best_of([c for c in col if not c["stochastic"]], metric)
        b_sde = best_of([c for c in col if c["stochastic"]], metric)
        verdict = None
        if b_ode and b_sde:
            va, vb = value(by[(b_sde["solver"], n)], metric), value(by[(b_ode["solver"], n)],
                                                                    metric)
            assert va is not None and vb is not None
            verdict = "sde" if _better(va, vb, metric) else (
                "ode" if _better(vb, va, metric) else "tie")
            (sde_wins if verdict == "sde" else ode_wins if verdict == "ode" else []).append(n)
        best[str(n)] = {"best": best_of(col, metric), "best_ode": b_ode, "best_sde": b_sde,
                        "sde_vs_ode": verdict}
    return {"metric": metric, "target": TARGET.get(metric), "table": table,
            "best_per_nfe": best, "sde_beats_ode_at_nfe": sde_wins,
            "ode_beats_sde_at_nfe": ode_wins,
            "sde_beats_ode_from_nfe": sde_wins[0] if sde_wins else None,
            "rule": "a win needs non-overlapping 95 % confidence intervals over seeds"}


def fmt(v: Any) -> str:
    """Compact number formatting for reports."""
    if v is None:
        return "—"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"
    return str(v)


def fmt_ci(v: dict[str, Any] | None) -> str:
    """'mean ± half-width' of a mean_ci."""
    if v is None:
        return "—"
    return f"{fmt(v['mean'])} ± {fmt(v['ci95'])}"
