"""README "Testing your workflows", as a user's project would run it: the configuration block and
the test module pasted as they stand, in a directory of their own, with the installed plugin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Testing your workflows\n")
    section = readme[start : readme.index("\n## ", start + 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_the_readme_testing_snippet_passes_in_a_fresh_project(tmp_path: Path) -> None:
    (toml,) = _blocks("toml")
    (tmp_path / "pyproject.toml").write_text(toml)
    (tmp_path / "test_user.py").write_text(_blocks("python")[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
    env["PYTHONPATH"] = str(ROOT)  # for `examples`, which the user's project would have as its own code
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b[1-9]\d* passed", result.stdout) and "failed" not in result.stdout
