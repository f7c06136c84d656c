"""RabbitMQ as the broker (`broker: amqp://…`), end to end with real processes: instance queues
are AMQP queues with push consumers, Redis still carries state, events and steering.

Uses the machine's RabbitMQ (127.0.0.1:5672, guest/guest) in a private vhost made for this
module and deleted after it; skipped, with the reason, when RabbitMQ or `rabbitmqctl` is not
there.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from kombu import Connection as KombuConnection

from regina import keys
from tests.harness.delay_proxy import DelayProxy
from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import ROOT, Cluster
from tests.harness.rabbitmq import HOST as RABBIT_HOST
from tests.harness.rabbitmq import PASSWORD as RABBIT_PASSWORD
from tests.harness.rabbitmq import PORT as RABBIT_PORT
from tests.harness.rabbitmq import USER as RABBIT_USER
from tests.harness.rabbitmq import RabbitUnavailable, RabbitVhost
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until
from tests.harness.web_steps import coordinator, open_run_and_stop
from tests.integration.test_api import spawn
from tests.integration.test_lost_runs import slow_run_and_the_next
from workers.amqp import AmqpDispatcher, member_queue
from workers.celery_app import create_app

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitVhost]:
    vhost = RabbitVhost()
    try:
        vhost.start()
    except RabbitUnavailable as exc:
        vhost.close()
        pytest.skip(f"RabbitMQ broker tests skipped: {exc}")
    yield vhost
    vhost.close()


@pytest.fixture(scope="module")
def mq(rabbit: RabbitVhost, fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two workers and a web on RabbitMQ queues, a private Redis, fs storage."""
    server = RedisServer().start()
    backups = tmp_path_factory.mktemp("amqp-backups")
    env = {"REGINA_BROKER": rabbit.url, "REGINA_STORAGE__TYPE": "fs", "REGINA_STORAGE__BASE_PATH": str(backups)}
    c = Cluster(server.url, fake_llm.url, env_overrides=env)
    try:
        w1, w2 = c.start_worker(wait=False), c.start_worker(wait=False)
        c.wait_worker(w1)
        c.wait_worker(w2)
        c.start_web()
    except BaseException:
        print(c.dump_logs())
        c.stop()
        server.close()
        raise
    yield c
    c.stop()
    server.close()


@pytest.fixture
def api(mq: Cluster) -> Iterator[httpx.Client]:
    web = next(p for p in mq.procs if p.name.startswith("web"))
    with httpx.Client(base_url=web.url, timeout=60) as client:
        yield client


def _queue(iid: str) -> str:
    return f"regina.i.{iid}"


def _contents(api: httpx.Client, iid: str) -> list[str]:
    return [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]


def test_spawn_chat_and_stream_go_through_a_rabbitmq_queue(mq: Cluster, rabbit: RabbitVhost, api: httpx.Client) -> None:
    iid = spawn(api)
    # The instance's queue is on RabbitMQ and consumed (one push consumer), on the default
    # exchange only: no exchange or binding per instance (steps are published to the default one).
    assert rabbit.queue(_queue(iid)) == (0, 1)
    assert rabbit.bindings(_queue(iid)) == [""]
    assert api.post(f"/instances/{iid}/chat", json={"message": "hello"}).json()["text"] == "echo: hello"
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "stream me"}) as resp:
        events = [json.loads(line) for line in resp.iter_lines() if line]
    assert [e["type"] for e in events][-1] == "finish" and events[-1]["text"] == "echo: stream me"
    assert any(e["type"] == "text-delta" for e in events)
    assert _contents(api, iid) == ["hello", "echo: hello", "stream me", "echo: stream me"]
    # No queue, ready list or kombu bookkeeping in Redis: it carries state and events only.
    client = redis.Redis.from_url(mq.redis_url, decode_responses=True)
    try:
        broker_keys = [k for k in client.scan_iter() if k.startswith(("regina.", "regina:ready:", "unacked", "_kombu"))]
        assert broker_keys == []
        assert client.exists(f"regina:inst:{iid}")
    finally:
        client.close()


