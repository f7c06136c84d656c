"""The `re` that just-bash's commands see: the `regex` module, bounded by the bash call's deadline.

A regular expression a command gets from the model (grep, rg, sed, awk, expr, find -regex,
jq's `test`, `[[ =~ ]]`) ran on Python's `re`, which backtracks without bound and holds the GIL
the whole time: `grep -E '(a+)+$'` on thirty `a`s and a `!` froze the whole worker — every
greenlet, its heartbeat included — for 36 s, and longer inputs for hours. The `regex` module
(already installed for tiktoken) matches the same syntax (its VERSION0 is `re`'s), takes a
`timeout` on every match and releases the GIL while it matches (`concurrent=True`). Where no
bash call's bounds are known, a match gets UNBOUNDED_SECONDS.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import regex  # type: ignore[import-untyped]

from regina.runtime.tools.bash.limits import CALL

__all__ = ["compiled", "install", "unrolled_size"]

#: Seconds a match may take where no bash call's bounds are known: just-bash runs a command
#: substitution inside an array subscript (`${a[$(…)]}`) on a thread of its own, without the
#: call's context.
UNBOUNDED_SECONDS = 10.0


def _bounded(call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bounds = CALL.get()
    if bounds is None:  # not in a bash call's task (a thread just-bash started itself)
        return call(*args, timeout=UNBOUNDED_SECONDS, concurrent=True, **kwargs)
    left = bounds.remaining()
    try:
        if left <= 0:
            raise TimeoutError
        return call(*args, timeout=left, concurrent=True, **kwargs)
    except TimeoutError:
        from just_bash.interpreter.errors import ExecutionLimitError

        raise ExecutionLimitError(f"time limit exceeded ({bounds.timeout:g} s)", "time") from None


def _bounded_method(name: str) -> Callable[..., Any]:
    def method(self: TimedPattern, *args: Any, **kwargs: Any) -> Any:
        return _bounded(getattr(self._compiled, name), args, kwargs)

    method.__name__ = name
    return method


class TimedPattern:
    """A compiled `regex` pattern whose matching methods are bounded (see the module docstring)."""

    __slots__ = ("_compiled", "pattern", "flags", "groups", "groupindex")

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self.pattern, self.flags = compiled.pattern, compiled.flags
        self.groups, self.groupindex = compiled.groups, compiled.groupindex

    search = _bounded_method("search")
    match = _bounded_method("match")
    fullmatch = _bounded_method("fullmatch")
    sub = _bounded_method("sub")
    subn = _bounded_method("subn")
    findall = _bounded_method("findall")
    finditer = _bounded_method("finditer")
    split = _bounded_method("split")

    def __repr__(self) -> str:
        return repr(self._compiled)


#: Most pattern items a regular expression may stand for once its counted repeats are unrolled.
MAX_UNROLLED = 10_000
_COUNT = re.compile(r"\{(\d*)(?:,(\d*))?\}")


def unrolled_size(pattern: str) -> int:
    """About how many items `pattern` stands for with its `{m,n}` repeats written out: `regex`
    unrolls them when it compiles (`(a{1000}){8000}` took 2 GB), where `re` does not."""
    groups = [[0, 0]]  # per open group: [its size so far, the size of its last item]
    at = 0
    while at < len(pattern):
        char = pattern[at]
        item = 1
        if char == "\\":
            at += 2
        elif char == "[":  # a class is one item: skip to its closing bracket
            end = pattern.find(
                "]", at + (3 if pattern.startswith("[^]", at) else 2 if pattern.startswith("[]", at) else 1)
            )
            at = len(pattern) if end < 0 else end + 1
        elif char == "(":
            groups.append([0, 0])
            at += 1
            continue
        elif char == ")" and len(groups) > 1:
            item = max(groups.pop()[0], 1)
            at += 1
        elif char == "{" and (count := _COUNT.match(pattern, at)) and (count[1] or count[2]):
            times = max(int(count[1] or 0), int(count[2] or 0), 1)
            top = groups[-1]
            top[0] += top[1] * (times - 1)
            top[1] *= times
            at = count.end()
            continue
        else:
            at += 1
        groups[-1][0] += item
        groups[-1][1] = item
    return sum(size for size, _ in groups)


def _compile(pattern: Any, flags: int = 0) -> TimedPattern:
    if isinstance(pattern, TimedPattern):
        return pattern
    return _compiled(pattern, flags)


def compiled(pattern: str) -> TimedPattern:
    """`pattern` compiled as just-bash's commands get it: bounded by the running call."""
    return _compile(pattern)


