"""Rolling deploys lose no request; placement strategies spread instances as documented."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from regina import keys
from tests.harness.fake_llm import FakeLLM
from tests.harness.processes import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


def _chat_loop(url: str, iids: list[str], stop: threading.Event, results: list[tuple[int, str]]) -> None:
    """Chat round the instances until told to stop, recording every status and body."""
    with httpx.Client(base_url=url, timeout=120) as api:
        n = 0
        while not stop.is_set():
            iid = iids[n % len(iids)]
            try:
                resp = api.post(f"/instances/{iid}/chat", json={"message": f"loop {n}"})
            except httpx.HTTPError as exc:  # a hang or a dropped connection is a failed chat
                results.append((0, f"{iid} loop {n}: {exc!r}"))
                return
            results.append((resp.status_code, resp.text))
            n += 1


def _state(c: Cluster, iids: list[str]) -> dict[str, object]:
    """What Redis holds for each instance (record, queue, unacknowledged steps): for a failure."""
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    try:
        state: dict[str, object] = {"members": r.smembers(keys.MEMBERS)}
        for iid in iids:
            queue = keys.instance_queue(iid)
            # unacknowledged: tags in the queue's set, and open runs' ids (a pushed step's tag)
            tags = r.smembers(keys.unacked_of(queue)) | set(r.zrange(keys.instance_runs(iid), 0, -1))
            unacked = {tag for tag in tags if r.hexists("unacked", tag)}
            state[iid] = (r.hgetall(keys.instance_record(iid)), r.llen(queue), unacked)
        return state
    finally:
        r.close()


@pytest.mark.parametrize("workers", [2, 1], ids=["one-by-one", "the-only-worker"])
@pytest.mark.timeout(300)
def test_restarting_every_worker_fails_no_chat(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path, workers: int
) -> None:
    # Given workers with storage but no shared vfsDir, and a client chatting in a loop
    # (placementWait above its 30 s default: a worker can take longer than that to start on a
    # loaded test machine)
    c = make_cluster(REGINA_STORAGE__TYPE="redis", REGINA_IDLE_TIMEOUT="0", REGINA_LIMITS__PLACEMENT_WAIT="90")
    procs = [c.start_worker(wait=False) for _ in range(workers)]
    for p in procs:
        c.wait_worker(p)
    web = c.start_web()
    api = httpx.Client(base_url=web.url, timeout=60)
    iids = [api.post("/agents/openai-agent/instances").json()["instanceId"] for _ in range(4)]
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    loop = threading.Thread(target=_chat_loop, args=(web.url, iids, stop, results))
    loop.start()

    # When every worker is replaced in turn (SIGTERM, then a new one joins)
    try:
        for old in procs:
            before = len(results)
            assert old.stop() == 0
            fresh = c.start_worker(wait=False)
            c.wait_worker(fresh)
            while len(results) < before + 4 and loop.is_alive():
                stop.wait(0.1)
    finally:
        stop.set()
        loop.join(150)

    # Then no chat failed, and every answered one is in its history exactly once
    failed = [r for r in results if r[0] != 200]
    assert not failed and len(results) >= 4 * workers, (failed[:3], len(results), _state(c, iids))
    said = Counter()
    for iid in iids:
        for m in api.get(f"/instances/{iid}/messages").json():
            if m["role"] == "user":
                said[m["content"]] += 1
    assert sum(said.values()) == len(results) and set(said.values()) == {1}
    api.close()


@pytest.mark.timeout(400)
def test_placement_strategies_through_a_live_cluster(make_cluster: Callable[..., Cluster], fake_llm: FakeLLM) -> None:
    # Given three workers and one web process per strategy
    c = make_cluster(REGINA_IDLE_TIMEOUT="0")
    procs = [c.start_worker(wait=False) for _ in range(3)]
    for p in procs:
        c.wait_worker(p)
    members = sorted(p.member_id for p in procs)
    webs = {s: c.start_web(env={"REGINA_PLACEMENT": s}).url for s in ("random", "least-loaded", "round-robin")}
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)

    def spawn(url: str, n: int, threads: int) -> Counter[str]:
        with httpx.Client(base_url=url, timeout=60) as api, cf.ThreadPoolExecutor(threads) as pool:
            resps = list(pool.map(lambda _: api.post("/agents/openai-agent/instances"), range(n)))
        assert all(x.status_code == 201 for x in resps)
        return Counter(str(r.hget(f"regina:inst:{x.json()['instanceId']}", "member")) for x in resps)

    def totals() -> Counter[str]:
        return Counter(str(r.hget(f"regina:inst:{iid}", "member")) for iid in r.zrange("regina:instances", 0, -1))

    # random: roughly uniform (each within 5 standard deviations of 100)
    got = spawn(webs["random"], 300, 6)
    assert set(got) == set(members) and all(60 <= got[m] <= 140 for m in members), got
    # least-loaded fills the emptiest first: after 300 more, the totals are level (±1)
    spawn(webs["least-loaded"], 300, 1)
    level = totals()
    assert max(level.values()) - min(level.values()) <= 1, level
    # round-robin: 100 each (±1)
    got = spawn(webs["round-robin"], 300, 6)
    assert all(abs(got[m] - 100) <= 1 for m in members), got
    r.close()


def test_a_warm_shutdown_keeps_its_member_alive_until_its_steps_end(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """SIGTERM while a step waits on the model longer than memberTtl (3 s here): the worker
    finishes it and backs the instance up. Its member key lapsed before: the other worker's sweep
    took the instance for an orphan and ran the step again (two model calls, the first one's
    answer thrown away)."""
    from tests.harness.fake_llm import Reply
    from tests.harness.scenarios import backed_up_instance

    c = make_cluster(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b")).start(workers=2)
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, leaving, _ = backed_up_instance(c, api)
        fake_llm.push_for("slow", Reply(text="answered once", delay=5.0), Reply(text="asked twice"))
        with cf.ThreadPoolExecutor(2) as pool:
            chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "slow"})
            fake_llm.wait_for_requests(2, timeout=15)  # "before" and the slow one
            stopped = pool.submit(leaving.stop, 60)
            resp = chat.result(60)
            assert stopped.result(60) == 0
        assert resp.status_code == 200 and resp.json()["text"] == "answered once", resp.text
        assert sum(1 for r in fake_llm.requests if r.last_user_text == "slow") == 1
        contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
        assert contents == ["before", "echo: before", "slow", "answered once"]