def test_a_workers_heartbeat_lets_rabbitmq_drop_a_silent_consumer_before_the_re_home(
    rabbit: RabbitVhost, api: httpx.Client
) -> None:
    # RabbitMQ closes a silent connection after about two missed heartbeats: each worker's
    # connection consuming instance queues beats every memberTtl/4 (7 s of the default 30, 1 s of
    # the tests' 3), so a paused owner's consumer is gone before its instances are re-homed
    # (memberTtl) and takes no share of the new owner's steps.
    spawn(api)
    spawn(api)
    beats = rabbit.consumer_heartbeats("regina.i.")
    assert beats and all(0 < 2 * beat < 3 for beat in beats), beats


def test_an_idle_worker_keeps_its_connection_to_rabbitmq(
    mq: Cluster, rabbit: RabbitVhost, api: httpx.Client, fake_llm: FakeLLM
) -> None:
    """Regression: Celery opened a worker's task-events connection with the consumer's heartbeat
    (1 s here) but its gevent loop reads that connection only when the consumer connection's
    drain returns, which RabbitMQ's beats (every 0.5 s) never let an idle worker's do. Only the
    `worker-heartbeat` events' publishes, every 2 s, read it; one a little late and Celery
    dropped the consumer connection ("Too many heartbeats missed"), requeueing every step in
    flight: the instance's queue had no consumer for a moment, a step could run twice."""
    iid = spawn(api)
    seen = {w.name: len(w.log()) for w in mq.workers}
    # Each worker beats on the connection that consumes its queues, and on no other
    assert [beat for beat in rabbit.heartbeats() if beat] == rabbit.consumer_heartbeats("regina.m.")

    # When the workers stay idle for three heartbeats (two missed lose a connection), then a chat
    time.sleep(3.5)
    assert api.post(f"/instances/{iid}/chat", json={"message": "after a pause"}).json()["text"] == "echo: after a pause"

    # Then its step ran once, and no worker lost its connection meanwhile
    assert sum("after a pause" in json.dumps(r.body) for r in fake_llm.requests) == 1
    assert [w.name for w in mq.workers if "Connection to broker lost" in w.log()[seen.get(w.name, 0) :]] == []
    assert rabbit.queue(_queue(iid)) == (0, 1)


def test_a_spawns_attach_is_published_after_its_queue_was_created(rabbit: RabbitVhost) -> None:
    # The web creates a new instance's queue on the channel that publishes the spawn's attach
    # (RabbitMQ confirms the publish after the declare before it): when the publish returns, the
    # queue exists, with no worker having done anything.
    app = create_app()
    app.conf.broker_url = rabbit.url
    app.conf.broker_transport = "workers.amqp:Transport"
    app.conf.broker_transport_options = {"confirm_publish": True}
    member, iid = "m-test-1", "openai-agent-queue1"
    with app.connection_for_write() as conn:
        member_queue(member)(conn.default_channel).declare()
    dispatcher = AmqpDispatcher(app, redis.Redis())  # Redis is not used to publish on RabbitMQ
    dispatcher.send_command(member, "attach", {"instanceId": iid, "epoch": 1, "spawnOf": "openai-agent"}, "t1")
    assert rabbit.queue(_queue(iid)) == (0, 0)
    assert rabbit.bindings(_queue(iid)) == [""]
    assert rabbit.queue(f"regina.m.{member}") == (1, 0)
    # A resume's attach (no spawnOf) declares nothing: the queue is there since the spawn.
    dispatcher.send_command(member, "attach", {"instanceId": "openai-agent-queue2", "epoch": 2}, "t2")
    assert rabbit.queue(_queue("openai-agent-queue2")) is None
    assert rabbit.queue(f"regina.m.{member}") == (2, 0)
    # Commands are transient (their senders wait for the answers): not written to RabbitMQ's disk.
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        modes = [channel.basic_get(f"regina.m.{member}", no_ack=True).properties["delivery_mode"] for _ in "ab"]
    assert modes == [1, 1]
    app.close()


