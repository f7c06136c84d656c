"""The `gzip`, `bz2` and `lzma` that just-bash's `gzip`/`zcat` and `tar` see: decompression that
stops at MAX_DECOMPRESSED bytes.

just-bash decompresses a whole buffer in one call: a 6 KB `.tbz` built inside the sandbox (`tar
-cjf` of ten megabytes of zeros, joined ten and five times) made `tar -tjf` produce 500 MB in 1.6 s,
and joined gzip members 1.3 GB for `gzip -l`. Here each stream is decompressed with an output cap
(the decompressors' own `max_length`), member after member, and past the cap the command fails
(a ValueError, which both commands report as a decompression error).

`BinaryGzip` is the `gzip`/`gunzip`/`zcat` the shell runs: to and from standard streams it moves
the bytes themselves (surrogate-escaped text, as files and `cat` do): just-bash's wrote
`<binary gzip data, N bytes>` for `gzip -c` and read stdin as UTF-8, so `echo hi | gzip | gunzip`
and `gzip -c f > f.gz` failed or wrote placeholder text.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from regina.runtime.tools.bash.output import ENC_ERRORS

__all__ = ["MAX_DECOMPRESSED", "BinaryGzip", "decompress_bounded", "install"]

#: Most bytes one decompression may produce: a file may not be bigger (limits.maxFileBytes).
MAX_DECOMPRESSED = 64 << 20


def decompress_bounded(make: Callable[[], Any], data: bytes, limit: int = MAX_DECOMPRESSED) -> bytes:
    """Every stream in `data` decompressed by a fresh `make()` decompressor, at most `limit` bytes."""
    out: list[bytes] = []
    total = 0

    def take(piece: bytes) -> None:
        nonlocal total
        out.append(piece)
        total += len(piece)
        if total > limit:
            raise ValueError(f"more than {limit} bytes once decompressed")

    while True:
        decompressor = make()
        take(decompressor.decompress(data, limit + 1 - total))
        while not decompressor.eof:
            if isinstance(decompressor, _ZLIB_TYPE):
                if not decompressor.unconsumed_tail:
                    take(decompressor.flush(limit + 1 - total))
                    break
                take(decompressor.decompress(decompressor.unconsumed_tail, limit + 1 - total))
            elif decompressor.needs_input:
                break
            else:
                take(decompressor.decompress(b"", limit + 1 - total))
        if not decompressor.eof:
            raise EOFError("compressed data ended before the end-of-stream marker was reached")
        data = decompressor.unused_data
        if not data.strip(b"\0"):  # gzip pads with zeros; nothing more to read
            return b"".join(out)


_ZLIB_TYPE = type(zlib.decompressobj())


class _Codec(ModuleType):
    """A codec module with `decompress` bounded, everything else its own."""

    def __init__(self, module: ModuleType, make: Callable[[], Any]) -> None:
        super().__init__(module.__name__)
        self._module = module
        self._make = make

    def decompress(self, data: bytes, *args: Any, **kwargs: Any) -> bytes:
        return decompress_bounded(self._make, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def install() -> None:
    """Give just-bash's `gzip` command and `tar` the bounded codecs."""
    from just_bash.commands.compression import compression
    from just_bash.commands.tar import tar

    bounded_gzip = _Codec(gzip, lambda: zlib.decompressobj(31))
    compression.gzip = bounded_gzip  # type: ignore[attr-defined]
    tar.gzip = bounded_gzip  # type: ignore[attr-defined]
    tar.bz2 = _Codec(bz2, bz2.BZ2Decompressor)  # type: ignore[attr-defined]
    tar.lzma = _Codec(lzma, lzma.LZMADecompressor)  # type: ignore[attr-defined]


#: Options after which just-bash's own gzip is right (it lists, tests, or writes files).
_DELEGATED = frozenset("ltrS")


class BinaryGzip:
    """just-bash's gzip command with byte-exact standard streams (the module docstring): a call
    that reads stdin (no file, or `-`) or writes stdout (`-c`, `zcat`) runs here; any other call
    (file to file, `-l`, `-t`, `-r`, `-S`) is just-bash's."""

    def __init__(self, original: Any, name: str, preset: tuple[str, ...] = ()) -> None:
        self._original = original
        self._preset = preset
        self.name = name

    async def execute(self, args: list[str], ctx: Any) -> Any:
        from just_bash.types import ExecResult

        args = [*self._preset, *args]
        options, files = _split(args)
        if options & _DELEGATED or "help" in options or not (("c" in options) or not files or "-" in files):
            return await self._original.execute(args, ctx)
        if not files and not ctx.stdin:
            return ExecResult(stdout="", stderr="gzip: missing operand\n", exit_code=1)
        level = next((int(o) for o in options if o.isdigit()), 6)
        out: list[bytes] = []
        err: list[str] = []
        for name in files or ["-"]:
            try:
                if name == "-":
                    data = ctx.stdin.encode("utf-8", ENC_ERRORS)
                else:
                    data = await ctx.fs.read_file_bytes(ctx.fs.resolve_path(ctx.cwd, name))
                if "d" in options:
                    out.append(decompress_bounded(lambda: zlib.decompressobj(31), data))
                else:
                    out.append(gzip.compress(data, compresslevel=level, mtime=0))
            except FileNotFoundError:
                err.append(f"gzip: {name}: No such file or directory\n")
            except IsADirectoryError:
                err.append(f"gzip: {name}: Is a directory\n")
            except (OSError, EOFError, ValueError, zlib.error) as exc:
                err.append(f"gzip: {'stdin' if name == '-' else name}: {exc}\n")
        text = b"".join(out).decode("utf-8", ENC_ERRORS)
        return ExecResult(stdout=text, stderr="".join(err), exit_code=1 if err else 0)


_LONG = {
    "--decompress": "d",
    "--uncompress": "d",
    "--stdout": "c",
    "--to-stdout": "c",
    "--keep": "k",
    "--force": "f",
    "--quiet": "q",
    "--verbose": "v",
    "--list": "l",
    "--test": "t",
    "--recursive": "r",
    "--suffix": "S",
    "--fast": "1",
    "--best": "9",
    "--help": "help",
}


def _split(args: list[str]) -> tuple[set[str], list[str]]:
    """(option letters, file operands) of a gzip command line."""
    options: set[str] = set()
    files: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            files.extend(args[i + 1 :])
            break
        if arg.startswith("--"):
            options.add(_LONG.get(arg.split("=", 1)[0], "S"))  # an unknown long option: just-bash's
        elif arg.startswith("-") and arg != "-":
            options.update(arg[1:])
        else:
            files.append(arg)
    return options, files
