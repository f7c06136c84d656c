"""The sandboxed `bash` default tool (SPEC §5): the `just-bash` interpreter over our VFS.

`just-bash` (a pure-Python port of the TypeScript just-bash the seed uses) parses and interprets
bash itself and implements its commands (cat, grep, sed, awk, jq, find, xargs, ...) in Python:
no host process is ever started. Its filesystem abstraction (`just_bash.types.IFileSystem`, async
methods) is implemented here by `VFSBashFs` on top of an instance's VFS, so `bash`,
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
from regina.errors import ToolError, VFSError
from regina.runtime.aio import run_coro
from regina.runtime.tools.base import Tool
from regina.vfs.base import VFS, normalize

_ENC_ERRORS = "surrogateescape"  # binary bytes survive a read -> string -> write round trip


class BashParams(BaseModel):
    command: str = Field(description="The bash command line or script to run")


# -- filesystem adapter -------------------------------------------------------------------------


def _fs_types() -> tuple[Any, Any]:
    from just_bash.fs import DirentEntry
    from just_bash.types import FsStat

    return FsStat, DirentEntry


class VFSBashFs:
    """just-bash `IFileSystem` over a Regina VFS (no symlinks; hard links are copies)."""

    def __init__(self, vfs: VFS) -> None:
        self.vfs = vfs
        self._FsStat, self._Dirent = _fs_types()

    # helpers
    @staticmethod
    def _norm(path: str) -> str:
        try:
            return normalize(path or "/", "/")
        except VFSError as exc:
            raise OSError(f"EINVAL: invalid path '{path}'") from exc

    def _kind(self, p: str) -> str | None:
        try:
            st = self.vfs.stat(p)
        except VFSError:
            return None
        return "dir" if st.is_dir else "file"

    def _must(self, p: str, op: str, raw: str) -> str:
        kind = self._kind(p)
        if kind is None:
            raise FileNotFoundError(f"ENOENT: no such file or directory, {op} '{raw}'")
        return kind

    @staticmethod
    def _oserror(exc: VFSError, op: str, raw: str) -> OSError:
        msg = exc.message
        if msg.startswith("is a directory"):
            return IsADirectoryError(f"EISDIR: illegal operation on a directory, {op} '{raw}'")
        if msg.startswith("not a directory"):
            return NotADirectoryError(f"ENOTDIR: not a directory, {op} '{raw}'")
        if msg.startswith("no such") or "does not exist" in msg:
            return FileNotFoundError(f"ENOENT: no such file or directory, {op} '{raw}'")
        if msg.startswith("directory not empty"):
            return OSError(f"ENOTEMPTY: directory not empty, {op} '{raw}'")
        if msg.startswith("file exists"):
            return FileExistsError(f"EEXIST: file already exists, {op} '{raw}'")
        return OSError(f"EIO: {msg}, {op} '{raw}'")

    # reading
    async def read_file(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read_file_bytes(path)).decode(encoding or "utf-8", _ENC_ERRORS)

    async def read_file_bytes(self, path: str) -> bytes:
        p = self._norm(path)
        if self._must(p, "open", path) == "dir":
            raise IsADirectoryError(f"EISDIR: illegal operation on a directory, read '{path}'")
        try:
            return self.vfs.read(p)
        except VFSError as exc:
            raise self._oserror(exc, "open", path) from None

    async def exists(self, path: str) -> bool:
        try:
            return self.vfs.exists(self._norm(path))
        except (OSError, VFSError):
            return False

    async def is_file(self, path: str) -> bool:
        return self._kind(self._norm(path)) == "file"

    async def is_directory(self, path: str) -> bool:
        return self._kind(self._norm(path)) == "dir"

    async def stat(self, path: str) -> Any:
        p = self._norm(path)
        try:
            st = self.vfs.stat(p)
        except VFSError:
            raise FileNotFoundError(f"ENOENT: no such file or directory, stat '{path}'") from None
        return self._FsStat(
            is_file=not st.is_dir,
            is_directory=st.is_dir,
            is_symbolic_link=False,
            mode=st.mode,
            size=st.size,
            mtime=st.mtime,
        )

    async def lstat(self, path: str) -> Any:
        return await self.stat(path)

    async def readdir(self, path: str) -> list[str]:
        p = self._norm(path)
        if self._must(p, "scandir", path) == "file":
            raise NotADirectoryError(f"ENOTDIR: not a directory, scandir '{path}'")
        return self.vfs.listdir(p)

    async def readdir_with_file_types(self, path: str) -> list[Any]:
        p = self._norm(path)
        out = []
        for name in await self.readdir(path):
            is_dir = self._kind(p.rstrip("/") + "/" + name) == "dir"
            out.append(self._Dirent(name=name, is_file=not is_dir, is_directory=is_dir))
        return out

    async def readlink(self, path: str) -> str:
        self._must(self._norm(path), "readlink", path)
        raise OSError(f"EINVAL: invalid argument, readlink '{path}'")

    async def realpath(self, path: str) -> str:
        return self._norm(path)

    def resolve_path(self, base: str, path: str) -> str:
        return normalize(path or ".", base or "/")

    # writing
    def _check_parent(self, p: str, raw: str) -> None:
        """Like bash, writing needs an existing parent directory (just-bash's own in-memory fs
        creates missing parents). /tmp is created on demand: just-bash keeps process
        substitution files there."""
        parent = p.rsplit("/", 1)[0] or "/"
        kind = self._kind(parent)
        if kind == "dir":
            return
        if kind is None and (parent == "/tmp" or parent.startswith("/tmp/")):
            self.vfs.mkdir(parent, parents=True)
            return
        if kind == "file":
            raise NotADirectoryError(f"ENOTDIR: not a directory, open '{raw}'")
        raise FileNotFoundError(f"ENOENT: no such file or directory, open '{raw}'")

    async def write_file(self, path: str, content: str | bytes, encoding: str = "utf-8") -> None:
        data = content.encode(encoding or "utf-8", _ENC_ERRORS) if isinstance(content, str) else content
        p = self._norm(path)
        self._check_parent(p, path)
        try:
            self.vfs.write(p, bytes(data))
        except VFSError as exc:
            raise self._oserror(exc, "write", path) from None

    async def append_file(self, path: str, content: str | bytes, encoding: str = "utf-8") -> None:
        data = content.encode(encoding or "utf-8", _ENC_ERRORS) if isinstance(content, str) else content
        p = self._norm(path)
        self._check_parent(p, path)
        try:
            self.vfs.append(p, bytes(data))
        except VFSError as exc:
            raise self._oserror(exc, "write", path) from None

    async def mkdir(self, path: str, recursive: bool = False) -> None:
        p = self._norm(path)
        kind = self._kind(p)
        if kind == "file":
            raise FileExistsError(f"EEXIST: file already exists, mkdir '{path}'")
        if kind == "dir":
            if recursive:
                return
            raise FileExistsError(f"EEXIST: directory already exists, mkdir '{path}'")
        try:
            self.vfs.mkdir(p, parents=recursive)
        except VFSError as exc:
            if "parent directory does not exist" in exc.message:
                raise FileNotFoundError(f"ENOENT: no such file or directory, mkdir '{path}'") from None
            raise self._oserror(exc, "mkdir", path) from None

    async def rm(self, path: str, recursive: bool = False, force: bool = False) -> None:
        p = self._norm(path)
        if self._kind(p) is None:
            if force:
                return
            raise FileNotFoundError(f"ENOENT: no such file or directory, rm '{path}'")
        try:
            self.vfs.remove(p, recursive=recursive)
        except VFSError as exc:
            raise self._oserror(exc, "rm", path) from None

    async def cp(self, src: str, dest: str, recursive: bool = False) -> None:
        s, d = self._norm(src), self._norm(dest)
        kind = self._must(s, "cp", src)
        if kind == "file":
            self._check_parent(d, dest)
            self.vfs.write(d, self.vfs.read(s))
            return
        if not recursive:
            raise IsADirectoryError(f"EISDIR: is a directory, cp '{src}'")
        if d == s or d.startswith(s.rstrip("/") + "/"):
            raise OSError(f"EINVAL: cannot copy a directory into itself, cp '{src}' to '{dest}'")
        self.vfs.mkdir(d, parents=True)
        for name in self.vfs.listdir(s):
            await self.cp(s.rstrip("/") + "/" + name, d.rstrip("/") + "/" + name, recursive=True)

    async def mv(self, src: str, dest: str) -> None:
        s, d = self._norm(src), self._norm(dest)
        self._must(s, "rename", src)
        try:
            self.vfs.rename(s, d)
        except VFSError as exc:
            raise self._oserror(exc, "rename", src) from None

    async def chmod(self, path: str, mode: int) -> None:
        p = self._norm(path)
        self._must(p, "chmod", path)
        self.vfs.chmod(p, mode)

    async def symlink(self, target: str, link_path: str) -> None:
        raise PermissionError(f"EPERM: symbolic links are not supported in this sandbox, symlink '{link_path}'")

    async def link(self, existing_path: str, new_path: str) -> None:
        s, d = self._norm(existing_path), self._norm(new_path)
        if self._must(s, "link", existing_path) != "file":
            raise PermissionError(f"EPERM: operation not permitted, link '{existing_path}'")
        if self._kind(d) is not None:
            raise FileExistsError(f"EEXIST: file already exists, link '{new_path}'")
        self.vfs.write(d, self.vfs.read(s))  # no inodes in the VFS: a hard link is a copy

    async def utimes(self, path: str, atime: float, mtime: float) -> None:
        p = self._norm(path)
        self._must(p, "utimes", path)
        set_mtime = getattr(self.vfs, "set_mtime", None)
        if set_mtime is not None:
            set_mtime(p, float(mtime))


# -- command fixes ------------------------------------------------------------------------------


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
    import dataclasses

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
_PURE_PARTS = frozenset({"Literal", "SingleQuoted", "Escaped", "ParameterExpansion", "DoubleQuoted", "TildeExpansion"})


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
        elif all(getattr(p, "type", None) in _PURE_PARTS for p in parts):
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


def _patch_interpreter() -> None:
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
    _patched = True


def _command_registry(network: bool) -> dict[str, Any]:
    from just_bash.commands import create_command_registry

    commands: dict[str, Any] = create_command_registry(include_network=network)
    commands["cat"] = _ExactCat(commands["cat"])
    return commands


# -- limits ---------------------------------------------------------------------------------------


class _DeadlineLimits:
    """just-bash `ExecutionLimits` look-alike whose counters also enforce a wall-clock deadline.

    The interpreter reads `max_command_count` at every statement and `max_loop_iterations` at
    every loop iteration, so a property that checks the clock there stops CPU-bound scripts.
    """

    def __init__(self, limits: Limits, deadline: float) -> None:
        self._commands = limits.bash_max_commands
        self._loops = limits.bash_max_loop_iterations
        self._timeout = limits.bash_timeout
        self._deadline = deadline
        self.max_call_depth = 100
        self.max_awk_iterations = limits.bash_max_loop_iterations
        self.max_sed_iterations = limits.bash_max_loop_iterations
        self.max_iterations = limits.bash_max_loop_iterations

    def _check(self) -> None:
        if time.monotonic() > self._deadline:
            from just_bash.interpreter.errors import ExecutionLimitError

            raise ExecutionLimitError(f"time limit exceeded ({self._timeout:g} s)", "time")

    @property
    def max_command_count(self) -> int:
        self._check()
        return self._commands

    @property
    def max_loop_iterations(self) -> int:
        self._check()
        return self._loops


# -- output -----------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Turn surrogate-escaped bytes back into replacement characters (JSON-safe text)."""
    return text.encode("utf-8", _ENC_ERRORS).decode("utf-8", "replace")


