"""A `factory` module for tests: records each hook call in a file and wraps backups."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOG = Path(os.environ.get("TEST_FACTORY_LOG", "/tmp/regina-factory.log"))


def _record(event: str, instance_id: str, **extra: Any) -> None:
    with LOG.open("a") as f:
        f.write(json.dumps({"event": event, "instanceId": instance_id, **extra}) + "\n")


def prepare_instance(instance_id: str, definition: Any) -> None:
    _record("prepare", instance_id, definition=definition.id)


# backup/restore are not exported: Regina's defaults are used for them (the fallback rule).
