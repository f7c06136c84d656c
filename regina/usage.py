"""An instance's token usage so far (SPEC §12: `GET /instances/<id>` and the fleet view's `usage`).

A run adds its tokens to its instance's record once, in the script that ends it
(regina/runs/stream.py `_FINISH`; a lost run's in regina/runs/lost.py). Until then what it spent
is in its own record, `spent` (`RunProgress`: the tokens of its completed model calls, written with
each step's journal flush, and kept when a crashed attempt's step is redelivered). So the usage so
far is the instance record's tokens plus the `spent` of its running runs, read in one script: a
run that ends meanwhile is counted either by its `spent` or in the record, never both, never
neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import redis

from regina import keys
from regina.instances import InstanceRecord, record_from_hash
from regina.redis_conn import script

__all__ = ["read_with_usage", "read_page_with_usage"]

# Lua: `running_usage(runs)`: the prompt and completion tokens the running ones of `runs` (run
# ids, an instance's unfinished runs) recorded so far; a queued run has spent nothing, an ended
# one is in the instance's record already.
_LUA_RUNNING_USAGE = f"""
local function running_usage(runs)
  local prompt, completion = 0, 0
  for _, run_id in ipairs(runs) do
    local rec = redis.call('HMGET', '{keys.RUN_PREFIX}' .. run_id, 'status', 'spent')
    if rec[1] == 'running' and rec[2] then
      local _, p, c = string.match(rec[2], '^(%d+) (%d+) (%d+)$')
      prompt, completion = prompt + tonumber(p or '0'), completion + tonumber(c or '0')
    end
  end
  return prompt, completion
end
"""

# KEYS: pairs of (instance record, instance runs). For each pair: {the record's HGETALL (empty:
# no instance), its oldest unfinished run ('' for none), prompt, completion tokens its running
# runs recorded}.
_READ = (
    _LUA_RUNNING_USAGE
    + """
local out = {}
for i = 1, #KEYS, 2 do
  local rec = redis.call('HGETALL', KEYS[i])
  local runs = {}
  if #rec > 0 then runs = redis.call('ZRANGE', KEYS[i + 1], 0, -1) end
  local prompt, completion = running_usage(runs)
  out[#out + 1] = {rec, runs[1] or '', prompt, completion}
end
return out
"""
)


def read_with_usage(client: redis.Redis, instance_id: str) -> InstanceRecord | None:
    """The instance's record with its usage so far, or None when it does not exist."""
    ((rec, _run),) = read_page_with_usage(client, [instance_id])
    return rec


def read_page_with_usage(client: redis.Redis, ids: list[str]) -> list[tuple[InstanceRecord | None, str | None]]:
    """(record with its usage so far or None, its oldest unfinished run or None) of each of `ids`,
    in one round trip."""
    if not ids:
        return []
    script_keys = [k for iid in ids for k in (keys.instance_record(iid), keys.instance_runs(iid))]
    replies = cast(list[list[Any]], script(client, _READ)(keys=script_keys))
    out: list[tuple[InstanceRecord | None, str | None]] = []
    for iid, (flat, run, prompt, completion) in zip(ids, replies, strict=True):
        if not flat:
            out.append((None, None))
            continue
        rec = record_from_hash(iid, dict(zip(flat[::2], flat[1::2], strict=True)))
        rec = dataclasses.replace(
            rec,
            prompt_tokens=rec.prompt_tokens + int(prompt),
            completion_tokens=rec.completion_tokens + int(completion),
        )
        out.append((rec, run or None))
    return out
