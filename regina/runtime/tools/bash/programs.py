"""sed, awk and jq: just-bash runs each program in one synchronous loop of its own, which the
interpreter's counters never see. Each is guarded here where every step of its program passes
(sed's address match, awk's statement and expression, jq's node): the call's deadline, and caps
on the texts and lists it builds (docs/bash-sandbox.md has the figures that made them)."""

from __future__ import annotations

import contextvars
import math
import sys
from collections.abc import Callable
from typing import Any

from regina.runtime.tools.bash.bounded_commands import printf_widths
from regina.runtime.tools.bash.limits import CALL, MAX_EXPANSION

__all__ = ["guarded_awk", "guarded_sed", "patch_jq", "BoundedJq"]


#: Most characters sed's pattern space, hold space and output may hold, each.
MAX_SED_TEXT = 16 << 20
#: Characters sed may add to its other texts (hold space, output, `a`/`i` text, `w` files)
#: between two looks at them.
_SED_SLACK = 4 << 20


class _SedGuard:
    """One `sed` run's bounds, checked at every command it executes (see `guarded_sed`)."""

    def __init__(self, limits: Any, script: int) -> None:
        self.check_clock = getattr(limits, "check_clock", None)  # the call's deadline (DeadlineLimits)
        self.steps = 0
        self.script = script + 256  # at most what one command adds of its own (`a`, `i`, `c` text)
        self.grown = 0  # characters sed's other texts may have gained since a look
        self.written: dict[str, tuple[int, int]] = {}  # `w` file: (lines seen, their characters)

    def step(self, pattern_space: str) -> None:
        self.steps += 1
        size = len(pattern_space)
        # A step over a big pattern space is itself long (`y` walks it all): look at the clock.
        if (not self.steps & 63 or size > 65_536) and self.check_clock is not None:
            self.check_clock()
        if size > MAX_SED_TEXT:
            self.stop("pattern space")
        # A command adds at most the pattern space (`H`, `p`, `w`; `l` escapes it, up to 4
        # characters each) or its own text (`a`, `i`, `c`) to one of sed's other texts: look at
        # them when that could pass the slack.
        self.grown += 4 * size + self.script
        if self.grown > _SED_SLACK:
            self.grown = 0
            frame = sys._getframe(2)  # `_process_content`, which called `_address_matches`
            names = ("hold_space", "output", "append_text", "insert_text")
            for name in names:
                if len(frame.f_locals[name]) > MAX_SED_TEXT:
                    self.stop(name.replace("_", " "))
            for file, lines in frame.f_locals["write_buffers"].items():
                seen, total = self.written.get(file, (0, 0))
                total += sum(map(len, lines[seen:]))
                self.written[file] = (len(lines), total)
                if total > MAX_SED_TEXT:
                    self.stop(f"`w {file}` text")

    @staticmethod
    def stop(what: str) -> None:
        from just_bash.interpreter.errors import ExecutionLimitError

        raise ExecutionLimitError(f"sed's {what} is over {MAX_SED_TEXT} characters", "memory")


_SED: contextvars.ContextVar[_SedGuard | None] = contextvars.ContextVar("regina_sed", default=None)


def guarded_sed() -> Any:
    """just-bash's `sed` that stops at the call's deadline and at MAX_SED_TEXT: its commands run
    in one synchronous loop with no limit at all, so `sed ':a;ba'` ran forever (a tool thread and
    a core for good) and
    `sed ':a;s/.*/&&/;ba'` doubled its text until the worker ran out of memory. Every command
    it runs first matches its address (`_address_matches`, given the pattern space): the check
    goes there."""
    from just_bash.commands.sed.sed import SedCommand

    class GuardedSed(SedCommand):
        async def execute(self, args: list[str], ctx: Any) -> Any:
            token = _SED.set(_SedGuard(ctx.limits, sum(map(len, args))))
            try:
                return await super().execute(args, ctx)
            finally:
                _SED.reset(token)

        def _address_matches(self, address: Any, line: int, total: int, pattern_space: str, *rest: Any) -> bool:
            guard = _SED.get()
            if guard is not None:
                guard.step(pattern_space)
            return bool(super()._address_matches(address, line, total, pattern_space, *rest))

    return GuardedSed()


#: Most characters one awk value or awk's output may hold.
MAX_AWK_TEXT = 16 << 20


class _AwkGuard:
    """One `awk` run's deadline, checked every 64 statements (see `guarded_awk`)."""

    def __init__(self, limits: Any) -> None:
        self.check_clock = getattr(limits, "check_clock", None)
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if not self.steps & 63 and self.check_clock is not None:
            self.check_clock()


_AWK: contextvars.ContextVar[_AwkGuard | None] = contextvars.ContextVar("regina_awk", default=None)


def _awk_too_big(what: str) -> Exception:
    from just_bash.interpreter.errors import ExecutionLimitError

    return ExecutionLimitError(f"awk's {what} is over {MAX_AWK_TEXT} characters", "memory")


