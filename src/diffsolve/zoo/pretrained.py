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

Integrity: a card may carry ``"weights_sha256"``, the SHA-256 of its weights file; every shipped
card does. On load the file's digest is compared with it and a mismatch raises
:class:`~diffsolve.core.integrity.IntegrityError` naming the file (a corrupted or swapped file
otherwise loads and samples silently wrong). Cards of users' own models without the key load
unchecked; ``verify=True`` requires the key, ``verify=False`` skips the check, and
:func:`stamp_card` adds the key to a card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import Tensor, nn

from ..core.errors import IncompatibleModelError
from ..core.integrity import IntegrityError, sha256_bytes, sha256_file
from ..core.models import Denoiser
from ..core.schedules import EDM
from .nets import build_net

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
HASH_KEY = "weights_sha256"
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


def read_card(card_path: Path) -> dict[str, Any]:
    """A card file as a dict; a malformed card raises an error naming the file."""
    try:
        card = json.loads(Path(card_path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise IncompatibleModelError(
            f"model card {str(card_path)!r} is not valid JSON ({e})") from None
    if not isinstance(card, dict):
        raise IncompatibleModelError(f"model card {str(card_path)!r} must hold a JSON object, "
                                     f"got {type(card).__name__}")
    return card


def load_card(name_or_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON model card of a model (see :func:`resolve` for what the argument may be)."""
    return read_card(resolve(name_or_dir)[1])


def verify_weights(weights: Path, card: dict[str, Any], card_path: Path,
                   verify: bool | None = None, data: bytes | None = None) -> bytes:
    """The weights file's bytes, checked against the card's ``weights_sha256``.

    ``verify=None`` checks when the card has the key and requires it for shipped models;
    True requires it; False skips the check. Raises
    :class:`~diffsolve.core.integrity.IntegrityError` naming the file on a mismatch.
    """
    if data is None:
        data = Path(weights).read_bytes()
    if verify is False:
        return data
    want = card.get(HASH_KEY)
    shipped = Path(weights).resolve().parent == WEIGHTS_DIR
    if want is None:
        if verify or shipped:
            raise IntegrityError(
                f"model card {str(card_path)!r} has no {HASH_KEY!r}, so {str(weights)!r} cannot "
                "be verified; add it with diffsolve.zoo.pretrained.stamp_card(path) or load "
                "with verify=False")
        return data
    got = sha256_bytes(data)
    if got != want:
        raise IntegrityError(
            f"{str(weights)!r} is corrupted or not the file its card {Path(card_path).name!r} "
            f"describes: SHA-256 {got[:16]}... != {str(want)[:16]}... recorded in the card "
            "(re-download or restore it; verify=False loads it anyway)")
    return data


def stamp_card(name_or_dir: str | os.PathLike[str]) -> str:
    """Write the SHA-256 of a model's weights into its card (``weights_sha256``); returns it.
    Use it for your own trained models, after checking the weights are the right ones."""
    w, c = resolve(name_or_dir)
    card = read_card(c)
    card[HASH_KEY] = sha256_file(w)
    c.write_text(json.dumps(card, indent=1))
    return str(card[HASH_KEY])


def load_net(name_or_dir: str | os.PathLike[str], *, device: torch.device | str | None = None,
             verify: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The bare network (eval mode, frozen) and its card (``verify``: see
    :func:`verify_weights`)."""
    from ..core.validation import check_device

    dev = check_device(device)
    w, c = resolve(name_or_dir)
    card = read_card(c)
    if not isinstance(card.get("net"), dict):
        raise IncompatibleModelError(f"{str(c)!r} has no 'net' config; not a zoo denoiser card")
    try:
        net = build_net(card["net"])
    except (KeyError, TypeError, ValueError) as e:
        raise IncompatibleModelError(
            f"model card {str(c)!r} has an invalid 'net' config ({type(e).__name__}: {e})"
            ) from None
    data = w.read_bytes()
    try:
        state = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error type for a malformed header
        raise IncompatibleModelError(
            f"{str(w)!r} is not a valid safetensors file ({e}); if it is a renamed pickle "
            "checkpoint (torch.save), it is refused: pickle can run arbitrary code when "
            "loaded. Convert it in a trusted environment with "
            "safetensors.torch.save_file(state_dict, 'x.safetensors')") from e
    verify_weights(w, card, c, verify, data=data)  # after parsing: a pickle gets that message
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatch: the card's architecture is not the weights'
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln),
                     str(e).splitlines()[0] if str(e) else "")
        raise IncompatibleModelError(
            f"{str(w)!r} does not fit the architecture in its card {str(c)!r} ({first}); the "
            "card's 'net' config must be the one the weights were trained with") from None
    if missing or unexpected:
        raise IncompatibleModelError(
            f"{str(w)!r} does not match the network of its card {str(c)!r}: missing "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    if dev is not None:
        net = net.to(dev)
    return net.eval().requires_grad_(False), card


def load_model(name_or_dir: str | os.PathLike[str], *,
               device: torch.device | str | None = None, verify: bool | None = None,
               ) -> Denoiser:
    """A shipped or trained zoo model as a :class:`diffsolve.models.Denoiser`.

    ``Denoiser(FrozenNet(net), EDM(sigma_min, sigma_max), prediction="edm",
    sigma_data=card["sigma_data"])``; the card is attached as ``denoiser.card`` and one
    sample's shape as ``denoiser.shape`` (e.g. (1, 8, 8) for digits, (2,) for 2-D toys).

    Args:
        name_or_dir: a name from :func:`list_models`, a ``.safetensors`` path (card beside it
            with the same stem) or a training output directory. Pickle formats are refused.
        device: where to put the network (default CPU).
        verify: check the weights' SHA-256 against the card (None: when the card has one,
            always for shipped models; True: require it; False: skip).
    """
    net, card = load_net(name_or_dir, device=device, verify=verify)
    if card.get("prediction", "edm") != "edm":
        raise IncompatibleModelError(f"unsupported prediction {card.get('prediction')!r}")
    try:
        den = Denoiser(FrozenNet(net), EDM(float(card["sigma_min"]), float(card["sigma_max"])),
                       prediction="edm", sigma_data=float(card["sigma_data"]))
        den.shape = tuple(int(s) for s in card["shape"])  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError) as e:
        raise IncompatibleModelError(
            f"model card of {os.fspath(name_or_dir)!r} lacks or has an invalid sigma_min, "
            f"sigma_max, sigma_data or shape ({type(e).__name__}: {e})") from None
    den.card = card  # type: ignore[attr-defined]
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
