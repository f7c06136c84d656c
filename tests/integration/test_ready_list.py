"""Workers block on their ready list, not on every instance queue they consume (issue 16).

kombu's BRPOP named every attached queue after every message, so a worker's cost per step grew
with its instances; with the ready list (workers/transport.py) it names the member's command
queue and its ready list, however many instances are attached.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator

import httpx
import redis

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until


def test_brpop_names_the_ready_list_not_every_instance_queue(cluster: Cluster, api: httpx.Client) -> None:
    iids = [api.post("/agents/openai-agent/instances", json={}).json()["instanceId"] for _ in range(30)]

    def brpops(seen: list[tuple[str, str]]) -> list[list[str]]:
        return [c.split(" ")[1:-1] for _, c in seen if c.split(" ", 1)[0].upper() == "BRPOP"]

    with _monitored(cluster, api) as seen:  # MONITOR is on before the first chat
        for iid in iids:
            assert api.post(f"/instances/{iid}/chat", json={"message": "hi"}).json()["text"] == "echo: hi"
        # A worker blocks again once its step is done, maybe after the client has the answer.
        wait_until(lambda: len(brpops(seen)) >= len(iids), timeout=15, what="a BRPOP after every step")
    seen_brpops = brpops(seen)
    assert all(len(names) <= 2 for names in seen_brpops), max(seen_brpops, key=len)
    assert all(any(n.strip('"').startswith("regina:ready:") for n in names) for names in seen_brpops)


@contextlib.contextmanager
def _monitored(cluster: Cluster, api: httpx.Client) -> Iterator[list[tuple[str, str]]]:
    """Redis's MONITOR listing, as (client type: "lua" inside a script, command), of what runs
    inside the block (MONITOR is on before the block starts)."""
    seen: list[tuple[str, str]] = []
    end = f"ECHO monitor-end-{uuid.uuid4().hex}"
    conn = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    monitor = conn.monitor()
    m = monitor.__enter__()

    def watch() -> None:
        for cmd in m.listen():
            if cmd.get("command", "") == end:
                return  # everything sent before it has been listed (a flag could stop it short)
            seen.append((str(cmd.get("client_type", "")), cmd.get("command", "")))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        with redis.Redis.from_url(cluster.redis_url, decode_responses=True) as marker:
            marker.echo(end.split(" ", 1)[1])
        t.join(10)
        monitor.__exit__(None, None, None)
        conn.close()


def test_a_step_is_taken_and_acknowledged_inside_scripts(cluster: Cluster, api: httpx.Client) -> None:
    """The take records the step in kombu's unacked index in the same script as its RPOP, and the
    run's finish script removes it (regina/runs/ack.py): no MULTI/EXEC of kombu's per chat, and
    nothing left unacknowledged after the reply."""
    iid = api.post("/agents/openai-agent/instances", json={}).json()["instanceId"]
    assert api.post(f"/instances/{iid}/chat", json={"message": "warm"}).status_code == 200
    with _monitored(cluster, api) as seen:
        for i in range(5):
            assert api.post(f"/instances/{iid}/chat", json={"message": f"m{i}"}).json()["text"] == f"echo: m{i}"
        check = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        unacked = {tag: raw for tag, raw in check.hgetall("unacked").items() if f"regina.i.{iid}" in raw}
        check.close()
    assert unacked == {}
    taken = [kind for kind, c in seen if c.startswith("ZADD unacked_index")]
    acked = [kind for kind, c in seen if c.startswith("HDEL unacked ")]
    popped = [kind for kind, c in seen if c.startswith(f"RPOP regina.i.{iid}")]
    # kombu's own bookkeeping sent each from a MULTI/EXEC of its own (client type tcp/unix)
    assert taken == ["lua"] * 5 and acked == ["lua"] * 5 and popped == ["lua"] * 5, seen


def test_the_finish_writes_the_instance_record_once_per_chat(cluster: Cluster, api: httpx.Client) -> None:
    """The finish script records the VFS journal's seq in the same HSET as the instance's usage
    and lastActive (regina/runs/stream.py): one write of the instance record per chat."""
    iid = api.post("/agents/openai-agent/instances", json={}).json()["instanceId"]
    assert api.post(f"/instances/{iid}/chat", json={"message": "warm"}).status_code == 200
    with _monitored(cluster, api) as seen:
        for i in range(3):
            assert api.post(f"/instances/{iid}/chat", json={"message": f"m{i}"}).json()["text"] == f"echo: m{i}"
    # Each script's commands follow its EVALSHA in MONITOR's listing (a script runs alone).
    scripts: list[list[str]] = []
    for kind, c in seen:
        if kind != "lua":
            scripts.append([])
        elif scripts:
            scripts[-1].append(c)
    record = f"HSET regina:inst:{iid} "
    finishes = [cmds for cmds in scripts if any(c.startswith(record) and " promptTokens " in c for c in cmds)]
    assert len(finishes) == 3, scripts
    assert all(sum(c.startswith(record) for c in cmds) == 1 for cmds in finishes), finishes
    assert any(" journalSeq " in c for cmds in finishes for c in cmds), finishes  # the journal rode along


def test_an_idle_instance_s_step_starts_its_run_in_its_take(cluster: Cluster, api: httpx.Client) -> None:
    """A step of an instance that runs nothing is taken and its run started (epoch fence,
    `running`, steering) in one script (workers/transport.py `_TAKE_AND_BEGIN`): the worker's
    round trips per chat are its BRPOP, that script and the finish script."""
    iid = api.post("/agents/openai-agent/instances", json={}).json()["instanceId"]
    assert api.post(f"/instances/{iid}/chat", json={"message": "warm"}).status_code == 200
    with _monitored(cluster, api) as seen:
        run_ids = []
        for i in range(3):
            resp = api.post(f"/instances/{iid}/chat", json={"message": f"m{i}"})
            assert resp.json()["text"] == f"echo: m{i}"
            run_ids.append(resp.headers["X-Run-Id"])
    scripts: list[list[str]] = []
    for kind, c in seen:
        if kind != "lua":
            scripts.append([])
        elif scripts:
            scripts[-1].append(c)
    for run_id in run_ids:
        started = [
            cmds
            for cmds in scripts
            if any(c.startswith(f"HSET regina:run:{run_id} ") and " status running " in c for c in cmds)
        ]
        assert len(started) == 1, [c for cmds in scripts for c in cmds if run_id in c]
        assert any(c.startswith(f"RPOP regina.i.{iid}") for c in started[0]), started


def test_steps_waiting_on_the_ready_list_follow_one_another_without_a_brpop_each(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Given a worker paused while eight instances' chats wait on its ready list
    c = make_cluster().start(workers=1)
    (worker,) = c.workers
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    api = httpx.Client(base_url=c.web.url, timeout=60)
    iids = [api.post("/agents/openai-agent/instances", json={}).json()["instanceId"] for _ in range(8)]
    pool = cf.ThreadPoolExecutor(len(iids))
    os.kill(worker.popen.pid, signal.SIGSTOP)
    try:
        chats = [pool.submit(api.post, f"/instances/{i}/chat", json={"message": f"m{k}"}) for k, i in enumerate(iids)]
        # its BRPOP, sent before the pause, was served by the first push
        wait_until(lambda: r.llen(f"regina:ready:{worker.member_id}") == len(iids) - 1, 20, what="the ready list")
        brpops = int(r.info("commandstats")["cmdstat_brpop"]["calls"])
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)

    # When it goes on, every chat is answered, and the worker took the waiting steps one after
    # another (each take popped the next name) instead of a BRPOP for each
    assert [f.result(60).json()["text"] for f in chats] == [f"echo: m{k}" for k in range(len(iids))]
    assert int(r.info("commandstats")["cmdstat_brpop"]["calls"]) - brpops <= 3
    pool.shutdown()
    api.close()
    r.close()


def test_steps_waiting_when_a_live_members_ready_list_was_pruned_still_run(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    """A member taken for dead (its key lapsed: a pause past memberTtl) loses its ready list to
    the orphan sweep; if it comes back still holding its instances, the steps that wait on their
    queues are put back on its list at its next renewal, not left for later publishes."""
    c = make_cluster(REGINA_MEMBER_HEARTBEAT="0.5", REGINA_LIMITS__REQUEST_TIMEOUT="10", REGINA_CONCURRENCY="1").start(
        workers=1
    )
    worker = c.workers[0]
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    with httpx.Client(base_url=c.web.url, timeout=60) as api, cf.ThreadPoolExecutor(2) as pool:
        iid = api.post("/agents/openai-agent/instances", json={}).json()["instanceId"]
        fake_llm.push_for("first, slowly", Reply(text="first done", delay=2))
        first = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "first, slowly"})
        wait_until(lambda: any(q.last_user_text == "first, slowly" for q in fake_llm.requests), 10)
        # Its one slot busy, the worker takes nothing more: the next step's entry waits.
        second = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "second"})
        ready = f"regina:ready:{worker.member_id}"
        wait_until(lambda: r.llen(ready) == 1, 10, what="the second step on the ready list")
        # What the orphan sweep does to a member whose key had lapsed:
        r.srem("regina:members", worker.member_id)
        r.delete(ready)
        assert first.result().json()["text"] == "first done"
        answer = second.result()
        assert answer.status_code == 200 and answer.json()["text"] == "echo: second", answer.text


def test_a_worker_takes_no_step_of_an_instance_that_moved_to_another_member(redis_server: RedisServer) -> None:
    """A worker back from a pause still consumes the queue of an instance that moved meanwhile
    (until its heartbeat lets go of it), and its ready list may name that queue: its takes must
    leave the new owner's steps where they are (taken, they would wait behind whatever the old
    holder still runs, then be given back out of order)."""
    from regina import keys
    from workers.transport import _TAKE_AND_BEGIN, _TAKE_UNACKED

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    iid = f"openai-agent-{uuid.uuid4().hex[:24]}"
    queue, record = keys.instance_queue(iid), keys.instance_record(iid)
    step = json.dumps({"body": "", "properties": {"delivery_tag": "tag-1", "delivery_info": {}}})
    take_keys = [queue, f"unacked-index-{iid}", f"unacked-{iid}", keys.unacked_of(queue)]
    try:
        r.hset(record, mapping={"member": "new@test", "epoch": "2", "status": "started"})
        r.lpush(queue, step)
        for script, keys_, args in (
            (_TAKE_UNACKED, [*take_keys, "ready-old", record], ["1", "run-", "0", "old@test"]),
            (
                _TAKE_AND_BEGIN,
                [*take_keys, record, keys.steering(iid), "ready-old"],
                ["1", "run-", "1", iid, "60", keys.RUN_PREFIX, "0", "old@test"],
            ),
        ):
            assert r.register_script(script)(keys=keys_, args=args)[0] == ""
            assert r.lrange(queue, 0, -1) == [step]
        # ... while its owner takes it
        taken = r.register_script(_TAKE_UNACKED)(
            keys=[*take_keys, "ready-new", record], args=["1", "run-", "0", "new@test"]
        )
        assert taken[0] == step and r.llen(queue) == 0
    finally:
        r.delete(queue, record, *take_keys)


def test_a_member_that_renews_while_the_sweep_prunes_is_kept(redis_server: RedisServer) -> None:
    """The sweep read a member's key as gone, the member renewed, then the sweep pruned it: it
    left placement and lost its ready list until its next renewal."""
    from regina import keys
    from regina.cluster.membership import _alive

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    back, gone = f"back-{uuid.uuid4().hex[:6]}@test", f"gone-{uuid.uuid4().hex[:6]}@test"
    try:
        r.sadd(keys.MEMBERS, back, gone)
        r.lpush(keys.member_ready(back), "regina.i.x")
        r.lpush(keys.member_ready(gone), "regina.i.y")
        seen_dead = [back, 0, "0", gone, 0, "0"]  # what the sweep read
        r.set(keys.member(back), "{}", ex=60)  # ... and then `back` renewed

        _alive(r, seen_dead, prune=True)

        assert r.sismember(keys.MEMBERS, back) and r.llen(keys.member_ready(back)) == 1
        assert not r.sismember(keys.MEMBERS, gone) and not r.exists(keys.member_ready(gone))
    finally:
        r.srem(keys.MEMBERS, back, gone)
        r.delete(keys.member(back), keys.member_ready(back), keys.member_ready(gone))
