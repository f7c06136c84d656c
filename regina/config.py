"""Settings: the `REGINA_CONFIG` file, then `REGINA_<KEY>` environment overrides (SPEC §8).

Keys are camelCase in files (`idleTimeout`) and UPPER_SNAKE in the environment
(`REGINA_IDLE_TIMEOUT`), with `__` for nesting (`REGINA_STORAGE__TYPE=s3`). `REDIS_URL` and
`PORT` are honoured as a Heroku-style platform sets them. Every attribute docstring below is
the reference for that key (docs/configuration.md is generated from the same text).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from regina.config_sources import describe, env_overrides, expand_placeholders, merge, parse_env_value, read_config_file
from regina.environ import environment as environment  # re-exported: the server side reads it here
from regina.errors import ConfigError


def _number_kind(annotation: Any) -> str | None:
    """The kind ("an integer", "a number") of a field that holds only numbers (or None), else None."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = {a for a in (typing.get_args(annotation) if union else (annotation,)) if a is not type(None)}
    if kinds == {int}:
        return "an integer"
    return "a number" if kinds and kinds <= {int, float} else None


def refuse_bool_number(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A boolean for a number field is an error: pydantic's lax mode reads `true` as 1, so
    `maxTokensPerRun: true` would be a budget of one token. The error's location names the key."""
    if isinstance(value, bool) and info.field_name is not None:
        kind = _number_kind(model.model_fields[info.field_name].annotation)
        if kind is not None:
            raise PydanticCustomError("bool_not_number", "Input should be {kind}, not a boolean", {"kind": kind})
    return value


class _Section(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        allow_inf_nan=False,  # `.inf` seconds would overflow the clocks they feed
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_bool_number(cls, value, info)


class Defaults(_Section):
    """Values used when an agent definition leaves them out."""

    provider: str | None = None
    """Provider used when a definition names none and inference is not wanted."""
    model: str | None = None
    """Model used when a definition names none."""
    max_steps: int = Field(10, ge=1, le=1000)
    """Agentic loop steps per chat when a definition does not set `maxSteps`."""


class StorageSettings(_Section):
    """Where instances are backed up (SPEC §7). By default the cluster's Redis: an instance's state
    (journal and backups) must live off its worker for an acknowledged chat to survive the worker."""

    type: Literal["fs", "s3", "redis"] | None = "redis"
    """Adapter: `fs`, `s3` or `redis` (the default: a hash in the cluster's Redis, so Redis holds
    every instance's files). `null` (config file only) keeps backups on the worker's own disk and
    journals nothing: a worker killed with -9 then loses the changes since the instance's last
    suspend unless `vfsDir` is shared."""
    base_path: str | None = None
    """fs: directory the backups are written to (atomically)."""
    bucket: str | None = None
    """s3: bucket name."""
    prefix: str = ""
    """s3/redis: prefix put before every key."""
    endpoint: str | None = None
    """s3: endpoint URL of any S3-compatible server."""
    region: str | None = None
    """s3: region name."""
    url: str | None = None
    """redis: URL of the Redis holding the backup hash (default: the cluster's Redis)."""
    checkpoint_bytes: int = Field(4_194_304, ge=1024)
    """Every VFS change is journaled in Redis before a run answers (unless `type` is null); once a
    started instance's journal passes this many bytes it is backed up (and the journal trimmed)
    right after the run that passed it."""


class Compaction(_Section):
    """When and how a long conversation is summarized (SPEC §5)."""

    threshold: int = Field(100_000, ge=1)
    """Estimated tokens (characters / 4) above which older messages are summarized."""
    keep_last_n: int = Field(10, ge=0)
    """Messages kept verbatim after compaction."""


class ProviderSettings(_Section):
    """Per-provider overrides; the `*_BASE_URL` environment variables win over these."""

    base_url: str | None = None
    """Base URL of the provider's API (tests point it at a fake LLM server)."""


class BudgetSettings(_Section):
    """Server-enforced limits of a run (SPEC §12); a definition's `budget` overrides each key.

    A run that would pass one ends with finishReason `budget` and a text naming it. Tokens are
    checked before every model call, whose answer is capped (the provider's max_tokens) to what
    the tightest token budget leaves after the prompt's estimate, and after it; seconds also on
    the clock (the running call is cut short).
    """

    max_tokens_per_run: int | None = Field(None, ge=1)
    """Tokens (prompt + completion) one run may spend, those of an attempt whose worker died
    included; unset = no limit."""
    max_seconds_per_run: float | None = Field(None, gt=0)
    """Seconds one run may take from its first start on a worker (a run redelivered after its worker
    died counts from there too); unset = no limit."""
    max_tokens_per_instance: int | None = Field(None, ge=1)
    """Tokens an instance may spend over all its runs (`GET /instances/<id>` shows `usage`)."""


class Limits(_Section):
    """Size and time limits that keep one client or one tool from hurting the rest."""

    max_body_bytes: int = Field(1_048_576, ge=1)
    """Largest HTTP request body accepted (413 above)."""
    max_message_chars: int = Field(100_000, ge=1)
    """Longest chat or steer `message` accepted (413 above)."""
    body_timeout: float = Field(30.0, gt=0)
    """Seconds a request body may stall (no byte arriving) before the request is answered 408 and
    its connection closed: a client that sends headers and never the body holds nothing longer."""
    max_tool_output_chars: int = Field(50_000, ge=100)
    """Tool results longer than this are truncated before they reach the model. `read_file` reads
    at most 4 × this many bytes of a file (the most these characters take in UTF-8), whatever its
    size, and says the file's size when it cut it."""
    max_file_bytes: int = Field(67_108_864, ge=1)
    """Largest file a tool may make, in bytes (64 MiB): a `write` or an `append` past it fails with
    a tool error and changes nothing. Every change is one entry of the durable journal in Redis,
    which takes at most 512 MB per value; a bigger one would fail every journal write after it.
    `edit_file` refuses a file bigger than this before reading any of it (a `realdir` tree may hold
    files of any size)."""
    bash_timeout: float = Field(10.0, gt=0)
    """Seconds one `bash` tool call may run."""
    bash_max_loop_iterations: int = Field(10_000, ge=1)
    """Loop iterations one `bash` call may run."""
    bash_max_commands: int = Field(10_000, ge=1)
    """Commands one `bash` call may run."""
    tool_timeout: float = Field(120.0, gt=0)
    """Seconds one tool call may run before it fails with a tool error (both isolation modes).
    With processes the tool's process is stopped; in a thread the call is abandoned."""
    tool_memory_mb: int | None = Field(1024, ge=256)
    """`useProcesses`: address-space limit (RLIMIT_AS, MB) of a tool process, interpreter included
    (≈ 135 MB of address space before a tool allocates anything). A tool that allocates past it
    fails that call. null: no limit."""
    tool_cpu_seconds: float | None = Field(60.0, gt=0)
    """`useProcesses`: CPU seconds one tool call may use (RLIMIT_CPU, moved per call; whole
    seconds). Past it the tool's process is killed and that call fails. null: no limit."""
    max_queued_runs: int = Field(32, ge=1)
    """Chat runs one instance may have queued or running at once; one more is refused with 429 and
    `Retry-After` (so one instance cannot fill a worker's pool; steering a busy run still works)."""
    max_run_events: int = Field(50_000, ge=100)
    """Events one run's stream keeps (the oldest go first): a run cannot grow Redis without bound;
    a client replaying from an older `seq` gets the events still kept."""
    max_steering: int = Field(100, ge=1)
    """Steering messages an instance may have waiting for its next step boundary; one more is
    refused with 429 and `Retry-After` (a running step takes them all at its next boundary)."""
    max_run_deliveries: int = Field(3, ge=1)
    """Times a run's step may be delivered to a worker that starts it: a run whose worker died
    (killed, out of memory) is run again by another from where it was, at most this many times in
    all; the next delivery ends it `failed` with an error naming this limit (a step that kills
    every worker it runs on does not go round for ever)."""
    request_timeout: float = Field(600.0, gt=0)
    """Seconds a sync chat waits for its run to finish. A run still queued or running then goes
    on and the chat answers 202 with its `runId` and `Location: /runs/<runId>` (follow it at
    `/runs/<runId>/events`); 503 only when no worker can serve it. Streams follow a healthy run
    past it."""
    worker_reply_timeout: float = Field(30.0, gt=0)
    """Seconds the web waits for a worker to confirm an attach, suspend or other command."""
    placement_wait: float = Field(30.0, ge=0)
    """Seconds a request that finds no live worker (a rolling restart, the only worker restarting)
    waits for one before answering 503."""
    lost_run_after: float = Field(300.0, gt=0)
    """Seconds a run `queued` or `running` may go unseen — no live worker holding its step, no
    step of it waiting on the broker — before the workers' sweep takes it for lost and ends it
    `failed` with an `error` event (after one more `memberTtl` to be sure): a step whose error could
    not be written, a web process killed while queueing the step. A slow model call or a long queue
    is never lost. Keep it above 2 × (`placementWait` + 2 × `workerReplyTimeout`): the longest a web
    may wait for the instance's activation and place it before it queues the step (180 s with the
    defaults)."""


class McpSettings(_Section):
    """How instances talk to their definitions' MCP servers (SPEC §5, §12)."""

    connect_timeout: float = Field(10.0, gt=0)
    """Seconds one server may take to connect and list its tools; slower servers are skipped.
    Servers connect while the instance is attached, so keep it under `limits.workerReplyTimeout`."""
    call_timeout: float = Field(120.0, gt=0)
    """Seconds one MCP tool call may take before the model gets a tool error (a server that then
    does not answer a ping within `connectTimeout` either is taken for dropped and reconnected)."""
    retry_interval: float = Field(30.0, ge=0)
    """Seconds before a server that failed to connect is tried again at a step start (a server
    that dropped mid-run is retried at the very next step, and a tool call reconnects at once)."""


class Settings(_Section):
    """Everything Regina reads at start. Build it with `load_settings()` or directly in tests."""

    agents_dir: str = "./agents"
    """Directory of agent definition markdown files."""
    vfs_dir: str = "./data/vfs"
    """Directory of the per-instance SQLite VFS files (one `<instanceId>.sqlite` each)."""
    vfs_backend: Literal["sqlite", "memory", "realdir"] = "sqlite"
    """VFS kind: `sqlite` (default), `memory` (lost on suspend without storage) or `realdir`."""
    vfs_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite durability of VFS writes. NORMAL (WAL): every write survives a killed worker
    process, the last ones may be lost on power loss; FULL also survives power loss and costs an
    fsync per write (several ms on most disks)."""
    vfs_park_after: float = Field(30, ge=0)
    """Seconds after its last step an instance's SQLite connection is closed and its conversation
    dropped from the worker's memory (both read again on the next step), so idle instances cost
    their worker almost no memory, however long their conversations. Reading a parked instance's
    messages (`GET /instances/<id>/messages`) parks it again right after."""
    fs_root_path: str | None = None
    """`realdir` backend: root under which each instance gets a directory."""
    data_dir: str = "./data"
    """Where `regina up` keeps its embedded Redis and other local state."""
    idle_timeout: float = Field(300, ge=0)
    """Seconds without chat, steer, heartbeat or resume before an instance is suspended; 0 = never."""
    use_processes: bool = False
    """Run each instance's tools in a child process of its own, with the `limits.tool*` rlimits
    (agents may override with `useProcesses` in their frontmatter). Off: tools run in a thread
    pool of the worker. Needs the `sqlite` or `realdir` VFS backend. See docs/isolation.md."""
    factory: str | None = None
    """Python module path exporting `prepare_instance`, `backup`, `restore` hooks."""
    defaults: Defaults = Field(default_factory=Defaults)
    """Fallbacks for agent definitions."""
    redis: str = "redis://127.0.0.1:6379/0"
    """Redis URL: broker, cluster state, events and steering; `unix:///path/redis.sock?db=0` for
    a Redis on this host's socket. `REDIS_URL` sets it too."""
    broker: str | None = None
    """RabbitMQ URL (`amqp://user:pass@host:5672/vhost`, or `amqps://`) for the task queues: the
    per-instance queues become AMQP queues with push consumers (docs/scaling.md says when to
    choose it). Unset: the queues live in the Redis of `redis`, which carries state, events and
    steering either way."""
    member_address: str | None = None
    """Routable address a worker registers under `regina:member:<id>` (default: host name).
    `{HOSTNAME}`, `{POD_IP}` or any `{ENV_VAR}` in it is replaced by that variable's value."""
    member_id: str | None = None
    """Worker's member id and Celery node name (default: `w<pid>-<random>@<host>`). Placeholders
    as in `memberAddress` (`{HOSTNAME}` falls back to the host name): one config for every pod."""
    storage: StorageSettings = Field(default_factory=StorageSettings)
    """Where instances are backed up (their journal is in the cluster's Redis): by default the cluster's Redis too."""
    placement: Literal["round-robin", "least-loaded", "random"] = "round-robin"
    """How a live worker is chosen for a new or re-homed instance."""
    member_ttl: float = Field(30, gt=0)
    """Seconds a member key lives without renewal; after that its instances are orphans."""
    member_heartbeat: float = Field(10, gt=0)
    """Seconds between member key renewals (keep well under `memberTtl`)."""
    shutdown_timeout: float = Field(50, gt=0)
    """Seconds a worker's warm shutdown (SIGTERM, Ctrl-C) may take: finishing running steps and
    backing instances up. After that it exits (status 1) whatever it was waiting for, such as a
    Redis that is down; `regina up` kills its children after 60 s and platforms after about 30 s,
    so a stuck shutdown otherwise keeps a process alive that nothing will ever stop."""
    compaction: Compaction = Field(default_factory=Compaction)
    """Conversation compaction defaults (agents may override)."""
    bash_network: bool = False
    """Let the `bash` tool's `curl` reach the network (public addresses only; loopback and private
    ranges stay refused). Off: no network at all."""
    outbound_allowlist: list[str] = Field(default_factory=list)
    """Host names, IP addresses and CIDRs that URLs opened on a definition's behalf (MCP servers)
    may reach although they are loopback, private, link-local or otherwise non-public, e.g.
    `["127.0.0.1", "10.0.0.0/8"]`. The environment form may be a comma-separated list."""
    mcp: McpSettings = Field(default_factory=McpSettings)
    """MCP client timeouts."""
    allowed_env: list[str] = Field(default_factory=lambda: ["PATH", "HOME", "LANG", "TZ"])
    """Environment variable names the `bash` tool may see (values from the worker)."""
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    """Per-provider settings keyed by provider name (`anthropic`, `openai`, `vercel-gateway`)."""
    limits: Limits = Field(default_factory=Limits)
    """Request, message, tool and bash limits."""
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    """Default run budgets (tokens, seconds) for agents that set none."""
    stream_batch_ms: float = Field(0, ge=0, le=50)
    """Streamed runs: text deltas go to Redis together, the first one waiting at most this many
    milliseconds (0: as soon as the step waits on the model again), so a step never waits for
    Redis once per delta; other events are sent at once, after the deltas before them."""
    run_retention: float = Field(3600, gt=0)
    """Seconds a finished run's record and events stay readable (`GET /runs/<runId>`, replay); a
    run that answers an `Idempotency-Key` (opened with it, or steered into by a `whenBusy: "steer"`
    chat with it) is kept as long as its key (24 h), and a run not ended yet `runRetention` + 24 h."""
    port: int = Field(3000, ge=0, le=65535)
    """HTTP port of the web process. `PORT` sets it too."""
    host: str = "127.0.0.1"
    """Interface the web process binds (use 0.0.0.0 on a platform)."""
    auth_token: str | None = None
    """When set, every API request except /healthz needs `Authorization: Bearer <token>`. Set but
    empty (`REGINA_AUTH_TOKEN=""`) is off like unset; the web logs a WARNING at start saying so."""
    concurrency: int = Field(100, ge=1)
    """Greenlets per worker: chat steps running at once across all its instances."""
    task_events: bool = True
    """Workers send Celery task events so Flower shows each instance queue's tasks."""
    log_level: str = "INFO"
    """Log level of web and worker processes."""
    web_concurrency: int = Field(2, ge=1)
    """gunicorn worker processes of `regina web`. `WEB_CONCURRENCY` sets it too (as platforms do)."""
    access_log: bool = False
    """gunicorn's access log on stdout (`regina web`); off by default: every line costs CPU."""
    log_format: Literal["text", "json"] = "text"
    """Log line format of every process: `text` (time, level, role[pid], logger, message) or
    `json` (one object per line, for platforms that parse logs). `--log-format` sets it too."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """A worker serves its own Prometheus `/metrics` on this port (for workers on other machines
    than the web; on one machine they share the web's `/metrics`, see README "Watching it"). It
    listens on `host`: set that to `0.0.0.0` (or the machine's address) for another machine's
    Prometheus to reach it."""

    @field_validator("access_log", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        return False if value in (None, "") else value

    @field_validator("member_id", "member_address")
    @classmethod
    def _expand_placeholders(cls, value: str | None, info: ValidationInfo) -> str | None:
        context = info.context or {}
        environ = context["environ"] if "environ" in context else environment()
        return None if value is None else expand_placeholders(value, environ)

    @field_validator("broker")
    @classmethod
    def _amqp_only(cls, value: str | None) -> str | None:
        if value and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL (Redis queues need no broker: unset it)")
        return value or None

    @property
    def broker_url(self) -> str:
        """Where the task queues live: `broker` when set, else the Redis of `redis`."""
        return self.broker or self.redis

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL (e.g. redis://127.0.0.1:6379/0)")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return level

    @field_validator("outbound_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("outbound_allowlist")
    @classmethod
    def _valid_allowlist(cls, value: list[str]) -> list[str]:
        from regina.outbound import Allowlist

        Allowlist.parse(value)
        return value

    @model_validator(mode="after")
    def _processes_need_a_shared_vfs(self) -> Settings:
        if self.use_processes and self.vfs_backend == "memory":
            raise ValueError(MEMORY_VFS_NO_PROCESSES)
        return self

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> Settings:
        if self.member_heartbeat >= self.member_ttl:
            raise ValueError(
                f"memberHeartbeat ({self.member_heartbeat:g} s) must be shorter than memberTtl "
                f"({self.member_ttl:g} s): a member key would lapse between renewals and its "
                "instances be taken from a live worker"
            )
        return self


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


MEMORY_VFS_NO_PROCESSES = (
    "useProcesses needs vfsBackend sqlite or realdir: a tool process cannot see a memory VFS, "
    "which lives inside the worker process"
)


_process_settings: Settings | None = None


def process_settings() -> Settings:
    """This process's Settings, loaded once (web, worker, Celery config and CLI share them).

    Raises:
        ConfigError: naming the key and the bad value.
    """
    global _process_settings
    if _process_settings is None:
        _process_settings = load_settings()
    return _process_settings


PLATFORM_MARKERS = ("DYNO", "RENDER", "RAILWAY_ENVIRONMENT", "FLY_APP_NAME", "K_SERVICE")
"""Variables a hosting platform sets (Heroku, Render, Railway, Fly.io, Cloud Run)."""


def bind_host(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """The address web and Flower listen on: `host` when set (config file or `REGINA_HOST`);
    else 0.0.0.0 when `PORT` is set *and* a platform marker says we run on a platform, which
    routes to the app from outside; else 127.0.0.1. `PORT` alone is not enough: `honcho start`
    sets it on a laptop, where 0.0.0.0 would expose an unauthenticated API to the network."""
    env = environment() if environ is None else environ
    if "host" in settings.model_fields_set or not env.get("PORT"):
        return settings.host
    return "0.0.0.0" if any(env.get(marker) for marker in PLATFORM_MARKERS) else settings.host


def holds_text(path: list[str]) -> bool:
    """Whether the config key at `path` (its camelCase segments, as in REGINA_* variables) holds
    text: its environment value is then taken as it is, not read as YAML."""
    model: Any = Settings
    i = 0
    while i < len(path):
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        field = fields.get(path[i]) or model.model_fields.get(path[i])
        if field is None:
            return False
        ann = field.annotation
        union = typing.get_origin(ann) in (typing.Union, types.UnionType)
        kinds = [a for a in typing.get_args(ann) if a is not type(None)] if union else [ann]
        if i == len(path) - 1:
            return all(k is str for k in kinds)
        section = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if section is None and typing.get_origin(kinds[0]) is dict:  # a mapping of sections (providers)
            section, i = typing.get_args(kinds[0])[1], i + 1
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return False
        model, i = section, i + 1
    return False


def load_settings(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build Settings from REGINA_CONFIG, REDIS_URL, PORT, WEB_CONCURRENCY and REGINA_* (later
    wins). Every call reads the environment afresh; processes use `process_settings()`.

    Raises:
        ConfigError: naming the key and the bad value.
    """
    env = environment() if environ is None else environ
    data: dict[str, Any] = {}
    if env.get("REGINA_CONFIG"):
        data = read_config_file(env["REGINA_CONFIG"])
    if env.get("REDIS_URL"):
        data["redis"] = env["REDIS_URL"]
    if env.get("PORT"):
        data["port"] = parse_env_value(env["PORT"])
    if env.get("WEB_CONCURRENCY"):
        data["webConcurrency"] = parse_env_value(env["WEB_CONCURRENCY"])
    data = merge(data, env_overrides(env, holds_text))
    if overrides:
        data = merge(data, overrides)
    try:
        return Settings.model_validate(data, context={"environ": env})
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from exc
