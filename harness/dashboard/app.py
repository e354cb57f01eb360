"""The dashboard's web server (aiohttp): the page, a live feed, and the controls.

- `GET /` the page; `GET /static/...` its script and style.
- `GET /api/stream` server-sent events: `status` (the controller's status map, the same
  that `raftkv status --json` prints) every POLL_S, and `events` (new timeline entries,
  the controller's `events` command) as they appear.
- `GET /api/status`, `GET /api/events?since=N`: the same, once.
- `POST /api/command {"name", "args"}`: one controller command, exactly what the CLI
  verb of that name sends (kill-leader, kill, restart, pause, resume, partition, heal,
  transfer-leader).
- `POST /api/put {"key", "value"}`, `POST /api/get {"key"}`: through raftkv.aio.Client
  at the controller, as `raftkv put` / `raftkv get` do (with raftkv.Client).

One task polls the controller for every open page. The controller's commands (blocking
ZeroMQ calls, harness.rpc) run in worker threads; the store's requests are the asyncio
client's coroutines, in the server's loop. Requests must carry this server's own Host
(no DNS rebinding) and, to change anything, a JSON body (a cross-site form cannot send
one without a CORS preflight, which this server never grants).

The token: every request except the page itself (`GET /`) and its static files must
carry this server's token (`raftkv dashboard` makes a random one at each start and
prints the page's URL with it, `/?token=...`, as Jupyter does; `--token` fixes it).
Requests send it in the X-Raftkv-Token header; a GET may send it as `?token=` instead,
because the page's EventSource cannot set a header. That covers every control action
and the read-only views too (the status names pids and addresses, and `/api/get` reads
the store), and any route added later: what is open is listed, every other route is not
(a request no route matches gets its 404 or 405, which runs no handler).
A request without the right token is answered 403 with a JSON error before its handler
runs, so it changes nothing; each one is logged as a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import zmq
from aiohttp import web

import raftkv
from harness import rpc
from raftkv import aio
from raftkv.wire import ReplyCode

log = logging.getLogger("raftkv.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
POLL_S = 0.25  # the controller polls its nodes every 0.2 s
KEEP_EVENTS = 500  # timeline entries a newly opened page is sent
COMMANDS = frozenset({"kill-leader", "kill", "restart", "pause", "resume", "partition",
                      "heal", "transfer-leader"})
CONTROL_TIMEOUT_S = 5.0
TOKEN_HEADER = "X-Raftkv-Token"
TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII: fits a header and a URL


def new_token() -> str:
    """A token for one run of the dashboard: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    """`token`, or ValueError when it cannot be one (empty, or a space, a control or a
    non-ASCII character: the page must be able to send it in a header)."""
    if not TOKEN_RE.fullmatch(token):
        raise ValueError("a token is one or more printable ASCII characters, no spaces")
    return token


class Feed:
    """The latest status and the timeline, polled from the controller for all pages."""

    def __init__(self, controller: str, ctx: zmq.Context) -> None:
        self.controller = controller
        self.ctx = ctx
        self.status: dict[str, Any] | None = None
        self.error: str | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=KEEP_EVENTS)
        self.next_event = 0
        self.version = 0
        self.changed = asyncio.Condition()

    async def control(self, name: str, *args: Any, timeout: float = CONTROL_TIMEOUT_S) -> Any:
        return await asyncio.to_thread(rpc.control, self.ctx, self.controller, name, *args,
                                       timeout=timeout)

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(POLL_S)

    async def poll_once(self) -> None:
        try:
            status = await self.control("status", timeout=2.0)
            page = await self.control("events", self.next_event, timeout=2.0)
        except rpc.ControlError as e:
            self.error = str(e)
        else:
            self.error = None
            self.status = status
            if page["next"] < self.next_event:  # a new controller: numbering restarted
                self.events.clear()
            self.events.extend(page["events"])
            self.next_event = page["next"]
        async with self.changed:
            self.version += 1
            self.changed.notify_all()

    async def wait_newer(self, version: int) -> int:
        async with self.changed:
            await self.changed.wait_for(lambda: self.version > version)
            return self.version


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def stream(request: web.Request) -> web.StreamResponse:
    feed: Feed = request.app["feed"]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    version, sent = 0, -1
    try:
        while True:
            version = await feed.wait_newer(version)
            await resp.write(sse("status", {"status": feed.status, "error": feed.error}))
            fresh = [e for e in feed.events if e["seq"] > sent]
            if sent > (feed.events[-1]["seq"] if feed.events else 0):
                fresh = list(feed.events)  # the controller restarted
            if fresh:
                sent = fresh[-1]["seq"]
                await resp.write(sse("events", fresh))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def get_status(request: web.Request) -> web.Response:
    feed: Feed = request.app["feed"]
    try:
        return web.json_response(await feed.control("status"))
    except rpc.ControlError as e:
        return web.json_response({"error": str(e)}, status=503)


