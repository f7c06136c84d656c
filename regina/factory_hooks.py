"""The optional `factory` module (SPEC §8): prepare_instance, backup and restore hooks.

Each export is optional; a missing one falls back to Regina's default behaviour. `backup` runs in
a thread of the worker's snapshot pool (regina/host.py), not on its gevent hub: a hook that takes
long stops no other instance.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from regina.errors import ConfigError


@dataclass(frozen=True)
class FactoryHooks:
    """The hooks found in the factory module (None = use the default)."""

    prepare_instance: Callable[[str, Any], Any] | None = None
    backup: Callable[[str, Any], bytes] | None = None
    restore: Callable[[str, bytes, Any], Any] | None = None


def _import(spec: str) -> ModuleType:
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec).resolve()
        if not path.exists():
            raise ConfigError(f"config key 'factory': file {str(path)!r} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"regina_factory_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ConfigError(f"config key 'factory': cannot import {str(path)!r}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        mod_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def load_hooks(spec: str | None) -> FactoryHooks:
    """Import the factory module (a dotted path or a .py file); ConfigError if it fails."""
    if not spec:
        return FactoryHooks()
    try:
        module = _import(spec)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"config key 'factory': cannot import {spec!r}: {exc}") from exc
    return FactoryHooks(
        prepare_instance=getattr(module, "prepare_instance", None),
        backup=getattr(module, "backup", None),
        restore=getattr(module, "restore", None),
    )
