"""Model weights are verified against the SHA-256 in their card; bad cards name their file.

The corruptions are those of the report that prompted the check: 4 KiB of float 3.0 written
into a copy of ``digits.safetensors`` (it loaded and sampled 35 % off, silently) and 4 KiB of
0xff bytes (NaN weights, reported as a NonFiniteError that blamed the solver).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from diffsolve import sample
from diffsolve.core.integrity import IntegrityError, sha256_file
from diffsolve.errors import IncompatibleModelError
from diffsolve.zoo.pretrained import HASH_KEY, WEIGHTS_DIR, list_models, load_model, stamp_card


def _copy(tmp_path: Path, name: str = "digits") -> Path:
    w = tmp_path / f"{name}.safetensors"
    shutil.copy(WEIGHTS_DIR / f"{name}.safetensors", w)
    shutil.copy(WEIGHTS_DIR / f"{name}.json", tmp_path / f"{name}.json")
    return w


def _overwrite(path: Path, data: bytes) -> None:
    """Overwrite ``data`` in the middle of the tensor bytes (same file size)."""
    raw = bytearray(path.read_bytes())
    header = struct.unpack("<Q", raw[:8])[0]
    at = 8 + header + (len(raw) - 8 - header) // 2
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


def test_every_shipped_card_has_the_hash_of_its_weights() -> None:
    names = [*list_models(), "digits_classifier"]
    assert "digits" in names and len(names) >= 3
    for name in names:
        card = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
        assert card[HASH_KEY] == sha256_file(WEIGHTS_DIR / f"{name}.safetensors"), name


@pytest.mark.parametrize("fill", [struct.pack("<f", 3.0) * 1024, b"\xff" * 4096],
                         ids=["float3", "0xff"])
def test_corrupted_weights_are_refused_naming_the_file(tmp_path: Path, fill: bytes) -> None:
    w = _copy(tmp_path)
    _overwrite(w, fill)
    assert w.stat().st_size == (WEIGHTS_DIR / "digits.safetensors").stat().st_size
    with pytest.raises(IntegrityError, match=r"digits\.safetensors.*corrupted.*SHA-256") as e:
        load_model(w)
    assert "\n" not in str(e.value)
    # the opt-out loads the corrupted file, and it is really different: the check is what
    # stands between the user and silently wrong samples
    bad = load_model(w, verify=False)
    good = load_model("digits")
    with torch.no_grad():
        x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        a = sample(good, x, nfe=4, progress=False).x
        try:
            b = sample(bad, x, nfe=4, progress=False).x
            assert not torch.allclose(a, b, atol=1e-3)
        except Exception as err:  # NaN weights: the run fails (that is the other symptom)
            assert "non-finite" in str(err)


def test_users_card_without_hash_loads_and_can_be_stamped(tmp_path: Path) -> None:
    w = _copy(tmp_path)
    card_path = w.with_suffix(".json")
    card = json.loads(card_path.read_text())
    del card[HASH_KEY]
    card_path.write_text(json.dumps(card))
    load_model(w)  # a user's own model without a hash: no check (the opt-out)
    with pytest.raises(IntegrityError, match="no 'weights_sha256'"):
        load_model(w, verify=True)
    assert stamp_card(w) == sha256_file(w)
    load_model(w, verify=True)
    _overwrite(w, b"\x00" * 64)
    with pytest.raises(IntegrityError, match=r"digits\.safetensors"):
        load_model(w)


def test_malformed_card_names_the_file(tmp_path: Path) -> None:
    w = _copy(tmp_path)
    w.with_suffix(".json").write_text('{"net": {"arch": "unet",')
    with pytest.raises(IncompatibleModelError, match=r"digits\.json.*not valid JSON"):
        load_model(w)


def test_card_with_another_architecture_is_refused(tmp_path: Path) -> None:
    w = _copy(tmp_path)
    card_path = w.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["net"]["channels"] = [16, 32]
    card_path.write_text(json.dumps(card))
    with pytest.raises(IncompatibleModelError,
                       match=r"does not fit the architecture in its card .*digits\.json.*"
                       r"size mismatch"):
        load_model(w)


def test_wrong_channels_and_missing_cuda_are_named() -> None:
    model = load_model("digits")
    with pytest.raises(IncompatibleModelError, match=r"\(1, 8, 8\).*got \(3, 8, 8\).*channel"):
        sample(model, (4, 3, 8, 8), nfe=4)
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="CUDA is not available"):
            load_model("digits", device="cuda")
        with pytest.raises(Exception, match="CUDA is not available"):
            sample(model, (4, 1, 8, 8), nfe=4, device="cuda")
