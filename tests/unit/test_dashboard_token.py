"""The dashboard's token (harness/dashboard/app.py), in process against a fake controller:
every route but the page and its static files, whatever its method, refuses a request
without the right token with 403 and a JSON error, and nothing reaches the controller or
the store. Routes are read from the app's router, so a route added later is covered."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from harness import membership, rpc
from harness.dashboard import app as dashboard
from harness.launcher import free_ports

TOKEN = dashboard.new_token()
STATUS = {"leader": 1, "term": 2, "voters": [1, 2, 3], "nodes": []}
POLLS = {"status", "events"}  # what the feed asks every POLL_S, for every page
BODIES = {  # a body that acts, for each route that takes one
    "/api/command": {"name": "kill-leader"},
    "/api/membership": {"action": "remove", "node": 1},
    "/api/put": {"key": "k", "value": "v"},
    "/api/get": {"key": "k"},
}


class FakeClient:
    def __init__(self, calls: list[tuple]) -> None:
        self.calls = calls

    async def put(self, key: str, value: str) -> None:
        self.calls.append(("put", key, value))

    async def get(self, key: str) -> bytes | None:
        self.calls.append(("get", key))
        return None

    async def aclose(self) -> None:
        pass


@pytest.fixture
def acted(monkeypatch) -> list[tuple]:
    """What reached the (fake) controller or store, the feed's polls left out."""
    calls: list[tuple] = []

    def control(ctx: Any, address: str, name: str, *args: Any, timeout: float = 5.0) -> Any:
        if name == "status":
            return STATUS
        if name == "events":
            return {"events": [], "next": 0, "last": 0, "lost": 0}
        calls.append((name, *args))
        return {"killed": 1} if name == "kill-leader" else {"removed": 1}

    monkeypatch.setattr(rpc, "control", control)
    monkeypatch.setattr(membership, "control", control)
    monkeypatch.setattr(membership, "remove_node",
                        lambda ctx, controller, node, progress: control(
                            ctx, controller, "remove-node", node))
    return calls


def routes(app: Any) -> list[tuple[str, str]]:
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes()})


async def serve(acted: list[tuple], check: Any) -> None:
    port = free_ports(1)[0]
    app = dashboard.make_app("tcp://127.0.0.1:1", "127.0.0.1", port, TOKEN)
    await app["client"].aclose()
    app["client"] = FakeClient(acted)
    async with TestServer(app, host="127.0.0.1", port=port), \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await check(app, session, f"http://127.0.0.1:{port}")


def test_every_route_but_the_page_refuses_a_request_without_the_right_token(acted):
    wrong = [{}, {dashboard.TOKEN_HEADER: ""}, {dashboard.TOKEN_HEADER: TOKEN[:-1]},
             {dashboard.TOKEN_HEADER: TOKEN + "x"}, {dashboard.TOKEN_HEADER: TOKEN.upper()},
             {dashboard.TOKEN_HEADER: "\u00e9" + TOKEN[1:]}]
    seen: list[tuple[str, str]] = []

    async def check(app: Any, session: aiohttp.ClientSession, base: str) -> None:
        for method, path in routes(app):
            if path in ("/", "/static"):
                continue
            seen.append((method, path))
            for headers in wrong:
                async with session.request(method, base + path, headers=headers,
                                           json=BODIES.get(path, {})) as resp:
                    assert resp.status == 403, (method, path, headers)
                    if method != "HEAD":
                        answer = await resp.json()
                        assert answer["ok"] is False and "dashboard token" in answer["error"]
            if method not in ("GET", "HEAD"):  # ?token= is for the EventSource, not changes
                async with session.request(method, f"{base}{path}?token={TOKEN}",
                                           json=BODIES.get(path, {})) as resp:
                    assert resp.status == 403, (method, path)

    asyncio.run(serve(acted, check))
    assert {p for _, p in seen} == {"/api/stream", "/api/status", "/api/events",
                                    "/api/command", "/api/membership", "/api/put", "/api/get"}
    assert acted == []


def test_the_right_token_gets_through_and_the_page_needs_none(acted):
    async def check(app: Any, session: aiohttp.ClientSession, base: str) -> None:
        auth = {dashboard.TOKEN_HEADER: TOKEN}
        for path in ("/", "/static/app.js", "/static/style.css"):
            async with session.get(base + path) as resp:
                assert resp.status == 200, path
        for path, body in BODIES.items():
            async with session.post(base + path, json=body, headers=auth) as resp:
                assert resp.status == 200, (path, await resp.text())
                assert (await resp.json())["ok"] is True
        async with session.get(base + "/api/status", headers=auth) as resp:
            assert resp.status == 200 and await resp.json() == STATUS
        async with session.get(f"{base}/api/events?since=0&token={TOKEN}") as resp:
            assert resp.status == 200
        async with session.get(base + "/favicon.ico") as resp:  # matches no route
            assert resp.status == 404
        async with session.delete(base + "/api/command") as resp:  # no such method
            assert resp.status == 405
        async with session.get(f"{base}/api/stream?token={TOKEN}") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert (await resp.content.readline()).startswith(b"event: status")

    asyncio.run(serve(acted, check))
    assert acted == [("kill-leader",), ("remove-node", 1), ("put", "k", "v"), ("get", "k")]


@pytest.mark.parametrize("token", ["", "has space", "tab\there", "caf\u00e9", "new\nline"])
def test_a_token_the_page_could_not_send_is_refused(token):
    with pytest.raises(ValueError):
        dashboard.check_token(token)


def test_page_url_carries_the_token_quoted():
    assert dashboard.page_url("127.0.0.1", 7780, "a+b/c&d") == (
        "http://127.0.0.1:7780/?token=a%2Bb%2Fc%26d")
    assert dashboard.page_url("::1", 7780, "t") == "http://[::1]:7780/?token=t"
    assert dashboard.new_token() != dashboard.new_token()
    assert len(dashboard.new_token()) >= 40
