"""The lint rules of docs/development.md hold over the whole repository: `ruff check .` with `ruff.toml`
(pycodestyle errors and warnings, pyflakes, import order; lines of at most 120 characters)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *arguments], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_repository_passes_the_lint() -> None:
    finished = ruff(".")
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-2000:]


def test_the_lint_sees_each_kind_of_rule(tmp_path: Path) -> None:
    (tmp_path / "ruff.toml").write_text((ROOT / "ruff.toml").read_text())
    (tmp_path / "planted.py").write_text("import sys\nimport os\n\nx = 1 \nLONG = '" + "a" * 120 + "'\n")
    report = ruff("--output-format", "concise", ".", cwd=tmp_path).stdout
    for rule in ("F401", "I001", "W291", "E501"):
        assert rule in report, report
