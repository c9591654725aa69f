"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)


def test_readme_solver_tables_are_generated_from_the_registry():
    """README's solver tables equal what the solvers declare (regenerate with
    ``diffsolve solvers --markdown-update README.md``)."""
    from diffsolve.solvers import catalog

    text = README.read_text()
    assert catalog.BEGIN in text and catalog.END in text
    assert catalog.replace_in(text) == text, "README's solver tables drifted from the registry"
