"""The Python client against real web and worker processes."""

from __future__ import annotations

import httpx
import pytest

from regina.client import ReginaClient
from regina.errors import BadRequest, NotFound


def test_the_client_drives_an_instance_end_to_end(api: httpx.Client) -> None:
    with ReginaClient(str(api.base_url)) as regina:
        assert "openai-agent" in [a["id"] for a in regina.agents()]
        iid = regina.spawn("openai-agent")["instanceId"]
        assert regina.chat(iid, "hi")["text"] == "echo: hi"
        events = list(regina.stream(iid, "again"))
        assert events[-1]["type"] == "finish" and events[-1]["text"] == "echo: again"
        replay = list(regina.events(events[-1]["runId"], after=events[0]["seq"]))
        assert replay == events[1:]
        regina.steer(iid, "later")
        regina.heartbeat(iid)
        assert [m["content"] for m in regina.messages(iid)][:2] == ["hi", "echo: hi"]
        regina.suspend(iid)
        assert regina.instance(iid)["status"] == "suspended"
        regina.resume(iid)
        assert any(i["instanceId"] == iid for i in regina.instances())
        regina.delete(iid)
        with pytest.raises(NotFound):
            regina.instance(iid)
        with pytest.raises(BadRequest, match="message"):
            regina.chat(regina.spawn("openai-agent")["instanceId"], "")
