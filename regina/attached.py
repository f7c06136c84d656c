"""`Active`: an instance attached to a member, as the host and its steps hold it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from regina.activation import AnyVFS
from regina.definitions import AgentDefinition
from regina.fencing import Fence
from regina.fifo_lock import FifoLock
from regina.journal import JournalVFS
from regina.runs.stream import RunPublisher
from regina.runtime.session import Session
from regina.runtime.sink import RunProgress
from regina.runtime.tools.merge import InstanceTools
from regina.runtime.tools.runner import ToolRunner


@dataclass
class FailedStep:
    """A step that failed here, as its run's failed end needs it (regina/host.py `end_failed`)."""

    run_id: str
    #: What the run had spent (the tokens of its completed model calls, earlier attempts'
    #: included): its failed end's usage.
    progress: RunProgress
    #: The step's publisher: the events it published and did not write go out before the error.
    publisher: RunPublisher
    _unwritten: list[tuple[int, str]] | None = None

    def unwritten(self) -> list[tuple[int, str]]:
        """Those events, taken from the publisher once: a second report of the end (the first
        failed) still has them, and no late send of the publisher writes them as well."""
        if self._unwritten is None:
            self._unwritten = self.publisher.take_unwritten()
        return self._unwritten


@dataclass
class Active:
    """An instance attached to this member."""

    instance_id: str
    definition: AgentDefinition
    epoch: int
    vfs: AnyVFS | JournalVFS
    session: Session
    tools: InstanceTools
    runner: ToolRunner
    fence: Fence
    system_prompt: str = ""
    lock: FifoLock = field(default_factory=FifoLock)
    #: Held from a backup's snapshot to its commit: a checkpoint stores its snapshot after letting
    #: go of `lock` (regina/host.py), and two backups of one owner must not take one version.
    backup_lock: FifoLock = field(default_factory=FifoLock)
    #: No checkpoint before this (monotonic): one that failed is not tried again after every run.
    checkpoint_after: float = 0.0
    #: The wait after the last failed checkpoint (0: the last one succeeded).
    checkpoint_retry: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    #: The VFS size last written to the instance's record (`InstanceHost.report_sizes`).
    reported_bytes: int = -1
    parked: bool = False
    last_touch: float = 0.0
    #: The running run, for the `delegate` tool.
    run_id: str = ""
    #: The step that failed last here, until its run's failed end is written (regina/host.py).
    failed: FailedStep | None = None
