"""A worker killed with -9: its instance moves to a live worker and the step it held is not lost."""

from __future__ import annotations

import concurrent.futures as cf
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from regina import keys
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster, Proc
from tests.harness.scenarios import backed_up_instance
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


@dataclass
class Doomed:
    """A cluster whose one worker (`victim`) is to be killed, its web, and clients of both."""

    cluster: Cluster
    victim: Proc
    r: redis.Redis
    api: httpx.Client


@pytest.fixture
def doomed(make_cluster: Callable[..., Cluster]) -> Iterator[Doomed]:
    c = make_cluster()
    victim = c.start_worker()
    web = c.start_web()
    with (
        redis.Redis.from_url(c.redis_url, decode_responses=True) as r,
        httpx.Client(base_url=web.url, timeout=60) as api,
    ):
        yield Doomed(c, victim, r, api)


def test_kill_9_mid_step_redelivers_the_step_on_another_worker(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given two workers with fs storage and an instance with a backed-up history
    c = make_cluster(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b")).start(workers=2)
    api = httpx.Client(base_url=c.web.url, timeout=90)
    iid, victim, _ = backed_up_instance(c, api)
    fake_llm.push_for("during", Reply(text="never seen", delay=3.0), Reply(text="recovered"))

    # When its owner is killed with -9 while the step waits on the model
    with cf.ThreadPoolExecutor(1) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "during"})
        fake_llm.wait_for_requests(2, timeout=15)  # "before" made one request; "during" waits on the second
        victim.kill()
        # Then the step is redelivered to the other worker and the client gets its answer
        try:
            resp = chat.result(60)
        except Exception:
            print(c.dump_logs())
            raise
    assert resp.status_code == 200 and resp.json()["text"] == "recovered"
    shown = api.get(f"/instances/{iid}").json()
    assert shown["member"] != victim.member_id and shown["epoch"] >= 3
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
    assert contents == ["before", "echo: before", "during", "recovered"]
    api.close()


