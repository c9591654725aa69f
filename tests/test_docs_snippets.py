"""The runnable Python blocks of the integration docs run as written (ComfyUI blocks, which
need ComfyUI itself, are recognised by their `import comfy` and skipped)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text()
    return [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
            if "import comfy" not in b]


@pytest.mark.parametrize("page", ["diffusers.md", "kdiffusion.md", "sde_solvers.md"])
def test_doc_snippets_run(page, capsys):
    if page == "diffusers.md":
        pytest.importorskip("diffusers")
    blocks = _blocks(page)
    assert blocks, f"{page} has no runnable example"
    for block in blocks:
        exec(compile(block, str(DOCS / page), "exec"), {})
    printed = capsys.readouterr().out
    if page == "diffusers.md":
        assert "(2, 8, 8, 3) 19" in printed and "torch.Size([2, 4, 8, 8]) 6" in printed
        assert "flow flow" in printed
