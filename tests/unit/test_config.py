"""Settings from REGINA_CONFIG, REGINA_* env, REDIS_URL and PORT; errors name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regina.config import bind_host, load_settings
from regina.errors import ConfigError


def test_defaults_without_any_config() -> None:
    s = load_settings({})
    assert s.idle_timeout == 300 and s.placement == "round-robin" and s.storage.type == "redis"
    assert s.compaction.threshold == 100_000 and s.compaction.keep_last_n == 10
    assert s.member_ttl == 30 and s.member_heartbeat == 10


def test_storage_type_null_in_a_file_means_no_storage(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("storage: {type: null}\n")
    assert load_settings({"REGINA_CONFIG": str(f)}).storage.type is None


def test_yaml_file_with_a_regina_object(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("module: x\nregina:\n  agentsDir: ./a\n  idleTimeout: 5\n  storage: {type: fs, basePath: /b}\n")
    s = load_settings({"REGINA_CONFIG": str(f)})
    assert (s.agents_dir, s.idle_timeout, s.storage.type, s.storage.base_path) == ("./a", 5, "fs", "/b")


def test_json_file_without_a_regina_object(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"defaults": {"model": "gpt-4o", "maxSteps": 3}}))
    s = load_settings({"REGINA_CONFIG": str(f)})
    assert s.defaults.model == "gpt-4o" and s.defaults.max_steps == 3


def test_environment_overrides_the_file_with_double_underscore_nesting(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("idleTimeout: 5\nstorage: {type: fs, basePath: /b}\n")
    s = load_settings(
        {
            "REGINA_CONFIG": str(f),
            "REGINA_IDLE_TIMEOUT": "7",
            "REGINA_STORAGE__TYPE": "redis",
            "REGINA_ALLOWED_ENV": "[PATH, LANG]",
            "REGINA_PROVIDERS__VERCEL_GATEWAY__BASE_URL": "http://gw",
            "REGINA_COMPACTION__KEEP_LAST_N": "3",
        }
    )
    assert s.idle_timeout == 7 and s.storage.type == "redis" and s.storage.base_path == "/b"
    assert s.allowed_env == ["PATH", "LANG"]
    assert s.providers["vercel-gateway"].base_url == "http://gw"
    assert s.compaction.keep_last_n == 3


def test_platform_variables_redis_url_and_port() -> None:
    s = load_settings({"REDIS_URL": "redis://h:1/2", "PORT": "8080"})
    assert s.redis == "redis://h:1/2" and s.port == 8080
    assert load_settings({"REDIS_URL": "redis://a", "REGINA_REDIS": "redis://b"}).redis == "redis://b"


def test_the_queues_live_on_the_broker_when_one_is_set_else_on_redis() -> None:
    assert load_settings({"REDIS_URL": "redis://h:1/2"}).broker_url == "redis://h:1/2"
    s = load_settings({"REDIS_URL": "redis://h:1/2", "REGINA_BROKER": "amqp://u:p@mq:5672/v"})
    assert s.broker_url == "amqp://u:p@mq:5672/v" and s.redis == "redis://h:1/2"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"REGINA_IDLE_TIMEOUT": "soon"}, "config key 'idleTimeout' (REGINA_IDLE_TIMEOUT)"),
        ({"REGINA_PLACEMENT": "closest"}, "config key 'placement'"),
        ({"REGINA_STORAGE__TYPE": "ftp"}, "config key 'storage.type' (REGINA_STORAGE__TYPE)"),
        ({"REGINA_NO_SUCH_KEY": "1"}, "config key 'noSuchKey'"),
        ({"PORT": "99999"}, "config key 'port'"),
        ({"REGINA_BROKER": "redis://127.0.0.1:6379/1"}, "config key 'broker' (REGINA_BROKER)"),
    ],
)
def test_a_bad_value_fails_naming_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env)
    assert needle in exc.value.message


def test_unreadable_or_malformed_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REGINA_CONFIG: cannot read"):
        load_settings({"REGINA_CONFIG": str(tmp_path / "missing.yaml")})
    bad = tmp_path / "bad.yaml"
    bad.write_text("regina: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid JSON/YAML"):
        load_settings({"REGINA_CONFIG": str(bad)})


def test_seed_placeholders_in_member_id_and_address_are_expanded(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"regina": {"memberId": "{HOSTNAME}", "memberAddress": "{POD_IP}:3001"}}))
    pods = [
        load_settings({"REGINA_CONFIG": str(f), "HOSTNAME": name, "POD_IP": ip})
        for name, ip in [("pod-a", "10.0.0.7"), ("pod-b", "10.0.0.8")]
    ]
    assert [(s.member_id, s.member_address) for s in pods] == [("pod-a", "10.0.0.7:3001"), ("pod-b", "10.0.0.8:3001")]
    from regina.cli.serve import worker_argv

    assert "pod-a" in worker_argv(pods[0]) and "regina.m.pod-b" in worker_argv(pods[1])


def test_hostname_placeholder_falls_back_to_the_host_name_and_unknown_ones_fail() -> None:
    import socket

    assert load_settings({"REGINA_MEMBER_ID": "w-{HOSTNAME}"}).member_id == f"w-{socket.gethostname()}"
    with pytest.raises(ConfigError, match=r"memberAddress.*\{NODE_IP\}"):
        load_settings({"REGINA_MEMBER_ADDRESS": "{NODE_IP}:3001"})


def test_web_process_settings_from_platform_variables() -> None:
    assert load_settings({}).web_concurrency == 2 and load_settings({}).access_log is False
    s = load_settings({"WEB_CONCURRENCY": "5", "REGINA_ACCESS_LOG": "1"})
    assert (s.web_concurrency, s.access_log) == (5, True)
    assert load_settings({"REGINA_ACCESS_LOG": ""}).access_log is False


@pytest.mark.parametrize(
    ("env", "host"),
    [
        ({}, "127.0.0.1"),
        ({"PORT": "8080"}, "127.0.0.1"),  # PORT alone: honcho on a laptop sets it too
        ({"PORT": "8080", "DYNO": "web.1"}, "0.0.0.0"),  # a platform routes to every interface
        ({"PORT": "8080", "DYNO": "web.1", "REGINA_HOST": "127.0.0.1"}, "127.0.0.1"),  # unless host is set
        ({"REGINA_HOST": "10.0.0.5"}, "10.0.0.5"),
    ],
)
def test_bind_host(env: dict[str, str], host: str) -> None:
    assert bind_host(load_settings(env), env) == host


def test_text_keys_from_the_environment_are_taken_as_they_are() -> None:
    """YAML would make `{HOSTNAME}` a mapping, a numeric token a number and cut `a #b` at the `#`."""
    settings = load_settings(
        {
            "HOSTNAME": "pod-7",
            "REGINA_MEMBER_ID": "{HOSTNAME}",
            "REGINA_AUTH_TOKEN": "123456789012",
            "REGINA_PROVIDERS__OPENAI__BASE_URL": "http://gw #1/v1",
            "REGINA_LIMITS__BASH_TIMEOUT": "3",
            "REGINA_OUTBOUND_ALLOWLIST": '["127.0.0.1", "10.0.0.0/8"]',
        }
    )
    assert settings.member_id == "pod-7"
    assert settings.auth_token == "123456789012"
    assert settings.providers["openai"].base_url == "http://gw #1/v1"
    assert settings.limits.bash_timeout == 3.0
    assert settings.outbound_allowlist == ["127.0.0.1", "10.0.0.0/8"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REGINA_LOG_LEVEL": "verbose"}, "'logLevel' (REGINA_LOG_LEVEL): Value error, must be one of DEBUG, INFO"),
        ({"REDIS_URL": "localhost:6379"}, "'redis' (REGINA_REDIS): Value error, must be a redis://, rediss://"),
        ({"REGINA_MEMBER_HEARTBEAT": "40"}, "config: memberHeartbeat (40 s) must be shorter than memberTtl (30 s)"),
        ({"REGINA_MEMBER_TTL": ".inf"}, "'memberTtl' (REGINA_MEMBER_TTL): Input should be a finite number"),
    ],
)
def test_values_that_would_break_a_process_later_are_refused_at_load(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert message in str(err.value)


def test_a_refused_secret_is_not_repeated_in_the_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"REGINA_BROKER": "redis://:hunter2secret@10.0.0.1:6379/0"})
    assert "hunter2secret" not in str(err.value) and "redis://:***@10.0.0.1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings({}, overrides={"authToken": ["s3cret-token"]})  # a token must be text: not shown
    assert "s3cret-token" not in str(err.value) and "value hidden" in str(err.value)
    assert load_settings({"REGINA_LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("REGINA_BUDGET__MAX_TOKENS_PER_RUN", "budget.maxTokensPerRun"),
        ("REGINA_BUDGET__MAX_SECONDS_PER_RUN", "budget.maxSecondsPerRun"),
        ("REGINA_LIMITS__MAX_QUEUED_RUNS", "limits.maxQueuedRuns"),
        ("REGINA_CONCURRENCY", "concurrency"),
    ],
)
def test_a_boolean_for_a_number_setting_is_refused_naming_the_key(name: str, key: str) -> None:
    # Before: `true` was taken as 1.
    with pytest.raises(ConfigError) as info:
        load_settings(environ={name: "true"})
    assert f"config key '{key}' ({name}): Input should be" in str(info.value)
    assert "not a boolean" in str(info.value)


@pytest.mark.parametrize("order", [1, -1])
def test_a_section_from_the_environment_takes_its_keys_too(order: int) -> None:
    env = dict(list({"REGINA_STORAGE__BUCKET": "b", "REGINA_STORAGE": "{type: s3}"}.items())[::order])
    storage = load_settings(env).storage
    assert (storage.type, storage.bucket) == ("s3", "b")


def test_a_scalar_where_a_section_is_needed_names_both_variables() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"REGINA_STORAGE": "fs", "REGINA_STORAGE__BASE_PATH": "/x"})
    assert "REGINA_STORAGE__BASE_PATH" in err.value.message
    assert "REGINA_STORAGE " in err.value.message