@pytest.mark.timeout(240)
def test_a_spawn_no_worker_answers_leaves_no_queue(fake_llm: FakeLLM) -> None:
    """The spawn's attach created the instance's queue (above); a spawn that fails (its worker
    is stopped and does not answer within workerReplyTimeout) deletes it with the record.
    Regression: the worker, woken, handled that attach late and declared the queue again."""
    vhost = RabbitVhost()
    server = RedisServer().start()
    env = {"REGINA_BROKER": vhost.url, "REGINA_LIMITS__WORKER_REPLY_TIMEOUT": "1"}
    c = Cluster(server.url, fake_llm.url, env_overrides=env)
    try:
        try:
            vhost.start()
        except RabbitUnavailable as exc:
            pytest.skip(f"RabbitMQ broker tests skipped: {exc}")
        worker, web = c.start_worker(), c.start_web()
        os.kill(worker.popen.pid, signal.SIGSTOP)  # alive for memberTtl (3 s): placed, never answers
        try:
            resp = httpx.post(f"{web.url}/agents/openai-agent/instances", timeout=30)
            assert resp.status_code == 503, resp.text
            assert [q for q in vhost.queues() if q.startswith("regina.i.")] == []
        finally:
            os.kill(worker.popen.pid, signal.SIGCONT)
        # The worker, woken, handles the attach: it fails, and makes no queue again (paused past
        # two AMQP heartbeats, its connection was closed: on a loaded machine the reconnect and
        # the redelivered attach took over 30 s)
        try:
            wait_until(lambda: "command failed: " in worker.log(), timeout=60, what="the late attach to fail")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the worker's log:\n{worker.log()[-6000:]}") from None
        assert [q for q in vhost.queues() if q.startswith("regina.i.")] == []
    finally:
        c.kill()  # its Redis and vhost go next (a graceful stop of the worker just woken took ~30 s)
        server.close()
        vhost.close()


