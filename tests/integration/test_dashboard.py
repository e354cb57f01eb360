"""`raftkv dashboard` against a real cluster (`launcher.up` in a temp dir, free ports),
driven in Debian's headless chromium through Playwright; and the metrics endpoints and
election log lines the same cluster exposes. Every process is stopped by pid and create
time; every wait has a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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


def fetch(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except (urllib.error.URLError, OSError):
        return None


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
            page = control(ctx, cluster.state.controller.address, "events", 0)
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


@pytest.fixture
def page(cluster, browser) -> Iterator[object]:
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "dashboard", "--dir",
                             str(cluster.dir), "--port", str(port)], env=cluster.env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: proc.poll() is not None or fetch(url + "api/status"), 15,
                 "the dashboard to serve")
        assert proc.poll() is None, proc.stderr.read().decode()
        ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
        pg = ctx.new_page()
        pg.set_default_timeout(10_000)
        pg.goto(url)
        yield pg
        ctx.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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


def test_dashboard_refuses_another_host_and_non_json_changes(cluster, page):
    url = page.url
    req = urllib.request.Request(url + "api/command", data=b"name=heal", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 415
    req = urllib.request.Request(url, headers={"Host": "attacker.example:80"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 403
