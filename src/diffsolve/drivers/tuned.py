r"""Tuned artefacts (format ``diffsolve-tuned-v1``): searched grids and solver settings of one
model for several NFE budgets, and their use by :func:`diffsolve.sample` (``grid=<artefact>``),
the k-diffusion functions (:func:`kdiffusion_sigmas`) and the diffusers adapter
(:func:`scheduler_settings`). The artefacts are made by ``diffsolve tune``
(:mod:`diffsolve.tools.tune`, whose docstring describes the search and the held-out scores);
those shipped for the built-in models live in ``diffsolve/zoo/tuned/`` (:func:`shipped`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import DiffsolveError, SolverOptionError
from ..core.grids import Grid
from ..core.models import Denoiser

FORMAT = "diffsolve-tuned-v1"
TUNED_DIR = Path(__file__).resolve().parents[1] / "zoo" / "tuned"


@dataclass
class TunedEntry:
    """One tuned setting: ``solver`` with ``solver_options`` on ``sigmas`` at ``nfe``.

    ``scores``: ``calibration`` (eq. 2 on the calibration noise), ``heldout`` (on the held-out
    noise), ``heldout_karras`` (the same solver on the Karras grid, held-out noise).
    ``search``: what the search cost (from :class:`~diffsolve.tools.grid_search.SearchedGrid`).
    ``statistics``: whether the solver uses the artefact's embedded EMS.
    """

    nfe: int
    solver: str
    sigmas: list[float]
    solver_options: dict[str, Any] = field(default_factory=dict)
    statistics: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        return Grid.from_sigmas(self.sigmas)


@dataclass
class TunedArtefact:
    """Tuned settings of one model for several NFE budgets (see the module docstring).

    ``entries`` holds every searched candidate; ``best[str(nfe)]`` names the index of the one
    chosen (lowest calibration objective) for that budget.
    """

    model: dict[str, Any]
    entries: list[TunedEntry]
    best: dict[str, int]
    calibration: dict[str, Any] = field(default_factory=dict)
    statistics_b64: str | None = None  # safetensors bytes of the EMS, base64
    _ems: Any = field(default=None, repr=False, compare=False)

    # -- queries ------------------------------------------------------------------------
    @property
    def budgets(self) -> list[int]:
        return sorted(int(k) for k in self.best)

    def entry(self, nfe: int, solver: str | None = None) -> TunedEntry:
        """The chosen entry at ``nfe`` (or the entry of ``solver`` at ``nfe``)."""
        if solver is not None:
            for e in self.entries:
                if e.nfe == nfe and e.solver == solver:
                    return e
        if str(nfe) not in self.best:
            raise SolverOptionError(
                f"the tuned artefact for {self.model.get('name', 'this model')} has no entry at "
                f"{nfe} NFE; tuned budgets: {', '.join(map(str, self.budgets))}")
        return self.entries[self.best[str(nfe)]]

    def ems(self) -> Any:
        """The embedded DPM-Solver-v3 statistics (an
        :class:`~diffsolve.solvers.engines.model_statistics.EMS`)."""
        if self.statistics_b64 is None:
            return None
        if self._ems is None:
            from safetensors.torch import load

            from ..solvers.engines.model_statistics import EMS

            raw = base64.b64decode(self.statistics_b64)
            t = load(raw)
            info = json.loads(self.calibration.get("statistics_info", "{}") or "{}")
            self._ems = EMS(*(t[k].to(torch.float64) for k in ("lams", "l", "s", "b")), info)
        return self._ems

    def solver_kwargs(self, entry: TunedEntry) -> dict[str, Any]:
        """Options to build the entry's solver (``get_solver(entry.solver, **kwargs)``)."""
        opts = dict(entry.solver_options)
        if entry.statistics:
            opts["statistics"] = self.ems()
        return opts

    def describe(self, entry: TunedEntry) -> str:
        s = entry.scores
        held = s.get("heldout")
        kar = s.get("heldout_karras")
        extra = (f"; held-out RMS to the reference {held:.4g} vs {kar:.4g} on Karras"
                 if held is not None and kar is not None else "")
        return (f"tuned grid for {self.model.get('name', 'the model')} at {entry.nfe} NFE: "
                f"{entry.solver}{' + EMS' if entry.statistics else ''}"
                f"{' with per-step orders' if 'step_order_caps' in entry.solver_options else ''}"
                f"{extra}")

    # -- persistence --------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_ems", None)
        return {"format": FORMAT, **d}

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "the data") -> TunedArtefact:
        if data.get("format") != FORMAT:
            raise DiffsolveError(f"{where} is not a diffsolve tuned artefact ({FORMAT})")
        data = dict(data)
        data.pop("format")
        entries = [TunedEntry(**e) for e in data.pop("entries")]
        out = cls(entries=entries, **data)
        for e in entries:
            e.grid  # validate  # noqa: B018
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TunedArtefact:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise DiffsolveError(f"tuned artefact {os.fspath(path)!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise DiffsolveError(f"{os.fspath(path)!r} is not JSON: {e}") from None
        return cls.from_json(data, repr(os.fspath(path)))


def load_tuned(obj: str | os.PathLike[str] | TunedArtefact) -> TunedArtefact:
    """A :class:`TunedArtefact` from a path, a shipped model name, or an artefact."""
    if isinstance(obj, TunedArtefact):
        return obj
    p = Path(obj)
    if not p.suffix and (TUNED_DIR / f"{p.name}.json").exists():
        p = TUNED_DIR / f"{p.name}.json"
    return TunedArtefact.load(p)


def is_tuned_file(obj: Any) -> bool:
    """Whether ``obj`` is a tuned artefact or the path of a ``diffsolve-tuned-v1`` JSON file."""
    if isinstance(obj, TunedArtefact):
        return True
    if isinstance(obj, str | os.PathLike) and str(obj).endswith(".json"):
        try:
            with open(obj) as f:
                head = f.read(200)
        except OSError:
            return False
        return FORMAT in head
    return False


def shipped(model_name: str) -> TunedArtefact | None:
    """The artefact shipped for a built-in model, or None."""
    p = TUNED_DIR / f"{model_name}.json"
    return TunedArtefact.load(p) if p.exists() else None


# -- identity of the weights ------------------------------------------------------------------

def weights_hash(model: Any) -> str | None:
    """sha256 over the network's state dict (names, dtypes, shapes, bytes, in name order), or
    of a file when given a path; None for a network without a state dict."""
    if isinstance(model, str | os.PathLike):
        h = hashlib.sha256()
        with open(model, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    net = getattr(model, "net", model)
    for _ in range(3):  # unwrap FrozenNet-like wrappers
        if hasattr(net, "state_dict"):
            break
        net = getattr(net, "net", None)
    if net is None or not hasattr(net, "state_dict"):
        return None
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_weights(art: TunedArtefact, model: Any) -> None:
    want = art.model.get("weights_sha256")
    if want is None:
        return
    got = weights_hash(model)
    if got is not None and got != want:
        warnings.warn(
            f"the tuned artefact was made for weights {want[:12]}... "
            f"({art.model.get('name', '?')}) but the model's weights hash to {got[:12]}...; "
            "its grid may not suit this model (re-run `diffsolve tune`)", stacklevel=3)


# -- use ---------------------------------------------------------------------------------------

def resolve_tuned(grid: Any, model: Denoiser, solver: Any, nfe: int | None,
                  steps: int | None) -> tuple[str, Grid, dict[str, Any], TunedEntry] | None:
    """For :func:`diffsolve.sample`: None unless ``grid`` is a tuned artefact (object or
    file); then the (solver name, grid, solver options, entry) of the budget ``nfe``. A
    ``solver`` with an entry of its own at ``nfe`` gets it; otherwise the artefact's choice."""
    if not is_tuned_file(grid):
        return None
    art = load_tuned(grid)
    if steps is not None or nfe is None:
        raise SolverOptionError(
            "a tuned artefact is chosen by NFE budget: pass nfe= (tuned budgets: "
            f"{', '.join(map(str, art.budgets))}), not steps=")
    _check_weights(art, model)
    name = solver if isinstance(solver, str) else None
    entry = art.entry(nfe, name)
    return entry.solver, entry.grid, art.solver_kwargs(entry), entry


def kdiffusion_sigmas(tuned: str | os.PathLike[str] | TunedArtefact, nfe: int,
                      solver: str | None = None) -> Tensor:
    """The tuned sigmas at ``nfe`` as k-diffusion wants them (float32, decreasing, ending 0),
    for ``diffsolve.kdiffusion.sample_<solver>(model, x, sigmas)`` or k-diffusion's own
    samplers (the grid was tuned for ``entry.solver``; another solver gets the same grid)."""
    return torch.tensor(load_tuned(tuned).entry(nfe, solver).sigmas, dtype=torch.float32)


def scheduler_settings(tuned: str | os.PathLike[str] | TunedArtefact, nfe: int
                       ) -> tuple[str, dict[str, Any], list[float]]:
    """(solver, solver options, EDM sigmas) of the budget ``nfe``, for the diffusers adapter:
    ``DiffsolveScheduler(solver=..., solver_options=...)`` then
    ``set_timesteps(sigmas=sigmas)`` (EDM sigmas sigma/alpha, the adapter's convention)."""
    art = load_tuned(tuned)
    e = art.entry(nfe)
    return e.solver, art.solver_kwargs(e), list(e.sigmas)


