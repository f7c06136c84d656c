"""Parsing agent definition files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from regina.config import Settings
from regina.definitions import MAX_DEFINITION_BYTES, AgentDefinition, parse_definition
from regina.errors import DefinitionError

AGENTS = Path(__file__).resolve().parents[1] / "agents"
SETTINGS = Settings()

FULL = """
    ---
    name: support
    description: Customer support assistant
    model: claude-sonnet-4-5
    provider: anthropic
    tools:
      - ./tools/word_count.py
    mcpServers:
      - name: web-search
        transport: sse
        url: https://search.example.com/sse
      - name: api
        transport: http
        url: ${API_URL:-https://api.example.com/mcp}
        headers:
          Authorization: Bearer ${API_TOKEN}
    delegates: [researcher, writer]
    temperature: 0.7
    maxSteps: 12
    greeting: How can I help?
    compaction:
      threshold: 5000
      keepLastN: 4
    ---
    You are a helpful customer support agent.

    ## Guidelines
    - Be polite.
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "word_count.py").write_text((AGENTS / "tools" / "word_count.py").read_text())
    return tmp_path


def expect_error(
    path: Path, *fragments: str, settings: Settings = SETTINGS, environ: dict[str, str] | None = None
) -> str:
    with pytest.raises(DefinitionError) as info:
        parse_definition(path, settings, environ or {})
    message = str(info.value)
    assert message.startswith(str(path.resolve())), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_full_definition(agent_dir: Path) -> None:
    path = write(agent_dir, "support.md", FULL)
    d = parse_definition(path, SETTINGS, {"API_TOKEN": "tok"})
    assert d.id == d.name == "support"
    assert d.description == "Customer support assistant"
    assert (d.model, d.provider) == ("claude-sonnet-4-5", "anthropic")
    assert d.tools == (str(agent_dir / "tools" / "word_count.py"),)
    assert list(d.user_tools) == ["word_count"]
    assert d.user_tools["word_count"].call_sync({"text": "a b"}) == {"words": 2}
    assert [s.name for s in d.mcp_servers] == ["web-search", "api"]
    assert d.mcp_servers[1].transport == "http"
    assert d.mcp_servers[1].url == "https://api.example.com/mcp"
    assert d.mcp_servers[1].headers == {"Authorization": "Bearer tok"}
    assert d.delegates == ("researcher", "writer")
    assert (d.temperature, d.max_steps, d.greeting) == (0.7, 12, "How can I help?")
    assert d.system_prompt.startswith("You are a helpful customer support agent.")
    assert d.system_prompt.endswith("- Be polite.")
    assert d.path == str(path.resolve())
    compaction = d.compaction_settings(SETTINGS)
    assert (compaction.threshold, compaction.keep_last_n) == (5000, 4)


def test_public_dict_and_secrets(agent_dir: Path) -> None:
    d = parse_definition(write(agent_dir, "support.md", FULL), SETTINGS, {"API_TOKEN": "tok"})
    assert d.public_dict() == {
        "id": "support",
        "name": "support",
        "description": "Customer support assistant",
        "model": "claude-sonnet-4-5",
        "provider": "anthropic",
        "tools": ["word_count"],
        "delegates": ["researcher", "writer"],
        "greeting": "How can I help?",
    }
    assert "tok" not in repr(d)
    assert "user_tools" not in d.model_dump()


def test_minimal_definition_uses_defaults_and_inference(tmp_path: Path) -> None:
    path = write(tmp_path, "a.md", "---\nname: a\nmodel: gpt-4o\n---\nHi.\n")
    d = parse_definition(path, SETTINGS, {})
    assert (d.provider, d.max_steps, d.description, d.greeting, d.temperature) == (
        "openai",
        10,
        "",
        None,
        None,
    )
    assert d.tools == () and d.user_tools == {} and d.mcp_servers == () and d.delegates == ()
    assert d.compaction_settings(SETTINGS) == SETTINGS.compaction


def test_model_and_provider_from_settings_defaults(tmp_path: Path) -> None:
    settings = Settings.model_validate({"defaults": {"model": "llama3", "provider": "ollama", "maxSteps": 3}})
    d = parse_definition(write(tmp_path, "a.md", "---\nname: a\n---\n"), settings, {})
    assert (d.model, d.provider, d.max_steps) == ("llama3", "ollama", 3)
    # defaults.provider applies to a definition's own model too; its own provider wins.
    d = parse_definition(write(tmp_path, "b.md", "---\nname: b\nmodel: my-model\n---\n"), settings, {})
    assert d.provider == "ollama"
    d = parse_definition(write(tmp_path, "c.md", "---\nname: c\nmodel: x\nprovider: demo\n---\n"), settings, {})
    assert d.provider == "demo"


