"""The agent registry: every definition in `agentsDir`, swapped atomically on reload (SPEC §2).

- `load()` / `reload()` read `agentsDir/*.md` (sorted by file name, not recursive) into a complete
  new `RegistrySnapshot` and publish it with one attribute assignment, so a reader sees the old
  snapshot or the new one, never a mix. Readers that need several consistent look-ups take
  `registry.snapshot` once and use it.
- A file that fails to parse is skipped and reported in `errors` as `{"file", "error"}`; the rest
  load. A file that loaded before and fails now keeps its last good definition (the error says
  so): a typo saved into a running agent's file must not take the agent away from its instances.
  A file that is removed takes its agent away. A second file with an already-used name is
  rejected and the error names both files (files are taken in sorted order, so the first by name
  wins, the same in every process).
- If building the snapshot fails as a whole (the directory is missing or unreadable), the old
  snapshot stays and the error is raised to the caller (the SIGHUP path logs it).
- Cross-definition check: a `delegates` entry naming an agent that is not in the new snapshot does
  *not* reject the definition (that would let one broken file take down every agent delegating to
  it); the name is dropped from that definition's `delegates`, so the model is never offered a
  delegate that cannot answer, and a `{"file", "error"}` entry is added to `warnings`.
- SIGHUP reloads every process's registry through `regina/registry_sync.py` (its handler only
  notes the time; nothing may block inside a signal handler under gevent).
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from regina.config import Settings, environment
from regina.definitions import AgentDefinition, parse_definition, read_definition_text
from regina.errors import ConfigError, DefinitionError, NotFound
from regina.secrets import redact_with

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrySnapshot:
    """One complete, immutable state of the registry."""

    definitions: Mapping[str, AgentDefinition] = field(default_factory=lambda: MappingProxyType({}))
    """Definitions by id, in file-name order."""
    errors: tuple[Mapping[str, str], ...] = ()
    """Files that were skipped: `{"file": path, "error": message}`."""
    warnings: tuple[Mapping[str, str], ...] = ()
    """Definitions loaded with a problem fixed up (unknown delegates dropped)."""
    loaded_at: float = 0.0
    """`time.time()` when the snapshot was built."""
    texts: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """The text of every file that parsed in this build, by its resolved path."""


class LastGoodTexts(Protocol):
    """Where the processes of a cluster share the last text of each definition file that parsed
    (regina/registry_sync.py keeps it in Redis): a process started after a file broke has no
    last good definition of its own, and without this it would lack an agent every older
    process still serves."""

    def fetch(self, paths: builtins.list[str]) -> dict[str, str]: ...

    def keep(self, texts: Mapping[str, str]) -> None: ...


def _problem(path: Path | str, message: str) -> Mapping[str, str]:
    return MappingProxyType({"file": str(path), "error": message})


class AgentRegistry:
    """Agent definitions from `settings.agents_dir`, reloadable (see the module docstring)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = environ
        self.snapshot = RegistrySnapshot()
        self._reload_lock = threading.Lock()
        #: Shared last good texts (`share_last_good`), and the texts this process put there last.
        self.last_good: LastGoodTexts | None = None
        self._kept: dict[str, str] = {}

    def share_last_good(self, store: LastGoodTexts) -> None:
        """Keep the texts that parse in `store`, and take a broken file's last good definition
        from it when this process has none: the loaded snapshot's texts are put there now, and
        only a registry not loaded yet, or whose load skipped files, loads again (with the store,
        to find theirs)."""
        self.last_good = store
        if not self.snapshot.loaded_at or self.snapshot.errors:
            self.reload()
        else:
            with self._reload_lock:
                self._keep_texts(self.snapshot)

    # -- building -------------------------------------------------------------------------
    def _agents_dir(self) -> Path:
        return Path(self.settings.agents_dir).expanduser().resolve()

    def build(self) -> RegistrySnapshot:
        """Build a new snapshot from the files on disk without publishing it.

        Raises:
            ConfigError: `agentsDir` does not exist or cannot be listed.
        """
        directory = self._agents_dir()
        if not directory.is_dir():
            raise ConfigError(f"agentsDir: {str(directory)!r} is not a directory")
        try:
            files = sorted(p for p in directory.glob("*.md") if p.is_file())
        except OSError as exc:
            raise ConfigError(f"agentsDir: cannot list {str(directory)!r}: {exc.strerror}") from exc
        environ = environment() if self._environ is None else self._environ
        previous = {d.path: d for d in self.snapshot.definitions.values()}
        found: dict[str, AgentDefinition] = {}
        file_of: dict[str, Path] = {}
        texts: dict[str, str] = {}
        failed: list[tuple[Path, str, str]] = []  # path, resolved path, error
        errors: list[Mapping[str, str]] = []
        for path in files:
            key = str(path.resolve())
            try:
                text = read_definition_text(path)
                definition = parse_definition(path, self.settings, environ, text=text)
            except DefinitionError as exc:
                failed.append((path, key, exc.message))
                continue
            except Exception as exc:  # a bug or a surprise in one file must not stop the others
                log.exception("unexpected error loading agent definition %s", path)
                detail = redact_with(f"{type(exc).__name__}: {exc}", environ)
                failed.append((path, key, f"{path}: unexpected error: {detail}"))
                continue
            if definition.name in found:
                first = found[definition.name].path
                errors.append(
                    _problem(path, f"{path}: duplicate agent name {definition.name!r}: already defined in {first}")
                )
                continue
            found[definition.name] = definition
            file_of[definition.name] = path
            texts[key] = text
        shared = self._shared([key for _, key, _ in failed if key not in previous])
        for path, key, message in failed:
            # A file that became invalid keeps its last good definition (its instances go on
            # running, and listing them by agent still works) unless its name is taken now: this
            # process's own, or the one another process last loaded from it.
            last_good = previous.get(key) or self._parse_shared(path, shared.get(key), environ)
            if last_good is not None and last_good.name not in found:
                found[last_good.name] = last_good
                file_of[last_good.name] = path
                message += f" (the previous version of {last_good.name!r} is kept until the file is fixed)"
            errors.append(_problem(path, message))
        found = {name: found[name] for name in sorted(found, key=file_of.__getitem__)}  # file-name order
        errors.sort(key=lambda problem: problem["file"])
        warnings: list[Mapping[str, str]] = []
        for name, definition in list(found.items()):
            unknown = [d for d in definition.delegates if d not in found]
            if unknown:
                kept = tuple(d for d in definition.delegates if d in found)
                found[name] = definition.model_copy(update={"delegates": kept})
                warnings.append(
                    _problem(
                        definition.path,
                        f"{definition.path}: field 'delegates': unknown agent(s) "
                        f"{', '.join(map(repr, unknown))} ignored",
                    )
                )
        return RegistrySnapshot(
            definitions=MappingProxyType(found),
            errors=tuple(errors),
            warnings=tuple(warnings),
            loaded_at=time.time(),
            texts=MappingProxyType(texts),
        )

    def _shared(self, paths: builtins.list[str]) -> dict[str, str]:
        if not paths or self.last_good is None:
            return {}
        return self.last_good.fetch(paths)

    def _parse_shared(self, path: Path, text: str | None, environ: Mapping[str, str]) -> AgentDefinition | None:
        if text is None:
            return None
        try:
            return parse_definition(path, self.settings, environ, text=text)
        except DefinitionError:  # e.g. a variable it needs is not set in this process
            return None

    def _keep_texts(self, snapshot: RegistrySnapshot) -> None:
        """Put the texts that parsed and changed since this process's last put in `last_good`."""
        if self.last_good is None:
            return
        changed = {path: text for path, text in snapshot.texts.items() if self._kept.get(path) != text}
        if changed:
            self.last_good.keep(changed)
            self._kept.update(changed)

    def reload(self) -> RegistrySnapshot:
        """Build a complete new snapshot and swap it in; on failure keep the old one and raise.

        Per-file problems do not fail a reload: they are reported in `errors`/`warnings`.

        Raises:
            ConfigError: `agentsDir` does not exist or cannot be listed (old snapshot kept).
        """
        with self._reload_lock:  # two reloads at once must not publish out of order
            new = self.build()
            self.snapshot = new  # the atomic swap: one attribute assignment
            self._keep_texts(new)
        for problem in new.errors:
            log.error("agent definition skipped: %s", problem["error"])
        for problem in new.warnings:
            log.warning("agent definition: %s", problem["error"])
        log.info("agent registry loaded: %d definition(s), %d error(s)", len(new.definitions), len(new.errors))
        return new

    def load(self) -> RegistrySnapshot:
        """Load the registry (the first time); the same as `reload()`."""
        return self.reload()

    # -- reading --------------------------------------------------------------------------
    def get(self, def_id: str) -> AgentDefinition:
        """The definition named `def_id`.

        Raises:
            NotFound: no such definition (the message lists the known ones).
        """
        definitions = self.snapshot.definitions
        definition = definitions.get(def_id)
        if definition is None:
            known = ", ".join(sorted(definitions)[:20]) or "none loaded"
            raise NotFound(f"agent definition {def_id!r} not found (known: {known})")
        return definition

    def get_or_reload(self, def_id: str) -> AgentDefinition:
        """The definition, reloading once from disk when this process does not know it yet (a web
        process that reloaded first must not make a spawn fail on a worker that has not yet).

        Raises:
            NotFound: still unknown after the reload.
        """
        if def_id not in self.snapshot.definitions:
            log.info("agent %r unknown here: reloading the registry before refusing", def_id)
            self.reload()
        return self.get(def_id)

    def list(self) -> list[AgentDefinition]:
        """All definitions, sorted by name."""
        definitions = self.snapshot.definitions
        return [definitions[name] for name in sorted(definitions)]

    def __contains__(self, def_id: object) -> bool:
        return def_id in self.snapshot.definitions

    def __len__(self) -> int:
        return len(self.snapshot.definitions)

    @property
    def errors(self) -> builtins.list[dict[str, str]]:
        """Files skipped by the last load: `[{"file", "error"}]`."""
        return [dict(e) for e in self.snapshot.errors]

    @property
    def warnings(self) -> builtins.list[dict[str, str]]:
        """Definitions loaded with a problem fixed up: `[{"file", "error"}]`."""
        return [dict(w) for w in self.snapshot.warnings]
