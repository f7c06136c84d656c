"""Regina: many long-lived AI agent instances on Celery workers behind a Flask API.

The public API for agent authors and embedders; the rest of `regina/` is the core the web and
worker processes are built from.
"""

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
