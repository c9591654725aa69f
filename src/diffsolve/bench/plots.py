"""Plots of a benchmark run: metric vs NFE with 95 % confidence bands, and sample grids."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import NonFiniteError, SolverOptionError
from .cells import draw
from .summary import value
from .tasks import METRIC_LABELS, TARGET, BenchTask, badness

GRID_SAMPLES = 32


HIGHLIGHT_MAX = 10
HIGHLIGHT_PER_BUDGET = 2


def highlighted(solvers: Sequence[str], cells: dict[tuple[str, int], dict[str, Any]],
                metric: str) -> list[str]:
    """The solvers drawn in colour: all of them when there are at most :data:`HIGHLIGHT_MAX`,
    else the :data:`HIGHLIGHT_PER_BUDGET` best (lowest mean of ``metric``, as plotted) at
    each budget, in the table's order."""
    if len(solvers) <= HIGHLIGHT_MAX:
        return list(solvers)
    best: set[str] = set()
    for nfe in sorted({n for _, n in cells}):
        ranked = []
        for s in solvers:
            v = value(cells[(s, nfe)], metric) if (s, nfe) in cells else None
            if v is not None and math.isfinite(v["mean"]):
                ranked.append((badness(metric, v["mean"]), s))
        best.update(s for _, s in sorted(ranked)[:HIGHLIGHT_PER_BUDGET])
    return [s for s in solvers if s in best]


