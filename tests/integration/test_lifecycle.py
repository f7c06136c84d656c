"""Idle suspension, backups to fs / S3 / Redis, queue release and resume on another worker (issue 5)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.harness.delay_proxy import DelayProxy
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster, Proc
from tests.harness.s3_server import FAKE_AWS_ENV, S3Server
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.slow


def storage_env(kind: str, tmp: Path, s3: S3Server, prefix: str) -> dict[str, str]:
    if kind == "fs":
        return {"REGINA_STORAGE__TYPE": "fs", "REGINA_STORAGE__BASE_PATH": str(tmp / "backups")}
    if kind == "s3":
        return {
            "REGINA_STORAGE__TYPE": "s3",
            "REGINA_STORAGE__BUCKET": "regina-test",
            "REGINA_STORAGE__ENDPOINT": s3.endpoint,
            "REGINA_STORAGE__REGION": "us-east-1",
            "REGINA_STORAGE__PREFIX": prefix,
            **FAKE_AWS_ENV,
        }
    return {"REGINA_STORAGE__TYPE": "redis", "REGINA_STORAGE__PREFIX": prefix}


def queues_of(redis_url: str, member: str) -> list[str]:
    """What Celery's inspect says the member consumes."""
    from celery import Celery

    app = Celery("inspect", broker=redis_url)
    try:
        replies = app.control.inspect(destination=[member], timeout=2).active_queues() or {}
    finally:
        app.close()
    return [q["name"] for q in replies.get(member, [])]


def record(redis_url: str, iid: str) -> dict[str, str]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return r.hgetall(f"regina:inst:{iid}")  # type: ignore[return-value]
    finally:
        r.close()


@pytest.fixture
def two_workers(
    make_cluster: Callable[..., Cluster], s3_server: S3Server, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Cluster, httpx.Client]]:
    kind = getattr(request, "param", "fs")
    c = make_cluster(REGINA_IDLE_TIMEOUT="1.5", **storage_env(kind, tmp_path, s3_server, f"t-{tmp_path.name}/"))
    w1 = c.start_worker(wait=False)
    w2 = c.start_worker(wait=False)
    c.wait_worker(w1)
    c.wait_worker(w2)
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as client:
        yield c, client


def owner(c: Cluster, api: httpx.Client, iid: str) -> Proc:
    member = api.get(f"/instances/{iid}").json()["member"]
    return next(p for p in c.procs if p.member_id == member)


@pytest.mark.parametrize("two_workers", ["fs", "s3", "redis"], indirect=True)
def test_idle_instance_suspends_releases_its_queue_and_resumes_on_another_worker(
    two_workers: tuple[Cluster, httpx.Client], fake_llm: FakeLLM
) -> None:
    c, api = two_workers
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    fake_llm.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/notes/keep.txt", "content": "survives"})]),
        Reply(text="written"),
    )
    assert api.post(f"/instances/{iid}/chat", json={"message": "write it"}).json()["text"] == "written"
    first = owner(c, api, iid)
    assert f"regina.i.{iid}" in queues_of(c.redis_url, first.member_id)

    # Given the idle timeout passes, the instance is suspended and its queue released.
    wait_until(lambda: api.get(f"/instances/{iid}").json()["status"] == "suspended", timeout=15, what="idle suspend")
    assert f"regina.i.{iid}" not in queues_of(c.redis_url, first.member_id)
    assert int(record(c.redis_url, iid)["backupVersion"]) >= 1

    # When its worker stops and a chat arrives, another worker serves it from the backup.
    assert first.stop() == 0
    fake_llm.push(Reply(tool_calls=[ToolCall("read_file", {"path": "/notes/keep.txt"})]), Reply(text="read it"))
    resp = api.post(f"/instances/{iid}/chat", json={"message": "read it back"})
    assert resp.json()["text"] == "read it"
    second = owner(c, api, iid)
    assert second.member_id != first.member_id
    tool_result = fake_llm.requests[-1].messages[-1]
    assert tool_result["role"] == "tool" and "survives" in tool_result["content"]
    history = [m["content"] for m in fake_llm.requests[-1].messages if m["role"] == "user"]
    assert history == ["write it", "read it back"]


