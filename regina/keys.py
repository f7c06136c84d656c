"""Every Redis key, channel and Celery queue name Regina uses, in one place (SPEC §6).

The first four are the seed's cluster schema and keep its meaning; everything else Regina adds
lives under `regina:` too.

| key                                   | type   | ttl        | meaning                                  |
|---------------------------------------|--------|------------|------------------------------------------|
| regina:members                        | SET    | —          | ids of registered members (workers)      |
| regina:member:<memberId>              | STRING | memberTtl  | the member's address; gone = member dead |
| regina:member:<memberId>:instances    | STRING | memberTtl  | number of instances the member holds     |
| regina:instance:<instanceId>          | STRING | —          | id of the member owning the instance     |
| regina:inst:<instanceId>              | HASH   | —          | instance record: definitionId, status,   |
|                                       |        |            | member, epoch, createdAt, lastActive,    |
|                                       |        |            | backupVersion, backupKey, backupSeq,     |
|                                       |        |            | journalSeq, vfsBytes                     |
| regina:instances                      | ZSET   | —          | every instance id, scored by createdAt   |
| regina:def:<defId>:instances          | ZSET   | —          | instance ids of one definition           |
| regina:lock:<instanceId>              | STRING | seconds    | activation lock (one placer at a time)   |
| regina:deleting:<instanceId>          | STRING | 2 × reply  | a delete of the instance is under way    |
| regina:steer:<instanceId>             | LIST   | —          | queued steering messages (JSON: steerId, |
|                                       |        |            | message)                                 |
| regina:inst:<instanceId>:runs         | ZSET   | —          | the instance's unfinished run ids, by    |
|                                       |        |            | createdAt (oldest = the running one)     |
| regina:run:<runId>                    | HASH   | runRetention | run record: instanceId, status, times,   |
|                                       |        |            | finishReason, usage, error, cancel       |
| regina:run:<runId>:steered           | LIST   | runRetention | steering messages the run took (JSON)  |
| regina:run:<runId>:events             | STREAM | runRetention | the run's events, ids "0-<seq>"          |
| regina:runs:cancel                    | PUBSUB | —          | run ids to cancel (every worker listens) |
| regina:idem:<route>:<scope>:<sha256>  | STRING | 24 h       | an Idempotency-Key's body hash + result  |
| regina:delegates:<instanceId>         | HASH   | —          | the instance's delegate children:        |
|                                       |        |            | agentType → child instance id            |
| regina:reply:<token>                  | LIST   | 60 s       | a worker's answer to a command           |
| regina:placement:rr                   | STRING | —          | round-robin counter                      |
| regina:storage                        | HASH   | —          | the redis storage adapter's blobs        |
| regina:sweep:orphans                  | STRING | heartbeat  | the orphan sweep's lock (one sweeper)    |
| regina:registry:reload                | PUBSUB | —          | agent definitions changed: reload        |
| regina:ready:<memberId>               | LIST   | —          | names of the member's instance queues    |
|                                       |        |            | with a step waiting, one per step        |
| regina:registry:version               | STRING | —          | bumped by every agent registry reload    |
| regina:registry:good                  | HASH   | —          | definition file path → its last text     |
|                                       |        |            | that parsed (a broken file's last good)  |
| regina:journal:<instanceId>           | LIST   | —          | VFS changes since the last backup        |
| regina:held:<memberId>                | ZSET   | —          | ids of the instances the member holds    |
|                                       |        |            | (started/suspending), by createdAt       |
| regina:holders                        | SET    | —          | members whose held set may be non-empty  |
| regina:unacked:<queue>                | SET    | —          | kombu delivery tags of the queue's steps |
|                                       |        |            | in kombu's `unacked` hash                |
| regina:indexes:v1                     | STRING | —          | the two indexes above were built once    |
| regina:stranded                       | SET    | —          | queues of instances marked suspended     |
|                                       |        |            | with runs open (the sweep resumes them)  |
| regina:runs:open                      | ZSET   | —          | run ids opened and not seen ended, by    |
|                                       |        |            | when last known held (lost-run sweep)    |
| regina:member:<memberId>:runs         | STRING | memberTtl  | ids of the runs whose steps the member   |
|                                       |        |            | holds, space-separated (per heartbeat)   |
| regina:sweep:runs                     | STRING | heartbeat  | the lost-run sweep's lock                |

Celery queues: `regina.i.<instanceId>` (an instance's chat steps, consumed only by its owner)
and `regina.m.<memberId>` (a member's own command queue).
"""

from __future__ import annotations

