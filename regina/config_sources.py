"""Where settings come from, as plain data: the config file, `REGINA_*` variables, `{NAME}`
placeholders, and readable validation errors. `regina.config` turns them into Settings; the
functions here take the environment as an argument and never read it themselves.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from regina.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "describe",
    "env_overrides",
    "without_password",
    "expand_placeholders",
    "merge",
    "parse_env_value",
    "read_config_file",
]


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_placeholders(value: str, environ: Mapping[str, str]) -> str:
    """Replace each `{NAME}` by environment variable NAME (`{HOSTNAME}` defaults to the host
    name), as the seed's multi-pod example (`memberId: "{HOSTNAME}"`) expects.

    Raises:
        ValueError: naming a placeholder with no value.
    """

    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        found = environ.get(name) or (socket.gethostname() if name == "HOSTNAME" else None)
        if not found:
            raise ValueError(f"placeholder {{{name}}} has no value: set the environment variable {name}")
        return found

    return _PLACEHOLDER.sub(value_of, value)


ENV_PREFIX = "REGINA_"
# Read by the client CLI (`regina chat`, `regina ps`, …), not by the server.
_NOT_SETTINGS = {"REGINA_CONFIG", "REGINA_URL", "REGINA_TOKEN"}


def _camel(snake: str) -> str:
    head, *rest = snake.lower().split("_")
    return head + "".join(p.title() for p in rest)


def parse_env_value(raw: str) -> Any:
    """Read an env value as YAML so numbers, booleans and lists work; fall back to the string."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if value is None and raw != "" else value


def env_overrides(environ: Mapping[str, str], is_text: Callable[[list[str]], bool] | None = None) -> dict[str, Any]:
    """The REGINA_* variables as a nested dict of config keys. A value is read as YAML (numbers,
    booleans, lists), except for a key `is_text(path)` says holds text: that one is kept as it is
    (`{HOSTNAME}` would be a YAML mapping, `123456789012` a number, `a #b` would lose `#b`)."""
    paths: list[tuple[list[str], str, str]] = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        path = [_camel(p) for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        if path[0] == "providers" and len(path) >= 2:
            # Provider names contain dashes (vercel-gateway): REGINA_PROVIDERS__VERCEL_GATEWAY__BASE_URL.
            path[1] = name[len(ENV_PREFIX) :].split("__")[1].lower().replace("_", "-")
        paths.append((path, name, raw))
    # A whole section (REGINA_STORAGE='{type: s3}') first, then its keys (REGINA_STORAGE__BUCKET)
    # go into it, whatever the environment's order.
    paths.sort(key=lambda entry: len(entry[0]))
    overrides: dict[str, Any] = {}
    set_by: dict[tuple[str, ...], str] = {}
    for path, name, raw in paths:
        node = overrides
        for depth, part in enumerate(path[:-1], 1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = set_by[tuple(path[:depth])]
                raise ConfigError(
                    f"{name} sets a key of {'.'.join(path[:depth])!r}, but {section} sets "
                    f"{'.'.join(path[:depth])!r} to {node!r}, not a section: unset one of them, or give "
                    f"{section} a mapping such as '{{key: value}}'"
                )
        node[path[-1]] = raw if is_text is not None and is_text(path) else parse_env_value(raw)
        set_by[tuple(path)] = name
    return overrides


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON or YAML config file; use its `regina` object when it has one."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"REGINA_CONFIG: cannot read {str(p)!r}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"REGINA_CONFIG: {str(p)!r} is not valid JSON/YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"REGINA_CONFIG: {str(p)!r} must hold an object, got {type(data).__name__}")
    inner = data.get("regina", data)
    if not isinstance(inner, dict):
        raise ConfigError(f"REGINA_CONFIG: 'regina' in {str(p)!r} must be an object")
    return {k: v for k, v in inner.items() if k != "module"}


#: Keys whose value is never shown in an error (it is a secret whatever it looks like).
_SECRET_KEYS = {"authToken", "apiKey"}
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")


def without_password(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (for output and errors)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def shown_value(key: str, value: Any) -> str:
    """A bad value as an error message may show it: a secret key's never, a URL's password
    hidden (errors end up in platform logs)."""
    if key.rsplit(".", 1)[-1] in _SECRET_KEYS:
        return " (value hidden)"
    if isinstance(value, dict):
        return ""
    return f" (got {without_password(repr(value))})"


def describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        if not err["loc"]:  # a rule across keys: its message names them
            lines.append(f"config: {err['msg'].removeprefix('Value error, ')}")
            continue
        key = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + "__".join(re.sub(r"(?<!^)(?=[A-Z])", "_", str(p)).upper() for p in err["loc"])
        lines.append(f"config key '{key}' ({env}): {err['msg']}{shown_value(key, err.get('input'))}")
    return "; ".join(lines)
