"""Regina: many long-lived AI agent instances on Celery workers behind a Flask API.

The public API for agent authors and embedders; the rest of `regina/` is the core the web and
worker processes are built from.

Names are imported on first use (PEP 562): `import regina.client` (the terminal client, the
Python client) then does not load the settings models, pydantic and the runtime (≈ 0.5 s of a
`regina agents` run).
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from regina.config import Settings, load_settings
    from regina.definitions import AgentDefinition
    from regina.errors import (
        BadRequest,
        ConfigError,
        Conflict,
        DefinitionError,
        ModelError,
        NotFound,
        PayloadTooLarge,
        ReginaError,
        StaleEpoch,
        StorageError,
        ToolError,
        Unavailable,
        VFSError,
    )
    from regina.runtime.tools.base import Tool, tool

__all__ = [
    "AgentDefinition",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "DefinitionError",
    "ModelError",
    "NotFound",
    "PayloadTooLarge",
    "ReginaError",
    "Settings",
    "StaleEpoch",
    "StorageError",
    "Tool",
    "ToolError",
    "Unavailable",
    "VFSError",
    "load_settings",
    "tool",
]

#: Each public name → the module that owns it (the errors: regina.errors).
_OWNERS = dict.fromkeys(__all__, "regina.errors") | {
    "Settings": "regina.config",
    "load_settings": "regina.config",
    "AgentDefinition": "regina.definitions",
    "Tool": "regina.runtime.tools.base",
    "tool": "regina.runtime.tools.base",
}


def __getattr__(name: str) -> object:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'regina' has no attribute {name!r}")
    value = getattr(_importlib.import_module(owner), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_OWNERS])
