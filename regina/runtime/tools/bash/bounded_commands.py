"""just-bash commands whose arguments are checked before they run: each would build its whole
output in one step, before any of the call's limits is looked at (`printf '%2000000000s'`,
`seq 1e9`, `shuf -i 1-1000000000`, `tr` ranges over all of Unicode, `nl -w 1e8`, `expand -t 1e8`).
A refusal is the command's own error (stderr, exit status 1), as for any bad argument."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from regina.runtime.tools.bash.limits import MAX_EXPANSION

__all__ = ["bounded_commands", "printf_widths"]


PRINTF_FIELD = re.compile(r"%[-+ #0']*(\*|\d+)?(?:\.(\*|\d+))?")
#: Numbers just-bash's `seq` makes at most: it stopped there silently (`seq 200000 | wc -l` said 100000).
MAX_SEQ = 100_000
#: Most columns `nl -w` and `expand -t` may pad to.
MAX_WIDTH = 10_000
_TR_RANGE = re.compile(r"(.)-(.)", re.DOTALL)

Refusal = Callable[[list[str]], "str | None"]


class _Checked:
    """A just-bash command whose arguments `refusal` reads first: a reason it gives refuses the
    call (`<command>: <reason>` on stderr, exit status 1), as for any bad argument."""

    def __init__(self, original: Any, refusal: Refusal) -> None:
        self._original = original
        self._refusal = refusal
        self.name = original.name

    async def execute(self, args: list[str], ctx: Any) -> Any:
        reason = self._refusal(args)
        if reason is None:
            return await self._original.execute(args, ctx)
        from just_bash.types import ExecResult

        return ExecResult(stdout="", stderr=f"{self.name}: {reason}\n", exit_code=1)


def printf_widths(text: str) -> list[int]:
    """The field widths and precisions written out in a printf format."""
    return [int(n) for m in PRINTF_FIELD.finditer(text) for n in m.groups() if n and n.isdigit()]


def _printf_refusal(args: list[str]) -> str | None:
    """Field widths and precisions over MAX_EXPANSION (`printf '%2000000000s'`, also `-v NAME`)."""
    rest = args[2:] if args[:1] == ["-v"] else args  # `printf -v NAME FORMAT …`
    fmt = next((a for a in rest if not a.startswith("-")), "")
    numbers = printf_widths(fmt)
    if "*" in fmt:  # widths given as arguments
        numbers += [int(a) for a in args if a.lstrip("-").isdigit()]
    return f"field width over {MAX_EXPANSION}" if any(abs(n) > MAX_EXPANSION for n in numbers) else None


def _seq_refusal(args: list[str]) -> str | None:
    """A sequence longer than MAX_SEQ, which just-bash would cut short silently."""
    count = _seq_length(args)
    return f"{count} numbers is more than {MAX_SEQ}" if count is not None and count > MAX_SEQ else None


def _shuf_refusal(args: list[str]) -> str | None:
    """An `-i LO-HI` range or `-r -n COUNT` over MAX_EXPANSION: just-bash built the whole range
    first (`shuf -i 1-1000000000 -n 3` took 6 GB)."""
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
    return f"more than {MAX_EXPANSION} lines" if any(size > MAX_EXPANSION for size in sizes) else None


def _tr_refusal(args: list[str]) -> str | None:
    """A set of more than MAX_EXPANSION characters: just-bash writes a range out whole, and ten
    ranges over all of Unicode took a gigabyte in one step."""
    for arg in args:
        if sum(max(0, ord(m[2]) - ord(m[1]) + 1) for m in _TR_RANGE.finditer(arg)) > MAX_EXPANSION:
            return f"set of more than {MAX_EXPANSION} characters"
    return None


def _width_refusal(*options: str) -> Refusal:
    """A width over MAX_WIDTH given with one of `options`: `nl -w 100000000` padded every line
    number to 100 MB and `expand -t 100000000` every tab, in one step each (2 GB)."""

    def refusal(args: list[str]) -> str | None:
        for at, arg in enumerate(args):
            for option in options:
                value = args[at + 1] if arg == option and at + 1 < len(args) else ""
                if arg.startswith(option) and arg != option:
                    value = arg[len(option) :].lstrip("=")
                if any(_as_int(n) > MAX_WIDTH for n in value.split(",") if n.strip()):
                    return f"width over {MAX_WIDTH}"
        return None

    return refusal


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
    for name, refusal in (
        ("printf", _printf_refusal),
        ("seq", _seq_refusal),
        ("shuf", _shuf_refusal),
        ("tr", _tr_refusal),
        ("nl", _width_refusal("-w", "--number-width")),
        ("expand", _width_refusal("-t", "--tabs")),
    ):
        commands[name] = _Checked(commands[name], refusal)
