"""Fixes to just-bash's interpreter where it differs from bash or runs away: `cat` copies bytes
exactly, `>file 2>&1` sends stderr to the file, a redirection into a missing directory fails
before any output, a pipeline keeps every stage's stderr, arithmetic is 64-bit, brace ranges and
pattern substitutions are bounded, `sqlite3` is sandboxed, `curl` connects only where it
checked; and the registry of commands, with
the guarded programs (programs.py) and argument-checked commands (bounded_commands.py).
Installed once per process (only Regina uses just-bash).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import sqlite3
from typing import Any

from regina.runtime.tools.bash import compressed, timed_re
from regina.runtime.tools.bash.bounded_commands import bounded_commands
from regina.runtime.tools.bash.limits import MAX_EXPANSION
from regina.runtime.tools.bash.programs import BoundedJq, guarded_awk, guarded_sed, patch_jq

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
    _patch_network()
    _patch_brace_ranges()
    _patch_replace_all()
    patch_jq()
    timed_re.install()
    compressed.install()
    _patched = True


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


def expand_brace_range_bound(start: int, end: int, step: int) -> None:
    """ValueError when `{start..end..step}` would make more than MAX_EXPANSION words."""
    count = abs(end - start) // max(abs(step), 1) + 1
    if count > MAX_EXPANSION:
        raise ValueError(f"brace range of {count} words is more than {MAX_EXPANSION}")


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


def _patch_network() -> None:
    """`curl` connects only to the addresses its private-range check resolved. just-bash pins
    them under the URL's host name as `urlsplit` spells it (Unicode: `bücher.example`), but
    aiohttp resolves the IDNA form (`xn--bcher-kva.example`), misses the pin and asks DNS again,
    unchecked: a name answering a public address first and 127.0.0.1 next reached loopback. Each
    pinned connector serves one URL (redirects are followed by hand, one connector per hop), so
    it answers every lookup with the checked addresses; a name with no address is refused before
    aiohttp could resolve it itself."""
    import just_bash.network as network

    original_resolve = network._resolve_host

    async def resolve_checked(hostname: str, port: int) -> list[Any]:
        records = await original_resolve(hostname, port)
        if not records:
            raise OSError(f"{hostname}: no address")
        return records

    async def pinned(self: Any, host: str, port: int = 0, family: Any = None) -> list[Any]:
        return [{**record, "port": port} for record in self._records]

    network._resolve_host = resolve_checked
    network._PinnedResolver.resolve = pinned  # type: ignore[method-assign]


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


@functools.cache
def command_registry(network: bool) -> dict[str, Any]:
    """just_bash's commands, built once per process (≈ 11 KB per instance when built for each
    instance's bash tool); each shell gets its own copy of the mapping."""
    from just_bash.commands import create_command_registry
    from just_bash.commands.sqlite3 import sqlite3_cmd

    setattr(sqlite3_cmd, "sqlite3", _SandboxedSqlite)  # noqa: B010 (the module's own name for it)
    commands: dict[str, Any] = create_command_registry(include_network=network)
    commands["cat"] = _ExactCat(commands["cat"])
    commands["sed"] = guarded_sed()
    commands["awk"] = guarded_awk()
    commands["jq"] = BoundedJq(commands["jq"])
    gzip = commands["gzip"]
    commands["gzip"] = compressed.BinaryGzip(gzip, "gzip")
    commands["gunzip"] = compressed.BinaryGzip(gzip, "gunzip", ("-d",))
    commands["zcat"] = compressed.BinaryGzip(gzip, "zcat", ("-d", "-c"))
    bounded_commands(commands)
    return commands
