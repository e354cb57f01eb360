"""The status map's node entries (the CONTROL "status" answer; see harness/router.py):
a node's last STATUS merged with the supervisor's latest psutil sample of its process."""

from __future__ import annotations

from typing import Any

from raftkv.metrics import quantile


def node_status(node_id: int, st: dict[str, Any] | None, health: dict[str, Any] | None,
                fault: frozenset[int], voters: list[int], learners: list[int]
                ) -> dict[str, Any]:
    """One node's entry: `st` its fresh STATUS map (None when stale), `health` its
    entry of the supervisor's sample (None before the first), `fault` the nodes the
    partition cuts it off from."""
    st = st or {}
    h = health or {}
    alive = bool(h.get("alive"))
    return {
        "id": node_id,
        "address": h.get("address"),
        "pid": h.get("pid"),
        "alive": alive,
        "paused": bool(h.get("paused")),
        "member": ("voter" if node_id in voters else
                   "learner" if node_id in learners else None),
        "role": st.get("role"),
        "term": st.get("term"),
        "last_index": st.get("last_index"),
        "commit_index": st.get("commit_index"),
        "applied_index": st.get("applied_index"),
        "cpu_percent": h.get("cpu_percent") if alive else None,
        "rss_bytes": h.get("rss_bytes"),
        "open_files": h.get("open_files"),
        "uptime_s": h.get("uptime_s"),
        "dropped_malformed": (st.get("transport") or {}).get("dropped_malformed"),
        "partitioned_from": sorted(fault),
        "exit_code": h.get("exit_code"),
        **dashboard_fields(st),
    }


def dashboard_fields(st: dict[str, Any]) -> dict[str, Any]:
    """The rest of a node's STATUS that the dashboard and `status --json` show (all None
    when the status is stale)."""
    fsync = (st.get("histograms") or {}).get("fsync_seconds")
    return {
        "vote": st.get("vote"),
        "lead": st.get("lead"),
        "snapshot_index": st.get("snapshot_index"),
        "log_tail": st.get("log_tail"),
        "counters": st.get("counters"),
        "kv": st.get("kv"),
        "fsync_ms": None if fsync is None else {
            "p50": ms(quantile(fsync, 0.5)), "p99": ms(quantile(fsync, 0.99)),
            "count": fsync["count"]},
        "metrics_port": st.get("metrics_port"),
        "repair": st.get("repair"),
    }


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
