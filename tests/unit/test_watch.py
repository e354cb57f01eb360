"""The watch history (raftkv/watch.py) and a replica's WATCH: events in revision order,
held requests woken by a write or by their wait running out, COMPACTED past the bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.config import NodeConfig
from raftkv.raft import CampaignKind
from raftkv.replica import Replica, open_storage
from raftkv.watch import DELETE, EVENT_OVERHEAD, PUT, Compacted, Event, WatchHistory
from raftkv.wire import ClientRequest, ReplyCode, ReqOp
from tests.powerloss import PowerLossFS
from tests.unit.test_replica import ADDR, InlineSyncer, Recorder


def flat(events: list[tuple]) -> list:
    """Events as KVStore.events records them: four items each, b"" for a delete's value."""
    return [x if x is not None else b"" for e in events for x in e]


def test_since_gives_the_events_of_a_key_or_prefix_from_a_revision_on() -> None:
    h = WatchHistory(floor=3)
    h.extend(flat([(4, PUT, b"a", b"1"), (5, PUT, b"ab", b"2"), (6, DELETE, b"a", None),
              (7, PUT, b"b", b"3")]))
    assert h.since(4, b"a", False, 7) == ([Event(4, PUT, b"a", b"1"),
                                           Event(6, DELETE, b"a", None)], 8)
    assert h.since(5, b"a", True, 7) == ([Event(5, PUT, b"ab", b"2"),
                                          Event(6, DELETE, b"a", None)], 8)
    assert h.since(8, b"a", True, 9) == ([], 10)  # nothing yet: ask past what is applied
    assert h.since(20, b"a", True, 9) == ([], 20)  # never back below what was asked
    with pytest.raises(Compacted) as e:
        h.since(3, b"a", False, 7)
    assert e.value.oldest == 4


def test_a_reply_stops_at_the_limit_but_never_inside_a_revision() -> None:
    h = WatchHistory()
    h.extend(flat([(2, PUT, b"k", b"1"), (3, PUT, b"k", b"2"), (3, PUT, b"k2", b"x"),
              (4, PUT, b"k", b"3")]))
    events, following = h.since(1, b"k", True, 4, limit=2)
    assert [e.revision for e in events] == [2, 3, 3] and following == 4
    assert h.since(following, b"k", True, 4, limit=2) == ([Event(4, PUT, b"k", b"3")], 5)


def test_the_oldest_whole_revisions_go_past_the_bound_and_the_floor_follows() -> None:
    one = 1 + 1 + EVENT_OVERHEAD
    h = WatchHistory(max_bytes=3 * one)
    h.extend(flat([(2, PUT, b"a", b"1"), (3, PUT, b"a", b"2"), (3, PUT, b"b", b"2")]))
    h.extend(flat([(5, PUT, b"a", b"3")]))  # four events: revision 2 goes; 3 stays whole
    assert h.floor == 2 and len(h) == 3 and h.bytes == 3 * one
    h.extend(flat([(6, PUT, b"a", b"4")]))  # both events of revision 3 go together
    assert h.floor == 3 and len(h) == 2
    with pytest.raises(Compacted, match="before 4"):
        h.since(3, b"a", False, 6)
    assert [e.revision for e in h.since(4, b"a", False, 6)[0]] == [5, 6]
    h.reset(10)
    assert len(h) == 0 and h.bytes == 0 and h.since(11, b"a", False, 10) == ([], 11)


def leader(**kw: object) -> Replica:
    cfg = NodeConfig(1, ADDR[1], {}, Path("/n1"), initial_voters=(1,), fs=PowerLossFS(),
                     seed=1, **kw)
    storage = open_storage(cfg)
    r = Replica(cfg, storage, Recorder(1, {}), InlineSyncer(storage), FakeClock())
    r.core.campaign(CampaignKind.ELECTION)
    r.process()
    return r


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def put(r: Replica, rid: int, key: bytes, value: bytes) -> int:
    r.handle_requests([ClientRequest(rid, ReqOp.PUT, key, value)])
    r.process()
    code, revision = next((c, v) for i, c, v in r.transport.replies if i == rid)
    assert code == ReplyCode.OK
    return revision


def watch(r: Replica, rid: int, key: bytes, revision: int = 0, wait_ms: int = 0,
          prefix: bool = False) -> None:
    r.handle_requests([ClientRequest(rid, ReqOp.WATCH, key, prefix=prefix, revision=revision,
                                     wait_ms=wait_ms)])


def test_a_held_watch_is_answered_by_the_next_write_of_its_key_or_by_its_wait() -> None:
    r = leader()
    first = put(r, 1, b"cfg", b"v1")
    watch(r, 2, b"cfg", wait_ms=500)  # from the next write on
    put(r, 3, b"other", b"x")  # not its key: still held
    assert r.counters["watchers"] == 1 and all(rid != 2 for rid, *_ in r.transport.replies)
    second = put(r, 4, b"cfg", b"v2")
    assert (2, ReplyCode.OK, [second + 1, [[second, PUT, b"cfg", b"v2"]]]) \
        in r.transport.replies
    watch(r, 5, b"cfg", revision=first)  # from the past, no wait: answered at once
    assert r.transport.replies[-1] == (5, ReplyCode.OK, [
        second + 1, [[first, PUT, b"cfg", b"v1"], [second, PUT, b"cfg", b"v2"]]])
    watch(r, 6, b"cfg", wait_ms=500)
    r.clock.now = 0.4
    r.tick()
    assert r.counters["watchers"] == 1
    r.clock.now = 0.5
    r.tick()  # the wait ran out: answered with no events, and where to go on from
    assert r.transport.replies[-1] == (6, ReplyCode.OK, [r.kv.applied_index + 1, []])
    assert r.counters["watchers"] == 0 and r.counters["watch_events"] == 3


def test_a_watch_past_the_history_is_compacted_and_none_is_kept_with_the_bound_0() -> None:
    r = leader(watch_bytes=2 * (2 + 2 + EVENT_OVERHEAD))  # two events of k<i> = vv
    revisions = [put(r, i, b"k%d" % i, b"vv") for i in range(1, 5)]
    watch(r, 9, b"k", revision=revisions[0], prefix=True)
    assert r.transport.replies[-1] == (9, ReplyCode.COMPACTED, revisions[2])
    assert r.counters["watch_compacted"] == 1
    off = leader(watch_bytes=0)
    assert off.kv.events is None
    watch(off, 1, b"k")
    assert off.transport.replies[-1][1] == ReplyCode.BAD_REQUEST
    assert "--watch-history-bytes 0" in off.transport.replies[-1][2]


def test_a_restarted_node_answers_from_the_events_it_replayed() -> None:
    """Its history starts at its snapshot (none here: the whole log replays)."""
    fs = PowerLossFS()
    cfg = NodeConfig(1, ADDR[1], {}, Path("/n1"), initial_voters=(1,), fs=fs, seed=1)
    storage = open_storage(cfg)
    r = Replica(cfg, storage, Recorder(1, {}), InlineSyncer(storage), FakeClock())
    r.core.campaign(CampaignKind.ELECTION)
    r.process()
    first = put(r, 1, b"a", b"1")
    storage.close()
    storage = open_storage(cfg)
    again = Replica(cfg, storage, Recorder(1, {}), InlineSyncer(storage), FakeClock())
    again.core.campaign(CampaignKind.ELECTION)
    again.process()
    watch(again, 2, b"a", revision=1)
    assert again.transport.replies[-1][1:] == (ReplyCode.OK, [again.kv.applied_index + 1,
                                                              [[first, PUT, b"a", b"1"]]])