def plot_metric_vs_nfe(path: Path, results: dict[str, Any],
                       cells: dict[tuple[str, int], dict[str, Any]],
                       metrics: Sequence[str] | None = None) -> Path:
    """Log-log metric versus NFE used, one line per solver (solid: SDE, dashed: ODE), the
    mean over seeds with its 95 % interval as a band, and the real/exact-data floor's interval
    as a grey band. Metrics with a target (ll_gap, var_ratio) are plotted as |mean - target|
    with the interval shifted alike. With more than :data:`HIGHLIGHT_MAX` solvers only
    :func:`highlighted` ones (the best at some budget) get colour, band and legend entry; the
    rest are thin grey lines, so a 40-solver table stays readable."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    if metrics is None:
        metrics = [cfg["primary_metric"]]
        if any(value(c, "ode_error") for c in cells.values()):
            metrics.append("ode_error")
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics), 5.0), dpi=90,
                             squeeze=False)
    cmap = plt.get_cmap("tab20")
    markers = "os^vDP*Xph<>"

    def tr(m: str, v: float) -> float:
        return abs(v - TARGET[m]) if m in TARGET else v

    shown_in = {m: highlighted(cfg["solvers"], cells, m) for m in metrics}
    shown = [s for s in cfg["solvers"] if any(s in v for v in shown_in.values())]
    grey_labelled: set[str] = set()  # panels whose "other solvers" legend entry exists
    for s in cfg["solvers"]:
        row = sorted((c for (sv, _), c in cells.items() if sv == s), key=lambda c: c["nfe"])
        stochastic = bool(row and row[0]["stochastic"])
        k = shown.index(s) if s in shown else 0
        color = cmap((2 * k) % 20 + (k // 10) % 2)  # one colour per solver in every panel
        for ax, m in zip(axes[0], metrics, strict=True):
            pts = []
            for c in row:
                v = value(c, m)
                if v is None:
                    continue
                mid = tr(m, v["mean"])
                lo, hi = sorted((tr(m, v["lo"]), tr(m, v["hi"])))
                if m in TARGET and v["lo"] <= TARGET[m] <= v["hi"]:
                    lo = 0.0
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    lo = hi = mid  # one seed: no interval to draw
                pts.append((c["nfe_used"], mid, lo, hi))
            pts = [p for p in pts if p[1] > 0]
            if not pts:
                continue
            xs, ys, los, his = zip(*pts, strict=True)
            if s not in shown_in[m]:
                ax.plot(xs, ys, "-" if stochastic else "--", color="0.75", lw=0.7, zorder=1,
                        label=None if m in grey_labelled else "other solvers")
                grey_labelled.add(m)
                continue
            ax.plot(xs, ys, "-" if stochastic else "--", color=color,
                    marker=markers[k % len(markers)], ms=4, lw=1.3, zorder=3,
                    label=f"{s} ({'SDE' if stochastic else 'ODE'})")
            # the band's lower edge is clipped at a tenth of the mean (log axis)
            ax.fill_between(xs, [max(lo, y * 0.1) for lo, y in zip(los, ys, strict=True)],
                            his, color=color, alpha=0.15, lw=0)
    floor = results.get("floor", {})
    for ax, m in zip(axes[0], metrics, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(cfg["nfe"])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("NFE (model evaluations used)")
        label = METRIC_LABELS.get(m, m)
        ax.set_ylabel(f"|{m} - {TARGET[m]:g}|" if m in TARGET else label)
        ax.grid(True, which="both", alpha=0.3)
        f = floor.get(m)
        if isinstance(f, dict) and math.isfinite(f["hi"]) and math.isfinite(f["lo"]):
            hi = max(abs(f["hi"] - TARGET[m]), abs(f["lo"] - TARGET[m])) if m in TARGET \
                else f["hi"]
            if hi > 0:
                ax.axhspan(max(f["lo"], 0.0) if m not in TARGET else 0.0, hi, color="grey",
                           alpha=0.2, label="floor (exact/real data, 95 % CI)")
    title = (f"{cfg['model']}: {cfg['samples']} samples x {len(cfg['seeds'])} seeds; "
             "bands: 95 % CI (lower edge clipped at mean/10)")
    if len(shown_in[metrics[0]]) < len(cfg["solvers"]):
        title += (f"\ncolour: the {HIGHLIGHT_PER_BUDGET} best at each budget (per panel); "
                  "grey: the rest")
    axes[0][0].set_title(title, fontsize=10)
    entries: dict[str, Any] = {}  # legend: every panel's entries, once each
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(lab, h)
    axes[0][-1].legend(list(entries.values()), list(entries), loc="upper left",
                       bbox_to_anchor=(1.02, 1.0), fontsize=7,
                       title="solid: SDE, dashed: ODE", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def write_sample_grids(out: Path, task: BenchTask, solvers: Sequence[str], nfe: int, seed: int,
                       grid: str, device: str, *, tuned: str | None = None) -> list[Path]:
    """``samples_<solver>.png`` (characters other than letters, digits, ``_.-`` of a solver
    spec replaced by ``_``): the first 32 samples (same seeds as the run) at ``nfe``.
    Existing files are kept; solvers that cannot run at ``nfe`` are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for s in solvers:
        p = out / f"samples_{re.sub(r'[^A-Za-z0-9_.-]', '_', s)}.png"
        if not p.exists():
            try:
                x = draw(task, s, GRID_SAMPLES, seed, grid, device, nfe=nfe, tuned=tuned)
            except (SolverOptionError, NonFiniteError):
                continue
            imgs = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)[:, 0]  # (N, H, W)
            cols = 8
            rows = (imgs.shape[0] + cols - 1) // cols
            h, w = imgs.shape[1:]
            mosaic = torch.ones(rows * (h + 1) + 1, cols * (w + 1) + 1)
            for k in range(imgs.shape[0]):
                r, c = divmod(k, cols)
                mosaic[1 + r * (h + 1):1 + r * (h + 1) + h,
                       1 + c * (w + 1):1 + c * (w + 1) + w] = 1 - imgs[k]
            fig, ax = plt.subplots(figsize=(cols * 0.45, rows * 0.45 + 0.35), dpi=80)
            ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.axis("off")
            ax.set_title(f"{s}, {nfe} NFE, seed {seed}", fontsize=8)
            fig.tight_layout(pad=0.2)
            fig.savefig(p)
            plt.close(fig)
        paths.append(p)
    return paths