async def get_events(request: web.Request) -> web.Response:
    feed: Feed = request.app["feed"]
    since = request.query.get("since", "0")
    if not since.isdigit():
        raise web.HTTPBadRequest(text="since must be a number")
    try:
        return web.json_response(await feed.control("events", int(since)))
    except rpc.ControlError as e:
        return web.json_response({"error": str(e)}, status=503)


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send application/json")
    try:
        body = await request.json()
    except ValueError as e:
        raise web.HTTPBadRequest(text=f"bad JSON: {e}") from e
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="send a JSON object")
    return body


def failure(message: str, code: ReplyCode | None) -> web.Response:
    status = 400 if code == ReplyCode.BAD_REQUEST else 503
    return web.json_response({"ok": False, "error": message}, status=status)


async def post_command(request: web.Request) -> web.Response:
    body = await json_body(request)
    name, args = body.get("name"), body.get("args", [])
    if name not in COMMANDS:
        return failure(f"unknown command {name!r}; commands: {', '.join(sorted(COMMANDS))}",
                       ReplyCode.BAD_REQUEST)
    if not isinstance(args, list) or not all(isinstance(a, int | str) for a in args):
        return failure("args must be a list of node ids or groups", ReplyCode.BAD_REQUEST)
    feed: Feed = request.app["feed"]
    try:
        result = await feed.control(name, *args)
    except rpc.ControlError as e:
        return failure(str(e), e.code)
    log.info("command %s %s -> %s", name, args, result)
    await feed.poll_once()  # show the effect at once
    return web.json_response({"ok": True, "result": result})


async def post_membership(request: web.Request) -> web.Response:
    """{"action": "add"} or {"action": "remove", "node": N}: exactly `raftkv add-node` /
    `raftkv remove-node N` (harness/membership.py), with their progress lines."""
    from harness import membership

    body = await json_body(request)
    action, node = body.get("action"), body.get("node")
    feed: Feed = request.app["feed"]
    lines: list[str] = []
    if action == "add":
        def run() -> Any:
            return membership.add_node(feed.ctx, feed.controller, progress=lines.append)
    elif action == "remove" and type(node) is int:
        def run() -> Any:
            return membership.remove_node(feed.ctx, feed.controller, node,
                                          progress=lines.append)
    else:
        return failure('send {"action": "add"} or {"action": "remove", "node": N}',
                       ReplyCode.BAD_REQUEST)
    try:
        result = await asyncio.to_thread(run)
    except rpc.ControlError as e:
        return failure(str(e), e.code)
    except membership.MembershipError as e:
        return failure(str(e), ReplyCode.UNAVAILABLE)
    log.info("membership %s %s -> %s", action, node or "", result)
    await feed.poll_once()
    return web.json_response({"ok": True, "result": result, "progress": lines})


async def with_client(request: web.Request,
                      fn: Callable[[aio.Client], Awaitable[Any]]) -> web.Response | Any:
    client: aio.Client = request.app["client"]
    try:
        return await fn(client)
    except raftkv.BadRequest as e:
        return failure(str(e), ReplyCode.BAD_REQUEST)
    except (raftkv.Unavailable, raftkv.Timeout) as e:
        return failure(str(e), ReplyCode.UNAVAILABLE)


def text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"{name} must be a string")
    return value


