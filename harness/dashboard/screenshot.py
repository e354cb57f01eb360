"""Take the README's dashboard screenshots against a live cluster of its own.

    python -m harness.dashboard.screenshot docs/

It starts a 3-node cluster in a temp dir, writes, kills the leader and restarts it, then
shoots `dashboard.png`; isolates the new leader while a client writes to it directly, so
its uncommitted entries diverge from the majority's next term, and shoots
`dashboard-divergence.png`; then heals and stops everything. Needs /usr/bin/chromium.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

import raftkv
from harness import rpc
from harness.cluster_state import REPO, child_env
from harness.dashboard.app import new_token, page_url
from harness.launcher import down, free_base_port, free_ports, up, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def shoot(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        cluster_dir = Path(tmp) / "cluster"
        state, _ = up(cluster_dir, base_port=free_base_port(3), timeout=20)
        port, token = free_ports(1)[0], new_token()
        dash = subprocess.Popen([sys.executable, "-m", "harness.cli", "dashboard", "--dir",
                                 str(cluster_dir), "--port", str(port)],
                                env=dict(child_env(), RAFTKV_DASHBOARD_TOKEN=token), cwd=REPO)
        ctx = zmq.Context()
        try:
            def control(name: str, *args: object) -> object:
                return rpc.control(ctx, state.controller.address, name, *args, timeout=10)

            def leader() -> int | None:
                return control("status")["leader"]  # type: ignore[index]

            with raftkv.Client(state.controller.address) as kv:
                for i in range(12):
                    kv.put(f"k{i}", f"v{i}")
                first = wait_for(leader, 10, "a leader")
                control("kill-leader")
                wait_for(lambda: (lambda ld: ld if ld and ld != first else None)(leader()),
                         10, "a new leader")
                for i in range(8):
                    kv.put(f"k{i}", f"w{i}")
                control("restart", first)
                wait_for(lambda: all(n["role"] for n in control("status")["nodes"]), 10,
                         "every node back")
                kv.put("greeting", "hello")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(page_url("127.0.0.1", port, token))
                page.wait_for_selector(".card.leader")
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / "dashboard.png"), full_page=True)
                isolate_and_diverge(state, control, leader())
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / "dashboard-divergence.png"), full_page=True)
                browser.close()
            control("heal")
        finally:
            dash.send_signal(signal.SIGTERM)
            dash.wait(timeout=10)
            ctx.destroy(linger=0)
            down(cluster_dir, grace=2)


def isolate_and_diverge(state: object, control: object, old: int) -> None:
    """Cut the leader off and have clients write to it directly: it appends entries it
    can never commit, while the majority elects a leader of the next term and writes."""
    others = ",".join(str(n.id) for n in state.nodes if n.id != old)  # type: ignore[attr-defined]
    address = state.node(old).address  # type: ignore[attr-defined]
    control("partition", str(old), others)  # type: ignore[operator]

    def write_to_old(i: int) -> None:
        try:
            with raftkv.Client(address, timeout=0.5) as kv:
                kv.put(f"lost{i}", "never committed")
        except raftkv.RaftKVError:
            pass

    threads = [threading.Thread(target=write_to_old, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.5)
    with raftkv.Client(state.controller.address) as kv:  # type: ignore[attr-defined]
        for i in range(6):
            kv.put(f"after{i}", "majority")


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    target.mkdir(parents=True, exist_ok=True)
    shoot(target)
    print(f"wrote {target / 'dashboard.png'} and {target / 'dashboard-divergence.png'}")
