"""Fixes to just-bash where it differs from bash: `cat` copies bytes exactly, `>file 2>&1`
sends stderr to the file, and a redirection into a missing directory fails before any output.
Installed once per process (only Regina uses just-bash).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import re
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from regina.runtime.tools.bash import compressed, timed_re
from regina.runtime.tools.bash.limits import current_call

__all__ = ["patch_interpreter", "command_registry"]


class _ExactCat:
    """`cat` without options copies bytes exactly (just-bash 0.2.1 adds a missing final newline)."""

    name = "cat"

    def __init__(self, original: Any) -> None:
        self._original = original

    async def execute(self, args: list[str], ctx: Any) -> Any:
        from just_bash.types import ExecResult

        if any(a.startswith("-") and a != "-" for a in args):
            return await self._original.execute(args, ctx)
        out: list[str] = []
        err: list[str] = []
        code = 0
        for name in args or ["-"]:
            if name in ("-", "/dev/stdin"):
                out.append(ctx.stdin)
                continue
            try:
                out.append(await ctx.fs.read_file(ctx.fs.resolve_path(ctx.cwd, name)))
            except IsADirectoryError:
                err.append(f"cat: {name}: Is a directory\n")
                code = 1
            except (FileNotFoundError, NotADirectoryError):
                err.append(f"cat: {name}: No such file or directory\n")
                code = 1
        return ExecResult(stdout="".join(out), stderr="".join(err), exit_code=code)


def _is_literal(word: Any, text: str) -> bool:
    parts: Any = getattr(word, "parts", ())
    return len(parts) == 1 and getattr(parts[0], "value", None) == text


def _merge_stderr_into_file(redirections: list[Any]) -> list[Any]:
    """Rewrite `>file 2>&1` / `>>file 2>&1` as `&>file` / `&>>file`.

    just-bash applies redirections to already-collected output in order, so `2>&1` after
    `>file` would send stderr to the terminal instead of the file, unlike bash.
    """
    out = list(redirections)
    for i, redir in enumerate(out):
        if getattr(redir, "operator", None) not in (">", ">>") or getattr(redir, "fd", None) not in (None, 1):
            continue
        for j in range(i + 1, len(out)):
            nxt = out[j]
            if getattr(nxt, "fd", None) in (None, 1) and getattr(nxt, "operator", None) in (">", ">>", ">&"):
                break  # stdout redirected again: leave the list alone
            if nxt.operator == ">&" and nxt.fd == 2 and _is_literal(nxt.target, "1"):
                both = "&>" if redir.operator == ">" else "&>>"
                out[i] = dataclasses.replace(redir, fd=None, operator=both)
                del out[j]
                return out
    return out


# Word parts whose expansion cannot run commands or assign variables.
_PURE_PARTS = frozenset({"Literal", "SingleQuoted", "Escaped", "TildeExpansion"})


def _pure(part: Any) -> bool:
    """Whether expanding `part` can neither run a command nor assign (`${x:=…}`, `$((n++))`,
    `$(…)` inside double quotes): the redirection's own expansion would then happen twice."""
    kind = getattr(part, "type", None)
    if kind in _PURE_PARTS:
        return True
    if kind == "ParameterExpansion":
        return getattr(part, "operation", None) is None  # a plain $name
    if kind == "DoubleQuoted":
        return all(_pure(p) for p in getattr(part, "parts", ()))
    return False


async def _unwritable_target(interp: Any, redirections: list[Any]) -> Any:
    """An error result when a literal `>`/`>>` target's directory is missing, else None.

    bash reports the error and discards the output; just-bash would print the output and then
    the error. (The command itself has already run in just-bash: redirections are applied after.)
    """
    from just_bash.interpreter.expansion import expand_word_async
    from just_bash.types import ExecResult

    for redir in redirections:
        if getattr(redir, "operator", None) not in (">", ">>", ">|", "&>", "&>>"):
            continue
        parts = getattr(redir.target, "parts", None) or ()
        if not parts:
            continue
        if all(getattr(p, "type", None) == "Literal" for p in parts):
            target = "".join(p.value for p in parts)
        elif all(_pure(p) for p in parts):
            target = await expand_word_async(interp._ctx, redir.target)  # no side effects
        else:
            continue
        if target.startswith("/dev/") or not target:
            continue
        path = interp._fs.resolve_path(interp._state.cwd, target)
        parent = path.rsplit("/", 1)[0] or "/"
        if parent == "/tmp" or parent.startswith("/tmp/"):
            continue
        if not await interp._fs.is_directory(parent):
            reason = "Not a directory" if await interp._fs.exists(parent) else "No such file or directory"
            return ExecResult(stdout="", stderr=f"bash: {target}: {reason}\n", exit_code=1)
    return None


