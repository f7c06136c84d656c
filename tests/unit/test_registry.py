"""The agent registry: skip-and-report, duplicates, atomic reload (SIGHUP: tests/integration/test_watching.py)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from unittest.mock import ANY

import pytest

from regina.config import Settings
from regina.errors import ConfigError, NotFound
from regina.registry import AgentRegistry

TESTS_AGENTS = Path(__file__).resolve().parents[1] / "agents"


def agent(directory: Path, file: str, name: str, *, model: str = "gpt-4o", extra: str = "", body: str = "") -> Path:
    path = directory / file
    path.write_text(f"---\nname: {name}\nmodel: {model}\n{extra}---\n{body or f'You are {name}.'}\n")
    return path


def registry_for(directory: Path) -> AgentRegistry:
    return AgentRegistry(Settings(agents_dir=str(directory)), environ={})


def loaded_alpha(tmp_path: Path) -> tuple[Path, AgentRegistry]:
    """An agents dir with one definition, `alpha`, and a registry that loaded it."""
    directory = tmp_path / "agents"
    directory.mkdir()
    agent(directory, "a.md", "alpha")
    registry = registry_for(directory)
    registry.load()
    return directory, registry


def test_loads_the_shared_test_agents() -> None:
    registry = registry_for(TESTS_AGENTS)
    registry.load()
    assert [d.name for d in registry.list()] == [
        "anthropic-agent",
        "boss-agent",
        "compact-agent",
        "helper-agent",
        "mcp-agent",
        "openai-agent",
        "ssrf-agent",
        "tool-agent",
    ]
    assert registry.errors == [] and registry.warnings == []
    assert registry.get("tool-agent").public_dict()["tools"] == ["word_count", "shout"]
    assert "openai-agent" in registry and len(registry) == 8


def test_bad_files_are_skipped_and_reported(tmp_path: Path) -> None:
    agent(tmp_path, "good.md", "good")
    (tmp_path / "bad-yaml.md").write_text("---\nname: [x\n---\n")
    agent(tmp_path, "no-model.md", "nomodel", model="")
    (tmp_path / "huge.md").write_text("---\nname: huge\nmodel: gpt-4o\n---\n" + "x" * 1_048_576)
    (tmp_path / "notes.txt").write_text("not a definition")  # ignored: not *.md
    (tmp_path / "sub").mkdir()
    agent(tmp_path / "sub", "nested.md", "nested")  # ignored: not recursive
    registry = registry_for(tmp_path)
    registry.load()
    assert [d.name for d in registry.list()] == ["good"]
    errors = {Path(e["file"]).name: e["error"] for e in registry.errors}
    assert set(errors) == {"bad-yaml.md", "no-model.md", "huge.md"}
    assert "bad YAML" in errors["bad-yaml.md"]
    assert "field 'model'" in errors["no-model.md"]
    assert "1 MiB" in errors["huge.md"]
    for file, error in errors.items():
        assert str(tmp_path / file) in error


def test_duplicate_names_later_file_rejected_naming_both(tmp_path: Path) -> None:
    first = agent(tmp_path, "a.md", "twin", body="first")
    second = agent(tmp_path, "b.md", "twin", body="second")
    registry = registry_for(tmp_path)
    registry.load()
    assert registry.get("twin").system_prompt == "first"
    [error] = registry.errors
    assert error["file"] == str(second)
    assert str(first) in error["error"] and str(second) in error["error"] and "duplicate" in error["error"]


def test_unknown_delegates_are_dropped_with_a_warning(tmp_path: Path) -> None:
    boss = agent(tmp_path, "boss.md", "boss", extra="delegates: [helper, ghost]\n")
    agent(tmp_path, "helper.md", "helper")
    registry = registry_for(tmp_path)
    registry.load()
    assert registry.get("boss").delegates == ("helper",)
    assert registry.errors == []
    [warning] = registry.warnings
    assert warning["file"] == str(boss) and "'ghost'" in warning["error"]


def test_get_unknown_is_not_found_listing_known(tmp_path: Path) -> None:
    agent(tmp_path, "a.md", "alpha")
    registry = registry_for(tmp_path)
    registry.load()
    with pytest.raises(NotFound) as info:
        registry.get("beta")
    assert "'beta'" in str(info.value) and "alpha" in str(info.value)


def test_reload_swaps_a_complete_new_snapshot(tmp_path: Path) -> None:
    agent(tmp_path, "a.md", "alpha")
    registry = registry_for(tmp_path)
    registry.load()
    before = registry.snapshot
    held = registry.get("alpha")
    agent(tmp_path, "a.md", "alpha", body="changed")
    agent(tmp_path, "b.md", "beta")
    after = registry.reload()
    assert registry.snapshot is after and after is not before
    assert registry.get("alpha").system_prompt == "changed"
    assert [d.name for d in registry.list()] == ["alpha", "beta"]
    # The old snapshot and the definitions read from it are untouched.
    assert list(before.definitions) == ["alpha"] and held.system_prompt == "You are alpha."
    with pytest.raises(TypeError):
        after.definitions["x"] = held  # type: ignore[index]


def test_removed_file_disappears_on_reload(tmp_path: Path) -> None:
    agent(tmp_path, "a.md", "alpha")
    gone = agent(tmp_path, "b.md", "beta")
    registry = registry_for(tmp_path)
    registry.load()
    gone.unlink()
    registry.reload()
    assert [d.name for d in registry.list()] == ["alpha"]


def test_a_file_that_becomes_invalid_keeps_its_last_good_definition(tmp_path: Path) -> None:
    # Before: the agent was dropped, and listing its instances by agent answered 404.
    agent(tmp_path, "a.md", "alpha", body="good alpha")
    broken = agent(tmp_path, "b.md", "beta")
    agent(tmp_path, "c.md", "gamma")
    registry = registry_for(tmp_path)
    registry.load()
    broken.write_text("---\nname: beta\nmodel: gpt-4o\nmaxStep: 3\n---\nYou are beta.\n")
    agent(tmp_path, "a.md", "alpha", extra="maxStep: 3\n")
    agent(tmp_path, "0.md", "alpha", body="new alpha")  # a valid file now owns the name
    registry.reload()
    assert [d.name for d in registry.list()] == ["alpha", "beta", "gamma"]
    assert list(registry.snapshot.definitions) == ["alpha", "beta", "gamma"]  # file-name order
    assert registry.get("beta").path == str(broken) and registry.get("alpha").system_prompt == "new alpha"
    errors = {Path(e["file"]).name: e["error"] for e in registry.errors}
    assert list(errors) == ["a.md", "b.md"]
    assert "'maxStep'" in errors["b.md"] and "the previous version of 'beta' is kept" in errors["b.md"]
    assert "'maxStep'" in errors["a.md"] and "kept" not in errors["a.md"]  # its name is taken now
    broken.unlink()
    registry.reload()
    assert [d.name for d in registry.list()] == ["alpha", "gamma"]  # a removed file goes


class _Texts:
    """A LastGoodTexts in memory (regina/registry_sync.py's keeps them in Redis)."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.kept: list[dict[str, str]] = []

    def fetch(self, paths: list[str]) -> dict[str, str]:
        return {p: self.texts[p] for p in paths if p in self.texts}

    def keep(self, texts: Mapping[str, str]) -> None:
        self.kept.append(dict(texts))
        self.texts.update(texts)


def test_a_registry_started_after_a_file_broke_takes_its_last_good_text_from_the_shared_store(
    tmp_path: Path,
) -> None:
    # Before: a process started after the break had no last good definition of its own, so it
    # lacked an agent every older process still served.
    beta = agent(tmp_path, "b.md", "beta", body="good beta")
    agent(tmp_path, "c.md", "gamma")
    shared = _Texts()
    older = registry_for(tmp_path)
    older.share_last_good(shared)
    assert shared.kept == [{str(beta.resolve()): beta.read_text(), str((tmp_path / "c.md").resolve()): ANY}]
    older.reload()
    assert len(shared.kept) == 1  # nothing changed: nothing put again
    beta.write_text("---\nname: beta\nmodel: gpt-4o\nmaxStep: 3\n---\nYou are beta.\n")

    alone = registry_for(tmp_path)
    alone.load()
    assert [d.name for d in alone.list()] == ["gamma"]
    newer = registry_for(tmp_path)
    newer.share_last_good(shared)
    assert [d.name for d in newer.list()] == ["beta", "gamma"]
    assert newer.get("beta").system_prompt == "good beta" and newer.get("beta").path == str(beta)
    [error] = newer.errors
    assert "'maxStep'" in error["error"] and "the previous version of 'beta' is kept" in error["error"]
    assert str(beta.resolve()) not in shared.kept[-1]  # the broken text is not shared
    assert "good beta" in shared.texts[str(beta.resolve())]


def test_failed_reload_keeps_the_old_registry(tmp_path: Path) -> None:
    directory, registry = loaded_alpha(tmp_path)
    before = registry.snapshot
    directory.rename(tmp_path / "moved")
    with pytest.raises(ConfigError, match="agentsDir"):
        registry.reload()
    assert registry.snapshot is before
    assert registry.get("alpha").name == "alpha"


def test_missing_agents_dir_on_first_load(tmp_path: Path) -> None:
    registry = registry_for(tmp_path / "nope")
    with pytest.raises(ConfigError, match="is not a directory"):
        registry.load()
    assert registry.list() == []


def test_readers_never_see_a_partial_registry(tmp_path: Path) -> None:
    for i in range(20):
        agent(tmp_path, f"a{i:02}.md", f"agent-{i:02}")
    registry = registry_for(tmp_path)
    registry.load()
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(len(registry.list()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(5):
            registry.reload()
    finally:
        stop.set()
        reader.join()
    assert seen == {20}
