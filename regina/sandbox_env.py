"""The environment the sandboxed `bash` tool sees (SPEC §5, §10): an allow-list, never secrets."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from regina.config import environment
from regina.secrets import is_secret_name, redact

#: A URL with a password in it (`redis://:pw@host`, `postgres://user:pw@host/db`).
_URL_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]*@")

#: Values the sandbox always gets unless the allow-list brings a value of its own for HOME.
SANDBOX_DEFAULTS: dict[str, str] = {"HOME": "/", "PWD": "/"}


def holds_secret(value: str) -> bool:
    """True when `value` is or contains a secret Regina knows (regina/secrets.py), or is a URL
    with a password in it."""
    return _URL_PASSWORD.search(value) is not None or redact(value) != value


def sandbox_env(allowed: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build the bash tool's environment from the allow-list `allowed` (config `allowedEnv`).

    Only names in `allowed` that are set in `environ` are copied. A name that says it holds a
    secret (``KEY``, ``TOKEN``, ``SECRET``, ``PASSWORD``, ``PASSWD``, ``CREDENTIAL``, ``AUTH`` in
    it, any case: the names whose values are redacted everywhere else) or a value holding a
    known secret or a URL with a password (``REDIS_URL=redis://:pw@host``) is NEVER copied, even
    when allow-listed: a misconfigured allow-list must not leak credentials to the model.

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
        if value is not None and not holds_secret(value):
            env[name] = value
    env.update(SANDBOX_DEFAULTS)
    return env