MEMBERS = "regina:members"
INSTANCES = "regina:instances"
PLACEMENT_RR = "regina:placement:rr"
SWEEP_ORPHANS_LOCK = "regina:sweep:orphans"
"""Held for `memberHeartbeat` seconds by the one member that sweeps for orphans."""
REGISTRY_RELOAD = "regina:registry:reload"
"""Pub/sub channel announcing that agent definitions changed on disk."""
STORAGE_HASH = "regina:storage"
"""Hash of the redis storage adapter's keys without a folder (foldered ones: `storage_folder`)."""
DEFAULT_QUEUE = "regina.default"
"""Celery's default queue (Regina routes every message explicitly; nothing should land here)."""
MEMBER_PREFIX = "regina:member:"
"""Prefix of `member(id)`: Lua scripts build member keys from it."""
CANCEL_CHANNEL = "regina:runs:cancel"
"""Pub/sub channel of run ids to cancel (every worker listens)."""
RUN_PREFIX = "regina:run:"
"""Prefix of `run_record()`; Lua scripts that look at an instance's runs get it as an argument."""
REGISTRY_VERSION = "regina:registry:version"
REGISTRY_GOOD = "regina:registry:good"
"""Hash: a definition file's resolved path → the last text of it that parsed, in any process."""
HELD_PREFIX = "regina:held:"
"""Prefix of `member_held()`: the instance scripts build held-set keys from it."""
HOLDERS = "regina:holders"
"""Members whose held set may be non-empty: the orphan sweep looks only at the dead ones."""
STRANDED = "regina:stranded"
"""Queues of instances marked suspended while runs were open (the orphan sweep resumes them)."""
INDEXES_BUILT = "regina:indexes:v1"
"""Set once the held and unacked indexes were built from earlier data (`orphans.build_indexes`)."""
RUNS_OPEN = "regina:runs:open"
"""Runs opened and not yet seen ended by the lost-run sweep, scored by when each was last known to
be held (its creation, then each sweep that found it queued or held; regina/runs/lost.py)."""
SWEEP_RUNS_LOCK = "regina:sweep:runs"
"""Held for `memberHeartbeat` seconds by the one member that sweeps for lost runs."""
UNACKED_PREFIX = "regina:unacked:"
"""Prefix of `unacked_of()`."""


def member(member_id: str) -> str:
    """Key holding a live member's address (expires when the member stops renewing)."""
    return f"{MEMBER_PREFIX}{member_id}"


def member_ready(member_id: str) -> str:
    """List of the member's instance queue names, one entry per step published to them.

    The worker blocks on this one list instead of on every queue it consumes (workers/transport.py).
    """
    return f"regina:ready:{member_id}"


def member_instances(member_id: str) -> str:
    """Key holding how many instances a member runs."""
    return f"{MEMBER_PREFIX}{member_id}:instances"


def member_runs(member_id: str) -> str:
    """The ids of the runs whose steps the member holds (taken, waiting for their turn or running),
    space-separated, written by each heartbeat with the member key's TTL: the lost-run sweep's
    proof that a live member still works on a run (regina/runs/lost.py)."""
    return f"{MEMBER_PREFIX}{member_id}:runs"


def member_held(member_id: str) -> str:
    """Sorted set (by createdAt) of the instances a member holds: its record names the member and
    its status is `started` or `suspending`. Kept by the scripts that change member or status."""
    return f"{HELD_PREFIX}{member_id}"


def unacked_of(queue: str) -> str:
    """Set of kombu's delivery tags of the queue's steps that are delivered and not acknowledged,
    except those tagged with their open run's id (workers/unacked.py)."""
    return f"{UNACKED_PREFIX}{queue}"


def instance_owner(instance_id: str) -> str:
    """The seed's instance → member mapping."""
    return f"regina:instance:{instance_id}"


def instance_record(instance_id: str) -> str:
    """Hash with the instance's metadata."""
    return f"regina:inst:{instance_id}"


def definition_instances(definition_id: str) -> str:
    """Sorted set of one definition's instance ids."""
    return f"regina:def:{definition_id}:instances"


def activation_lock(instance_id: str) -> str:
    """Lock held while an instance is being placed on a member."""
    return f"regina:lock:{instance_id}"


def deleting(instance_id: str) -> str:
    """Set while the instance is being deleted: its workers' failures meanwhile are 404s."""
    return f"regina:deleting:{instance_id}"


def steering(instance_id: str) -> str:
    """List of steering messages waiting for the instance's next step boundary."""
    return f"regina:steer:{instance_id}"


def instance_runs(instance_id: str) -> str:
    """Sorted set of the instance's unfinished runs (queued or running), oldest first."""
    return f"regina:inst:{instance_id}:runs"


def idempotency(route: str, scope: str, key_digest: str) -> str:
    """An Idempotency-Key's record, scoped per route and per instance (or definition)."""
    return f"regina:idem:{route}:{scope}:{key_digest}"


def delegates(instance_id: str) -> str:
    """Hash of the delegate children an instance owns, by agent type (reused across turns)."""
    return f"regina:delegates:{instance_id}"


def journal(instance_id: str) -> str:
    """List of the instance's VFS changes since its last backup (regina/journal.py)."""
    return f"regina:journal:{instance_id}"


def run_record(run_id: str) -> str:
    """Hash describing one run (one chat)."""
    return f"{RUN_PREFIX}{run_id}"


def run_steered(run_id: str) -> str:
    """List of the steering messages a run has taken (a redelivered step takes them again)."""
    return f"{RUN_PREFIX}{run_id}:steered"


def run_events(run_id: str) -> str:
    """Stream of a run's events; entry ids are "0-<seq>" so clients resume by sequence number."""
    return f"regina:run:{run_id}:events"


def reply(token: str) -> str:
    """List a worker pushes its answer to a command onto."""
    return f"regina:reply:{token}"


def instance_queue(instance_id: str) -> str:
    """Celery queue of one instance's chat steps."""
    return f"regina.i.{instance_id}"


def member_queue(member_id: str) -> str:
    """Celery queue of one member's commands (attach, suspend, …)."""
    return f"regina.m.{member_id}"


def storage_folder(storage_hash: str, folder: str) -> str:
    """Hash of the redis storage adapter's keys under one `instances/<id>` (that instance's backups)."""
    return f"{storage_hash}:{folder}"