async def post_put(request: web.Request) -> web.Response:
    body = await json_body(request)
    key, value = text_field(body, "key"), text_field(body, "value")
    got = await with_client(request, lambda kv: kv.put(key, value))
    if isinstance(got, web.Response):
        return got
    return web.json_response({"ok": True, "result": "OK"})


async def post_get(request: web.Request) -> web.Response:
    body = await json_body(request)
    key = text_field(body, "key")
    got = await with_client(request, lambda kv: kv.get(key))
    if isinstance(got, web.Response):
        return got
    value = None if got is None else got.decode("utf-8", "backslashreplace")
    return web.json_response({"ok": True, "found": got is not None, "value": value})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_guard(allowed: frozenset[str] | None) -> Any:
    """Refuse a request whose Host is not this server's (a page on another site that
    resolved its own name to 127.0.0.1), or a cross-origin change."""
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if allowed is not None and request.host not in allowed:
            raise web.HTTPForbidden(text="unexpected Host header")
        origin = request.headers.get("Origin")
        if request.method != "GET" and origin and origin.split("://", 1)[-1] != request.host:
            raise web.HTTPForbidden(text="cross-origin request refused")
        return await handler(request)
    return guard


def token_guard(token: str, open_resources: set[Any]) -> Any:
    """Refuse, with 403 and a JSON error and before its handler runs, a request for
    anything but `open_resources` that lacks `token` (header, or `?token=` on a GET).
    A request no route matches runs no handler: it gets its 404 or 405 (a browser asks
    for /favicon.ico)."""
    expected = check_token(token).encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.match_info.http_exception is not None
                or request.match_info.route.resource in open_resources):
            return await handler(request)
        given = request.headers.get(TOKEN_HEADER)
        if given is None and request.method in ("GET", "HEAD"):
            given = request.query.get("token")
        if not given:
            reason = "no dashboard token"
        elif not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            reason = "wrong dashboard token"
        else:
            return await handler(request)
        log.warning("refused %s %s from %s: %s", request.method, request.path,
                    request.remote, reason)
        return web.json_response(
            {"ok": False, "error": f"{reason}: open the page at the URL `raftkv dashboard` "
                                   f"printed (it ends in ?token=...), or send the token in "
                                   f"the {TOKEN_HEADER} header"}, status=403)
    return guard


def make_app(controller: str, host: str, port: int, token: str) -> web.Application:
    """The dashboard of the cluster whose controller listens at `controller`; every
    request but the page and its static files must carry `token`."""
    loopback = host in ("127.0.0.1", "localhost", "::1")
    allowed = frozenset({f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", host)}
                        ) if loopback else None
    open_resources: set[Any] = set()  # filled below, once the routes exist
    app = web.Application(middlewares=[host_guard(allowed), token_guard(token, open_resources)])
    ctx = zmq.Context()
    app["feed"] = Feed(controller, ctx)
    app["client"] = aio.Client(controller, timeout=CONTROL_TIMEOUT_S)

    async def background(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(app["feed"].run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await app["client"].aclose()
        ctx.destroy(linger=0)

    app.cleanup_ctx.append(background)
    open_resources.add(app.router.add_get("/", index).resource)
    open_resources.add(app.router.add_static("/static/", STATIC))
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/api/status", get_status)
    app.router.add_get("/api/events", get_events)
    app.router.add_post("/api/command", post_command)
    app.router.add_post("/api/membership", post_membership)
    app.router.add_post("/api/put", post_put)
    app.router.add_post("/api/get", post_get)
    return app


def page_url(host: str, port: int, token: str) -> str:
    """The page's URL, carrying the token for the page to pick up."""
    where = f"[{host}]" if ":" in host else host
    return f"http://{where}:{port}/?token={quote(token, safe='')}"


def run_dashboard(controller: str, host: str, port: int, token: str,
                  ready: Callable[[str], None] = lambda _: None) -> None:
    """Serve until SIGINT/SIGTERM; `ready(url)` is called once the port is bound, with
    the page's URL and its token."""
    app = make_app(controller, host, port, token)
    url = page_url(host, port, token)
    # run_app calls `print` once its sites are listening.
    web.run_app(app, host=host, port=port, print=lambda _: ready(url), shutdown_timeout=1.0,
                handle_signals=True)
