"""The sandboxed `bash` default tool (SPEC §5): the `just-bash` interpreter over our VFS.

`just-bash` (a pure-Python port of the TypeScript just-bash the seed uses) parses and interprets
bash itself and implements its commands (cat, grep, sed, awk, jq, find, xargs, ...) in Python:
no host process is ever started. Its filesystem abstraction (`just_bash.types.IFileSystem`, async
methods) is implemented by `VFSBashFs` (fs.py) on top of an instance's VFS, so `bash`,
`read_file`, `write_file` and `edit_file` all see the same files with no copying.

Each call gets a fresh interpreter (variables, functions and `cd` do not carry over between
calls; files do), starting in `env["PWD"]` (default "/"). The environment is exactly the `env`
given (plus the interpreter's fixed, host-independent defaults such as `USER=user`); nothing is
read from `os.environ`. Network (`curl`) exists only when `network=True`.

Limits: `bash_max_loop_iterations` and `bash_max_commands` map onto just-bash's own counters;
`bash_timeout` is enforced twice — a deadline checked every time the interpreter consults its
limits (every statement and loop iteration, so CPU-bound loops stop too) and an asyncio timeout
for scripts that wait (`sleep`). A single long-running builtin command cannot be interrupted
mid-way; the caller stops waiting after the timeout plus a grace period.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, Field

from regina.config import Limits
from regina.errors import ReginaError, ToolError, VFSError
from regina.runtime.aio import run_coro
from regina.runtime.tools.base import Tool
from regina.runtime.tools.bash.fs import VFSBashFs
from regina.runtime.tools.bash.limits import CALL, DeadlineLimits
from regina.runtime.tools.bash.output import clean, truncate_output
from regina.runtime.tools.bash.patches import command_registry, patch_interpreter
from regina.vfs.base import VFS

__all__ = ["BashParams", "bash_tool"]


class BashParams(BaseModel):
    command: str = Field(description="The bash command line or script to run")


_GRACE = 2.0  # seconds the caller waits beyond bash_timeout for the interpreter to notice it


def _limit_result(reason: str, code: int) -> dict[str, Any]:
    return {
        "stdout": "",
        "stderr": f"bash: stopped: {reason}. The command was aborted and its output discarded; "
        "make it smaller (fewer iterations/commands, less data) and try again.\n",
        "exitCode": code,
    }


def _timed_out(limits: Limits) -> dict[str, Any]:
    return _limit_result(f"time limit exceeded ({limits.bash_timeout:g} s)", 124)


#: What just-bash raises where bash would print an error and go on.
_SHELL_ERRORS = (
    ReginaError,
    RecursionError,
    OSError,
    ValueError,
    LookupError,
    RuntimeError,
    TypeError,
    ArithmeticError,
)


def _shell_error(exc: Exception) -> dict[str, Any]:
    """An exception of the interpreter as bash would report it: the model gets the error, not a
    failed tool call."""
    if isinstance(exc, RecursionError):
        return _limit_result("commands nested too deep (functions, $(…) or scripts that call themselves)", 125)
    if isinstance(exc, ReginaError):  # a file operation refused (read-only /.session/, maxFileBytes, …)
        return {"stdout": "", "stderr": f"bash: {exc.message}\n", "exitCode": 1}
    return {"stdout": "", "stderr": f"bash: {type(exc).__name__}: {exc}\n", "exitCode": 2}


def bash_tool(vfs: VFS, *, env: dict[str, str], limits: Limits, network: bool = False) -> Tool:
    """The `bash` tool over `vfs` with exactly `env` as its environment."""
    from just_bash import Bash, NetworkConfig
    from just_bash.interpreter.errors import ExecutionLimitError
    from just_bash.parser.parser import ParseException

    patch_interpreter()
    fs = VFSBashFs(vfs)
    base_env = {str(k): str(v) for k, v in env.items()}
    commands = command_registry(network)
    net = (
        NetworkConfig(
            dangerously_allow_full_internet_access=True,
            deny_private_ranges=True,
            allowed_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        )
        if network
        else None
    )

    async def run(command: str) -> dict[str, Any]:
        deadline = time.monotonic() + limits.bash_timeout
        cwd = base_env.get("PWD") or "/"
        if not await fs.is_directory(cwd):
            cwd = "/"
        bounds = DeadlineLimits(limits, deadline)
        shell = Bash(
            fs=fs,
            cwd=cwd,
            env={**base_env, "PWD": cwd},
            limits=bounds,  # type: ignore[arg-type]
            network=net,
            commands=dict(commands),
            unescape_html=False,
        )
        bounds.variables = lambda: shell._interpreter.state.env
        CALL.set(bounds)  # this call's task only
        try:
            result = await asyncio.wait_for(shell.exec(command), timeout=limits.bash_timeout)
        except TimeoutError:
            return _timed_out(limits)
        except ExecutionLimitError as exc:
            code = 124 if getattr(exc, "limit_type", "") == "time" else 125
            reason = str(exc).split(", increase execution_limits")[0]
            if getattr(exc, "limit_type", "") == "commands":
                reason = f"too many commands ({limits.bash_max_commands} per call)"
            return _limit_result(reason, code)
        except _SHELL_ERRORS as exc:
            return _shell_error(exc)
        except ParseException as exc:  # raised by a command that parses a script itself (xargs)
            return {"stdout": "", "stderr": f"bash: syntax error: {exc}\n", "exitCode": 2}
        if bounds.remaining() < 0:  # a command caught the deadline's error and went on (jq's `try`)
            return _timed_out(limits)
        return {"stdout": result.stdout, "stderr": result.stderr, "exitCode": int(result.exit_code)}

    def bash(params: BashParams) -> dict[str, Any]:
        try:
            out = run_coro(run(params.command), timeout=limits.bash_timeout + _GRACE)
        except TimeoutError:
            out = _timed_out(limits)
        except VFSError as exc:
            raise ToolError(f"bash: filesystem error: {exc.message}") from exc
        stdout, stderr = truncate_output(clean(out["stdout"]), clean(out["stderr"]), limits.max_tool_output_chars)
        return {"stdout": stdout, "stderr": stderr, "exitCode": out["exitCode"]}

    return Tool(
        name="bash",
        description=(
            "Run a bash command line or script in the sandboxed workspace (same files as read_file/"
            "write_file/edit_file). Built-in commands only (cat, ls, grep, sed, awk, jq, find, sort, "
            "xargs, ...); no host programs"
            + (", no network" if not network else "; curl is available")
            + ". Each call starts a fresh shell in / (variables and cd do not persist; files do). "
            "Returns stdout, stderr and exitCode."
        ),
        parameters=BashParams,
        fn=bash,
    )
