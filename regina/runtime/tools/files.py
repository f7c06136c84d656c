"""The `read_file`, `write_file` and `edit_file` default tools over an instance's VFS (SPEC §5).

Paths are VFS paths; relative ones are taken from "/" (where `bash` starts too). Failures raise
ToolError with a message written for the model.
"""

from __future__ import annotations

import codecs

from pydantic import BaseModel, Field

from regina.errors import ToolError, VFSError
from regina.runtime.tools.base import Tool
from regina.vfs.base import VFS, normalize


class ReadFileParams(BaseModel):
    path: str = Field(description="Path of the file to read, e.g. /notes/todo.md")


class WriteFileParams(BaseModel):
    path: str = Field(description="Path of the file to create or replace; parent directories are created")
    content: str = Field(description="The complete new content of the file")


class EditFileParams(BaseModel):
    path: str = Field(description="Path of the file to edit")
    old_string: str = Field(description="Exact text to replace; must occur exactly once in the file")
    new_string: str = Field(description="Text to put in its place")


def _path(raw: str) -> str:
    try:
        return normalize(raw, "/")
    except VFSError as exc:
        raise ToolError(f"invalid path {raw!r}: {exc.message}") from exc


def _file_size(vfs: VFS, path: str) -> int:
    """The size of the file at `path`; ToolError when there is none (or a directory)."""
    if not vfs.exists(path):
        raise ToolError(f"file not found: {path}")
    try:
        st = vfs.stat(path)
    except VFSError as exc:
        raise ToolError(f"cannot read {path}: {exc.message}") from exc
    if st.is_dir:
        raise ToolError(f"{path} is a directory, not a file (use bash `ls {path}` to list it)")
    return st.size


def _decode(path: str, data: bytes, size: int, *, whole: bool) -> str:
    """UTF-8 text of `data`; a character cut at the end of a prefix (`whole` False) is dropped."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=whole)
    except UnicodeDecodeError:
        raise ToolError(
            f"{path} is a binary file ({size} bytes), not UTF-8 text; "
            f"inspect it with bash (`od -c {path} | head`, `base64 {path}`)"
        ) from None


def _read_text(vfs: VFS, path: str, size: int) -> str:
    """The whole file (of `size` bytes, which the caller has checked) as text."""
    try:
        data = vfs.read(path)
    except VFSError as exc:
        raise ToolError(f"cannot read {path}: {exc.message}") from exc
    return _decode(path, data, size, whole=True)


def _read_shown(vfs: VFS, path: str, limit: int | None) -> str:
    """What read_file shows: at most `limit` characters, from a read of at most the 4 × `limit`
    bytes they can take in UTF-8 (a 400 MiB file was read whole to show 50 000 characters), and a
    note giving the file's size when it was cut."""
    size = _file_size(vfs, path)
    budget = None if limit is None else 4 * limit
    try:
        data = vfs.read(path) if budget is None else vfs.read_range(path, 0, budget + 1)
    except VFSError as exc:
        raise ToolError(f"cannot read {path}: {exc.message}") from exc
    if budget is None or len(data) <= budget:
        text = _decode(path, data, size, whole=True)
        if limit is None or len(text) <= limit:
            return text
        return text[:limit] + f"\n[... truncated: showing the first {limit} of {len(text)} characters ({size} bytes)]"
    text = _decode(path, data[:budget], size, whole=False)
    return text[:limit] + f"\n[... truncated: showing the first {limit} characters of {size} bytes]"


def file_tools(vfs: VFS, *, max_output_chars: int | None = None, max_file_bytes: int | None = None) -> dict[str, Tool]:
    """The three file tools bound to `vfs`, keyed by name. read_file shows at most
    `max_output_chars` characters; edit_file refuses a file past `max_file_bytes`
    (limits.maxFileBytes, the most a tool may write) before reading any of it."""

    def read_file(params: ReadFileParams) -> str:
        return _read_shown(vfs, _path(params.path), max_output_chars)

    def write_file(params: WriteFileParams) -> str:
        path = _path(params.path)
        if path == "/" or (vfs.exists(path) and vfs.stat(path).is_dir):
            raise ToolError(f"{path} is a directory; give the path of a file")
        data = params.content.encode("utf-8")
        try:
            vfs.write(path, data)
        except VFSError as exc:
            raise ToolError(f"cannot write {path}: {exc.message}") from exc
        return f"wrote {len(data)} bytes to {path}"

    def edit_file(params: EditFileParams) -> str:
        path = _path(params.path)
        if params.old_string == "":
            raise ToolError("old_string is empty; give the exact text to replace (use write_file to create)")
        size = _file_size(vfs, path)
        if max_file_bytes is not None and size > max_file_bytes:
            raise ToolError(
                f"{path} is {size} bytes, more than the {max_file_bytes} edit_file works on "
                "(limits.maxFileBytes, the most a tool may write); nothing was changed"
            )
        text = _read_text(vfs, path, size)
        count = text.count(params.old_string)
        if count == 0:
            raise ToolError(
                f"old_string not found in {path}; nothing was changed. It must match the file exactly, "
                "including whitespace and indentation (read_file shows the current content)"
            )
        if count > 1:
            raise ToolError(
                f"old_string occurs {count} times in {path}; nothing was changed. It must occur exactly "
                "once: include more surrounding lines to make it unique"
            )
        try:
            vfs.write(path, text.replace(params.old_string, params.new_string, 1).encode("utf-8"))
        except VFSError as exc:
            raise ToolError(f"cannot write {path}: {exc.message}") from exc
        return f"replaced 1 occurrence in {path}"

    return {
        "read_file": Tool(
            name="read_file",
            description="Read a text file from the workspace and return its content.",
            parameters=ReadFileParams,
            fn=read_file,
        ),
        "write_file": Tool(
            name="write_file",
            description="Create or overwrite a text file (parent directories are created).",
            parameters=WriteFileParams,
            fn=write_file,
        ),
        "edit_file": Tool(
            name="edit_file",
            description=(
                "Replace old_string with new_string in a file. old_string must occur exactly once; "
                "include enough context to make it unique."
            ),
            parameters=EditFileParams,
            fn=edit_file,
        ),
    }