def test_the_orphan_sweep_reruns_a_step_nobody_waits_for(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    # Given an instance whose step is running on w1 and whose client has gone away
    c = make_cluster().start(workers=2)
    w1, w2 = c.workers
    api = httpx.Client(base_url=c.web.url, timeout=30)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    member = api.get(f"/instances/{iid}").json()["member"]
    victim, survivor = (w1, w2) if w1.member_id == member else (w2, w1)
    fake_llm.push_for("unwatched", Reply(text="lost", delay=3.0), Reply(text="done anyway"))
    with pytest.raises(httpx.ReadTimeout):
        api.post(f"/instances/{iid}/chat", json={"message": "unwatched"}, timeout=1.0)
    fake_llm.wait_for_requests(1, timeout=10)

    # When its worker is killed with -9
    victim.kill()

    # Then a sweep on the surviving worker re-homes it and the step runs to its end
    fake_llm.wait_for_requests(2, timeout=30)
    from tests.harness.waiting import wait_until

    wait_until(
        lambda: [m["content"] for m in api.get(f"/instances/{iid}/messages").json()] == ["unwatched", "done anyway"],
        timeout=30,
        what="the redelivered step to finish",
    )
    assert api.get(f"/instances/{iid}").json()["member"] == survivor.member_id
    api.close()


def test_a_killed_workers_instances_are_found_through_the_indexes_and_deleted_from_them(
    doomed: Doomed, fake_llm: FakeLLM
) -> None:
    # Given a worker holding three instances, one with a step it took and never acknowledged
    c, victim, r, api = doomed.cluster, doomed.victim, doomed.r, doomed.api
    busy, idle1, idle2 = (api.post("/agents/openai-agent/instances").json()["instanceId"] for _ in range(3))
    assert set(r.zrange(f"regina:held:{victim.member_id}", 0, -1)) == {busy, idle1, idle2}
    fake_llm.push_for("unwatched", Reply(text="lost", delay=5.0), Reply(text="done anyway"))
    with pytest.raises(httpx.ReadTimeout):
        api.post(f"/instances/{busy}/chat", json={"message": "unwatched"}, timeout=1.0)
    fake_llm.wait_for_requests(1, timeout=10)
    # kombu's unacked entry, tagged with its open run's id (not in the queue's tag set)
    (run_id,) = r.zrange(f"regina:inst:{busy}:runs", 0, -1)
    assert r.hkeys("unacked") == [run_id] and not r.exists(f"regina:unacked:regina.i.{busy}")

    # When it is killed with -9 and another worker joins
    victim.kill()
    survivor = c.start_worker()

    # Then the sweep finds them through the dead member's held set: the busy one is re-homed and
    # its step re-runs, the idle ones are marked suspended; the dead member is forgotten
    wait_until(
        lambda: [m["content"] for m in api.get(f"/instances/{busy}/messages").json()] == ["unwatched", "done anyway"],
        timeout=40,
        what="the redelivered step to finish",
    )
    # the answer is in the history a moment before the finish script ends the run (and acks its step)
    wait_until(lambda: not r.exists(keys.instance_runs(busy)), 20, what="the redelivered run to end")
    wait_until(lambda: not r.sismember("regina:holders", victim.member_id), 20, what="the dead member to be forgotten")
    assert api.get(f"/instances/{busy}").json()["member"] == survivor.member_id
    assert [api.get(f"/instances/{i}").json()["status"] for i in (idle1, idle2)] == ["suspended", "suspended"]
    assert r.zrange(f"regina:held:{survivor.member_id}", 0, -1) == [busy]
    assert not r.exists(f"regina:held:{victim.member_id}", f"regina:unacked:regina.i.{busy}")
    assert r.hlen("unacked") == 0

    # And a deleted instance leaves no entry in any index
    for iid in (busy, idle1, idle2):
        assert api.delete(f"/instances/{iid}").status_code == 204
    assert not r.exists(f"regina:held:{survivor.member_id}")
    assert not r.keys("regina:unacked:*") and not r.smembers("regina:stranded")


def test_a_killed_workers_steps_run_again_in_the_order_it_took_them(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    # Given instances on w1, each with a run waiting on the model after its tool ran and the next
    # run's step taken by w1 too (waiting for the first: queued while it was busy)
    c = make_cluster().start(workers=1)
    (w1,) = c.workers
    api = httpx.Client(base_url=c.web.url, timeout=90)
    iids = [api.post("/agents/openai-agent/instances").json()["instanceId"] for _ in range(6)]
    c.start_worker()
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    for k in range(len(iids)):
        fake_llm.push_for(
            f"first {k}",
            Reply(tool_calls=[ToolCall("write_file", {"path": "/one", "content": "1"})]),
            Reply(text="lost with w1", delay=30.0),
        )
    pool = cf.ThreadPoolExecutor(2 * len(iids))
    firsts = [
        pool.submit(api.post, f"/instances/{iid}/chat", json={"message": f"first {k}"}) for k, iid in enumerate(iids)
    ]
    fake_llm.wait_for_requests(2 * len(iids), timeout=30)
    seconds = [
        pool.submit(api.post, f"/instances/{iid}/chat", json={"message": f"second {k}"}) for k, iid in enumerate(iids)
    ]
    queues = [keys.instance_queue(iid) for iid in iids]

    def taken() -> list[int]:  # kombu's unacked entries per queue
        routed = [json.loads(raw)[2] for raw in r.hvals("unacked")]
        return [routed.count(q) for q in queues]

    wait_until(lambda: taken() == [2] * len(iids), timeout=30, what="w1 to take both steps of each")

    # When w1 is killed with -9 and w2 runs them all again
    w1.kill()
    answers = [f.result(90) for f in firsts + seconds]
    pool.shutdown()

    # Then each instance's first run finished its turn before the second began (its steps were
    # restored in the order w1 took them, not in the order of their random delivery tags)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    for k, iid in enumerate(iids):
        history = api.get(f"/instances/{iid}/messages").json()
        first, second = answers[k].json()["runId"], answers[len(iids) + k].json()["runId"]
        assert [(m["role"], m["runId"]) for m in history] == [
            ("user", first),
            ("assistant", first),
            ("tool", first),
            ("assistant", first),
            ("user", second),
            ("assistant", second),
        ], history
        assert answers[k].json()["text"] == f"echo: first {k}"
    r.close()
    api.close()


def test_a_killed_workers_step_of_a_run_cancelled_while_queued_is_still_found(
    doomed: Doomed, fake_llm: FakeLLM
) -> None:
    # Given a worker running one run of an instance, and the next run's step taken by it too
    # (waiting for the first), that next run cancelled while queued: it leaves the open runs
    c, victim, r, api = doomed.cluster, doomed.victim, doomed.r, doomed.api
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    fake_llm.push_for("first", Reply(text="lost with the victim", delay=30.0), Reply(text="first again"))
    pool = cf.ThreadPoolExecutor(2)
    first = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "first"})
    fake_llm.wait_for_requests(1, timeout=20)
    second = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "second"})
    queue = keys.instance_queue(iid)
    wait_until(
        lambda: [json.loads(raw)[2] for raw in r.hvals("unacked")] == [queue, queue],
        timeout=20,
        what="the victim to take both steps",
    )
    (_first_id, second_id) = r.zrange(keys.instance_runs(iid), 0, -1)
    assert api.post(f"/runs/{second_id}/cancel").json() == {"cancelled": True}
    assert second.result(20).json()["finishReason"] == "cancelled"

    # When it is killed with -9 and another worker takes the instance over
    victim.kill()
    c.start_worker()

    # Then both its steps went back to the queue (the cancelled one is dropped there, as ended)
    # and nothing of them is left in kombu's unacked entries or the queue's tag set
    assert first.result(60).json()["text"] == "first again"
    wait_until(lambda: r.hlen("unacked") == 0, timeout=20, what="the restored steps to be acknowledged")
    assert not r.exists(keys.unacked_of(queue))
    assert [m["content"] for m in api.get(f"/instances/{iid}/messages").json()] == ["first", "first again"]
    pool.shutdown()


