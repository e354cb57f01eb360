"""The controller's Prometheus metrics: the router's counters, and each node as it last
saw it.

Built on every scrape on the metrics server's thread from values the router's loop
replaces whole (a node's last STATUS map, the supervisor's health sample) or from
fixed-key dicts, so reading them needs no lock (see raftkv/metrics.py). These are the
same values the `status` command reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.router import Router

NODE_GAUGES = (
    ("term", "Current term the node reports"),
    ("last_index", "Index of the node's last log entry"),
    ("commit_index", "Commit index the node reports"),
    ("applied_index", "Applied index the node reports"),
)
NODE_COUNTERS = ("proposals", "elections_started", "elections_won", "fsyncs")
ROLES = ("follower", "pre_candidate", "candidate", "leader")


def controller_families(c: Router) -> Callable[[], Iterator[Any]]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def read() -> Iterator[Any]:
        for key, value in dict(c.counters).items():
            yield CounterMetricFamily(f"raftkv_controller_{key}", f"Controller counter {key}",
                                      value=value)
        yield GaugeMetricFamily("raftkv_controller_commands_running",
                                "Commands handed to the supervisor, not answered yet",
                                value=c.commands_running)
        yield GaugeMetricFamily("raftkv_controller_leader", "Node the controller routes to "
                                "(0: none known)", value=c.leader)
        yield CounterMetricFamily("raftkv_controller_timeline_events",
                                  "Events added to the timeline", value=c.timeline.seq)
        views = list(c.views.values())
        health = c.health
        up = GaugeMetricFamily("raftkv_node_up", "1 if the node's process runs",
                               labels=["node"])
        cpu = GaugeMetricFamily("raftkv_node_cpu_percent", "psutil cpu% of the node",
                                labels=["node"])
        role = GaugeMetricFamily("raftkv_node_role", "1 for the node's last reported role",
                                 labels=["node", "role"])
        gauges = {k: GaugeMetricFamily(f"raftkv_node_{k}", doc, labels=["node"])
                  for k, doc in NODE_GAUGES}
        counters = {k: CounterMetricFamily(f"raftkv_node_{k}", f"Node counter {k}",
                                           labels=["node"]) for k in NODE_COUNTERS}
        for v in views:
            node = str(v.id)
            h = health.get(v.id) or {}
            up.add_metric([node], 1.0 if h.get("alive") else 0.0)
            if h.get("cpu_percent") is not None:
                cpu.add_metric([node], h["cpu_percent"])
            st = v.status
            if st is None:
                continue
            for r in ROLES:
                role.add_metric([node, r], 1.0 if st.get("role") == r else 0.0)
            for k in gauges:
                gauges[k].add_metric([node], st.get(k) or 0)
            node_counters = st.get("counters") or {}
            for k in counters:
                counters[k].add_metric([node], node_counters.get(k, 0))
        yield up
        yield cpu
        yield role
        yield from gauges.values()
        yield from counters.values()

    return read
