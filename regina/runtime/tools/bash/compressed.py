"""The `gzip`, `bz2` and `lzma` that just-bash's `gzip`/`zcat` and `tar` see: decompression that
stops at MAX_DECOMPRESSED bytes.

just-bash decompresses a whole buffer in one call: a 6 KB `.tbz` built inside the sandbox (`tar
-cjf` of ten megabytes of zeros, joined ten and five times) made `tar -tjf` produce 500 MB in 1.6 s,
and joined gzip members 1.3 GB for `gzip -l`. Here each stream is decompressed with an output cap
(the decompressors' own `max_length`), member after member, and past the cap the command fails
(a ValueError, which both commands report as a decompression error).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["MAX_DECOMPRESSED", "decompress_bounded", "install"]

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
