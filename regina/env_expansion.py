"""`${VAR}` and `${VAR:-default}` expansion of agent-definition frontmatter values (SPEC §2).

Rules (shell-like, on purpose, so they hold no surprises):

- `${VAR}` is replaced by the value of `VAR`; a variable that is set but empty gives "".
- `${VAR:-default}` gives `default` when `VAR` is unset *or empty* (as in a shell).
- `${VAR}` with `VAR` unset and no default raises `DefinitionError` naming the variable (and the
  location of the value, e.g. `mcpServers[0].headers.Authorization`), so a missing secret is
  caught when the definition loads rather than sent to a server as an empty string.
- `$${` is an escape for a literal `${` (`$${HOME}` stays `${HOME}`).
- A default cannot hold `${` (`${A:-${B}}`): nesting is not supported, and the default would end
  at the first `}`, so it raises `DefinitionError` naming the variable instead.
- Only string values are expanded; dict keys, numbers, booleans and None are left as they are.
  Lists and dicts are walked recursively and new containers are returned.
- Values are not re-expanded: a variable whose value contains `${X}` is inserted verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from regina.config import environment
from regina.errors import DefinitionError

_PATTERN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_str(text: str, environ: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        at = f" (in {where})" if where else ""
        if default is not None and "${" in default:
            # The pattern's default stops at the first `}`: `${A:-${B}}` would give the value
            # of A plus a stray `}`, or a literal `${B`, silently.
            raise DefinitionError(
                f"the default of environment variable {name!r}{at} holds '${{': a default cannot use "
                f"another variable; write it literally (${{{name}:-value}})"
            )
        if default is not None:
            return value if value else default
        if value is None:
            raise DefinitionError(
                f"environment variable {name!r} is not set{at}; set it, or write ${{{name}:-default}} to give a default"
            )
        return value

    return _PATTERN.sub(replace, text)


def expand_env(value: Any, environ: Mapping[str, str] | None = None, *, where: str = "") -> Any:
    """Return `value` with `${VAR}` / `${VAR:-default}` expanded in every string inside it.

    `value` may be a str, a list or a dict (walked recursively); other types are returned as
    they are. `where` names the location for error messages (nested locations are appended,
    e.g. `headers.Authorization`).

    Raises:
        DefinitionError: a `${VAR}` without default names a variable that is not set, or a
            default holds `${`; the message names the variable and where it was found.
    """
    if environ is None:
        environ = environment()
    if isinstance(value, str):
        return _expand_str(value, environ, where)
    if isinstance(value, list):
        return [expand_env(item, environ, where=f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {
            key: expand_env(item, environ, where=f"{where}.{key}" if where else str(key)) for key, item in value.items()
        }
    return value