def _cut(text: str, budget: int, label: str) -> str:
    if len(text) <= budget:
        return text
    dropped = len(text) - budget
    head = budget * 2 // 3
    tail = budget - head
    note = f"\n[... {dropped} characters of {label} truncated (limit {budget}) ...]\n"
    return text[:head] + note + (text[-tail:] if tail else "")


def truncate_output(stdout: str, stderr: str, limit: int) -> tuple[str, str]:
    """Fit stdout + stderr into `limit` characters, keeping the start and end of each."""
    if len(stdout) + len(stderr) <= limit:
        return stdout, stderr
    err_budget = min(len(stderr), max(limit // 4, limit - len(stdout)))
    out_budget = limit - err_budget
    return _cut(stdout, out_budget, "stdout"), _cut(stderr, err_budget, "stderr")


# -- the tool ---------------------------------------------------------------------------------


_GRACE = 2.0  # seconds the caller waits beyond bash_timeout for the interpreter to notice it


def bash_tool(vfs: VFS, *, env: dict[str, str], limits: Limits, network: bool = False) -> Tool:
    """The `bash` tool over `vfs` with exactly `env` as its environment."""
    from just_bash import Bash, NetworkConfig
    from just_bash.interpreter.errors import ExecutionLimitError

    _patch_interpreter()
    fs = VFSBashFs(vfs)
    base_env = {str(k): str(v) for k, v in env.items()}
    commands = _command_registry(network)
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
        shell = Bash(
            fs=fs,
            cwd=cwd,
            env={**base_env, "PWD": cwd},
            limits=_DeadlineLimits(limits, deadline),  # type: ignore[arg-type]
            network=net,
            commands=commands,
            unescape_html=False,
        )
        try:
            result = await asyncio.wait_for(shell.exec(command), timeout=limits.bash_timeout)
        except TimeoutError:
            return _limit_result(f"time limit exceeded ({limits.bash_timeout:g} s)", 124)
        except ExecutionLimitError as exc:
            code = 124 if getattr(exc, "limit_type", "") == "time" else 125
            reason = str(exc).split(", increase execution_limits")[0]
            if getattr(exc, "limit_type", "") == "commands":
                reason = f"too many commands ({limits.bash_max_commands} per call)"
            return _limit_result(reason, code)
        return {"stdout": result.stdout, "stderr": result.stderr, "exitCode": int(result.exit_code)}

    def _limit_result(reason: str, code: int) -> dict[str, Any]:
        return {
            "stdout": "",
            "stderr": f"bash: stopped: {reason}. The command was aborted and its output discarded; "
            "make it smaller (fewer iterations/commands, less data) and try again.\n",
            "exitCode": code,
        }

    def bash(params: BashParams) -> dict[str, Any]:
        try:
            out = run_coro(run(params.command), timeout=limits.bash_timeout + _GRACE)
        except TimeoutError:
            out = _limit_result(f"time limit exceeded ({limits.bash_timeout:g} s)", 124)
        except VFSError as exc:
            raise ToolError(f"bash: filesystem error: {exc.message}") from exc
        stdout, stderr = truncate_output(_clean(out["stdout"]), _clean(out["stderr"]), limits.max_tool_output_chars)
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