@functools.lru_cache(maxsize=64)
def _compiled(pattern: Any, flags: int) -> TimedPattern:
    """Patterns compiled lately (regex's own cache keeps 500, of up to megabytes each)."""
    if isinstance(pattern, str) and "{" in pattern and (size := unrolled_size(pattern)) > MAX_UNROLLED:
        raise regex.error(f"pattern too big once its repeats are counted out ({size} items, at most {MAX_UNROLLED})")
    # VERSION0, `re`'s syntax, is the default
    return TimedPattern(regex.compile(pattern, flags, cache_pattern=False))


class _Module:
    """Stands in for the `re` module inside just-bash's command modules: its functions take
    `re`'s arguments and match with a compiled pattern (see `_compiled`)."""

    error = regex.error
    Pattern = TimedPattern
    Match = regex.Match
    escape = staticmethod(regex.escape)
    compile = staticmethod(_compile)

    @staticmethod
    def search(pattern: Any, string: Any, flags: int = 0) -> Any:
        return _compile(pattern, flags).search(string)

    @staticmethod
    def match(pattern: Any, string: Any, flags: int = 0) -> Any:
        return _compile(pattern, flags).match(string)

    @staticmethod
    def fullmatch(pattern: Any, string: Any, flags: int = 0) -> Any:
        return _compile(pattern, flags).fullmatch(string)

    @staticmethod
    def sub(pattern: Any, repl: Any, string: Any, count: int = 0, flags: int = 0) -> Any:
        return _compile(pattern, flags).sub(repl, string, count)

    @staticmethod
    def subn(pattern: Any, repl: Any, string: Any, count: int = 0, flags: int = 0) -> Any:
        return _compile(pattern, flags).subn(repl, string, count)

    @staticmethod
    def split(pattern: Any, string: Any, maxsplit: int = 0, flags: int = 0) -> Any:
        return _compile(pattern, flags).split(string, maxsplit)

    @staticmethod
    def findall(pattern: Any, string: Any, flags: int = 0) -> Any:
        return _compile(pattern, flags).findall(string)

    @staticmethod
    def finditer(pattern: Any, string: Any, flags: int = 0) -> Any:
        return _compile(pattern, flags).finditer(string)

    def __getattr__(self, name: str) -> Any:
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
    """Point the `re` of just-bash's pattern-matching modules at the bounded stand-in, and of
    the two functions that import `re` themselves: `[[ x == +(…) ]]` and `case` patterns with
    extended globs (`case aaaaaaaaaaaaaaaaaaaaaaaaaac in +(+(a)))` held the GIL for 1.4 s,
    every further `a` doubling it)."""
    import importlib

    stand_in = _Module()
    for name in _MODULES:
        module = importlib.import_module(name)
        module.re = stand_in  # type: ignore[attr-defined]

    from just_bash.interpreter import conditionals, control_flow, interpreter

    conditionals.match_pattern = _importing_stand_in(conditionals.match_pattern, stand_in)
    execute_case = _importing_stand_in(control_flow.execute_case, stand_in)
    control_flow.execute_case = interpreter.execute_case = execute_case  # type: ignore[attr-defined]


def _importing_stand_in(function: Any, stand_in: _Module) -> Any:
    """`function` once more, with its own `import re` giving `stand_in`: a function's builtins
    (`__import__` among them) are its module's at the moment it is made, so it is made while the
    module's `__builtins__` say so, then those are put back."""
    import builtins
    import types

    def bounded_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "re":
            return stand_in
        return builtins.__import__(name, *args, **kwargs)

    namespace = function.__globals__
    before = namespace["__builtins__"]
    namespace["__builtins__"] = {**vars(builtins), "__import__": bounded_import}
    try:
        made = types.FunctionType(
            function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
        )
    finally:
        namespace["__builtins__"] = before
    made.__kwdefaults__, made.__qualname__, made.__doc__ = (
        function.__kwdefaults__,
        function.__qualname__,
        function.__doc__,
    )
    return made
