"""Loading custom tool modules by path."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from regina.errors import DefinitionError
from regina.runtime.tools.base import Tool
from regina.runtime.tools.loading import load_tool_module

AGENTS = Path(__file__).resolve().parents[1] / "agents"

SYNC_TOOL = """
    from pydantic import BaseModel, Field

    from regina.runtime.tools.base import tool


    class Params(BaseModel):
        a: int = Field(description="first")
        b: int = Field(description="second")


    @tool(description="Add two numbers", parameters=Params)
    def whatever_the_function_is_called(params: Params) -> dict:
        return {"sum": params.a + params.b}
"""

ASYNC_TOOL = """
    from __future__ import annotations

    import asyncio

    from pydantic import BaseModel

    from regina.runtime.tools.base import tool


    class Params(BaseModel):
        name: str


    @tool(description="Greet someone", parameters=Params)
    async def greet(params: Params) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"greeting": f"hello {params.name}"}
"""


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_sync_tool_named_after_the_file_stem(tmp_path: Path) -> None:
    tool = load_tool_module(write(tmp_path, "add_numbers.py", SYNC_TOOL))
    assert isinstance(tool, Tool)
    assert tool.name == "add_numbers"
    assert not tool.is_async
    assert tool.call_sync({"a": 2, "b": 3}) == {"sum": 5}
    assert tool.schema()["function"]["name"] == "add_numbers"
    assert tool.schema()["function"]["description"] == "Add two numbers"
    assert set(tool.schema()["function"]["parameters"]["properties"]) == {"a", "b"}


def test_async_tool_with_postponed_annotations(tmp_path: Path) -> None:
    tool = load_tool_module(write(tmp_path, "greet-someone.py", ASYNC_TOOL))
    assert tool.name == "greet-someone"
    assert tool.is_async
    assert asyncio.run(tool.call_async({"name": "ada"})) == {"greeting": "hello ada"}


def test_same_stem_in_two_directories_does_not_collide(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = load_tool_module(write(tmp_path / "a", "calc.py", SYNC_TOOL))
    second = load_tool_module(write(tmp_path / "b", "calc.py", ASYNC_TOOL.replace("hello", "hi")))
    assert not first.is_async and second.is_async
    assert first.call_sync({"a": 1, "b": 1}) == {"sum": 2}


def test_reload_picks_up_edits(tmp_path: Path) -> None:
    path = write(tmp_path, "calc.py", SYNC_TOOL)
    assert load_tool_module(path).call_sync({"a": 1, "b": 1}) == {"sum": 2}
    path.write_text(textwrap.dedent(SYNC_TOOL.replace("params.a + params.b", "params.a * params.b")))
    assert load_tool_module(path).call_sync({"a": 3, "b": 4}) == {"sum": 12}


def test_shared_test_tools_load() -> None:
    word_count = load_tool_module(AGENTS / "tools" / "word_count.py")
    assert word_count.name == "word_count"
    assert word_count.call_sync({"text": "one two  three"}) == {"words": 3}
    shout = load_tool_module(AGENTS / "tools" / "shout.py")
    assert shout.name == "shout" and shout.is_async
    assert asyncio.run(shout.call_async({"text": "hi"})) == {"shouted": "HI!"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def broken(:\n    pass\n", "syntax error at line 1"),
        ("import module_that_does_not_exist_regina\n", "import failed: ModuleNotFoundError"),
        ("raise RuntimeError('boom at import')\n", "import failed: RuntimeError: boom at import"),
        ("x = 1\n", "defines no tool"),
        (
            textwrap.dedent(SYNC_TOOL) + "\nsecond = whatever_the_function_is_called\n"
            "from regina.runtime.tools.base import tool as _t\n"
            "third = _t(description='x', parameters=Params)(lambda p: 1)\n",
            "defines 2 tools",
        ),
    ],
)
def test_broken_module_error_names_the_file(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "broken_tool.py"
    path.write_text(source)
    with pytest.raises(DefinitionError) as info:
        load_tool_module(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="file not found") as info:
        load_tool_module(tmp_path / "nope.py")
    assert str(tmp_path / "nope.py") in str(info.value)


def test_not_a_python_file(tmp_path: Path) -> None:
    path = tmp_path / "tool.ts"
    path.write_text("export default tool({})")
    with pytest.raises(DefinitionError, match="must be a .py file"):
        load_tool_module(path)


def test_stem_must_be_a_valid_tool_name(tmp_path: Path) -> None:
    path = write(tmp_path, "bad name.py", SYNC_TOOL)
    with pytest.raises(DefinitionError, match="may only hold letters"):
        load_tool_module(path)
