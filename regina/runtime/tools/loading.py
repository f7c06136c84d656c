"""Load a custom tool module (a `.py` file listed in a definition's `tools:`) by path (SPEC §2).

The module must define exactly one `Tool`, made with the `@tool` decorator; the tool is named
after the file's stem (`tools/word_count.py` → `word_count`), whatever the function is called.
Each load executes the file afresh under a module name unique to its path, so a registry reload
picks up edits and two agents' `tools/search.py` files never collide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from regina.errors import DefinitionError
from regina.runtime.tools.base import Tool

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Tool names every provider accepts (OpenAI and Anthropic both require this shape)."""


def _module_name(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    return f"_regina_tool_{stem}_{digest}"


def _execute(path: Path) -> ModuleType:
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"tool module {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # pydantic needs it to resolve the module's annotations
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        _restore(name, previous)
        raise DefinitionError(f"tool module {path}: syntax error at line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        _restore(name, previous)
        raise DefinitionError(f"tool module {path}: import failed: {type(exc).__name__}: {exc}") from exc
    return module


def _restore(name: str, previous: ModuleType | None) -> None:
    if previous is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = previous


def load_tool_module(path: str | Path) -> Tool:
    """Import the tool module at `path` and return its one Tool, renamed to the file's stem.

    Raises:
        DefinitionError: naming the file, when it is missing, not a `.py` file, has a syntax
            error, fails to import, defines no Tool or several, or its stem is not a valid tool
            name (letters, digits, `_` and `-`, at most 64 characters).
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise DefinitionError(f"tool module {p}: file not found")
    if p.suffix != ".py":
        raise DefinitionError(f"tool module {p}: must be a .py file")
    if not _TOOL_NAME.match(p.stem):
        raise DefinitionError(
            f"tool module {p}: the file name {p.stem!r} is the tool's name and may only hold "
            f"letters, digits, '_' and '-' (at most 64 characters)"
        )
    module = _execute(p)
    found: dict[int, tuple[str, Tool]] = {}
    for attr, value in vars(module).items():
        if isinstance(value, Tool):
            found.setdefault(id(value), (attr, value))
    if not found:
        raise DefinitionError(
            f"tool module {p}: defines no tool; decorate one function with @tool(description=..., parameters=...)"
        )
    if len(found) > 1:
        names = ", ".join(sorted(attr for attr, _ in found.values()))
        raise DefinitionError(f"tool module {p}: defines {len(found)} tools ({names}); a module must define one")
    ((_, tool),) = found.values()
    return dataclasses.replace(tool, name=p.stem)
