"""`regina.__all__` lists exactly the public names (the API cannot drift silently)."""

import importlib
import subprocess
import sys

import regina


def test_public_names() -> None:
    public = {name for name in dir(regina) if not name.startswith("_")} - {
        "config",
        "definitions",
        "errors",
        "runtime",
        "vfs",
        "env_expansion",
        "providers",
        "registry",
    }
    public = {n for n in public if not isinstance(getattr(regina, n), type(regina))}
    assert public == set(regina.__all__)


def test_every_public_name_resolves_to_its_owner() -> None:
    for name in regina.__all__:
        assert getattr(regina, name) is getattr(importlib.import_module(regina._OWNERS[name]), name)


def test_the_terminal_client_loads_no_settings_models() -> None:
    """`regina agents` and `import regina.client` start without pydantic, the settings and the runtime."""
    heavy = ("pydantic", "regina.config", "regina.runtime", "redis", "celery", "flask")
    code = f"import sys, regina.client, regina.cli.talk; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
