"""Agent definitions: one markdown file per agent, YAML frontmatter + system-prompt body (SPEC §2).

`parse_definition(path, settings)` reads one file into an immutable `AgentDefinition`, or raises
`DefinitionError` with a message that starts with the file's path and names the field at fault.

Rules, including where SPEC §2 is silent:

- Files over 1 MiB (1 048 576 bytes) are refused before they are read.
- The file must be UTF-8 and start with a `---` frontmatter block holding a YAML mapping.
- `${VAR}` / `${VAR:-default}` are expanded in every frontmatter *value* (`regina.env_expansion`);
  the body is not expanded (a prompt may legitimately show `${...}`). Expansion happens before
  validation, so `maxSteps: ${STEPS:-10}` works.
- `name` is required and is the definition id used in URLs, queue names and instance ids, so it is
  limited to letters, digits, `_` and `-`, starting with a letter or digit, at most 64 characters.
- `model` falls back to `defaults.model`; `provider` to the definition's own value, else
  `defaults.provider`, else inference from the model (`regina.providers.infer_provider`). An
  explicit provider name is only checked for shape here; whether LiteLLM knows it is checked when
  the runtime resolves the model (`resolve_model_target`), which keeps LiteLLM out of the web
  process.
- Unknown fields are **rejected** (with a "did you mean" hint): a typo such as `maxstep` or
  `temprature` would otherwise be dropped silently and the agent would run with settings its author
  did not choose. The registry reports the file and keeps loading the others, so the cost of
  strictness is one visible error.
- Types are checked by pydantic in its usual lax mode (`"10"` is accepted for an int, as `${VAR}`
  expansion always yields strings), but a list field given a scalar is an error, and so is a
  boolean given to a number (`maxTokensPerRun: true` is not a budget of 1).
- `tools` paths are resolved relative to the .md file, must be unique by stem (the tool name), and
  are loaded at parse time so a broken tool module is reported with its definition.
- `mcpServers` names must be unique within a definition; URLs must be http(s). The SSRF check is
  made by the MCP client when it connects (it must resolve the host then anyway).
- `delegates` must not name the agent itself (its instance would wait on its own running step).
  Whether the names exist is checked by the registry, across definitions.
- `useProcesses` overrides the config's `useProcesses` for this agent's instances; `true` with
  the `memory` VFS backend is refused (a tool process cannot see a memory VFS).
- Header values are secrets: they are left out of `repr`, error messages and `public_dict()`.
- An error quotes a bad value as written in the file (`${SVC_KEY}`), never as expanded, and is
  redacted of every known secret: it is shown by `GET /admin/agents/errors` and the reload.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from frontmatter.default_handlers import YAMLHandler
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from regina.config import (
    MEMORY_VFS_NO_PROCESSES,
    BudgetSettings,
    Compaction,
    Settings,
    environment,
    refuse_bool_number,
)
from regina.env_expansion import expand_env
from regina.errors import DefinitionError
from regina.providers import check_provider_name, infer_provider
from regina.runtime.tools.base import Tool
from regina.runtime.tools.loading import load_tool_module
from regina.secrets import add_secret, redact_any, redact_with, url_secrets

MAX_DEFINITION_BYTES = 1_048_576
"""Largest definition file accepted (1 MiB)."""

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_bool_number(cls, value, info)


class McpServer(_Strict):
    """A remote MCP server an agent connects to (SPEC §5)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Server name; its tools are exposed as `<name>_<tool>`."""
    transport: Literal["sse", "http"]
    """`sse` or `http` (streamable HTTP)."""
    url: str = Field(pattern=r"^https?://\S+$")
    """Server URL (http or https)."""
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    """Extra request headers (often secrets: never shown)."""


class CompactionOverride(_Strict):
    """Per-agent override of the `compaction` settings; unset keys keep the configured value."""

    threshold: int | None = Field(None, ge=1)
    keep_last_n: int | None = Field(None, ge=0)


class _Frontmatter(_Strict):
    """The frontmatter schema as written in files (camelCase keys)."""

    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    model: str | None = Field(None, min_length=1)
    provider: str | None = Field(None, min_length=1)
    tools: list[str] = Field(default_factory=list)
    mcp_servers: list[McpServer] = Field(default_factory=list)
    delegates: list[str] = Field(default_factory=list)
    temperature: float | None = Field(None, ge=0, le=2)
    max_steps: int | None = Field(None, ge=1, le=1000)
    greeting: str | None = None
    compaction: CompactionOverride | None = None
    use_processes: bool | None = None
    budget: BudgetSettings | None = None

    @field_validator("tools", "mcp_servers", "delegates", mode="before")
    @classmethod
    def _empty_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("mcp_servers")
    @classmethod
    def _unique_servers(cls, servers: list[McpServer]) -> list[McpServer]:
        names = [s.name for s in servers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate server name(s): {', '.join(dupes)}")
        return servers

    @field_validator("delegates")
    @classmethod
    def _unique_delegates(cls, delegates: list[str]) -> list[str]:
        return list(dict.fromkeys(delegates))


class AgentDefinition(BaseModel):
    """One loaded agent definition (immutable). `id` is the name."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    description: str = ""
    model: str
    provider: str
    tools: tuple[str, ...] = ()
    """Absolute paths of the tool modules, in the order written."""
    mcp_servers: tuple[McpServer, ...] = ()
    delegates: tuple[str, ...] = ()
    temperature: float | None = None
    max_steps: int = 10
    greeting: str | None = None
    compaction: CompactionOverride | None = None
    use_processes: bool = False
    """Tools of this agent's instances run in a child process each (config value unless overridden)."""
    budget: BudgetSettings | None = None
    """This agent's run budgets; keys it leaves out come from the config's `budget`."""
    system_prompt: str = ""
    """The markdown body."""
    path: str = ""
    """Absolute path of the definition file."""
    user_tools: dict[str, Tool] = Field(default_factory=dict, exclude=True, repr=False)
    """The loaded tool modules by tool name (file stem); not serialized."""
    tools_digest: str = ""
    """SHA-256 of the tool modules' sources, in order: what tells a reload that changed a tool
    module from one that loaded the same code again (new function objects either way)."""

    @property
    def id(self) -> str:
        """The definition id (`defId`): the same as `name`."""
        return self.name

    @property
    def tool_names(self) -> list[str]:
        """Names of the definition's own tools (file stems), in the order written."""
        return [Path(p).stem for p in self.tools]

    def budget_settings(self, settings: Settings) -> BudgetSettings:
        """The config's budget with this agent's keys over it."""
        if self.budget is None:
            return settings.budget
        return settings.budget.model_copy(update=self.budget.model_dump(exclude_unset=True))

    def compaction_settings(self, settings: Settings) -> Compaction:
        """The compaction settings for this agent: the config's, with this agent's overrides."""
        base = settings.compaction
        override = self.compaction
        if override is None:
            return base
        return Compaction(
            threshold=override.threshold if override.threshold is not None else base.threshold,
            keep_last_n=override.keep_last_n if override.keep_last_n is not None else base.keep_last_n,
        )

    def public_dict(self) -> dict[str, Any]:
        """The agent as `GET /agents` shows it (SPEC §4): no prompt, paths, servers or secrets
        (a `${SECRET}` expanded into the description or greeting shows as `[redacted]`)."""
        shown: dict[str, Any] = redact_any(
            {
                "id": self.id,
                "name": self.name,
                "description": self.description,
                "model": self.model,
                "provider": self.provider,
                "tools": self.tool_names,
                "delegates": list(self.delegates),
                "greeting": self.greeting,
            }
        )
        return shown


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(frontmatter)"