def test_explicit_suspend_and_resume(two_workers: tuple[Cluster, httpx.Client]) -> None:
    c, api = two_workers
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    api.post(f"/instances/{iid}/chat", json={"message": "one"})
    assert api.post(f"/instances/{iid}/suspend").status_code == 204
    assert api.get(f"/instances/{iid}").json()["status"] == "suspended"
    assert api.post(f"/instances/{iid}/suspend").status_code == 204  # already suspended: fine
    assert api.post(f"/instances/{iid}/resume").status_code == 204
    assert api.get(f"/instances/{iid}").json()["status"] == "started"
    assert [m["content"] for m in api.get(f"/instances/{iid}/messages").json()] == ["one", "echo: one"]


def test_a_step_queued_while_suspending_is_served_after_resume(
    two_workers: tuple[Cluster, httpx.Client], fake_llm: FakeLLM
) -> None:
    c, api = two_workers
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    fake_llm.push_for("slow", Reply(text="slow done", delay=1.0))
    with cf.ThreadPoolExecutor(3) as pool:
        running = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "slow"})
        fake_llm.wait_for_requests(1, timeout=10)
        suspending = pool.submit(api.post, f"/instances/{iid}/suspend")
        queued = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "queued meanwhile"})
        assert running.result(30).json()["text"] == "slow done"
        assert suspending.result(30).status_code == 204
        assert queued.result(60).json()["text"] == "echo: queued meanwhile"
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
    assert contents == ["slow", "slow done", "queued meanwhile", "echo: queued meanwhile"]


def test_backup_taken_while_a_chat_writes_files_is_consistent(
    two_workers: tuple[Cluster, httpx.Client], fake_llm: FakeLLM
) -> None:
    c, api = two_workers
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    script = "mkdir -p /data; for i in $(seq 1 150); do echo line-$i > /data/f$i.txt; done; ls /data | wc -l"
    fake_llm.push(Reply(tool_calls=[ToolCall("bash", {"command": script})]), Reply(text="wrote 150"))
    with cf.ThreadPoolExecutor(2) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "write many"})
        fake_llm.wait_for_requests(1, timeout=10)
        first = owner(c, api, iid)  # held now; once suspended, an instance has no member
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        assert chat.result(60).json()["text"] == "wrote 150"
    wrote = json.loads(fake_llm.requests[1].messages[-1]["content"])
    assert wrote["stdout"].strip() == "150"
    assert api.get(f"/instances/{iid}").json()["member"] is None
    first.stop()
    fake_llm.push(
        Reply(tool_calls=[ToolCall("bash", {"command": "cat /data/f*.txt | sort -u | wc -l"})]), Reply(text="ok")
    )
    api.post(f"/instances/{iid}/chat", json={"message": "count"})
    result = json.loads(fake_llm.requests[-1].messages[-1]["content"])
    assert result["stdout"].strip() == "150"


def test_sigterm_mid_run_loses_no_acknowledged_message(
    two_workers: tuple[Cluster, httpx.Client], fake_llm: FakeLLM
) -> None:
    c, api = two_workers
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    api.post(f"/instances/{iid}/chat", json={"message": "before"})
    fake_llm.push_for("long", Reply(text="a b c d e f g h", chunk_delay=0.2))
    first = owner(c, api, iid)
    with cf.ThreadPoolExecutor(2) as pool:
        running = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "long"})
        fake_llm.wait_for_requests(2, timeout=10)
        queued = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "after"})
        first.popen.terminate()  # SIGTERM: a platform restart
        assert running.result(60).json()["text"] == "a b c d e f g h"
        assert queued.result(60).json()["text"] == "echo: after"
    assert first.popen.wait(30) == 0
    # The stopped worker backed the instance up and released it; the next chat lands elsewhere.
    assert api.get(f"/instances/{iid}").json()["status"] == "suspended"
    assert api.post(f"/instances/{iid}/chat", json={"message": "next"}).json()["text"] == "echo: next"
    assert owner(c, api, iid).member_id != first.member_id
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
    assert contents == [
        "before",
        "echo: before",
        "long",
        "a b c d e f g h",
        "after",
        "echo: after",
        "next",
        "echo: next",
    ]


def test_delete_removes_queue_vfs_backup_and_keys(two_workers: tuple[Cluster, httpx.Client], tmp_path: Path) -> None:
    c, api = two_workers
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    api.post(f"/instances/{iid}/chat", json={"message": "x"})
    api.post(f"/instances/{iid}/suspend")
    backups = list((tmp_path / "backups").rglob("*"))
    assert any(iid in str(p) for p in backups)
    api.post(f"/instances/{iid}/resume")
    assert api.delete(f"/instances/{iid}").status_code == 204
    assert api.get(f"/instances/{iid}").status_code == 404
    assert not any(iid in str(p) for p in (tmp_path / "backups").rglob("*") if p.is_file())
    assert not list(c.tmp.rglob(f"{iid}.sqlite*"))
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    assert not [k for k in r.keys(f"*{iid}*")]
    r.close()