_patched = False


def patch_interpreter() -> None:
    """Install the interpreter fixes above (once per process; only Regina uses just-bash)."""
    global _patched
    if _patched:
        return
    from just_bash.interpreter.interpreter import Interpreter

    original = Interpreter._process_output_redirections

    async def process_output_redirections(self: Any, redirections: list[Any], result: Any) -> Any:
        redirections = _merge_stderr_into_file(redirections)
        failed = await _unwritable_target(self, redirections)
        if failed is not None:
            return failed
        return await original(self, redirections, result)

    Interpreter._process_output_redirections = process_output_redirections  # type: ignore[method-assign]
    _patch_pipeline_stderr(Interpreter)
    _patch_arithmetic()
    _patch_brace_ranges()
    _patch_replace_all()
    _patch_jq()
    timed_re.install()
    compressed.install()
    _patched = True


#: Most words one brace range (`{1..N}`) or one printf field width makes: `{1..100000000}` and
#: `printf '%2000000000s'` built gigabytes in one statement, before any limit was checked.
MAX_EXPANSION = 1_000_000


def _patch_replace_all() -> None:
    """`${x//pattern/replacement}` stays under MAX_VARIABLE_BYTES: just-bash joins the pieces in
    one call, and `${x//?/$x}` with a 30 KB `x` built 900 MB before the variables' cap could look.
    When the worst case (every character a match) could pass the cap, the matches are counted
    first (a second pass of the bounded pattern)."""
    from just_bash.interpreter import expansion

    from regina.runtime.tools.bash.limits import MAX_VARIABLE_BYTES

    replace_all = expansion._bash_replace_all

    def bounded_replace_all(regex_pattern: str, replacement: str, value: str) -> str:
        if len(replacement) * (len(value) + 1) > MAX_VARIABLE_BYTES:
            matches = 0
            for _ in timed_re.compiled(regex_pattern).finditer(value):
                matches += 1
            if len(value) + matches * len(replacement) > MAX_VARIABLE_BYTES:
                from just_bash.interpreter.errors import ExecutionLimitError

                raise ExecutionLimitError(
                    f"a pattern substitution would make more than {MAX_VARIABLE_BYTES} bytes", "memory"
                )
        return str(replace_all(regex_pattern, replacement, value))

    expansion._bash_replace_all = bounded_replace_all


def _patch_brace_ranges() -> None:
    from just_bash.interpreter import expansion

    original = expansion.expand_brace_range

    def expand_brace_range(start: int, end: int, step: int = 1) -> list[str]:  # `{1..N}` alone
        expand_brace_range_bound(start, end, step)
        return original(start, end, step)

    expansion.expand_brace_range = expand_brace_range
    sequence = expansion._expand_sequence

    def expand_sequence(content: str) -> list[str]:  # `{1..N}` in a word
        parts = content.split("..")
        if 2 <= len(parts) <= 3 and all(p.lstrip("-").isdigit() for p in parts):
            expand_brace_range_bound(int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 1)
        return sequence(content)

    expansion._expand_sequence = expand_sequence


#: Numbers the `range`s of one jq program have made so far (None outside a `jq` command).
_JQ_RANGES: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("regina_jq_ranges", default=None)


class _BoundedJq:
    """`jq` whose `range`s make at most MAX_EXPANSION numbers in all (see `_patch_jq`)."""

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


def _patch_jq() -> None:
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
        bounds = current_call()
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
    """jq's `range`, bounded (see `_patch_jq`)."""
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


def expand_brace_range_bound(start: int, end: int, step: int) -> None:
    """ValueError when `{start..end..step}` would make more than MAX_EXPANSION words."""
    count = abs(end - start) // max(abs(step), 1) + 1
    if count > MAX_EXPANSION:
        raise ValueError(f"brace range of {count} words is more than {MAX_EXPANSION}")


_PRINTF_FIELD = re.compile(r"%[-+ #0']*(\*|\d+)?(?:\.(\*|\d+))?")