_KNOWN_FIELDS = [to_camel(n) for n in _Frontmatter.model_fields]


def _as_written(data: Any, loc: tuple[int | str, ...]) -> tuple[bool, Any]:
    """The value at `loc` in the frontmatter as written (before `${VAR}` expansion), if there."""
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return False, None
    return True, node


def _describe(path: Path, exc: ValidationError, written: dict[str, Any]) -> str:
    """The problems of `exc`, each naming its field. A bad value is quoted as written in the file:
    its `${VAR}` expansion may hold a secret, and the message reaches API responses."""
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        field = _field_path(loc)
        if err["type"] == "extra_forbidden":
            known = _KNOWN_FIELDS if len(loc) == 1 else []
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"field {field!r}: unknown field{extra}")
            continue
        if err["type"] == "missing":
            problems.append(f"field {field!r}: required field is missing")
            continue
        value = err.get("input")
        found, raw = _as_written(written, loc)
        secret = "headers" in [str(p) for p in loc]
        if secret or not found or isinstance(value, dict | list):
            shown = ""
        elif raw != value:
            shown = f" (written {raw!r}; its expanded value is not shown)"
        else:
            shown = f" (got {value!r})"
        problems.append(f"field {field!r}: {err['msg']}{shown}")
    return f"{path}: " + "; ".join(problems)


