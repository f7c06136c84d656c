"""A damaged transcript is a clear error or a logged repair, never a silently emptied history."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import redis

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.integration.test_api import spawn

SESSION = "/.session/messages.jsonl"


def _suspended_file(api: httpx.Client, cluster: Cluster, iid: str) -> Path:
    assert api.post(f"/instances/{iid}/chat", json={"message": "one"}).status_code == 200
    member = api.get(f"/instances/{iid}").json()["member"]
    assert api.post(f"/instances/{iid}/suspend").status_code == 204
    return cluster.tmp / f"vfs-{member.split('@')[0]}" / f"{iid}.sqlite"


def test_corrupt_lines_are_skipped_with_a_logged_repair(api: httpx.Client, cluster: Cluster) -> None:
    iid = spawn(api)
    path = _suspended_file(api, cluster, iid)
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT data FROM entries WHERE path = ?", (SESSION,)).fetchone()
        chunks = b"".join(r[0] for r in db.execute("SELECT data FROM chunks WHERE path = ? ORDER BY seq", (SESSION,)))
        db.execute("DELETE FROM chunks WHERE path = ?", (SESSION,))
        db.execute("UPDATE entries SET data = ? WHERE path = ?", (data + chunks + b"{torn line\n", SESSION))
    assert api.post(f"/instances/{iid}/chat", json={"message": "two"}).json()["text"] == "echo: two"
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
    assert contents == ["one", "echo: one", "two", "echo: two"]
    assert any("1 unreadable line(s) in the conversation skipped" in p.log() for p in cluster.procs)


def test_an_unreadable_transcript_is_an_error_not_an_empty_history(api: httpx.Client, cluster: Cluster) -> None:
    iid = spawn(api)
    path = _suspended_file(api, cluster, iid)
    with sqlite3.connect(path) as db:  # the transcript's entry turned into a directory
        db.execute("DELETE FROM chunks WHERE path = ?", (SESSION,))
        db.execute("UPDATE entries SET is_dir = 1, data = x'' WHERE path = ?", (SESSION,))
    text = api.post(f"/instances/{iid}/chat", json={"message": "two"}).json()["text"]
    assert text.startswith("Error:") and "cannot read the conversation" in text, text


def test_steering_taken_by_a_step_that_fails_before_using_it_is_given_back(api: httpx.Client, cluster: Cluster) -> None:
    iid = spawn(api)
    path = _suspended_file(api, cluster, iid)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM chunks WHERE path = ?", (SESSION,))
        db.execute("UPDATE entries SET is_dir = 1, data = x'' WHERE path = ?", (SESSION,))
    assert api.post(f"/instances/{iid}/steer", json={"message": "do not lose me"}).status_code == 200
    assert api.post(f"/instances/{iid}/chat", json={"message": "two"}).json()["text"].startswith("Error:")
    waiting = redis.Redis.from_url(cluster.redis_url).lrange(f"regina:steer:{iid}", 0, -1)
    assert any(b"do not lose me" in w for w in waiting), waiting


def test_a_model_answer_with_half_a_surrogate_pair_is_answered_and_kept(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """A provider's JSON can escape a lone surrogate ("\\ud83d"): it becomes U+FFFD in the answer,
    the stream and the transcript, instead of failing the turn at the transcript's append."""
    iid = spawn(api)
    fake_llm.push(Reply(text="half \ud83d here"), Reply(text="and \udc00 again"))
    answer = api.post(f"/instances/{iid}/chat", json={"message": "one"})
    assert answer.status_code == 200 and answer.json()["text"] == "half \ufffd here", answer.text
    lines = api.post(f"/instances/{iid}/chat/stream", json={"message": "two"}).text.splitlines()
    assert json.loads(lines[-1])["text"] == "and \ufffd again", lines
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
    assert contents == ["one", "half \ufffd here", "two", "and \ufffd again"]