class _BoundedPrintf:
    """`printf` whose field widths and precisions stay under MAX_EXPANSION (see there)."""

    name = "printf"

    def __init__(self, original: Any) -> None:
        self._original = original

    async def execute(self, args: list[str], ctx: Any) -> Any:
        from just_bash.types import ExecResult

        rest = args[2:] if args[:1] == ["-v"] else args  # `printf -v NAME FORMAT …`
        fmt = next((a for a in rest if not a.startswith("-")), "")
        numbers = [int(n) for m in _PRINTF_FIELD.finditer(fmt) for n in m.groups() if n and n.isdigit()]
        if "*" in fmt:  # widths given as arguments
            numbers += [int(a) for a in args if a.lstrip("-").isdigit()]
        if any(abs(n) > MAX_EXPANSION for n in numbers):
            return ExecResult(stdout="", stderr=f"printf: field width over {MAX_EXPANSION}\n", exit_code=1)
        return await self._original.execute(args, ctx)


#: The stderr of each stage of the pipeline being run (None outside one, and inside a stage).
_STAGES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("regina_bash_stages", default=None)


def _patch_pipeline_stderr(interpreter: Any) -> None:
    """A pipeline keeps the stderr of every stage, as bash prints it: just-bash kept the last
    stage's only (`grep x /missing | wc -l` said 0 and nothing else)."""
    run_pipeline = interpreter.execute_pipeline
    run_command = interpreter.execute_command

    async def execute_pipeline(self: Any, node: Any) -> Any:
        commands = getattr(node, "commands", ())
        if len(commands) < 2:
            return await run_pipeline(self, node)
        stages: list[str] = []
        token = _STAGES.set(stages)
        try:
            result = await run_pipeline(self, node)
        finally:
            _STAGES.reset(token)
        merged = getattr(node, "pipe_amp", None) or ()  # `|&` stages send stderr down the pipe
        earlier = "".join(e for i, e in enumerate(stages[: len(commands) - 1]) if not (i < len(merged) and merged[i]))
        if not earlier:
            return result
        return dataclasses.replace(result, stderr=earlier + result.stderr)

    async def execute_command(self: Any, node: Any, stdin: str) -> Any:
        stages = _STAGES.get()
        if stages is None:
            return await run_command(self, node, stdin)
        token = _STAGES.set(None)  # what runs inside this stage is not a stage of this pipeline
        try:
            result = await run_command(self, node, stdin)
        finally:
            _STAGES.reset(token)
        stages.append(result.stderr)
        return result

    interpreter.execute_pipeline = execute_pipeline
    interpreter.execute_command = execute_command


_WORD = 1 << 64


def _signed64(value: Any) -> Any:
    """An arithmetic result as bash's 64-bit integers hold it (wrapping past 2^63)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    value &= _WORD - 1
    return value - _WORD if value >> 63 else value


def _bounded_op(op: str, left: int, right: int) -> int:
    """`**` and `<<` computed as bash does, in 64 bits: Python's ints computed 9**9**9 (and
    1<<10**10) in full, minutes of CPU and gigabytes no bashTimeout could stop (one statement)."""
    if op == "**":
        if right < 0:
            raise ValueError("exponent less than 0")
        return int(_signed64(pow(left, right, _WORD)))
    return int(_signed64(left << (right & 63)))


def _patch_arithmetic() -> None:
    """Every arithmetic result wraps to 64 bits, `**` and `<<` are computed in 64 bits. The
    evaluators call themselves through their module's globals, so replacing those (and the names
    other modules imported) routes every sub-expression through the bounds."""
    from just_bash.interpreter import control_flow, expansion, interpreter

    sync_eval = expansion.evaluate_arithmetic_sync
    async_eval = expansion.evaluate_arithmetic

    def evaluate_sync(ctx: Any, expr: Any) -> Any:
        if getattr(expr, "type", None) == "ArithBinary" and expr.operator in ("**", "<<"):
            return _bounded_op(expr.operator, evaluate_sync(ctx, expr.left), evaluate_sync(ctx, expr.right))
        return _signed64(sync_eval(ctx, expr))

    async def evaluate(ctx: Any, expr: Any) -> Any:
        if getattr(expr, "type", None) == "ArithBinary" and expr.operator in ("**", "<<"):
            left = await evaluate(ctx, expr.left)
            return _bounded_op(expr.operator, left, await evaluate(ctx, expr.right))
        return _signed64(await async_eval(ctx, expr))

    expansion.evaluate_arithmetic_sync = evaluate_sync
    for module in (expansion, control_flow, interpreter):
        if getattr(module, "evaluate_arithmetic", None) is async_eval:
            setattr(module, "evaluate_arithmetic", evaluate)  # noqa: B010 (untyped module)


#: SQLite VM instructions one `sqlite3` statement may run (checked every 1 000): about a second.
SQLITE_STEPS = 20_000_000
#: Most bytes of one SQLite string or blob (`zeroblob(300000000)` took 300 MB in one VM step).
SQLITE_MAX_LENGTH = 16 << 20


def _deny_files(action: int, *_args: Any) -> int:
    """SQLite authorizer: no ATTACH or DETACH (an attached file is any file of the worker's host)."""
    return sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK


class _SandboxedSqlite:
    """The `sqlite3` module as just-bash's `sqlite3` command sees it. The command opens
    `:memory:` only, but SQL's ATTACH and VACUUM INTO open any path of the worker's host (other
    instances' VFS files, transcripts included) and a recursive query ran past bashTimeout: no
    attached databases, and a budget of VM steps."""

    Error = sqlite3.Error
    sqlite_version = sqlite3.sqlite_version

    @staticmethod
    def connect(database: str) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH)  # zeroblob(3e8): one VM step
        conn.set_authorizer(_deny_files)
        calls = [0]

        def progress() -> int:
            calls[0] += 1
            return int(calls[0] * 1000 > SQLITE_STEPS)  # non-zero interrupts the statement

        conn.set_progress_handler(progress, 1000)
        return conn