def test_heartbeats_and_a_running_loop_keep_an_instance_from_idling_out(
    two_workers: tuple[Cluster, httpx.Client], fake_llm: FakeLLM
) -> None:
    import time

    c, api = two_workers
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    # Heartbeats every 0.4 s for 3 s (twice the 1.5 s idle timeout): still started.
    for _ in range(8):
        assert api.post(f"/instances/{iid}/heartbeat").status_code == 204
        time.sleep(0.4)
    assert api.get(f"/instances/{iid}").json()["status"] == "started"
    # A step that waits 3.5 s on the model: the instance is busy, not idle.
    fake_llm.push(Reply(text="slow but alive", delay=3.5))
    assert api.post(f"/instances/{iid}/chat", json={"message": "take your time"}).json()["text"] == "slow but alive"
    shown = api.get(f"/instances/{iid}").json()
    assert shown["status"] == "started" and shown["epoch"] == 1  # never suspended and resumed meanwhile
    assert [m["content"] for m in api.get(f"/instances/{iid}/messages").json()] == ["take your time", "slow but alive"]
    # Left alone, it idles out.
    wait_until(lambda: api.get(f"/instances/{iid}").json()["status"] == "suspended", timeout=15, what="idle suspend")


def _one_chatted_instance(make_cluster: Callable[..., Cluster], backups: Path) -> tuple[Cluster, str]:
    """One worker with fs storage in `backups` (no idle suspends), and an instance chatted once."""
    c = make_cluster(
        REGINA_IDLE_TIMEOUT="600", REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(backups)
    ).start(workers=1)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
        assert api.post(f"/instances/{iid}/chat", json={"message": "before"}).status_code == 200
    return c, str(iid)


