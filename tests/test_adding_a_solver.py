"""docs/adding_a_solver.md runs as written: its solver file registers a working solver whose
declared order, cost and output are right (in a fresh process, so that the registry of this
test session is left alone)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_solver.md"


def test_the_walkthrough_runs(tmp_path):
    solver_file, script = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (tmp_path / "exp_heun.py").write_text(solver_file)
    (tmp_path / "run.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    res = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["2 2 19", "19 True"], res.stdout
