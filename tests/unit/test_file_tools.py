"""read_file / write_file / edit_file over a VFS."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from regina.errors import ToolError
from regina.runtime.tools.base import Tool
from regina.runtime.tools.files import file_tools
from regina.vfs import MemoryVFS, RealDirVFS, SQLiteVFS


@pytest.fixture(params=["sqlite", "memory", "realdir"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[SQLiteVFS | MemoryVFS | RealDirVFS, dict[str, Tool]]]:
    if request.param == "sqlite":
        vfs: SQLiteVFS | MemoryVFS | RealDirVFS = SQLiteVFS(str(tmp_path / "f.sqlite"))
    elif request.param == "memory":
        vfs = MemoryVFS()
    else:
        vfs = RealDirVFS(str(tmp_path / "root"))
    yield vfs, file_tools(vfs)
    vfs.close()


def test_write_creates_parents_and_read_back(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    vfs, tools = setup
    out = tools["write_file"].call_sync({"path": "/deep/er/notes.md", "content": "héllo\n"})
    assert "7 bytes" in out and "/deep/er/notes.md" in out
    assert vfs.read("/deep/er/notes.md") == "héllo\n".encode()
    assert tools["read_file"].call_sync({"path": "deep/er/notes.md"}) == "héllo\n"


def test_read_errors(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    vfs, tools = setup
    with pytest.raises(ToolError, match="file not found: /nope.txt"):
        tools["read_file"].call_sync({"path": "/nope.txt"})
    vfs.mkdir("/dir")
    with pytest.raises(ToolError, match="is a directory"):
        tools["read_file"].call_sync({"path": "/dir"})
    vfs.write("/img.png", b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ToolError, match="binary file"):
        tools["read_file"].call_sync({"path": "/img.png"})
    with pytest.raises(ToolError, match="invalid arguments"):
        tools["read_file"].call_sync({})


def test_write_to_directory_is_refused(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    vfs, tools = setup
    vfs.mkdir("/d")
    with pytest.raises(ToolError, match="is a directory"):
        tools["write_file"].call_sync({"path": "/d", "content": "x"})


def test_edit_once(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    vfs, tools = setup
    vfs.write("/a.py", b"def f():\n    return 1\n")
    out = tools["edit_file"].call_sync({"path": "/a.py", "old_string": "return 1", "new_string": "return 2"})
    assert out == "replaced 1 occurrence in /a.py"
    assert vfs.read("/a.py") == b"def f():\n    return 2\n"


def test_edit_zero_matches(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    vfs, tools = setup
    vfs.write("/a.txt", b"abc")
    with pytest.raises(ToolError, match="old_string not found in /a.txt"):
        tools["edit_file"].call_sync({"path": "/a.txt", "old_string": "xyz", "new_string": "q"})
    assert vfs.read("/a.txt") == b"abc"


def test_edit_many_matches_says_how_many(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    vfs, tools = setup
    vfs.write("/a.txt", b"x = 1\nx = 1\nx = 1\n")
    with pytest.raises(ToolError, match="occurs 3 times in /a.txt") as err:
        tools["edit_file"].call_sync({"path": "/a.txt", "old_string": "x = 1", "new_string": "x = 2"})
    assert "exactly once" in err.value.message
    assert vfs.read("/a.txt") == b"x = 1\nx = 1\nx = 1\n"


def test_edit_errors(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    vfs, tools = setup
    with pytest.raises(ToolError, match="file not found"):
        tools["edit_file"].call_sync({"path": "/none", "old_string": "a", "new_string": "b"})
    vfs.write("/e", b"abc")
    with pytest.raises(ToolError, match="old_string is empty"):
        tools["edit_file"].call_sync({"path": "/e", "old_string": "", "new_string": "b"})


def test_read_truncation() -> None:
    vfs = MemoryVFS()
    vfs.write("/big", b"x" * 500)
    tools = file_tools(vfs, max_output_chars=100)
    out = tools["read_file"].call_sync({"path": "/big"})
    assert out.startswith("x" * 100) and "truncated" in out and "500" in out


def test_read_file_reads_only_what_it_shows(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    """A 400 MiB file in a realdir root grew the worker by 400 MiB for a 50 000-character result:
    read_file read it whole before cutting. Now it reads at most 4 bytes a character shown and
    says the file's size."""
    vfs, _ = setup
    size = 16 << 20
    vfs.write("/big.log", b"a" * size)
    vfs.write("/euro.txt", "€".encode() * 1000)  # 3 bytes a character: the read ends mid-character
    tools = file_tools(vfs, max_output_chars=1000)
    tracemalloc.start()
    try:
        out = tools["read_file"].call_sync({"path": "/big.log"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"read_file held {peak} bytes to show 1000 characters"
    assert out == "a" * 1000 + f"\n[... truncated: showing the first 1000 characters of {size} bytes]"
    out = file_tools(vfs, max_output_chars=100)["read_file"].call_sync({"path": "/euro.txt"})
    assert out == "€" * 100 + "\n[... truncated: showing the first 100 characters of 3000 bytes]"


def test_edit_file_refuses_a_file_past_max_file_bytes(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    """edit_file read the whole file first, whatever its size; a file past limits.maxFileBytes
    (the most a tool may write) is now refused before any of it is read, even when the edit
    would shrink it under the limit."""
    from regina.config import Limits
    from regina.runtime.tools.toolset import build_tools

    vfs, _ = setup
    tools = build_tools(
        vfs, env={"HOME": "/", "PWD": "/"}, limits=Limits(max_file_bytes=100), network=False, user_tools={}
    )
    vfs.write("/big.txt", b"keep " + b"x" * 150)
    too_big = r"/big.txt is 155 bytes, more than the 100 edit_file works on \(limits.maxFileBytes"
    with pytest.raises(ToolError, match=too_big):
        tools["edit_file"].call_sync({"path": "/big.txt", "old_string": "x" * 150, "new_string": ""})
    assert vfs.read("/big.txt") == b"keep " + b"x" * 150
    vfs.write("/ok.txt", b"keep " + b"x" * 95)  # at the limit: edited as before
    tools["edit_file"].call_sync({"path": "/ok.txt", "old_string": "keep", "new_string": "kept"})
    assert vfs.read("/ok.txt") == b"kept " + b"x" * 95


def test_schemas_are_openai_style() -> None:
    tools = file_tools(MemoryVFS())
    schema = tools["edit_file"].schema()
    assert schema["function"]["name"] == "edit_file"
    assert set(schema["function"]["parameters"]["required"]) == {"path", "old_string", "new_string"}


def test_a_tool_cannot_make_a_file_past_the_limit(setup: tuple[SQLiteVFS, dict[str, Tool]]) -> None:
    """limits.maxFileBytes: each change is a journal entry in Redis (512 MB a value at most); a
    write or an append past the limit is a tool error and changes nothing."""
    from regina.config import Limits
    from regina.runtime.tools.toolset import build_tools

    vfs, _ = setup
    limits = Limits(max_file_bytes=100)
    tools = build_tools(vfs, env={"HOME": "/", "PWD": "/"}, limits=limits, network=False, user_tools={})
    too_big = r"/big: 101 bytes is more than the 100 a file may hold \(limits.maxFileBytes\)"
    with pytest.raises(ToolError, match=too_big):
        tools["write_file"].call_sync({"path": "/big", "content": "x" * 101})
    assert not vfs.exists("/big")
    tools["write_file"].call_sync({"path": "/log", "content": "y" * 60})
    result = tools["bash"].call_sync({"command": "printf '%050d' 0 >> /log; echo status $?"})
    assert "limits.maxFileBytes" in str(result) and "status 1" in str(result)
    assert vfs.read("/log") == b"y" * 60
    result = tools["bash"].call_sync({"command": "printf '%0200d' 0 > /other; echo status $?"})
    assert "limits.maxFileBytes" in str(result) and not vfs.exists("/other")
    tools["bash"].call_sync({"command": "printf '%040d' 0 >> /log"})  # within the limit: fine
    assert len(vfs.read("/log")) == 100
