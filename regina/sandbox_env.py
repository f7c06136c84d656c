"""The environment the sandboxed `bash` tool sees (SPEC §5, §10): an allow-list, never secrets."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from regina.config import environment

#: Names that are never passed to the sandbox, even when allow-listed (matched case-insensitively).
SECRET_PATTERNS: tuple[str, ...] = ("*_API_KEY", "*SECRET*", "*TOKEN*", "*PASSWORD*")

#: Values the sandbox always gets unless the allow-list brings a value of its own for HOME.
SANDBOX_DEFAULTS: dict[str, str] = {"HOME": "/", "PWD": "/"}


def is_secret_name(name: str) -> bool:
    """True when `name` looks like a credential (`*_API_KEY`, `*SECRET*`, `*TOKEN*`, `*PASSWORD*`)."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern) for pattern in SECRET_PATTERNS)


def sandbox_env(allowed: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build the bash tool's environment from the allow-list `allowed` (config `allowedEnv`).

    Only names in `allowed` that are set in `environ` are copied. Names matching ``*_API_KEY``,
    ``*SECRET*``, ``*TOKEN*`` or ``*PASSWORD*`` (any case) are NEVER copied, even when
    allow-listed: a misconfigured allow-list must not leak credentials to the model.

    ``HOME`` and ``PWD`` are paths *inside the VFS*: ``PWD`` is always ``/`` (the sandbox starts
    at the VFS root) and ``HOME`` is ``/`` too — the host's home directory means nothing in the
    VFS, so an allow-listed ``HOME`` is not copied from the host.
    """
    if environ is None:
        environ = environment()
    env: dict[str, str] = {}
    for name in allowed:
        if not name or is_secret_name(name) or name in SANDBOX_DEFAULTS:
            continue
        value = environ.get(name)
        if value is not None:
            env[name] = value
    env.update(SANDBOX_DEFAULTS)
    return env
