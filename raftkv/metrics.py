"""Prometheus metrics of a node, read from the values its STATUS reports.

The node's loop never touches prometheus_client: it bumps plain counters and `Buckets`
(a list increment), as it always did for STATUS. A collector reads those same values
when Prometheus scrapes, on the HTTP server's own thread, so `raftkv status`, the
dashboard and /metrics show one set of numbers and the loop pays nothing per scrape
beyond the GIL. Reads from that thread are single attribute loads or copies of dicts and
lists whose keys do not change (atomic under the GIL); a scrape may see a histogram's sum
a moment apart from its counts, which Prometheus tolerates.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger("raftkv.metrics")

FSYNC_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 1.0)
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
TURN_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Counters that are not counts: gauges in milliseconds, exported in seconds.
_MS_GAUGES = {
    "last_snapshot_ms": ("raftkv_last_snapshot_seconds",
                         "Duration of the last snapshot, start to adoption"),
    "last_snapshot_start_ms": ("raftkv_last_snapshot_start_seconds",
                               "How long starting the last snapshot (the fork) stopped "
                               "the loop"),
    "last_snapshot_adopt_ms": ("raftkv_last_snapshot_adopt_seconds",
                               "How long adopting the last snapshot's file (and "
                               "compacting the log) stopped the loop"),
    "longest_turn_ms": ("raftkv_longest_turn_seconds",
                        "The longest turn of the node's loop since it started"),
}


class Buckets:
    """A fixed-bucket histogram cheap enough for the loop: one bisect, two additions.
    `counts[i]` counts values v with bounds[i-1] < v <= bounds[i]; the last slot is +Inf."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def to_dict(self) -> dict[str, Any]:
        """For STATUS: bounds, per-bucket counts (not cumulative), count, sum."""
        counts = list(self.counts)
        return {"bounds": list(self.bounds), "counts": counts, "count": sum(counts),
                "sum": self.sum}


def quantile(h: dict[str, Any], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` of a `Buckets.to_dict()` (the
    last finite bound for the +Inf bucket); None when empty."""
    total = h["count"]
    if not total:
        return None
    rank, seen = q * total, 0
    for bound, n in zip([*h["bounds"], h["bounds"][-1]], h["counts"], strict=True):
        seen += n
        if seen >= rank:
            return bound
    return h["bounds"][-1]


def histogram_family(name: str, doc: str, h: dict[str, Any]) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    cumulative, buckets = 0, []
    for bound, n in zip(h["bounds"], h["counts"], strict=False):
        cumulative += n
        buckets.append((repr(float(bound)), cumulative))
    buckets.append(("+Inf", sum(h["counts"])))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h["sum"])


class FamiliesCollector:
    """A prometheus_client collector that builds its metric families on every scrape
    from `read()`."""

    def __init__(self, read: Callable[[], Iterable[Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        try:
            yield from self.read()
        except Exception:  # a scrape must never take the process down
            log.exception("metrics collection failed")


def serve(read: Callable[[], Iterable[Any]], host: str, port: int) -> int:
    """Serve the families `read()` builds at http://host:port/metrics on a daemon thread
    (prometheus_client's own server); returns the bound port (port 0 picks a free one).
    Raises OSError when the port cannot be bound."""
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(read))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, fds
    server, _ = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def node_families(status: Callable[[], dict[str, Any]]) -> Callable[[], Iterator[Any]]:
    """The node's metrics, built from the cheap part of its STATUS (`metrics_view`)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def read() -> Iterator[Any]:
        s = status()
        for key, doc in (("term", "Current Raft term"),
                         ("last_index", "Index of the last log entry"),
                         ("commit_index", "Highest log index known committed"),
                         ("applied_index", "Highest log index applied to the state machine"),
                         ("snapshot_index", "Last index covered by the snapshot")):
            yield GaugeMetricFamily(f"raftkv_{key}", doc, value=s[key])
        role = GaugeMetricFamily("raftkv_role", "1 for the role this node has now",
                                 labels=["role"])
        for r in ("follower", "pre_candidate", "candidate", "leader"):
            role.add_metric([r], 1.0 if s["role"] == r else 0.0)
        yield role
        for key, value in s["counters"].items():
            if key in _MS_GAUGES:
                name, doc = _MS_GAUGES[key]
                yield GaugeMetricFamily(name, doc, value=value / 1000)
                continue
            yield CounterMetricFamily(f"raftkv_{key}", f"Node counter {key}", value=value)
        for key, value in s["transport"].items():
            name = ("raftkv_dropped_malformed_frames" if key == "dropped_malformed"
                    else f"raftkv_transport_{key}")
            yield CounterMetricFamily(name, f"Transport counter {key}", value=value)
        h = s["histograms"]
        yield histogram_family("raftkv_fsync_seconds", "Latency of one WAL fsync (group "
                               "commit of a loop turn)", h["fsync_seconds"])
        yield histogram_family("raftkv_append_batch_entries", "Entries persisted per "
                               "fsync batch", h["append_batch_entries"])
        yield histogram_family("raftkv_loop_turn_seconds", "Work of one turn of the node's "
                               "loop, its wait for input excluded", h["loop_turn_seconds"])

    return read