#: Most characters sed's pattern space, hold space and output may hold, each.
MAX_SED_TEXT = 16 << 20
#: Characters sed may add to its other texts (hold space, output, `a`/`i` text, `w` files)
#: between two looks at them.
_SED_SLACK = 4 << 20


class _SedGuard:
    """One `sed` run's bounds, checked at every command it executes (see `_GuardedSed`)."""

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


#: Numbers just-bash's `seq` makes at most: it stopped there silently (`seq 200000 | wc -l` said 100000).
MAX_SEQ = 100_000


class _BoundedSeq:
    """`seq` that refuses a sequence longer than MAX_SEQ instead of cutting it short silently."""

    name = "seq"

    def __init__(self, original: Any) -> None:
        self._original = original

    async def execute(self, args: list[str], ctx: Any) -> Any:
        from just_bash.types import ExecResult

        count = _seq_length(args)
        if count is not None and count > MAX_SEQ:
            return ExecResult(stdout="", stderr=f"seq: {count} numbers is more than {MAX_SEQ}\n", exit_code=1)
        return await self._original.execute(args, ctx)


class _BoundedShuf:
    """`shuf` whose `-i LO-HI` range and `-r -n COUNT` stay under MAX_EXPANSION: just-bash built
    the whole range first (`shuf -i 1-1000000000 -n 3` took 6 GB and held the shared loop)."""

    name = "shuf"

    def __init__(self, original: Any) -> None:
        self._original = original

    async def execute(self, args: list[str], ctx: Any) -> Any:
        from just_bash.types import ExecResult

        values = {"-i": "", "-n": ""}
        for at, arg in enumerate(args):
            for short, long in (("-i", "--input-range="), ("-n", "--head-count=")):
                if arg == short and at + 1 < len(args):
                    values[short] = args[at + 1]
                elif arg.startswith(long):
                    values[short] = arg[len(long) :]
                elif arg.startswith(short) and len(arg) > 2:
                    values[short] = arg[2:]
        lo, _, hi = values["-i"].partition("-")
        sizes = [_as_int(hi) - _as_int(lo) + 1] if _as_int(lo) >= 0 and _as_int(hi) >= 0 else []
        if "-r" in args or "--repeat" in args:
            sizes.append(_as_int(values["-n"]))
        if any(size > MAX_EXPANSION for size in sizes):
            return ExecResult(stdout="", stderr=f"shuf: more than {MAX_EXPANSION} lines\n", exit_code=1)
        return await self._original.execute(args, ctx)


class _BoundedWidths:
    """A command whose widths stay under MAX_WIDTH: `nl -w 100000000` padded every line number to
    100 MB and `expand -t 100000000` every tab, in one step each (2 GB)."""

    def __init__(self, original: Any, options: tuple[str, ...]) -> None:
        self._original = original
        self.name = original.name
        self._options = options

    async def execute(self, args: list[str], ctx: Any) -> Any:
        from just_bash.types import ExecResult

        for at, arg in enumerate(args):
            for option in self._options:
                value = args[at + 1] if arg == option and at + 1 < len(args) else ""
                if arg.startswith(option) and arg != option:
                    value = arg[len(option) :].lstrip("=")
                numbers = [_as_int(n) for n in value.split(",") if n.strip()]
                if any(n > MAX_WIDTH for n in numbers):
                    return ExecResult(stdout="", stderr=f"{self.name}: width over {MAX_WIDTH}\n", exit_code=1)
        return await self._original.execute(args, ctx)


#: Most columns `nl -w` and `expand -t` may pad to.
MAX_WIDTH = 10_000
_TR_RANGE = re.compile(r"(.)-(.)", re.DOTALL)