def guarded_awk() -> Any:
    """just-bash's `awk` that stops at the call's deadline and at MAX_AWK_TEXT: it runs a
    program in one synchronous loop, so nested loops (`for(i…)for(j…)`) ran on past bashTimeout,
    and `s = s s` doubled a string until the worker ran out of memory. Every statement
    passes `_execute_statement` and every value `_eval_expr`: the checks go there."""
    from just_bash.commands.awk.awk import AwkCommand

    class GuardedAwk(AwkCommand):
        async def execute(self, args: list[str], ctx: Any) -> Any:
            from just_bash.types import ExecResult

            # `printf "%300000000s"` builds its text in one call
            if any(width > MAX_EXPANSION for a in args for width in printf_widths(a)):
                return ExecResult(stdout="", stderr=f"awk: printf field width over {MAX_EXPANSION}\n", exit_code=2)
            token = _AWK.set(_AwkGuard(ctx.limits))
            try:
                return await super().execute(args, ctx)
            finally:
                _AWK.reset(token)

        def _execute_statement(self, stmt: str, state: Any, *rest: Any) -> None:
            guard = _AWK.get()
            if guard is not None:
                guard.step()
            super()._execute_statement(stmt, state, *rest)
            if len(state.output) > MAX_AWK_TEXT:
                raise _awk_too_big("output")

        def _eval_expr(self, expr: str, *rest: Any) -> Any:
            value = super()._eval_expr(expr, *rest)
            if isinstance(value, str) and len(value) > MAX_AWK_TEXT:
                raise _awk_too_big("string")
            return value

    return GuardedAwk()


#: Numbers the `range`s of one jq program have made so far (None outside a `jq` command).
_JQ_RANGES: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("regina_jq_ranges", default=None)


class BoundedJq:
    """`jq` whose `range`s make at most MAX_EXPANSION numbers in all (see `patch_jq`)."""

    name = "jq"

    def __init__(self, original: Any) -> None:
        self._original = original

    async def execute(self, args: list[str], ctx: Any) -> Any:
        token = _JQ_RANGES.set([0])
        try:
            return await self._original.execute(args, ctx)
        finally:
            _JQ_RANGES.reset(token)


#: Most characters of one jq string and items of one jq array or result list.
MAX_JQ_SIZE = 16 << 20


def patch_jq() -> None:
    """jq's evaluator (just-bash's query engine) builds every result list whole, in one
    synchronous recursion, and catches every exception in `try`, `limit` and friends:
    `[range(1e9)]` built a billion ints in one C call, `"x" * 1e10` ten gigabytes, `.+.` in a
    `reduce` doubled a string thirty times within the timeout, and a `try` caught the
    deadline's error and went on. Here a `range` makes at most MAX_EXPANSION numbers and a
    program's ranges ten times that, a string repeat, a product or a node's result stays within
    MAX_JQ_SIZE or MAX_EXPANSION, and past the call's bounds every node fails (a `try` cannot
    outlast them; the tool reports the timeout whatever the program printed after)."""
    from just_bash.query_engine import builtins as jq_builtins
    from just_bash.query_engine import evaluator

    jq_builtins.range = _jq_range  # type: ignore[attr-defined]  # shadows the builtin there
    eval_node, binary, builtin = evaluator._eval_node, evaluator._eval_binary_op, evaluator.call_builtin  # type: ignore[attr-defined]

    def guarded_eval_node(value: Any, ast: Any, ctx: Any) -> Any:
        bounds = CALL.get()
        if bounds is not None:
            bounds.check_clock()
        result = eval_node(value, ast, ctx)
        if len(result) > MAX_JQ_SIZE or (result and isinstance(result[0], str | list) and len(result[0]) > MAX_JQ_SIZE):
            raise _jq_too_big(f"value of more than {MAX_JQ_SIZE} items or characters")
        return result

    def guarded_binary(value: Any, op: str, left: Any, right: Any, ctx: Any) -> Any:
        if op == "*":  # `"x" * n` repeats the string: check n first
            _check_jq_repeat(guarded_eval_node(value, right, ctx), lambda: guarded_eval_node(value, left, ctx))
        return binary(value, op, left, right, ctx)

    def guarded_builtin(value: Any, name: str, args: list[Any], ctx: Any, eval_fn: Any) -> Any:
        if name == "combinations" and isinstance(value, list):  # the whole product, in one call
            _check_jq_product(value, eval_fn(value, args[0], ctx)[:1] if args else None)
        return builtin(value, name, args, ctx, eval_fn)

    evaluator._eval_node = guarded_eval_node
    evaluator._eval_binary_op = guarded_binary
    evaluator.call_builtin = guarded_builtin  # type: ignore[attr-defined]


def _jq_too_big(what: str) -> Exception:
    from just_bash.interpreter.errors import ExecutionLimitError

    return ExecutionLimitError(what, "memory")


def _jq_range(*args: int) -> range:
    """jq's `range`, bounded (see `patch_jq`)."""
    numbers = range(*args)
    if len(numbers) > MAX_EXPANSION:
        raise _jq_too_big(f"range of {len(numbers)} numbers is more than {MAX_EXPANSION}")
    made = _JQ_RANGES.get()
    if made is not None:
        made[0] += len(numbers)
        if made[0] > 10 * MAX_EXPANSION:
            raise _jq_too_big(f"ranges made more than {10 * MAX_EXPANSION} numbers")
    return numbers


def _check_jq_repeat(counts: list[Any], texts: Callable[[], list[Any]]) -> None:
    for count in counts:
        if isinstance(count, int | float) and count > MAX_JQ_SIZE:
            if any(isinstance(text, str) and len(text) * count > MAX_JQ_SIZE for text in texts()):
                raise _jq_too_big(f"string repeat of more than {MAX_JQ_SIZE} characters")


def _check_jq_product(value: list[Any], repeat: list[Any] | None) -> None:
    if repeat is None:  # `combinations`: the product of the arrays in `value`
        counts = [math.prod(len(x) for x in value if isinstance(x, list))]
    else:  # `combinations(n)`
        counts = [len(value) ** min(max(0, int(n)), 64) for n in repeat if isinstance(n, int | float)]  # 2**64: enough
    if any(count > MAX_EXPANSION for count in counts):
        raise _jq_too_big(f"combinations of more than {MAX_EXPANSION} arrays")