def test_a_suspend_whose_backup_fails_leaves_the_instance_started_and_answering(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Storage down during a suspend: the instance stays where it is, started, its queue read
    (not "suspending" until someone asks again, every chat a 503); once storage is back, the
    next suspend succeeds."""
    backups = tmp_path / "backups"
    c, iid = _one_chatted_instance(make_cluster, backups)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        backups.rename(tmp_path / "moved")
        backups.write_text("not a directory: every put fails")

        failed = api.post(f"/instances/{iid}/suspend")

        assert failed.status_code >= 500, failed.text
        assert record(c.redis_url, iid)["status"] == "started"
        answer = api.post(f"/instances/{iid}/chat", json={"message": "after"}, timeout=20)
        assert answer.status_code == 200 and answer.json()["text"] == "echo: after"

        backups.unlink()
        (tmp_path / "moved").rename(backups)
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        assert record(c.redis_url, iid)["status"] == "suspended"


def test_an_attach_that_fails_leaves_the_instance_suspended_not_started_nowhere(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """A resume whose restore cannot read storage: the claim wrote `started` on a live worker
    that then holds nothing; left so, every later chat would wait on a queue nobody reads."""
    backups = tmp_path / "backups"
    c, iid = _one_chatted_instance(make_cluster, backups)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        for copy in (c.tmp / f"vfs-{c.workers[0].member_id.split('@')[0]}").glob(f"{iid}*"):
            copy.unlink()  # no local copy: the attach must download the backup
        backups.rename(tmp_path / "moved")
        backups.write_text("not a directory: every get fails")

        failed = api.post(f"/instances/{iid}/chat", json={"message": "during"}, timeout=30)

        assert failed.status_code >= 500, failed.text
        assert record(c.redis_url, iid)["status"] == "suspended"
        backups.unlink()
        (tmp_path / "moved").rename(backups)
        answer = api.post(f"/instances/{iid}/chat", json={"message": "after"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["text"] == "echo: after"
        texts = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
        assert texts[:2] == ["before", "echo: before"] and texts[-2:] == ["after", "echo: after"]


def test_a_delete_with_runs_queued_behind_a_slow_one_leaves_no_queue(
    cluster: Cluster, api: httpx.Client, fake_llm: FakeLLM
) -> None:
    """The owner has taken steps that wait behind the running one; the delete ends every run and
    the owner lets go of them: none may be put back on the queue the delete removes."""
    import time

    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    fake_llm.push_for("slowpoke", Reply(text="slow", delay=3.0))
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)

    def chat(message: str, timeout: float) -> None:
        with pytest.raises(httpx.HTTPError):  # each gives up waiting; its run stays queued
            api.post(f"/instances/{iid}/chat", json={"message": message}, timeout=timeout)

    with cf.ThreadPoolExecutor(21) as pool:
        first = pool.submit(chat, "slowpoke", 2.0)
        wait_until(lambda: fake_llm.requests, timeout=10, what="the slow model call")
        waiting = [pool.submit(chat, f"queued {i}", 1.0) for i in range(20)]
        wait_until(lambda: r.zcard(f"regina:inst:{iid}:runs") == 21, timeout=10, what="20 runs queued")
        for f in [first, *waiting]:
            f.result(10)
    assert api.delete(f"/instances/{iid}").status_code == 204

    def lines() -> list[str]:
        return [line for w in cluster.workers for line in w.log().splitlines() if iid in line]

    # Steps the owner had taken are let go of after the delete's answer (seconds later on a loaded
    # machine): dropped while waiting for their turn ("its run has ended") or at their start ("run
    # cancelled"). Steps it had not taken yet went with the queue.
    time.sleep(3)
    # Requeued (handed back), they would race the delete's purge: left after it, a queue nobody reads.
    assert not [line for line in lines() if "handed back" in line]
    assert not r.exists(f"regina.i.{iid}")
    assert not [k for k in r.keys(f"*{iid}*")]
    r.close()


def test_reads_and_chats_racing_a_delete_answer_404_not_503(cluster: Cluster, api: httpx.Client) -> None:
    """A worker asked for an instance being deleted fails because of the delete: the client hears
    'not found' (404), never 'unavailable, try again' (503)."""
    statuses: list[tuple[int, str, str]] = []
    with cf.ThreadPoolExecutor(8) as pool:
        for round_ in range(12):
            iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
            if round_ % 2:
                api.post(f"/instances/{iid}/suspend")
            calls = [pool.submit(api.get, f"/instances/{iid}/messages") for _ in range(3)]
            calls += [pool.submit(api.post, f"/instances/{iid}/resume") for _ in range(2)]
            calls.append(pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "hi", "whenBusy": "steer"}))
            assert api.delete(f"/instances/{iid}").status_code == 204
            answers = [f.result(60) for f in calls]
            statuses += [(a.status_code, a.request.url.path.rsplit("/", 1)[-1], a.text[:160]) for a in answers]
    assert not [s for s in statuses if s[0] >= 500], statuses


def test_a_suspend_while_an_attach_is_restoring_waits_for_it(fake_llm: FakeLLM, tmp_path: Path) -> None:
    """A chat resumes an instance; its attach takes seconds (here: MCP servers that never answer,
    3 s of connectTimeout); a suspend arrives meanwhile. The suspend marked the record suspended
    at once and released the queue, then the attach's last write made it started again: started
    on a member that no longer read its queue, every chat waiting until requestTimeout."""
    import socket
    import time

    from tests.harness.clusters import private_cluster

    with socket.socket() as hole:  # accepts connections, never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        env = {
            "REGINA_OUTBOUND_ALLOWLIST": "127.0.0.1",
            "REGINA_MCP__CONNECT_TIMEOUT": "3",
            "TEST_MCP_SSE_URL": url + "/sse",
            "TEST_MCP_HTTP_URL": url + "/mcp",
            "TEST_MCP_DEAD_URL": url + "/mcp",
            "REGINA_STORAGE__TYPE": "fs",
            "REGINA_STORAGE__BASE_PATH": str(tmp_path / "backups"),
            "REGINA_LIMITS__REQUEST_TIMEOUT": "40",
        }
        with (
            private_cluster(fake_llm.url, **env) as c,
            httpx.Client(base_url=c.start(workers=1).web.url, timeout=90) as api,
        ):
            iid = api.post("/agents/mcp-agent/instances").json()["instanceId"]
            assert api.post(f"/instances/{iid}/suspend").status_code == 204
            r = redis.Redis.from_url(c.redis_url, decode_responses=True)
            with cf.ThreadPoolExecutor(2) as pool:
                chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "during the attach"})
                wait_until(lambda: r.hget(f"regina:inst:{iid}", "status") == "started", timeout=10, what="the claim")
                suspend = pool.submit(api.post, f"/instances/{iid}/suspend")
                started = time.monotonic()
                resp = chat.result(60)
                assert suspend.result(60).status_code == 204
            assert resp.status_code == 200 and resp.json()["text"] == "echo: during the attach", resp.text
            assert time.monotonic() - started < 20  # not requestTimeout
            again = api.post(f"/instances/{iid}/chat", json={"message": "and after"}, timeout=30)
            assert again.status_code == 200 and again.json()["text"] == "echo: and after", again.text
            r.close()


@pytest.fixture
def s3_behind_proxy() -> Iterator[DelayProxy]:
    """An S3 server of this test's own, reached through a proxy that can make it slow or down."""
    with S3Server() as s3:
        s3.make_bucket("regina-proxied")
        with DelayProxy("127.0.0.1", s3.port) as proxy:
            yield proxy


def _s3_env(proxy: DelayProxy, **more: str) -> dict[str, str]:
    return {
        "REGINA_STORAGE__TYPE": "s3",
        "REGINA_STORAGE__BUCKET": "regina-proxied",
        "REGINA_STORAGE__ENDPOINT": proxy.url,
        "REGINA_STORAGE__REGION": "us-east-1",
        "REGINA_IDLE_TIMEOUT": "600",
        **FAKE_AWS_ENV,
        **more,
    }


def _local_copies(c: Cluster, iid: str) -> list[str]:
    return sorted(p.name for p in c.tmp.rglob(f"{iid}*"))


def test_a_delete_while_storage_is_down_answers_503_changes_nothing_and_can_be_sent_again(
    make_cluster: Callable[..., Cluster], s3_behind_proxy: DelayProxy
) -> None:
    """The owner used to drop the instance first and the backups' delete then failed: a 500, and
    the record stayed `started` on a live member that no longer held it (every chat waited until
    requestTimeout). Storage goes first now: its outage is a 503 that changed nothing."""
    proxy = s3_behind_proxy
    c = make_cluster(**_s3_env(proxy, REGINA_LIMITS__REQUEST_TIMEOUT="15")).start(workers=1)
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
        assert api.post(f"/instances/{iid}/chat", json={"message": "before"}).status_code == 200
        assert api.post(f"/instances/{iid}/suspend").status_code == 204  # a backup in storage
        assert api.post(f"/instances/{iid}/resume").status_code == 204
        proxy.down = True

        failed = api.delete(f"/instances/{iid}")

        assert failed.status_code == 503, failed.text
        assert "storage" in failed.json()["error"]
        assert record(c.redis_url, iid)["status"] == "started"
        answer = api.post(f"/instances/{iid}/chat", json={"message": "after"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["text"] == "echo: after", answer.text

        proxy.down = False
        assert api.delete(f"/instances/{iid}").status_code == 204
        assert api.get(f"/instances/{iid}").status_code == 404
    assert not [k for k in r.keys(f"*{iid}*")]
    r.close()
    assert not _local_copies(c, iid)


def test_a_delete_while_an_attach_restores_leaves_no_local_copy(
    make_cluster: Callable[..., Cluster], s3_behind_proxy: DelayProxy
) -> None:
    """A chat resumes an instance whose backup downloads slowly; a DELETE arrives meanwhile. The
    worker removed the local copy before the restore wrote it: the deleted instance's files (its
    whole conversation) stayed on the worker's disk."""
    proxy = s3_behind_proxy
    c = make_cluster(**_s3_env(proxy)).start(workers=1)
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
        assert api.post(f"/instances/{iid}/chat", json={"message": "a secret"}).status_code == 200
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        for copy in c.tmp.rglob(f"{iid}*"):
            copy.unlink()  # no local copy (as on a fresh worker): the attach downloads the backup
        proxy.delay = 1.5
        with cf.ThreadPoolExecutor(1) as pool:
            chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "during"})
            wait_until(lambda: r.hget(f"regina:inst:{iid}", "status") == "started", timeout=10, what="the claim")
            deleted = api.delete(f"/instances/{iid}")
            assert chat.result(60).status_code in (200, 404)
        assert deleted.status_code == 204, deleted.text
        proxy.delay = 0
    time.sleep(2)  # past a heartbeat: what the worker still held is let go of
    assert not _local_copies(c, iid), c.workers[0].log()[-3000:]
    r.close()


def test_a_worker_back_from_being_taken_for_dead_removes_the_copies_of_instances_that_moved(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Only a worker's start removed the local copies of instances that moved to another member:
    one taken for dead (a pause past memberTtl) and back kept them, the old conversations, for as
    long as it ran. Its heartbeat removes them when it finds itself back; its own stay."""
    from regina.instances import InstanceStore
    from regina.redis_conn import connect

    # Given two instances that chatted and were suspended on a worker
    c = make_cluster(REGINA_MEMBER_HEARTBEAT="0.5").start(workers=1)
    (worker,) = c.workers
    r = connect(c.redis_url)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        moved, kept = (api.post("/agents/openai-agent/instances").json()["instanceId"] for _ in range(2))
        for iid in (moved, kept):
            assert api.post(f"/instances/{iid}/chat", json={"message": "a secret"}).status_code == 200
            assert api.post(f"/instances/{iid}/suspend").status_code == 204
    assert _local_copies(c, moved) and _local_copies(c, kept)

    # When, the worker taken for dead, one of them is resumed on another member (and suspended
    # there), and the worker is back
    store = InstanceStore(r)
    epoch = store.claim(moved, "elsewhere@test")
    assert epoch > 0 and store.fenced_set(moved, epoch, status="suspended")
    r.srem("regina:members", worker.member_id)  # what the orphan sweep does to a member whose key lapsed

    # Then its copy of the moved one goes at its next heartbeat, and its copy of its own stays
    wait_until(lambda: not _local_copies(c, moved), timeout=10, what="the moved instance's copy removed")
    assert _local_copies(c, kept)
    # (the line is written after the files go: waited for, not read at once)
    wait_until(lambda: "removed 1 local VFS copies" in worker.log(), timeout=5, what="the removal logged")
    r.close()


def test_an_instance_left_suspending_on_a_live_member_is_resumed(make_cluster: Callable[..., Cluster]) -> None:
    """A suspend whose last write (`suspended`) was lost left the record `suspending` on a live
    member that no longer held it: every chat and resume waited, then answered 503, for as long as
    that worker lived. The coordinator now asks that member to suspend it again, which marks it."""
    from regina.instances import InstanceStore

    c = make_cluster(
        REGINA_IDLE_TIMEOUT="600",
        REGINA_LIMITS__WORKER_REPLY_TIMEOUT="4",
        REGINA_LIMITS__PLACEMENT_WAIT="2",
    ).start(workers=1)
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
        assert api.post(f"/instances/{iid}/chat", json={"message": "before"}).status_code == 200
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        rec = record(c.redis_url, iid)
        assert InstanceStore(r).fenced_set(iid, int(rec["epoch"]), status="suspending")  # the lost write

        answer = api.post(f"/instances/{iid}/chat", json={"message": "after"}, timeout=30)

        assert answer.status_code == 200 and answer.json()["text"] == "echo: after", answer.text
        assert record(c.redis_url, iid)["status"] == "started"
    r.close()


def test_a_checkpoint_to_slow_storage_does_not_hold_up_the_next_chat(
    make_cluster: Callable[..., Cluster], s3_behind_proxy: DelayProxy
) -> None:
    """A run that passes checkpointBytes is backed up after it. The upload ran under the instance's
    step lock: every next chat waited for storage. Now only the snapshot is taken under it; what
    the next chat changes meanwhile stays in the journal, after the checkpoint's seq."""
    proxy = s3_behind_proxy
    c = make_cluster(**_s3_env(proxy, REGINA_STORAGE__CHECKPOINT_BYTES="1024")).start(workers=1)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
        proxy.delay = 3.0
        big = "x" * 1500  # past checkpointBytes: a checkpoint follows this run
        assert api.post(f"/instances/{iid}/chat", json={"message": big}).status_code == 200
        started = time.monotonic()
        second = api.post(f"/instances/{iid}/chat", json={"message": "second"})
        took = time.monotonic() - started
        assert second.status_code == 200 and second.json()["text"] == "echo: second"
        assert took < 2.5, f"the next chat waited {took:.1f}s for the checkpoint's upload"
        wait_until(lambda: record(c.redis_url, iid).get("backupVersion") == "1", timeout=30, what="the checkpoint")
        proxy.delay = 0
        # The checkpoint trimmed only what its snapshot holds: a restore on a fresh disk has it all.
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        for copy in c.tmp.rglob(f"{iid}*"):
            copy.unlink()
        texts = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
        assert texts == [big, f"echo: {big}", "second", "echo: second"]
        assert api.post(f"/instances/{iid}/chat", json={"message": "third"}).json()["text"] == "echo: third"
        texts = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
        assert texts[-4:] == ["second", "echo: second", "third", "echo: third"]
