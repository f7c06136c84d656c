"""The import graph keeps its shape: the contracts in pyproject.toml ([tool.importlinter]).

Adapters (`api/`, `workers/`, `storage/`) sit over the core (`regina/`), which imports no web or
task-queue framework; the cluster layer does not reach up to the coordinator or the runtime; the
web's side of `workers/` does not import the worker runtime; and no two sibling modules or
packages import each other, directly or through others. Redis names are built in keys.py only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("regina", "api", "workers", "storage")


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # lint-imports reads pyproject.toml from the working directory
    assert lint_imports(no_cache=True) == 0, "import contracts broken: run `lint-imports` for the chains"


def test_no_redis_name_is_built_outside_keys_py() -> None:
    literal = re.compile(r"""["']regina:[\w{]""")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in PRODUCT
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "regina" / "keys.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if literal.search(line)
    ]
    assert offenders == [], "Redis names belong in regina/keys.py"


def test_only_config_reads_the_environment() -> None:
    """Settings and secrets come through `environment()` (regina/environ.py, re-exported by
    regina/config.py); writing variables for LiteLLM or a tool's child process is not reading them."""
    read = re.compile(r"(?<!`)\bos\.(?:environ\b(?!\.(?:setdefault|clear|update)\()|getenv\b)")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in [ROOT / "celeryconfig.py", *(p for pkg in PRODUCT for p in sorted((ROOT / pkg).rglob("*.py")))]
        if path != ROOT / "regina" / "environ.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if read.search(line)
    ]
    assert offenders == [], "read settings and environment variables through regina.environ.environment"
