"""`raftkv dashboard` against a real cluster (`launcher.up` in a temp dir, free ports),
driven in Debian's headless chromium through Playwright; its token, over plain HTTP (no
browser needed); and the metrics endpoints and election log lines the same cluster
exposes. Every process is stopped by pid and create time; every wait has a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
import zmq

from harness.cluster_state import REPO, ClusterState, signal_process
from harness.launcher import down, free_base_port, free_ports, up, wait_for
from harness.rpc import control

CHROMIUM = os.environ.get("RAFTKV_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class Cluster:
    def __init__(self, root: Path) -> None:
        self.dir = root / "cluster"
        self.state, _ = up(self.dir, base_port=free_base_port(3), timeout=20)
        self.env = dict(os.environ, PYTHONPATH=str(REPO))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness.cli", *args, "--dir",
                               str(self.dir)], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=60)

    def status(self) -> dict:
        p = self.cli("status", "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def close(self) -> None:
        pids = self.pids()
        down(self.dir, grace=2)
        for pid, created in pids | self.pids():  # whatever down missed
            signal_process(pid, created, signal.SIGKILL)

    def pids(self) -> set[tuple[int, float]]:
        state = ClusterState.load(self.dir)
        return {(e.pid, e.create_time) for e in [state.controller, *state.nodes] if e.pid}


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def fetch(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None
          ) -> str | None:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def request(url: str, body: dict | None = None, headers: dict[str, str] | None = None,
            ) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of a GET, or of a POST of `body` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


PRINTED_URL = re.compile(r" on (http://\S+/\?token=(\S+)) \(Ctrl-C stops\)")


@dataclass
class Dashboard:
    base: str  # http://127.0.0.1:PORT/
    url: str  # the page's URL as printed, with ?token=
    token: str

    def auth(self) -> dict[str, str]:
        return {"X-Raftkv-Token": self.token}


@contextlib.contextmanager
def serve_dashboard(cluster: Cluster, tmp_path: Path, *args: str,
                    env: dict[str, str] | None = None) -> Iterator[Dashboard]:
    """`raftkv dashboard` on a free port, its token read from the URL it prints; stopped
    by pid (SIGTERM, then SIGKILL) however the test ends."""
    port = free_ports(1)[0]
    err = tmp_path / f"dashboard-{port}.err"
    with err.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "dashboard", "--dir",
                                 str(cluster.dir), "--port", str(port), *args],
                                env=env or cluster.env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=out)
    try:
        printed = wait_for(lambda: proc.poll() is not None or PRINTED_URL.search(
            err.read_text()), 15, "the dashboard to print its URL")
        assert proc.poll() is None, err.read_text()
        dash = Dashboard(f"http://127.0.0.1:{port}/", printed[1], unquote(printed[2]))
        assert printed[1].startswith(dash.base)
        wait_for(lambda: fetch(dash.base + "api/status", headers=dash.auth()), 15,
                 "the dashboard to serve")
        yield dash
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def dashboard(cluster, tmp_path) -> Iterator[Dashboard]:
    with serve_dashboard(cluster, tmp_path) as dash:
        yield dash


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


# -- metrics and logs (no browser) ----------------------------------------------------------

def test_node_and_controller_metrics_serve_the_values_status_reports(cluster):
    st = wait_for(lambda: (lambda s: s if s["leader"] and all(n["role"] for n in s["nodes"])
                           else None)(cluster.status()), 10, "a leader in status")
    leader = st["leader"]
    assert cluster.cli("put", "k", "v").returncode == 0
    for n in cluster.state.nodes:
        assert n.metrics_port
        text = wait_for(lambda n=n: fetch(f"http://127.0.0.1:{n.metrics_port}/metrics"), 5,
                        f"node {n.id}'s /metrics")
        row = next(r for r in cluster.status()["nodes"] if r["id"] == n.id)
        assert metric(text, "raftkv_term") == row["term"]
        assert metric(text, f'raftkv_role{{role="{row["role"]}"}}') == 1
        assert metric(text, "raftkv_fsync_seconds_count") == pytest.approx(
            row["fsync_ms"]["count"], abs=5)
        assert metric(text, "raftkv_dropped_malformed_frames_total") == 0
        assert "raftkv_append_batch_entries_bucket" in text
        assert "process_resident_memory_bytes" in text
        if n.id == leader:
            assert metric(text, "raftkv_elections_won_total") >= 1
            assert metric(text, "raftkv_proposals_total") >= 1
    port = cluster.state.controller.metrics_port
    text = wait_for(lambda: fetch(f"http://127.0.0.1:{port}/metrics"), 5, "controller metrics")
    assert metric(text, "raftkv_controller_leader") == leader
    assert metric(text, f'raftkv_node_up{{node="{leader}"}}') == 1


def test_kill_leader_shows_why_the_next_election_started_and_how_it_ended(cluster):
    first = wait_for(lambda: cluster.status()["leader"], 10, "a leader")
    assert cluster.cli("kill-leader").returncode == 0
    second = wait_for(lambda: (lambda ld: ld if ld and ld != first else None)(
        cluster.status()["leader"]), 10, "a new leader")
    log = (cluster.dir / "logs" / f"node{second}.log").read_text()
    assert "pre_vote_started: pre-vote for term" in log and "started: election timeout" in log
    assert "election_won: election for term" in log and "votes from" in log
    line = next(ln for ln in log.splitlines() if "election_won" in ln)
    assert f"node={second} term=" in line and "role=" in line

    def timeline() -> list[dict] | None:
        with zmq.Context() as ctx:
            page = control(ctx, cluster.state.controller.address, "events", 0,
                           credentials=cluster.state.credentials())
        kinds = {(e["kind"], e["node"]) for e in page["events"]}
        return page["events"] if ("election_won", second) in kinds else None

    events = wait_for(timeline, 5, "the new leader's election in the timeline")
    assert any(e["kind"] == "kill-leader" and e["node"] == first for e in events)


# -- the page, in a real browser ------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str) -> Iterator[object]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(10_000)
        pg.goto(url)
        yield pg
    finally:
        ctx.close()


@pytest.fixture
def page(dashboard, browser) -> Iterator[object]:
    """The page at the URL the dashboard printed, token and all."""
    yield from open_page(browser, dashboard.url)


def page_leader(pg) -> int | None:
    got = pg.get_attribute("[data-testid=leader]", "data-leader")
    return int(got) if got else None


def test_cards_show_the_real_leader_and_term(cluster, page):
    st = wait_for(lambda: (lambda s: s if s["leader"] and all(n["role"] for n in s["nodes"])
                           else None)(cluster.status()), 10, "a settled cluster")
    leader = st["leader"]
    page.wait_for_selector(f"[data-testid=card-{leader}].leader")
    assert page_leader(page) == leader
    assert page.inner_text("[data-testid=term]") == str(st["term"])
    card = page.locator(f"[data-testid=card-{leader}]")
    assert card.get_attribute("data-role") == "leader"
    assert card.get_attribute("data-term") == str(st["term"])
    assert page.locator(".card.leader").count() == 1
    for n in st["nodes"]:
        strip = page.locator(f"[data-testid=strip-{n['id']}] .cell[data-term]")
        assert strip.count() >= 1  # at least the leader's no-op entry


def test_kill_leader_button_shows_a_new_leader_within_5_s(cluster, page):
    first = wait_for(lambda: cluster.status()["leader"], 10, "a leader")
    page.wait_for_selector(f"[data-testid=card-{first}].leader")
    page.click("[data-testid=kill-leader]")
    page.wait_for_function(
        "old => { const v = document.querySelector('[data-testid=leader]').dataset.leader;"
        " return v && Number(v) !== old; }", arg=first, timeout=5_000)
    new = page_leader(page)
    assert new != first and cluster.status()["leader"] == new
    assert page.locator(f"[data-testid=card-{first}]").get_attribute("data-alive") == "false"
    page.wait_for_selector("#timeline li[data-kind=election_won]")
    # The new term's entries appear in a colour of their own on the strips.
    page.wait_for_function(
        "() => new Set([...document.querySelectorAll('[data-testid=strips] .cell[data-term]')]"
        ".map(c => c.dataset.term)).size >= 2", timeout=5_000)


def test_partition_drawn_on_the_page_shows_in_status_json(cluster, page):
    leader = wait_for(lambda: cluster.status()["leader"], 10, "a leader")
    others = sorted(n.id for n in cluster.state.nodes if n.id != leader)
    page.wait_for_selector(f"[data-testid=group-A] .chip[data-node='{leader}']")
    page.drag_and_drop(f".chip[data-node='{leader}']", "[data-testid=group-B]")
    page.wait_for_selector(f"[data-testid=group-B] .chip[data-node='{leader}']")
    page.click("[data-testid=apply-partition]")

    def cut() -> dict | None:
        nodes = {n["id"]: n for n in cluster.status()["nodes"]}
        ok = nodes[leader]["partitioned_from"] == others and all(
            nodes[o]["partitioned_from"] == [leader] for o in others)
        return nodes if ok else None

    wait_for(cut, 5, "the partition in raftkv status --json")
    page.wait_for_selector(f"[data-testid=cut-{leader}]")
    page.click("[data-testid=heal]")
    wait_for(lambda: all(not n["partitioned_from"] for n in cluster.status()["nodes"]), 5,
             "the heal in raftkv status --json")


def test_add_node_and_remove_buttons_change_the_membership(cluster, page):
    wait_for(lambda: cluster.status()["leader"], 10, "a leader")
    page.click("[data-testid=add-node]")
    page.wait_for_selector("[data-testid=card-4]", timeout=30_000)
    wait_for(lambda: cluster.status()["voters"] == [1, 2, 3, 4], 30, "node 4 a voter")
    # The card appears with the first status after the add; the result line only when
    # the whole add (catch up, promote) has answered.
    page.wait_for_function("() => document.querySelector('[data-testid=result]')"
                           ".textContent.includes('promoted to voter')", timeout=30_000)
    page.click("[data-testid=remove-1]")
    page.wait_for_selector("[data-testid=card-1]", state="detached", timeout=30_000)
    st = cluster.status()
    assert [n["id"] for n in st["nodes"]] == [2, 3, 4] and 1 not in st["voters"]


def test_put_and_get_box_go_through_the_cluster(cluster, page):
    page.fill("[data-testid=kv-key]", "greeting")
    page.fill("[data-testid=kv-value]", "hello")
    page.click("[data-testid=kv-put]")
    page.wait_for_function("() => document.querySelector('[data-testid=kv-result]')"
                           ".textContent === 'put greeting: OK'")
    got = cluster.cli("get", "greeting")
    assert got.returncode == 0 and got.stdout == "hello\n"
    page.click("[data-testid=kv-get]")
    page.wait_for_function("() => document.querySelector('[data-testid=kv-result]')"
                           ".textContent === 'greeting = hello'")


def test_dashboard_refuses_another_host_and_non_json_changes(cluster, dashboard):
    url = dashboard.base
    req = urllib.request.Request(url + "api/command", data=b"name=heal", method="POST",
                                 headers=dashboard.auth())
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 415
    for path in ("", "api/status"):  # the right token does not make up for the Host
        req = urllib.request.Request(url + path, headers={"Host": "attacker.example:80",
                                                          **dashboard.auth()})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 403


# -- the token (plain HTTP, no browser) -----------------------------------------------------

CONTROLS = [  # every state-changing request the page can send
    ("api/command", {"name": "kill-leader"}),
    ("api/command", {"name": "kill", "args": [1]}),
    ("api/command", {"name": "pause", "args": [2]}),
    ("api/command", {"name": "partition", "args": ["1", "2,3"]}),
    ("api/command", {"name": "transfer-leader", "args": [3]}),
    ("api/membership", {"action": "add"}),
    ("api/membership", {"action": "remove", "node": 1}),
    ("api/put", {"key": "intruder", "value": "was here"}),
]
COMMAND_KINDS = {"kill-leader", "kill", "restart", "pause", "resume", "partition", "heal",
                 "transfer-leader", "add-node", "promote", "remove-node"}


def settled(cluster: Cluster) -> dict:
    return wait_for(lambda: (lambda s: s if s["leader"] and all(
        n["role"] for n in s["nodes"]) else None)(cluster.status()), 10, "a settled cluster")


def commands_in_timeline(cluster: Cluster) -> list[dict]:
    with zmq.Context() as ctx:
        page = control(ctx, cluster.state.controller.address, "events", 0,
                       credentials=cluster.state.credentials())
    return [e for e in page["events"] if e["kind"] in COMMAND_KINDS]


def test_control_without_the_token_or_with_a_wrong_one_is_refused_and_changes_nothing(
        cluster, dashboard):
    settled(cluster)
    t = dashboard.token
    assert len(t) >= 40  # secrets.token_urlsafe(32), new at each start
    wrong = [{}, {"X-Raftkv-Token": ""}, {"X-Raftkv-Token": t + "x"},
             {"X-Raftkv-Token": t[:-1]}, {"X-Raftkv-Token": t.swapcase()},
             {"X-Raftkv-Token": "raftkv"}, {"X-Raftkv-Token": t + "é"}]
    for path, body in CONTROLS:
        for headers in wrong:
            code, answer = request(dashboard.base + path, body, headers)
            assert code == 403, (path, body, headers, answer)
            assert answer["ok"] is False and "token" in answer["error"], answer
        # A control request carries the token in the header; ?token= is for GETs.
        code, answer = request(f"{dashboard.base}{path}?token={t}", body)
        assert code == 403 and "no dashboard token" in answer["error"], answer
    # Each request above was answered; one that got through would have acted by then.
    st = cluster.status()
    assert [n["id"] for n in st["nodes"]] == [1, 2, 3] and st["voters"] == [1, 2, 3]
    assert all(n["alive"] and not n["paused"] and not n["partitioned_from"]
               for n in st["nodes"]), st["nodes"]
    assert commands_in_timeline(cluster) == []
    assert [n.id for n in ClusterState.load(cluster.dir).nodes] == [1, 2, 3]
    got = cluster.cli("get", "intruder")
    assert got.returncode == 1, (got.stdout, got.stderr)


def test_control_with_the_token_changes_the_cluster(cluster, dashboard):
    st = settled(cluster)
    follower = next(n["id"] for n in st["nodes"] if n["id"] != st["leader"])
    code, answer = request(dashboard.base + "api/put", {"key": "k", "value": "v"},
                           dashboard.auth())
    assert (code, answer) == (200, {"ok": True, "result": "OK"})
    got = cluster.cli("get", "k")
    assert got.returncode == 0 and got.stdout == "v\n"
    code, answer = request(dashboard.base + "api/command",
                           {"name": "kill", "args": [follower]}, dashboard.auth())
    assert code == 200 and answer["ok"] and answer["result"]["killed"] == follower, answer
    node = next(n for n in cluster.status()["nodes"] if n["id"] == follower)
    assert not node["alive"]
    assert [e["kind"] for e in commands_in_timeline(cluster)] == ["kill"]


def test_views_need_the_token_too_and_only_the_page_is_open(cluster, dashboard):
    base, t = dashboard.base, dashboard.token
    for path in ("api/status", "api/events?since=0", "api/stream"):
        code, answer = request(base + path)
        assert code == 403 and answer == {"ok": False, "error": answer["error"]}, answer
        assert answer["error"].startswith("no dashboard token")
    code, answer = request(base + "api/stream?token=not-it")
    assert code == 403 and answer["error"].startswith("wrong dashboard token")
    code, answer = request(base + "api/get", {"key": "k"})
    assert code == 403
    assert request(base + "api/status", headers=dashboard.auth())[1]["leader"] is not None
    assert "events" in request(f"{base}api/events?since=0&token={t}")[1]
    assert request(base + "api/get", {"key": "k"}, dashboard.auth()) == (
        200, {"ok": True, "found": False, "value": None})
    assert "<title>raftkv dashboard</title>" in (fetch(base) or "")
    assert "X-Raftkv-Token" in (fetch(base + "static/app.js") or "")
    with pytest.raises(urllib.error.HTTPError) as e:  # no route, no handler: no token needed
        urllib.request.urlopen(base + "favicon.ico", timeout=5)
    assert e.value.code == 404


def test_token_fixed_by_env_var_or_option_is_the_one_printed_and_required(cluster, tmp_path):
    fixed = "scripted-token_0123456789"
    with serve_dashboard(cluster, tmp_path,
                         env=dict(cluster.env, RAFTKV_DASHBOARD_TOKEN=fixed)) as dash:
        assert dash.token == fixed and dash.url == f"{dash.base}?token={fixed}"
        assert request(dash.base + "api/status", headers=dash.auth())[0] == 200
    with serve_dashboard(cluster, tmp_path, "--token", "a/b+c&d",
                         env=dict(cluster.env, RAFTKV_DASHBOARD_TOKEN=fixed)) as dash:
        assert dash.token == "a/b+c&d" and dash.url.endswith("?token=a%2Fb%2Bc%26d")
        assert request(dash.base + "api/status", headers={"X-Raftkv-Token": fixed})[0] == 403
        assert request(dash.base + "api/status", headers=dash.auth())[0] == 200
    bad = cluster.cli("dashboard", "--token", "has space")
    assert bad.returncode == 2 and "--token" in bad.stderr
    helped = cluster.cli("dashboard", "--help")
    assert "--token" in helped.stdout and "RAFTKV_DASHBOARD_TOKEN" in helped.stdout


def test_page_without_the_token_says_so_and_its_buttons_change_nothing(
        cluster, dashboard, browser):
    settled(cluster)
    for url, says, refused in (
            (dashboard.base, "no token in this page's URL", "no dashboard token"),
            (dashboard.base + "?token=not-it", "wrong dashboard token", "wrong dashboard token")):
        for pg in open_page(browser, url):
            pg.wait_for_function("s => document.querySelector('[data-testid=conn]')"
                                 ".textContent.includes(s)", arg=says)
            pg.click("[data-testid=kill-leader]")
            pg.wait_for_function("s => document.querySelector('[data-testid=result]')"
                                 ".textContent.includes(s)", arg=f"failed: {refused}")
    st = cluster.status()
    assert all(n["alive"] for n in st["nodes"]) and commands_in_timeline(cluster) == []
