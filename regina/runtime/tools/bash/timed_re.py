"""The `re` that just-bash's commands see: the `regex` module, bounded by the bash call's deadline.

A regular expression a command gets from the model (grep, rg, sed, awk, expr, find -regex,
jq's `test`, `[[ =~ ]]`) ran on Python's `re`, which backtracks without bound and holds the GIL
the whole time: `grep -E '(a+)+$'` on thirty `a`s and a `!` froze the whole worker — every
greenlet, its heartbeat included — for 36 s, and longer inputs for hours. The `regex` module
(already installed for tiktoken) matches the same syntax (its VERSION0 is `re`'s), takes a
`timeout` on every match and releases the GIL while it matches (`concurrent=True`). Outside a
bash call (no deadline) patterns match with no timeout, as `re`'s did.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import Any

import regex  # type: ignore[import-untyped]

__all__ = ["DEADLINE", "check_deadline", "install"]

#: The running bash call's deadline (time.monotonic()) and its timeout in seconds, for messages.
DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "regina_bash_deadline", default=None
)

#: The matching methods of a compiled pattern that take `timeout` and `concurrent`.
_MATCHING = ("search", "match", "fullmatch", "sub", "subn", "findall", "finditer", "split")


def check_deadline() -> None:
    """ExecutionLimitError when the running bash call (if any) is past its deadline."""
    deadline = DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        from just_bash.interpreter.errors import ExecutionLimitError

        raise ExecutionLimitError(f"time limit exceeded ({deadline[1]:g} s)", "time")


def _bounded(call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    deadline = DEADLINE.get()
    if deadline is None:
        return call(*args, concurrent=True, **kwargs)
    left = deadline[0] - time.monotonic()
    try:
        if left <= 0:
            raise TimeoutError
        return call(*args, timeout=left, concurrent=True, **kwargs)
    except TimeoutError:
        from just_bash.interpreter.errors import ExecutionLimitError

        raise ExecutionLimitError(f"time limit exceeded ({deadline[1]:g} s)", "time") from None


class TimedPattern:
    """A compiled `regex` pattern whose matching methods are bounded (see the module docstring)."""

    __slots__ = ("_compiled", "pattern", "flags", "groups", "groupindex")

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self.pattern, self.flags = compiled.pattern, compiled.flags
        self.groups, self.groupindex = compiled.groups, compiled.groupindex

    def search(self, *args: Any, **kwargs: Any) -> Any:
        return _bounded(self._compiled.search, args, kwargs)

    def match(self, *args: Any, **kwargs: Any) -> Any:
        return _bounded(self._compiled.match, args, kwargs)

    def fullmatch(self, *args: Any, **kwargs: Any) -> Any:
        return _bounded(self._compiled.fullmatch, args, kwargs)

    def sub(self, *args: Any, **kwargs: Any) -> Any:
        return _bounded(self._compiled.sub, args, kwargs)

    def subn(self, *args: Any, **kwargs: Any) -> Any:
        return _bounded(self._compiled.subn, args, kwargs)

    def findall(self, *args: Any, **kwargs: Any) -> Any:
        return _bounded(self._compiled.findall, args, kwargs)

    def finditer(self, *args: Any, **kwargs: Any) -> Any:
        return _bounded(self._compiled.finditer, args, kwargs)

    def split(self, *args: Any, **kwargs: Any) -> Any:
        return _bounded(self._compiled.split, args, kwargs)

    def __repr__(self) -> str:
        return repr(self._compiled)


def _compile(pattern: Any, flags: int = 0) -> TimedPattern:
    if isinstance(pattern, TimedPattern):
        return pattern
    return TimedPattern(regex.compile(pattern, flags))  # VERSION0, `re`'s syntax, is the default


class _Module:
    """Stands in for the `re` module inside just-bash's command modules."""

    error = regex.error
    Pattern = TimedPattern
    Match = regex.Match
    escape = staticmethod(regex.escape)
    compile = staticmethod(_compile)

    def __getattr__(self, name: str) -> Any:
        if name in _MATCHING:  # regex's module functions take `re`'s arguments, in `re`'s order
            function = getattr(regex, name)

            def call(pattern: Any, *args: Any, **kwargs: Any) -> Any:
                if isinstance(pattern, TimedPattern):
                    pattern = pattern._compiled
                return _bounded(function, (pattern, *args), kwargs)

            return call
        return getattr(regex, name)  # flags (IGNORECASE, …), purge, …


#: just-bash's modules that match patterns a call supplies (its parser's own patterns stay on `re`).
_MODULES = (
    "just_bash.commands.grep.grep",
    "just_bash.commands.rg.rg",
    "just_bash.commands.search_engine.regex",
    "just_bash.commands.search_engine.matcher",
    "just_bash.commands.sed.sed",
    "just_bash.commands.awk.awk",
    "just_bash.commands.expr.expr",
    "just_bash.commands.find.find",
    "just_bash.commands.tac.tac",
    "just_bash.commands.xan.xan",
    "just_bash.commands.yq.yq",
    "just_bash.query_engine.builtins",
    "just_bash.interpreter.conditionals",
    "just_bash.interpreter.expansion",
)


def install() -> None:
    """Point the `re` of just-bash's pattern-matching modules at the bounded stand-in."""
    import importlib

    stand_in = _Module()
    for name in _MODULES:
        module = importlib.import_module(name)
        module.re = stand_in  # type: ignore[attr-defined]
