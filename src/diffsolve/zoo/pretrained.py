r"""Load the zoo's shipped denoisers (safetensors weights + JSON model card).

A model ``<name>`` is the pair ``weights/<name>.safetensors`` (tensors only) and
``weights/<name>.json`` (the card written by :func:`diffsolve.zoo.train.train`: network config,
``sigma_data``, ``sigma_min``/``sigma_max``, data ``shape``, training details). A training
output directory (``model.safetensors`` + ``model.json``) loads the same way.

The network outputs the raw F of EDM preconditioning, so the loaded model is

    Denoiser(net, EDM(sigma_min, sigma_max), prediction="edm", sigma_data=card["sigma_data"]),

i.e. D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma)/4) (Karras et al. 2022, Table 1).

Only safetensors files are read: pickle-based formats (.pt, .pth, .pkl, .ckpt, .bin, ...) can
execute arbitrary code when loaded and are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..core.errors import IncompatibleModelError
from ..core.models import Denoiser
from ..core.schedules import EDM
from .nets import build_net

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib",
                             ".npy", ".npz", ".tar"})


class FrozenNet(nn.Module):
    """Wraps a zoo network: eval mode, parameters frozen, forward under ``torch.no_grad``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(x, c_noise)


def _refuse_pickle(p: Path) -> None:
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise IncompatibleModelError(
            f"refusing to load {str(p)!r}: {p.suffix} files are pickle-based and can run "
            "arbitrary code when loaded; diffsolve reads weights only from .safetensors files "
            "(convert with safetensors.torch.save_file(model.state_dict(), 'x.safetensors'))")


def resolve(name_or_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Paths (weights, card) of a shipped name, a ``.safetensors`` file (card: same stem
    ``.json``) or a training output directory (``model.safetensors`` + ``model.json``).

    A plain string without suffix or path separator names a shipped model first; if no such
    model exists it is tried as a directory. Pickle suffixes are refused before any file is
    opened."""
    p = Path(name_or_dir)
    _refuse_pickle(p)
    raw = os.fspath(name_or_dir)
    is_name = isinstance(name_or_dir, str) and not p.suffix and "/" not in raw and (
        os.sep not in raw)
    if is_name and (WEIGHTS_DIR / f"{raw}.safetensors").exists():
        w, c = WEIGHTS_DIR / f"{raw}.safetensors", WEIGHTS_DIR / f"{raw}.json"
    elif p.is_dir():
        w, c = p / "model.safetensors", p / "model.json"
    elif p.suffix == ".safetensors":
        w, c = p, p.with_suffix(".json")
    elif p.suffix == ".json":
        w, c = p.with_suffix(".safetensors"), p
    elif is_name:
        raise IncompatibleModelError(
            f"no shipped model or directory {raw!r}; available models: "
            f"{', '.join(list_models())}")
    else:
        raise IncompatibleModelError(
            f"cannot load {raw!r}: give a shipped model name ({', '.join(list_models())}), "
            "a .safetensors file with its .json card, or a training output directory")
    for f in (w, c):
        if not f.exists():
            raise IncompatibleModelError(f"missing {str(f)!r} (need weights + JSON card)")
    return w, c


def load_card(name_or_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON model card of a model (see :func:`resolve` for what the argument may be)."""
    return json.loads(resolve(name_or_dir)[1].read_text())


def load_net(name_or_dir: str | os.PathLike[str], *, device: torch.device | str | None = None,
             ) -> tuple[nn.Module, dict[str, Any]]:
    """The bare network (eval mode, frozen) and its card."""
    w, c = resolve(name_or_dir)
    card = json.loads(c.read_text())
    if "net" not in card:
        raise IncompatibleModelError(f"{str(c)!r} has no 'net' config; not a zoo denoiser card")
    net = build_net(card["net"])
    try:
        state = load_file(str(w), device=str(device) if device is not None else "cpu")
    except Exception as e:  # safetensors raises its own error type for a malformed header
        raise IncompatibleModelError(
            f"{str(w)!r} is not a valid safetensors file ({e}); if it is a renamed pickle "
            "checkpoint (torch.save), it is refused: pickle can run arbitrary code when "
            "loaded. Convert it in a trusted environment with "
            "safetensors.torch.save_file(state_dict, 'x.safetensors')") from e
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise IncompatibleModelError(
            f"{str(w)!r} does not match its card's network: missing {missing}, "
            f"unexpected {unexpected}")
    if device is not None:
        net = net.to(device)
    return net.eval().requires_grad_(False), card


def load_model(name_or_dir: str | os.PathLike[str], *,
               device: torch.device | str | None = None) -> Denoiser:
    """A shipped or trained zoo model as a :class:`diffsolve.models.Denoiser`.

    ``Denoiser(FrozenNet(net), EDM(sigma_min, sigma_max), prediction="edm",
    sigma_data=card["sigma_data"])``; the card is attached as ``denoiser.card`` and one
    sample's shape as ``denoiser.shape`` (e.g. (1, 8, 8) for digits, (2,) for 2-D toys).

    Args:
        name_or_dir: a name from :func:`list_models`, a ``.safetensors`` path (card beside it
            with the same stem) or a training output directory. Pickle formats are refused.
        device: where to put the network (default CPU).
    """
    net, card = load_net(name_or_dir, device=device)
    if card.get("prediction", "edm") != "edm":
        raise IncompatibleModelError(f"unsupported prediction {card.get('prediction')!r}")
    den = Denoiser(FrozenNet(net), EDM(float(card["sigma_min"]), float(card["sigma_max"])),
                   prediction="edm", sigma_data=float(card["sigma_data"]))
    den.card = card  # type: ignore[attr-defined]
    den.shape = tuple(int(s) for s in card["shape"])  # type: ignore[attr-defined]
    return den


def list_models() -> list[str]:
    """Names of the shipped denoisers (cards with a network config and an EDM prediction)."""
    names = []
    for c in sorted(WEIGHTS_DIR.glob("*.json")):
        try:
            card = json.loads(c.read_text())
        except (OSError, ValueError):
            continue
        if "net" in card and card.get("prediction") == "edm" and (
                c.with_suffix(".safetensors").exists()):
            names.append(c.stem)
    return names
