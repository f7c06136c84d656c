"""just-bash commands whose arguments are checked before they run: each would build its whole
output in one step, before any of the call's limits is looked at (`printf '%2000000000s'`,
`seq 1e9`, `shuf -i 1-1000000000`, `tr` ranges over all of Unicode, `nl -w 1e8`, `expand -t 1e8`).
A refusal is the command's own error (stderr, exit status 1), as for any bad argument."""

from __future__ import annotations

import math
import re
from typing import Any

from regina.runtime.tools.bash.limits import MAX_EXPANSION

__all__ = ["PRINTF_FIELD", "bounded_commands"]


PRINTF_FIELD = re.compile(r"%[-+ #0']*(\*|\d+)?(?:\.(\*|\d+))?")


class _BoundedPrintf:
    """`printf` whose field widths and precisions stay under MAX_EXPANSION (see there)."""

    name = "printf"

    def __init__(self, original: Any) -> None:
        self._original = original

    async def execute(self, args: list[str], ctx: Any) -> Any:
        from just_bash.types import ExecResult

        rest = args[2:] if args[:1] == ["-v"] else args  # `printf -v NAME FORMAT …`
        fmt = next((a for a in rest if not a.startswith("-")), "")
        numbers = [int(n) for m in PRINTF_FIELD.finditer(fmt) for n in m.groups() if n and n.isdigit()]
        if "*" in fmt:  # widths given as arguments
            numbers += [int(a) for a in args if a.lstrip("-").isdigit()]
        if any(abs(n) > MAX_EXPANSION for n in numbers):
            return ExecResult(stdout="", stderr=f"printf: field width over {MAX_EXPANSION}\n", exit_code=1)
        return await self._original.execute(args, ctx)


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


def bounded_commands(commands: dict[str, Any]) -> None:
    """Wrap the commands above in `commands` (just-bash's registry, built once per process)."""
    commands["printf"] = _BoundedPrintf(commands["printf"])
    commands["seq"] = _BoundedSeq(commands["seq"])
    commands["shuf"] = _BoundedShuf(commands["shuf"])
    commands["tr"] = _BoundedTr(commands["tr"])
    commands["nl"] = _BoundedWidths(commands["nl"], ("-w", "--number-width"))
    commands["expand"] = _BoundedWidths(commands["expand"], ("-t", "--tabs"))