class _BoundedTr:
    """`tr` whose sets stay under MAX_EXPANSION characters: just-bash writes a range out whole,
    and ten ranges over all of Unicode took a gigabyte in one step."""

    name = "tr"

    def __init__(self, original: Any) -> None:
        self._original = original

    async def execute(self, args: list[str], ctx: Any) -> Any:
        from just_bash.types import ExecResult

        for arg in args:
            size = sum(max(0, ord(m[2]) - ord(m[1]) + 1) for m in _TR_RANGE.finditer(arg))
            if size > MAX_EXPANSION:
                return ExecResult(stdout="", stderr=f"tr: set of more than {MAX_EXPANSION} characters\n", exit_code=1)
        return await self._original.execute(args, ctx)


def _as_int(text: str) -> int:
    """`text` read as just-bash reads it (Python's `int`: `2_000`, `+5`, ` 7` too); -1 if it is not."""
    try:
        return int(text)
    except ValueError:
        return -1


def _seq_length(args: list[str]) -> int | None:
    """How many numbers `seq args` prints (None: arguments `seq` itself will reject)."""
    numbers: list[float] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        try:
            numbers.append(float(arg))
        except ValueError:  # an option: -w, -s SEP, -sSEP, -ws SEP, --separator=…
            letters = arg[1:] if arg.startswith("-") and not arg.startswith("--") else ""
            at = min((letters.find(c) for c in "sf" if c in letters), default=-1)
            skip = at == len(letters) - 1 and at >= 0  # the value is the next argument
    if not 1 <= len(numbers) <= 3:
        return None
    first, step, last = (1.0, 1.0, numbers[0]) if len(numbers) == 1 else (numbers[0], 1.0, numbers[-1])
    if len(numbers) == 3:
        step = numbers[1]
    if step == 0 or not all(map(math.isfinite, (first, step, last))):
        return None
    return max(0, math.floor((last - first) / step + 1e-9) + 1)


_SED: contextvars.ContextVar[_SedGuard | None] = contextvars.ContextVar("regina_sed", default=None)


def _guarded_sed() -> Any:
    """just-bash's `sed` that stops at the call's deadline and at MAX_SED_TEXT: its commands run
    in one synchronous loop with no limit at all, so `sed ':a;ba'` ran forever on the worker's
    shared event loop (every later bash call on the worker timed out behind it) and
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
    """One `awk` run's deadline, checked every 64 statements (see `_guarded_awk`)."""

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


def _guarded_awk() -> Any:
    """just-bash's `awk` that stops at the call's deadline and at MAX_AWK_TEXT: it runs a
    program in one synchronous loop, so nested loops (`for(i…)for(j…)`) ran on past bashTimeout
    on the worker's shared event loop (every later bash call on the worker timed out behind
    them), and `s = s s` doubled a string until the worker ran out of memory. Every statement
    passes `_execute_statement` and every value `_eval_expr`: the checks go there."""
    from just_bash.commands.awk.awk import AwkCommand

    class GuardedAwk(AwkCommand):
        async def execute(self, args: list[str], ctx: Any) -> Any:
            from just_bash.types import ExecResult

            widths = [int(n) for a in args for m in _PRINTF_FIELD.finditer(a) for n in m.groups() if n and n.isdigit()]
            if any(width > MAX_EXPANSION for width in widths):  # `printf "%300000000s"`: one call
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


@functools.cache
def command_registry(network: bool) -> dict[str, Any]:
    """just_bash's commands, built once per process (≈ 11 KB per instance when built for each
    instance's bash tool); each shell gets its own copy of the mapping."""
    from just_bash.commands import create_command_registry
    from just_bash.commands.sqlite3 import sqlite3_cmd

    setattr(sqlite3_cmd, "sqlite3", _SandboxedSqlite)  # noqa: B010 (the module's own name for it)
    commands: dict[str, Any] = create_command_registry(include_network=network)
    commands["cat"] = _ExactCat(commands["cat"])
    commands["printf"] = _BoundedPrintf(commands["printf"])
    commands["sed"] = _guarded_sed()
    commands["seq"] = _BoundedSeq(commands["seq"])
    commands["awk"] = _guarded_awk()
    commands["jq"] = _BoundedJq(commands["jq"])
    commands["shuf"] = _BoundedShuf(commands["shuf"])
    commands["tr"] = _BoundedTr(commands["tr"])
    commands["nl"] = _BoundedWidths(commands["nl"], ("-w", "--number-width"))
    commands["expand"] = _BoundedWidths(commands["expand"], ("-t", "--tabs"))
    return commands