def test_shared_test_agents_parse() -> None:
    openai = parse_definition(AGENTS / "openai-agent.md", SETTINGS, {})
    assert (openai.name, openai.provider, openai.system_prompt) == (
        "openai-agent",
        "openai",
        "You are the openai test agent.",
    )
    anthropic = parse_definition(AGENTS / "anthropic-agent.md", SETTINGS, {})
    assert (anthropic.provider, anthropic.system_prompt) == ("anthropic", "You are the anthropic test agent.")
    tools = parse_definition(AGENTS / "tool-agent.md", SETTINGS, {})
    assert tools.public_dict()["tools"] == ["word_count", "shout"]
    assert tools.user_tools["shout"].is_async and not tools.user_tools["word_count"].is_async


def test_repo_demo_agent_parses() -> None:
    demo = parse_definition(AGENTS.parents[1] / "agents" / "demo.md", SETTINGS, {})
    assert (demo.name, demo.provider, demo.model) == ("demo", "demo", "demo")


def test_env_expansion_in_values_with_type_coercion(tmp_path: Path) -> None:
    text = (
        "---\nname: ${AGENT_NAME}\nmodel: ${MODEL:-gpt-4o}\nmaxSteps: ${STEPS:-4}\ntemperature: ${T}\n"
        "---\n${NOT_EXPANDED}\n"
    )
    d = parse_definition(write(tmp_path, "a.md", text), SETTINGS, {"AGENT_NAME": "envy", "T": "0.5"})
    assert (d.name, d.model, d.max_steps, d.temperature) == ("envy", "gpt-4o", 4, 0.5)
    assert d.system_prompt == "${NOT_EXPANDED}"


def test_unset_variable_names_file_field_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "a.md", FULL.replace("./tools/word_count.py", "/dev/null"))
    expect_error(path, "field 'mcpServers'", "'API_TOKEN'", "mcpServers[1].headers.Authorization")


# -- errors: each names the file and the field -------------------------------------------------


