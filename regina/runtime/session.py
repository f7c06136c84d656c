"""An instance's conversation, persisted as JSONL at `/.session/messages.jsonl` in its VFS (SPEC §5).

Appends are incremental (one `vfs.append` per call); the whole file is rewritten only after
compaction or a repair. The parsed history is cached after the first load, so a running loop
never re-reads the file; so is its model form (`model_view`), kept in step with appends, so a
turn's start costs the same with ten messages or ten thousand.
"""

from __future__ import annotations

import logging

from regina.errors import VFSError
from regina.runtime.compaction import message_chars
from regina.runtime.messages import Message, for_model, from_jsonl, model_json, repair, to_jsonl
from regina.vfs.base import VFS

__all__ = ["Session", "SESSION_PATH"]

log = logging.getLogger("regina.session")

SESSION_PATH = "/.session/messages.jsonl"


class Session:
    """The conversation of one instance, backed by a JSONL file in its VFS."""

    def __init__(self, vfs: VFS, path: str = SESSION_PATH) -> None:
        self.vfs = vfs
        self.path = path
        self._messages: list[Message] | None = None
        #: `for_model` of the history and its size in characters (`model_view`); None: not built.
        self._model: list[Message] | None = None
        self._chars = 0
        #: `model_json` of each message of the model view (`model_json`); None: not built.
        self._json: list[bytes | None] | None = None
        #: How many leading messages `repair` found valid: appends leave them so (`repair`).
        self._repaired = 0

    def load(self) -> list[Message]:
        """The history, oldest first (read once, then cached). Torn last lines are skipped."""
        if self._messages is None:
            try:
                data = self.vfs.read(self.path) if self.vfs.exists(self.path) else b""
            except VFSError as exc:
                # Never an empty history instead: the model would silently lose its context.
                raise VFSError(f"cannot read the conversation at {self.path}: {exc.message}") from exc
            self._messages = from_jsonl(data)
            lines = sum(1 for line in data.split(b"\n") if line.strip())
            if lines > len(self._messages):
                log.warning(
                    "%s: %d unreadable line(s) in the conversation skipped; the file is rewritten without them",
                    self.path,
                    lines - len(self._messages),
                )
                self.rewrite(self._messages)
            elif data and not data.endswith(b"\n"):
                # A crash tore the last line: rewrite so the next append starts on a fresh line.
                self.rewrite(self._messages)
        return self._messages

    @property
    def messages(self) -> list[Message]:
        """The cached history (loads it on first use). Do not mutate; use append/rewrite."""
        return self.load()

    def model_view(self) -> tuple[list[Message], int]:
        """The history as the model is sent it (`for_model`) and its characters (`message_chars`,
        for compaction), built once and extended by appends. Do not mutate the list."""
        if self._model is None:
            history = self.load()
            self._model = for_model(history)
            self._chars = sum(message_chars(m) for m in history)
        return self._model, self._chars

    def model_json(self) -> list[bytes | None]:
        """`messages.model_json` of each message of `model_view`, in step with it: each message
        is encoded once, so a step's request costs the same at ten messages or ten thousand.
        Do not mutate the list."""
        if self._json is None:
            self._json = [model_json(m) for m in self.model_view()[0]]
        return self._json

    def append(self, *msgs: Message, behind: bool = False) -> None:
        """Persist messages at the end of the history (one VFS append). `behind`: a run's last
        answer, which its end makes durable (`JournalVFS.append_behind`, where the VFS has it)."""
        if not msgs:
            return
        history = self.load()
        later = getattr(self.vfs, "append_behind", None) if behind else None
        (later or self.vfs.append)(self.path, to_jsonl(msgs))
        history.extend(msgs)
        if self._model is not None:
            model = for_model(msgs)
            self._model.extend(model)
            self._chars += sum(message_chars(m) for m in msgs)
            if self._json is not None:
                self._json.extend(model_json(m) for m in model)

    def rewrite(self, msgs: list[Message]) -> None:
        """Replace the whole history (after compaction or repair)."""
        self.vfs.write(self.path, to_jsonl(msgs))
        self._messages = list(msgs)
        self._forget_derived()

    def repair(self) -> bool:
        """Make the stored transcript valid (see `messages.repair`); True when it changed.

        Only what was appended since the last repair is checked: `messages.repair` handles the
        messages before a non-tool message and those from it on independently, so a prefix it
        left unchanged stays unchanged (a turn's start costs the same on a long transcript)."""
        history = self.load()
        start = self._repaired
        if start > len(history) or (start < len(history) and history[start].get("role") == "tool"):
            start = 0  # no boundary there: check it all
        fixed, changed = repair(history[start:])
        if changed:
            self.rewrite(history[:start] + fixed)
        self._repaired = len(self.load())
        return changed

    def invalidate(self) -> None:
        """Forget the cache so the next `load` reads the file again (e.g. after a restore)."""
        self._messages = None
        self._forget_derived()

    def _forget_derived(self) -> None:
        """Drop what was derived from the history (`model_view`, `repair`'s checked prefix)."""
        self._model = None
        self._json = None
        self._repaired = 0
