"""`${VAR}` / `${VAR:-default}` expansion of frontmatter values."""

from __future__ import annotations

import pytest

from regina.env_expansion import expand_env
from regina.errors import DefinitionError

ENV = {"HOST": "example.com", "EMPTY": "", "TOKEN": "s3cr3t"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://${HOST}/mcp", "https://example.com/mcp"),
        ("${HOST}", "example.com"),
        ("${MISSING:-fallback}", "fallback"),
        ("${HOST:-fallback}", "example.com"),
        ("${EMPTY:-fallback}", "fallback"),  # shell semantics: empty counts as unset for :-
        ("${EMPTY}", ""),
        ("${MISSING:-}", ""),
        ("a ${HOST} b ${TOKEN}", "a example.com b s3cr3t"),
        ("$${HOST}", "${HOST}"),  # escaped
        ("$HOST and $ alone", "$HOST and $ alone"),  # only the braced form is expanded
        ("${MISSING:-http://x:1/y}", "http://x:1/y"),
        ("no variables", "no variables"),
    ],
)
def test_strings(value: str, expected: str) -> None:
    assert expand_env(value, ENV) == expected


def test_recursive_over_lists_and_dicts_keeps_keys_and_scalars() -> None:
    value = {
        "name": "${HOST}",
        "${HOST}": "key is not expanded",
        "list": ["${TOKEN}", 3, True, None, {"deep": "${MISSING:-d}"}],
        "number": 1.5,
    }
    assert expand_env(value, ENV) == {
        "name": "example.com",
        "${HOST}": "key is not expanded",
        "list": ["s3cr3t", 3, True, None, {"deep": "d"}],
        "number": 1.5,
    }


def test_input_is_not_mutated() -> None:
    value = {"a": ["${HOST}"]}
    expand_env(value, ENV)
    assert value == {"a": ["${HOST}"]}


def test_values_are_not_re_expanded() -> None:
    assert expand_env("${NESTED}", {"NESTED": "${HOST}", "HOST": "x"}) == "${HOST}"


def test_unset_without_default_names_the_variable_and_location() -> None:
    with pytest.raises(DefinitionError) as info:
        expand_env({"headers": {"Authorization": "Bearer ${API_TOKEN}"}}, ENV, where="mcpServers[0]")
    message = str(info.value)
    assert "'API_TOKEN'" in message
    assert "mcpServers[0].headers.Authorization" in message
    assert "${API_TOKEN:-default}" in message


def test_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGINA_TEST_EXPAND", "from-os")
    assert expand_env("${REGINA_TEST_EXPAND}") == "from-os"


@pytest.mark.parametrize("environ", [{"A": "aval", "B": "bval"}, {"B": "bval"}], ids=["A set", "A unset"])
def test_a_variable_in_a_default_is_refused_naming_the_variable(environ: dict[str, str]) -> None:
    # Before: 'aval}' when A was set, a literal '${B' + '}' when not, silently.
    with pytest.raises(DefinitionError) as info:
        expand_env({"url": "http://${A:-${B}}/x"}, environ, where="mcpServers[0]")
    message = str(info.value)
    assert "'A'" in message and "mcpServers[0].url" in message and "cannot use another variable" in message