def test_missing_name(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.md", "---\nmodel: gpt-4o\n---\n"), "field 'name'", "missing")


def test_missing_model_without_default(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.md", "---\nname: a\n---\n"), "field 'model'", "missing")


def test_uninferable_provider(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.md", "---\nname: a\nmodel: llama3\n---\n"), "field 'provider'", "'llama3'")


@pytest.mark.parametrize(
    ("frontmatter", "fragments"),
    [
        ("name: a\nmodel: gpt-4o\nmaxSteps: ten", ("field 'maxSteps'", "valid integer", "'ten'")),
        ("name: a\nmodel: gpt-4o\nmaxSteps: 0", ("field 'maxSteps'", "greater than or equal to 1")),
        ("name: a\nmodel: gpt-4o\ntemperature: hot", ("field 'temperature'",)),
        ("name: a\nmodel: gpt-4o\ntemperature: 7", ("field 'temperature'", "less than or equal to 2")),
        ("name: a\nmodel: gpt-4o\ntools: ./x.py", ("field 'tools'", "valid list")),
        ("name: a\nmodel: gpt-4o\ndelegates: b", ("field 'delegates'", "valid list")),
        ("name: [a]\nmodel: gpt-4o", ("field 'name'", "valid string")),
        ("name: has spaces\nmodel: gpt-4o", ("field 'name'", "should match pattern")),
        ("name: a\nmodel: gpt-4o\ncompaction: {threshold: -1}", ("field 'compaction.threshold'",)),
        (
            "name: a\nmodel: gpt-4o\ncompaction: {keepLast: 3}",
            ("field 'compaction.keepLast'", "unknown field"),
        ),
        (
            "name: a\nmodel: gpt-4o\nmcpServers:\n  - {name: s, transport: stdio, url: 'http://x'}",
            ("field 'mcpServers[0].transport'", "'sse'", "'http'"),
        ),
        (
            "name: a\nmodel: gpt-4o\nmcpServers:\n  - {name: s, transport: sse, url: 'file:///etc/passwd'}",
            ("field 'mcpServers[0].url'",),
        ),
        (
            "name: a\nmodel: gpt-4o\nmcpServers:\n  - {name: s, transport: sse}",
            ("field 'mcpServers[0].url'", "missing"),
        ),
        (
            "name: a\nmodel: gpt-4o\nmcpServers:\n  - {name: s, transport: sse, url: 'http://x'}\n"
            "  - {name: s, transport: http, url: 'http://y'}",
            ("field 'mcpServers'", "duplicate server name(s): s"),
        ),
        ("name: a\nmodel: gpt-4o\ndelegates: [a]", ("field 'delegates'", "cannot delegate to itself")),
        ("name: a\nmodel: gpt-4o\nprovider: 'open ai'", ("field 'provider'", "not a valid provider name")),
    ],
)
def test_bad_field(tmp_path: Path, frontmatter: str, fragments: tuple[str, ...]) -> None:
    expect_error(write(tmp_path, "a.md", f"---\n{frontmatter}\n---\nbody\n"), *fragments)


def test_unknown_field_is_rejected_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "a.md", "---\nname: a\nmodel: gpt-4o\nmaxStep: 3\ncolour: red\n---\n")
    expect_error(path, "field 'maxStep': unknown field (did you mean 'maxSteps'?)", "field 'colour': unknown field")


def test_header_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    text = (
        "---\nname: a\nmodel: gpt-4o\nmcpServers:\n"
        "  - {name: s, transport: sse, url: 'http://x', headers: {A: [topsecret]}}\n---\n"
    )
    message = expect_error(write(tmp_path, "a.md", text), "field 'mcpServers[0].headers.A'")
    assert "topsecret" not in message


def test_bad_yaml(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.md", "---\nname: [a\nmodel: gpt-4o\n---\n"), "bad YAML in frontmatter")


def test_frontmatter_not_a_mapping(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.md", "---\n- a\n- b\n---\nbody\n"), "must be a YAML mapping, got list")


def test_no_frontmatter(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.md", "Just a prompt.\n"), "no YAML frontmatter")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_bytes(b"---\nname: \xff\n---\n")
    expect_error(path, "not valid UTF-8")


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_bytes("\ufeff---\nname: a\nmodel: gpt-4o\n---\nx\n".encode())
    assert parse_definition(path, SETTINGS, {}).name == "a"


def test_size_limit(tmp_path: Path) -> None:
    head = "---\nname: big\nmodel: gpt-4o\n---\n"
    at_limit = tmp_path / "ok.md"
    at_limit.write_text(head + "x" * (MAX_DEFINITION_BYTES - len(head)))
    assert at_limit.stat().st_size == MAX_DEFINITION_BYTES
    assert parse_definition(at_limit, SETTINGS, {}).name == "big"
    over = tmp_path / "big.md"
    over.write_text(head + "x" * (MAX_DEFINITION_BYTES - len(head) + 1))
    expect_error(over, "over the 1 MiB")


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "gone.md", "cannot read")


def test_broken_tool_names_definition_field_and_tool_file(agent_dir: Path) -> None:
    (agent_dir / "tools" / "bad.py").write_text("def oops(:\n")
    path = write(
        agent_dir,
        "a.md",
        "---\nname: a\nmodel: gpt-4o\ntools: [./tools/word_count.py, ./tools/bad.py]\n---\n",
    )
    expect_error(path, "field 'tools[1]'", str(agent_dir / "tools" / "bad.py"), "syntax error")


def test_missing_tool_file(agent_dir: Path) -> None:
    path = write(agent_dir, "a.md", "---\nname: a\nmodel: gpt-4o\ntools: [./tools/nope.py]\n---\n")
    expect_error(path, "field 'tools[0]'", "file not found")


def test_duplicate_tool_names(agent_dir: Path) -> None:
    other = agent_dir / "other"
    other.mkdir()
    (other / "word_count.py").write_text((AGENTS / "tools" / "word_count.py").read_text())
    path = write(
        agent_dir,
        "a.md",
        "---\nname: a\nmodel: gpt-4o\ntools: [./tools/word_count.py, ./other/word_count.py]\n---\n",
    )
    expect_error(path, "field 'tools[1]'", "already listed")


def test_definition_is_immutable(tmp_path: Path) -> None:
    d = parse_definition(write(tmp_path, "a.md", "---\nname: a\nmodel: gpt-4o\n---\n"), SETTINGS, {})
    assert isinstance(d, AgentDefinition)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        d.name = "b"  # type: ignore[misc]


def test_repo_demo_agents_delegate_offline() -> None:
    root = AGENTS.parents[1] / "agents"
    demo = parse_definition(root / "demo.md", SETTINGS, {})
    librarian = parse_definition(root / "librarian.md", SETTINGS, {})
    assert demo.delegates == ("librarian",)
    assert (librarian.provider, librarian.model) == ("demo", "demo")


@pytest.mark.parametrize(
    ("key", "frontmatter"),
    [
        ("budget.maxTokensPerRun", "budget:\n  maxTokensPerRun: true"),
        ("budget.maxSecondsPerRun", "budget:\n  maxSecondsPerRun: yes"),
        ("budget.maxTokensPerInstance", "budget:\n  maxTokensPerInstance: false"),
        ("maxSteps", "maxSteps: true"),
        ("temperature", "temperature: true"),
        ("compaction.threshold", "compaction: {threshold: true}"),
    ],
)
def test_a_boolean_for_a_number_is_refused_naming_the_key(tmp_path: Path, key: str, frontmatter: str) -> None:
    # Before: pydantic's lax mode read `true` as 1 (a budget of one token).
    path = write(tmp_path, "a.md", f"---\nname: a\nmodel: gpt-4o\n{frontmatter}\n---\nbody\n")
    expect_error(path, f"field {key!r}: Input should be", "not a boolean")