def read_definition_text(path: Path) -> str:
    """The text of a definition file (at most 1 MiB of UTF-8).

    Raises:
        DefinitionError: the file cannot be read, is too large or is not UTF-8.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DefinitionError(f"{path}: cannot read: {exc.strerror}") from exc
    if size > MAX_DEFINITION_BYTES:
        raise DefinitionError(f"{path}: file is {size} bytes, over the 1 MiB ({MAX_DEFINITION_BYTES} bytes) limit")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DefinitionError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise DefinitionError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc


def _read_frontmatter(path: Path, text: str | None = None) -> tuple[dict[str, Any], str]:
    if text is None:
        text = read_definition_text(path)
    handler = YAMLHandler()
    text = text.lstrip()
    if not handler.detect(text):
        raise DefinitionError(f"{path}: no YAML frontmatter; start the file with a '---' block holding name and model")
    try:
        raw, body = handler.split(text)
        data = handler.load(raw)
    except ValueError as exc:
        raise DefinitionError(f"{path}: frontmatter is not closed with '---'") from exc
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise DefinitionError(f"{path}: bad YAML in frontmatter: {detail}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DefinitionError(f"{path}: frontmatter must be a YAML mapping, got {type(data).__name__}")
    return data, body.strip()


def _load_tools(path: Path, tools: list[str]) -> tuple[tuple[str, ...], dict[str, Tool], str]:
    paths: list[str] = []
    loaded: dict[str, Tool] = {}
    digest = hashlib.sha256()
    for i, rel in enumerate(tools):
        tool_path = (path.parent / os.path.expanduser(rel)).resolve()
        try:
            tool = load_tool_module(tool_path)
            digest.update(tool_path.read_bytes())
        except OSError as exc:
            raise DefinitionError(f"{path}: field 'tools[{i}]' ({rel!r}): cannot read it: {exc}") from exc
        except DefinitionError as exc:
            raise DefinitionError(f"{path}: field 'tools[{i}]' ({rel!r}): {exc.message}") from exc
        if tool.name in loaded:
            raise DefinitionError(f"{path}: field 'tools[{i}]' ({rel!r}): a tool named {tool.name!r} is already listed")
        loaded[tool.name] = tool
        paths.append(str(tool_path))
    return tuple(paths), loaded, digest.hexdigest() if tools else ""


def parse_definition(
    path: str | os.PathLike[str],
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    text: str | None = None,
) -> AgentDefinition:
    """Read and validate the agent definition at `path` (rules in the module docstring); `text`:
    the file's text as read already (or as it was: the registry's last good version), with tool
    paths still relative to `path`.

    Raises:
        DefinitionError: the message starts with the file's path and names the field at fault;
            secrets (this process's and `environ`'s) are redacted from it, as it reaches
            `GET /admin/agents/errors` and the reload's answer.
    """
    env = environment() if environ is None else environ
    try:
        return _parse(Path(path).resolve(), settings, env, text)
    except DefinitionError as exc:
        safe = redact_with(exc.message, env)
        if safe == exc.message:
            raise
        raise DefinitionError(safe) from None


def _parse(p: Path, settings: Settings, environ: Mapping[str, str], text: str | None = None) -> AgentDefinition:
    data, body = _read_frontmatter(p, text)
    expanded: dict[str, Any] = {}
    for key, value in data.items():
        try:
            expanded[key] = expand_env(value, environ, where=str(key))
        except DefinitionError as exc:
            raise DefinitionError(f"{p}: field {key!r}: {exc.message}") from exc
    try:
        fm = _Frontmatter.model_validate(expanded)
    except ValidationError as exc:
        # `from None`: the ValidationError quotes the expanded values, secrets included.
        raise DefinitionError(_describe(p, exc, data)) from None

    model = fm.model or settings.defaults.model
    if not model:
        raise DefinitionError(f"{p}: field 'model': required field is missing (and no defaults.model is configured)")
    try:
        if fm.provider:
            provider = check_provider_name(fm.provider)
        elif settings.defaults.provider:
            provider = check_provider_name(settings.defaults.provider)
        else:
            provider = infer_provider(model)
    except DefinitionError as exc:
        raise DefinitionError(f"{p}: field 'provider': {exc.message}") from exc
    if fm.name in fm.delegates:
        raise DefinitionError(f"{p}: field 'delegates': an agent cannot delegate to itself ({fm.name!r})")
    use_processes = settings.use_processes if fm.use_processes is None else fm.use_processes
    if use_processes and settings.vfs_backend == "memory":
        raise DefinitionError(f"{p}: field 'useProcesses': {MEMORY_VFS_NO_PROCESSES}")
    tool_paths, user_tools, tools_digest = _load_tools(p, fm.tools)
    for server in fm.mcp_servers:
        for value in [*server.headers.values(), *url_secrets(server.url)]:
            add_secret(value)
    return AgentDefinition(
        name=fm.name,
        description=fm.description or "",
        model=model,
        provider=provider,
        tools=tool_paths,
        mcp_servers=tuple(fm.mcp_servers),
        delegates=tuple(fm.delegates),
        temperature=fm.temperature,
        max_steps=fm.max_steps if fm.max_steps is not None else settings.defaults.max_steps,
        greeting=fm.greeting,
        compaction=fm.compaction,
        use_processes=use_processes,
        budget=fm.budget,
        system_prompt=body,
        path=str(p),
        user_tools=user_tools,
        tools_digest=tools_digest,
    )
