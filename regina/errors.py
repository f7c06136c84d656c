"""Every error Regina raises on purpose, in one tree.

ReginaError
 ├── ConfigError            bad configuration (names the key)
 ├── DefinitionError        an agent definition file that cannot be loaded (names the file)
 ├── NotFound               unknown agent definition or instance
 ├── BadRequest             malformed input from a client
 ├── PayloadTooLarge        a body or message over a configured limit
 ├── TooManyRequests        an instance's backlog of runs is full (carries Retry-After)
 ├── Conflict               a request that clashes with the current state
 │    └── Busy             a chat refused because a run is in progress (names it)
 ├── Unprocessable          an Idempotency-Key reused with another body
 ├── Gone                   what a request refers to existed and is gone for good
 ├── Unavailable            no live worker, or a worker that did not answer
 │    ├── ReplyTimeout       a worker has not confirmed a command yet (it may still complete)
 │    └── StillRunning       a run outlived the wait for it and goes on (follow it by its id)
 ├── StaleEpoch             a write from an owner that lost the instance (fencing)
 ├── StorageError           a storage adapter failed
 ├── VFSError               a virtual-filesystem operation failed (message goes to the model)
 │    ├── NoSuchPath         the path (or its parent) does not exist
 │    ├── IsADirectory       a file operation on a directory
 │    ├── NotADirectory      a directory operation on a file (or a file as a parent)
 │    ├── DirectoryNotEmpty  removing or replacing a directory that has entries
 │    ├── PathExists         creating something where a file already is
 │    └── ReadOnlyPath       a tool tried to change /.session/ (the transcript)
 ├── ModelError             the model provider failed (message goes to the history as "Error: …")
 └── ToolError              a tool failed in a way the model should be told about
"""

from __future__ import annotations


class ReginaError(Exception):
    """Base class of every error Regina raises on purpose (HTTP statuses: `api/errors.py`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ReginaError):
    """Raised when configuration is invalid; the message names the key."""


class DefinitionError(ReginaError):
    """Raised when an agent definition file cannot be loaded; the message names the file."""


class NotFound(ReginaError):
    """Raised when an agent definition or an instance does not exist."""


class BadRequest(ReginaError):
    """Raised when a client sends malformed input."""


class PayloadTooLarge(ReginaError):
    """Raised when a body or a message exceeds a configured limit."""


class RequestTimeout(ReginaError):
    """Raised when a request's body stops arriving (limits.bodyTimeout)."""


class Conflict(ReginaError):
    """Raised when a request clashes with the instance's current state."""


class Busy(Conflict):
    """Raised when a chat with whenBusy "reject" finds a run in progress; names that run."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class Unprocessable(ReginaError):
    """Raised when a well-formed request cannot be honoured as sent (a reused Idempotency-Key)."""


class Gone(ReginaError):
    """Raised when what a request refers to existed and is gone for good: the run an
    Idempotency-Key's retry would be answered with, whose record expired."""


class Unavailable(ReginaError):
    """Raised when no live worker can serve a request, or a worker did not answer in time."""


class ReplyTimeout(Unavailable):
    """Raised when a worker did not confirm a command in time; it may still carry it out."""


class StillRunning(Unavailable):
    """Raised when a run a request waits on outlives `limits.requestTimeout` and is still queued
    or running: it goes on, and a sync chat answers 202 with where to follow it (api/chat.py)."""

    def __init__(self, message: str, run_id: str, status: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class TooManyRequests(ReginaError):
    """Raised when an instance already has as many runs waiting as `limits.maxQueuedRuns` allows."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StaleEpoch(ReginaError):
    """Raised when a worker that no longer owns an instance tries to write its state."""


class StorageError(ReginaError):
    """Raised when a storage adapter cannot complete an operation."""


class VFSError(ReginaError):
    """Raised when a virtual-filesystem operation fails; the message is shown to the model."""


class NoSuchPath(VFSError):
    """Raised when a VFS path, or the directory it should be in, does not exist."""


class IsADirectory(VFSError):
    """Raised when a file operation (read, write) is given a directory."""


class NotADirectory(VFSError):
    """Raised when a directory operation is given a file, or a file stands where a parent should."""


class DirectoryNotEmpty(VFSError):
    """Raised when removing or replacing a directory that still has entries."""


class PathExists(VFSError):
    """Raised when creating a directory where a file already is."""


class ReadOnlyPath(VFSError):
    """Raised when a tool tries to change a path only Regina may write (`/.session/`)."""


class ToolCallAbandoned(VFSError):
    """Raised when a tool call its caller stopped waiting for (timeout, cancel) changes a file."""


class FileTooLarge(VFSError):
    """Raised when a tool's write or append would make a file larger than limits.maxFileBytes."""


class ModelError(ReginaError):
    """Raised when the model provider fails; the run reports it and records `Error: …`."""


class ToolError(ReginaError):
    """Raised by a tool to report a failure the model should see as the tool's result."""