def test_a_failover_whose_coordinator_died_after_its_claim_still_requeues_the_taken_step(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """The claim pushes the attach; the coordinator that made it dies before it requeues the dead
    owner's taken steps. The attaching member requeues them before it consumes the queue."""
    from regina import ids
    from regina.instances import InstanceStore
    from regina.redis_conn import connect
    from workers.celery_app import create_app
    from workers.dispatcher import CeleryDispatcher

    c = make_cluster(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b")).start(workers=2)
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    api = httpx.Client(base_url=c.web.url, timeout=90)
    iid, victim, survivor = backed_up_instance(c, api)
    fake_llm.push_for("during", Reply(text="never seen", delay=3.0), Reply(text="recovered"))
    r.set(keys.SWEEP_ORPHANS_LOCK, "held by the test", px=120_000)  # no sweep re-homes it meanwhile
    with cf.ThreadPoolExecutor(1) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "during"})
        fake_llm.wait_for_requests(2, timeout=15)  # the step of "during" is taken and waits on the model
        victim.kill()
        c.web.kill()  # nobody else re-homes it
        with pytest.raises(httpx.HTTPError):
            chat.result(30)
    run_id = r.zrange(keys.instance_runs(iid), 0, 0)[0]
    wait_until(lambda: not r.exists(keys.member(victim.member_id)), timeout=15, what="the dead member's key to expire")

    # A coordinator's failover up to its claim, which pushes the attach; then it dies.
    app = create_app()
    app.conf.broker_url = c.redis_url
    client = connect(c.redis_url)
    store = InstanceStore(client)
    rec = store.get(iid)
    assert rec is not None and rec.member == victim.member_id
    token = ids.new_token()
    attach = CeleryDispatcher(app, client).command_message(
        survivor.member_id, "attach", {"instanceId": iid, "epoch": rec.epoch + 1}, token
    )
    assert attach is not None
    assert store.claim(iid, survivor.member_id, expected_epoch=rec.epoch, command=attach) == rec.epoch + 1

    try:
        wait_until(lambda: r.hget(keys.run_record(run_id), "status") == "finished", timeout=30, what="the run to end")
    except Exception:
        print(c.dump_logs())
        raise
    finish = json.loads(r.xrevrange(keys.run_events(run_id), count=1)[0][1]["e"])
    assert finish["type"] == "finish" and finish["text"] == "recovered"
    client.close()
    r.close()
    api.close()