@contextmanager
def silent_broker() -> Iterator[str]:
    """An amqp:// URL of a port that accepts connections and never answers: a process publishing
    there waits (and retries) for as long as it lives, nothing it sends reaches RabbitMQ."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/silent"


@pytest.mark.parametrize("call", ["spawn", "resume"])
def test_an_instance_claimed_by_a_web_killed_before_its_attach_is_attached_by_its_member(
    mq: Cluster, rabbit: RabbitVhost, api: httpx.Client, call: str
) -> None:
    """Regression: on RabbitMQ the coordinator publishes the attach after its claim (on Redis the
    claim pushes it); a coordinator killed in between left the instance `started` on a live
    member that never heard of it, and its chats queued steps nobody consumed until they timed out."""
    client = redis.Redis.from_url(mq.redis_url, decode_responses=True)
    before = set(client.zrange(keys.INSTANCES, 0, -1))
    iid = ""
    if call == "resume":
        iid = spawn(api)
        assert api.post(f"/instances/{iid}/chat", json={"message": "before"}).status_code == 200
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        epoch = int(client.hget(keys.instance_record(iid), "epoch") or 0)
    # Given a web whose publishes never reach RabbitMQ
    with silent_broker() as url, cf.ThreadPoolExecutor(1) as pool:
        web = mq.start_web(env={"REGINA_BROKER": url})
        # When it claims the instance (a spawn's create, a resume's claim) and is killed with its
        # attach not published
        path = f"/instances/{iid}/resume" if call == "resume" else "/agents/openai-agent/instances"
        pool.submit(httpx.post, web.url + path, timeout=30)  # never answered
        if call == "resume":
            wait_until(lambda: client.hget(keys.instance_record(iid), "epoch") == str(epoch + 1), timeout=10)
        else:
            wait_until(lambda: set(client.zrange(keys.INSTANCES, 0, -1)) - before, timeout=10)
            (iid,) = set(client.zrange(keys.INSTANCES, 0, -1)) - before
        web.kill_group()
    rec = client.hgetall(keys.instance_record(iid))
    assert rec["status"] == "started"

    # Then its member attaches it by itself, without a request timing out: it consumes the
    # instance's queue (made by that attach for a spawn) and a chat is answered at once, there
    wait_until(lambda: rabbit.queue(_queue(iid)) == (0, 1), timeout=10, what="the member to attach the claim")
    resp = api.post(f"/instances/{iid}/chat", json={"message": "after"}, timeout=10)
    assert resp.status_code == 200 and resp.json()["text"] == "echo: after"
    assert api.get(f"/instances/{iid}").json()["member"] == rec["member"]
    earlier = ["before", "echo: before"] if call == "resume" else []
    assert _contents(api, iid) == [*earlier, "after", "echo: after"]
    client.close()


def test_a_worker_reconnecting_to_rabbitmq_brings_back_no_deleted_queue(rabbit: RabbitVhost, fake_llm: FakeLLM) -> None:
    """Regression: after a reconnect Celery declared again every queue it had been told to
    consume, creating anew, empty and for good, the queue of an instance deleted while the worker
    was cut off from RabbitMQ, and of one deleted under its consumer (which RabbitMQ cancelled)."""
    server = RedisServer().start()
    env = {"REGINA_BROKER": rabbit.url, "REGINA_LIMITS__WORKER_REPLY_TIMEOUT": "3"}
    c = Cluster(server.url, fake_llm.url, env_overrides=env)
    try:
        with DelayProxy(RABBIT_HOST, RABBIT_PORT) as proxy:
            # Given a worker that reaches RabbitMQ through a proxy, with three instances
            via_proxy = f"amqp://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{proxy.port}/{rabbit.name}"
            worker = c.start_worker(env={"REGINA_BROKER": via_proxy})
            c.start_web()
            with httpx.Client(base_url=c.web.url, timeout=60) as api:
                kept, cancelled, deleted = spawn(api), spawn(api), spawn(api)
                # and the queue of one deleted under its consumer (RabbitMQ cancels the consumer)
                with KombuConnection(rabbit.url) as conn:
                    conn.default_channel.queue_delete(queue=_queue(cancelled))
                wait_until(lambda: "cancelled" in worker.log(), timeout=10, what="the cancel to reach the worker")

                # When another is deleted while the worker is cut off from RabbitMQ (its owner does
                # not answer the delete; the queue is deleted all the same), and the worker reconnects
                proxy.down = True
                proxy.drop_connections()
                assert api.delete(f"/instances/{deleted}").status_code == 204
                assert rabbit.queue(_queue(deleted)) is None
                proxy.down = False
                wait_until(lambda: rabbit.queue(_queue(kept)) == (0, 1), timeout=60, what="the worker to reconnect")

                # Then neither queue is back, and the instance left is served as before
                assert rabbit.queue(_queue(deleted)) is None
                assert rabbit.queue(_queue(cancelled)) is None
                assert api.post(f"/instances/{kept}/chat", json={"message": "still here"}).json()["text"] == (
                    "echo: still here"
                )
                assert rabbit.queue(_queue(deleted)) is None
    finally:
        c.kill()
        server.close()


def test_a_burst_of_spawns_is_attached_every_one(rabbit: RabbitVhost, api: httpx.Client) -> None:
    # Attach commands arriving while the worker waits on RabbitMQ for another attach's queue
    # declare are handled after it, not inside it (py-amqp's nested waits lost them).
    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: api.post("/agents/openai-agent/instances"), range(32)))
    assert [r.status_code for r in answers] == [201] * 32
    for resp in answers:
        assert rabbit.queue(_queue(resp.json()["instanceId"])) == (0, 1)


def test_a_spawn_is_attached_while_long_steps_fill_its_worker(rabbit: RabbitVhost, fake_llm: FakeLLM) -> None:
    """Regression: commands shared Celery's channel-wide prefetch limit with steps; with
    `concurrency` long steps running, RabbitMQ delivered a spawn's attach only once one of them
    ended, and the spawn failed with a 503 (workerReplyTimeout 5 s, steps of 12 s)."""
    server = RedisServer().start()
    env = {"REGINA_BROKER": rabbit.url, "REGINA_CONCURRENCY": "2", "REGINA_LIMITS__WORKER_REPLY_TIMEOUT": "5"}
    c = Cluster(server.url, fake_llm.url, env_overrides=env)
    try:
        c.start(workers=1)
        with httpx.Client(base_url=c.web.url, timeout=60) as api, cf.ThreadPoolExecutor(3) as pool:
            # Given a worker of concurrency 2 running two long steps
            busy = [spawn(api), spawn(api)]
            fake_llm.push_for("long", Reply(text="long done", delay=12.0), Reply(text="long done", delay=12.0))
            long = [pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "long"}) for iid in busy]
            fake_llm.wait_for_requests(2, timeout=15)

            # When an instance is spawned there
            resp = api.post("/agents/openai-agent/instances")

            # Then its attach did not wait for them
            assert resp.status_code == 201, resp.text
            assert not any(f.done() for f in long)
            # and steps keep their limit: the new instance's first step waits on its queue
            iid = resp.json()["instanceId"]
            later = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "later"})
            wait_until(lambda: rabbit.queue(_queue(iid)) == (1, 1), timeout=10, what="the step to wait on its queue")
            assert len(fake_llm.requests) == 2 and not any(f.done() for f in long)
            assert [f.result(30).json()["text"] for f in long] == ["long done", "long done"]
            assert later.result(30).json()["text"] == "echo: later"
    finally:
        c.kill()
        server.close()


def test_steps_of_one_instance_run_in_arrival_order(mq: Cluster, api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push_for("first", Reply(text="first done", delay=1.5))
    client = redis.Redis.from_url(mq.redis_url)
    with cf.ThreadPoolExecutor(4) as pool:
        first = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "first"})
        fake_llm.wait_for_requests(1, timeout=15)
        later = []
        for n in range(2, 5):
            later.append(pool.submit(api.post, f"/instances/{iid}/chat", json={"message": f"step {n}"}))
            # Run n is open (the web publishes its step right after) before step n + 1 is sent.
            wait_until(lambda n=n: client.zcard(f"regina:inst:{iid}:runs") >= n, timeout=10)
            time.sleep(0.1)
        answers = [first.result(30).json()["text"], *(f.result(30).json()["text"] for f in later)]
    client.close()
    assert answers == ["first done", "echo: step 2", "echo: step 3", "echo: step 4"]
    assert _contents(api, iid)[::2] == ["first", "step 2", "step 3", "step 4"]


def test_suspend_releases_the_queue_and_resume_consumes_it_again(rabbit: RabbitVhost, api: httpx.Client) -> None:
    iid = spawn(api)
    api.post(f"/instances/{iid}/chat", json={"message": "remember me"})
    assert api.post(f"/instances/{iid}/suspend").status_code == 204
    # The queue stays (steps sent while suspended wait there), with nobody consuming it.
    assert rabbit.queue(_queue(iid)) == (0, 0)
    assert api.post(f"/instances/{iid}/resume").status_code == 204
    assert api.get(f"/instances/{iid}").json()["status"] == "started"
    assert rabbit.queue(_queue(iid)) == (0, 1)
    assert api.post(f"/instances/{iid}/chat", json={"message": "again"}).json()["text"] == "echo: again"
    assert _contents(api, iid) == ["remember me", "echo: remember me", "again", "echo: again"]
    # A chat to a suspended instance resumes it and its step is consumed from the same queue.
    assert api.post(f"/instances/{iid}/suspend").status_code == 204
    assert api.post(f"/instances/{iid}/chat", json={"message": "wake"}).json()["text"] == "echo: wake"
    assert rabbit.queue(_queue(iid)) == (0, 1)


def test_delete_deletes_the_queue(rabbit: RabbitVhost, api: httpx.Client) -> None:
    iid = spawn(api)
    api.post(f"/instances/{iid}/chat", json={"message": "bye"})
    assert rabbit.queue(_queue(iid)) is not None
    assert api.delete(f"/instances/{iid}").status_code == 204
    assert rabbit.queue(_queue(iid)) is None
    assert api.get(f"/instances/{iid}").status_code == 404


def test_a_delete_whose_queue_delete_failed_can_be_sent_again(rabbit: RabbitVhost, api: httpx.Client) -> None:
    # Given an instance whose queue RabbitMQ refuses to delete (no configure permission on it)
    iid = spawn(api)
    pattern = "^(?!" + _queue(iid).replace(".", "\\.") + "$).*"
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", rabbit.name, RABBIT_USER, pattern, ".*", ".*"], check=True)
    try:
        assert api.delete(f"/instances/{iid}").status_code >= 500
    finally:
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", rabbit.name, RABBIT_USER, ".*", ".*", ".*"], check=True)
    # Then the DELETE sent again deletes the queue (it was not answered 404 over a queue left for good)
    assert rabbit.queue(_queue(iid)) is not None
    assert api.delete(f"/instances/{iid}").status_code == 204
    assert rabbit.queue(_queue(iid)) is None
    assert api.get(f"/instances/{iid}").status_code == 404


def test_a_step_to_a_missing_queue_fails_the_chat_at_once(rabbit: RabbitVhost, api: httpx.Client) -> None:
    # Given an instance whose queue is gone from RabbitMQ (deleted behind Regina's back)
    iid = spawn(api)
    with KombuConnection(rabbit.url) as conn:
        conn.default_channel.queue_delete(queue=_queue(iid))
    # Then a chat answers an error at once: RabbitMQ returned its step, it did not drop it
    resp = api.post(f"/instances/{iid}/chat", json={"message": "lost?"}, timeout=15)
    assert resp.status_code == 503, resp.text
    assert "no queue" in resp.text
    assert api.delete(f"/instances/{iid}").status_code == 204


def test_kill_9_mid_step_rabbitmq_requeues_the_step_for_the_next_owner(
    mq: Cluster, rabbit: RabbitVhost, api: httpx.Client, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given an instance with acknowledged turns on one of two workers (a third joins, so two
    # stay for the tests after this one)
    mq.start_worker()
    iid = spawn(api)
    for n in range(3):
        assert api.post(f"/instances/{iid}/chat", json={"message": f"turn {n}"}).status_code == 200
    member = api.get(f"/instances/{iid}").json()["member"]
    victim = next(p for p in mq.procs if p.member_id == member)
    fake_llm.push_for("during", Reply(text="never seen", delay=3.0), Reply(text="recovered"))

    # When its owner is killed with -9 while the step waits on the model
    with cf.ThreadPoolExecutor(1) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "during"})
        wait_until(lambda: any("during" in json.dumps(r.body) for r in fake_llm.requests), timeout=15)
        victim.kill()
        # RabbitMQ put the unacknowledged step back on the queue as the connection closed.
        wait_until(lambda: rabbit.queue(_queue(iid)) in ((1, 0), (0, 1)), timeout=10)
        resp = chat.result(60)

    # Then the next owner runs it once, after every acknowledged turn, none lost or repeated
    assert resp.status_code == 200 and resp.json()["text"] == "recovered"
    assert api.get(f"/instances/{iid}").json()["member"] != member
    expected = [x for n in range(3) for x in (f"turn {n}", f"echo: turn {n}")] + ["during", "recovered"]
    assert _contents(api, iid) == expected
    assert rabbit.queue(_queue(iid)) == (0, 1)


def test_the_orphan_sweep_reruns_a_step_nobody_waits_for(
    mq: Cluster, rabbit: RabbitVhost, api: httpx.Client, fake_llm: FakeLLM
) -> None:
    # Given a step running on a worker, sent through a web process that is gone since (so no
    # request re-homes the instance), and a spare worker
    mq.start_worker()
    iid = spawn(api)
    member = api.get(f"/instances/{iid}").json()["member"]
    victim = next(p for p in mq.procs if p.member_id == member)
    other_web = mq.start_web()
    fake_llm.push_for("unwatched", Reply(text="lost", delay=3.0), Reply(text="done anyway"))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{other_web.url}/instances/{iid}/chat", json={"message": "unwatched"}, timeout=1.0)
    wait_until(lambda: any("unwatched" in json.dumps(r.body) for r in fake_llm.requests), timeout=15)
    pid = other_web.popen.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        os.kill(int(child), signal.SIGKILL)  # gunicorn's worker, which would finish the request
    other_web.kill()

    # When its worker is killed with -9 (RabbitMQ requeues the step)
    victim.kill()

    # Then a live worker's sweep finds the step on the queue, re-homes the instance and runs it
    # (watched through the model's requests: reading the messages would re-home it by itself)
    asked = lambda: sum("unwatched" in json.dumps(r.body) for r in fake_llm.requests)  # noqa: E731
    wait_until(lambda: asked() >= 2, timeout=60, what="the requeued step to ask the model again")
    wait_until(lambda: api.get(f"/instances/{iid}").json()["member"] != member, timeout=10)
    wait_until(lambda: _contents(api, iid) == ["unwatched", "done anyway"], timeout=30)
    assert rabbit.queue(_queue(iid)) == (0, 1)


def test_a_paused_owners_step_runs_once_rabbitmq_requeues_it(mq: Cluster, api: httpx.Client, fake_llm: FakeLLM) -> None:
    # Given a step running on a worker, sent through a web process that is gone since (nobody
    # waits for it), and a spare worker
    mq.start_worker()
    iid = spawn(api)
    member = api.get(f"/instances/{iid}").json()["member"]
    victim = next(p for p in mq.procs if p.member_id == member)
    other_web = mq.start_web()
    fake_llm.push_for("paused", Reply(text="lost", delay=60.0), Reply(text="done anyway"))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{other_web.url}/instances/{iid}/chat", json={"message": "paused"}, timeout=1.0)
    wait_until(lambda: any("paused" in json.dumps(r.body) for r in fake_llm.requests), timeout=15)
    pid = other_web.popen.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        os.kill(int(child), signal.SIGKILL)
    other_web.kill()
    client = redis.Redis.from_url(mq.redis_url, decode_responses=True)
    (run_id,) = client.zrange(keys.instance_runs(iid), 0, -1)

    # When its owner is paused (a lost machine: its connection stays open until RabbitMQ misses
    # its heartbeats, so the step is unacknowledged, not ready, when the sweep suspends the instance)
    os.kill(victim.popen.pid, signal.SIGSTOP)
    try:
        # and its member key expires before RabbitMQ closes its connection (deleted here: the two
        # race, with memberTtl 3 s and a 1 s consumer heartbeat)
        client.delete(keys.member(member))
        # Then a later sweep resumes it once RabbitMQ requeued the step, which runs to its end
        # (watched in Redis: reading the instance through the API would resume it by itself)
        wait_until(
            lambda: client.hget(keys.run_record(run_id), "status") == "finished",
            timeout=40,
            what="the requeued step's run to finish",
        )
    finally:
        victim.kill()
        client.close()


def test_the_lost_run_sweep_on_rabbitmq_ends_a_lost_run_and_never_a_slow_one(
    rabbit: RabbitVhost, fake_llm: FakeLLM
) -> None:
    """The lost-run sweep asks the broker whether an instance has steps waiting (RabbitMQ: the
    ready count of its queue; prefetched steps are in the member's held runs): a run whose model
    call outlasts lostRunAfter + memberTtl, and the run queued behind it, are never ended; a run
    recorded by a web killed before it queued its step is (lostRunAfter 2 s)."""
    server = RedisServer().start()
    env = {"REGINA_BROKER": rabbit.url, "REGINA_LIMITS__LOST_RUN_AFTER": "2"}
    c = Cluster(server.url, fake_llm.url, env_overrides=env)
    try:
        c.start(workers=1)
        with (
            httpx.Client(base_url=c.web.url, timeout=60) as api,
            redis.Redis.from_url(c.redis_url, decode_responses=True) as r,
        ):
            iid = spawn(api)
            for resp in slow_run_and_the_next(api, fake_llm, iid):
                run = r.hgetall(keys.run_record(resp.json()["runId"]))
                assert run["status"] == "finished" and "lostAt" not in run, run

            assert api.post(f"/instances/{iid}/suspend").status_code == 204
            run_id = open_run_and_stop(coordinator(c.redis_url, str(ROOT / "tests" / "agents")), iid, "lost")
            wait_until(
                lambda: api.get(f"/runs/{run_id}").json()["status"] == "failed", timeout=20, what="the lost run to end"
            )
            assert "the run was lost" in api.get(f"/runs/{run_id}").json()["error"]
    finally:
        c.kill()
        server.close()
