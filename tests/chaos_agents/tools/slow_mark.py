"""Test tool: record that it ran (outside any VFS), then take its time.

Every call appends its tag to the file named by the worker's CHAOS_TOOL_LOG, so a test can
count how often each call really ran, whichever worker ran it.
"""

import os
import time

from pydantic import BaseModel, Field

from regina.runtime.tools.base import tool


class Params(BaseModel):
    tag: str = Field(description="What to record")
    seconds: float = Field(default=0.0, description="How long to take afterwards")


@tool(description="Record a tag, then wait", parameters=Params)
def slow_mark(params: Params) -> dict[str, str]:
    path = os.environ.get("CHAOS_TOOL_LOG")
    if path:
        with open(path, "a") as log:
            log.write(params.tag + "\n")
            log.flush()
            os.fsync(log.fileno())
    time.sleep(params.seconds)
    return {"marked": params.tag}
