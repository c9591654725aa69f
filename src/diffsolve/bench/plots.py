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
from .tasks import METRIC_LABELS, TARGET, BenchTask

GRID_SAMPLES = 32


def plot_metric_vs_nfe(path: Path, results: dict[str, Any],
                       cells: dict[tuple[str, int], dict[str, Any]],
                       metrics: Sequence[str] | None = None) -> Path:
    """Log-log metric versus NFE used, one line per solver (solid: SDE, dashed: ODE), the
    mean over seeds with its 95 % interval as a band, and the real/exact-data floor's interval
    as a grey band. Metrics with a target (ll_gap, var_ratio) are plotted as |mean - target|
    with the interval shifted alike."""
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

    for j, s in enumerate(cfg["solvers"]):
        row = sorted((c for (sv, _), c in cells.items() if sv == s), key=lambda c: c["nfe"])
        stochastic = bool(row and row[0]["stochastic"])
        color = cmap((2 * j) % 20 + (j // 10) % 2)
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
            ax.plot(xs, ys, "-" if stochastic else "--", color=color,
                    marker=markers[j % len(markers)], ms=4, lw=1.3,
                    label=f"{s} ({'SDE' if stochastic else 'ODE'})")
            ax.fill_between(xs, [max(lo, y * 1e-3) for lo, y in zip(los, ys, strict=True)],
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
    axes[0][0].set_title(f"{cfg['model']}: {cfg['samples']} samples x {len(cfg['seeds'])} "
                         "seeds; bands: 95 % CI", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       fontsize=7, title="solid: SDE, dashed: ODE", title_fontsize=7)
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
